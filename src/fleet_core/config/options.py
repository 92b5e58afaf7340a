"""Every option of every command, declared once: flag, variable, default constant and help.

An ``Option`` is the single description of one setting. Three things are built from it, so
they cannot drift apart:

- the argparse parsers (``add_arguments``): ``--help`` shows each default from its constant
  and names its ``FLEET_DEPLOY_*`` variable;
- the environment fallback in ``settings.py`` (flag, then variable, then homelab-deploy's
  variable where ``legacy_env`` says it has one, then default);
- the option tables of ``docs/cli.md`` (``markdown_table``, ``legacy_env_table``; a test
  keeps the file in step).

Parsers keep every value as text: ``settings.py`` converts flag and variable alike, so a bad
``--timeout`` and a bad ``FLEET_DEPLOY_TIMEOUT`` get the same message. Only argparse and the
pure protocol modules are imported here: ``fleet-deploy --help`` must stay fast.

Long for a module because it is a table: one entry per option, grouped by command.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from fleet_core.protocol.actions import (
    DEFAULT_ACTION,
    DEFAULT_HOST_KIND,
    DEFAULT_REVISION,
    REBUILD_ACTIONS,
    HostKind,
)
from fleet_core.protocol.closures import STORE_DIR
from fleet_core.protocol.subjects import (
    ALIAS_ENV_PREFIX,
    DEFAULT_DEPLOY_SUBJECTS,
    DISCOVER_SUBJECT,
    LEGACY_ALIAS_ENV_PREFIX,
    Tier,
)

__all__ = [
    "ACTIONS",
    "COMMANDS",
    "DEFAULT_BOOTED_SYSTEM",
    "DEFAULT_BUILD_STEP_TIMEOUT",
    "DEFAULT_BUILD_TIMEOUT",
    "DEFAULT_DARWIN_VERSION_COMMAND",
    "DEFAULT_DASHBOARD_HOST",
    "DEFAULT_DASHBOARD_PORT",
    "DEFAULT_DASHBOARD_REFRESH",
    "DEFAULT_DEPLOY_TIMEOUT",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_HISTORY_LIMIT",
    "DEFAULT_HISTORY_MAX_AGE",
    "DEFAULT_HISTORY_MAX_BYTES",
    "DEFAULT_HISTORY_MAX_MSGS",
    "DEFAULT_HISTORY_REPLICAS",
    "DEFAULT_JETSTREAM_DIR",
    "DEFAULT_KILL_GRACE",
    "DEFAULT_LISTENER_TIMEOUT",
    "DEFAULT_LOGS_ANSWER_WITHIN",
    "DEFAULT_LOG_LEVEL",
    "DEFAULT_MAX_FAILURES",
    "DEFAULT_MCP_HEARTBEAT",
    "DEFAULT_METRICS_ADDR",
    "DEFAULT_NATS_LAYOUT",
    "DEFAULT_NIX_COMMAND",
    "DEFAULT_NIX_STORE_COMMAND",
    "DEFAULT_REBUILD_COMMAND",
    "DEFAULT_REBUILD_RUNNER",
    "DEFAULT_REQUEST_SKEW",
    "DEFAULT_REQUEST_TTL",
    "DEFAULT_SANDBOX_CLUSTER",
    "DEFAULT_SANDBOX_HOSTS",
    "DEFAULT_SANDBOX_PORT",
    "DEFAULT_SILENCE_LIMIT",
    "DEFAULT_SIM_DELAY",
    "DEFAULT_STATE_DIR",
    "DEFAULT_STORE_DIR",
    "DEFAULT_VERSION_COMMAND",
    "ENV_PREFIX",
    "LEGACY_ENV_PREFIX",
    "LOG_LEVELS",
    "MAX_SANDBOX_CLUSTER",
    "MAX_SANDBOX_HOSTS",
    "MIN_SANDBOX_HOSTS",
    "NATS_LAYOUTS",
    "REBUILD_RUNNERS",
    "RESTART_EXIT_STATUS",
    "Command",
    "NatsLayout",
    "Option",
    "add_arguments",
    "command",
    "legacy_env_table",
    "markdown_table",
]

ENV_PREFIX = "FLEET_DEPLOY_"
# homelab-deploy's prefix: an option with ``legacy_env`` falls back to HOMELAB_DEPLOY_<NAME>,
# so that its users switch over without renaming their variables.
LEGACY_ENV_PREFIX = "HOMELAB_DEPLOY_"
LOG_LEVELS = ("debug", "info", "warning", "error")
# `check` and `cancel` are commands of their own, not deploy actions.
ACTIONS = tuple(a.value for a in REBUILD_ACTIONS)
HOST_KINDS = tuple(k.value for k in HostKind)
TIERS = tuple(t.value for t in Tier)

DEFAULT_LISTENER_TIMEOUT = 600.0
DEFAULT_DEPLOY_TIMEOUT = 900.0
DEFAULT_LOGS_ANSWER_WITHIN = 10.0  # seconds for a host to answer one log request
DEFAULT_MAX_FAILURES = 0  # a rollout stops at the first failed host unless told otherwise
DEFAULT_REBUILD_COMMAND = "nixos-rebuild"
DEFAULT_SYSTEM_PROFILE = Path("/nix/var/nix/profiles/system")
DEFAULT_CURRENT_SYSTEM = Path("/run/current-system")
DEFAULT_BOOTED_SYSTEM = Path("/run/booted-system")
# What a listener runs to learn its host's version and configuration revision (host facts).
DEFAULT_VERSION_COMMAND = "nixos-version --json"
DEFAULT_DARWIN_VERSION_COMMAND = "darwin-version --json"
DEFAULT_NIX_ENV_COMMAND = "nix-env"
DEFAULT_SYSTEMCTL_COMMAND = "systemctl"
# What a closure deploy fetches with (nix-store --realise PATH), and where the store lies.
DEFAULT_NIX_STORE_COMMAND = "nix-store"
DEFAULT_STORE_DIR = Path(STORE_DIR)
DEFAULT_CONFIRM_TIMEOUT = 120.0  # seconds a new system has to reach NATS before rollback
SYSTEM_RUNNING_CHECK = "system-running"  # the built-in health check (host.jobs.activation)
DEFAULT_STATE_DIR = Path("/var/lib/fleet-deploy")
DEFAULT_REBUILD_RUNNER = "auto"
REBUILD_RUNNERS = ("auto", "systemd", "session")
RESTART_EXIT_STATUS = 75  # EX_TEMPFAIL: "restart me"; the NixOS unit restarts on it
DEFAULT_REQUEST_TTL = (
    60.0  # seconds a signed deploy request stays valid (fleet_core.protocol.signing)
)
DEFAULT_REQUEST_SKEW = 30.0  # seconds of clock difference a listener tolerates either way
DEFAULT_LOG_LEVEL = "info"
# The protocol's promise: a running job's progress at least this often (docs/protocol.md).
DEFAULT_HEARTBEAT_INTERVAL = 10.0
# A deployer asks after a host silent this long (fleet_core.deploy.tracker): 3.5 heartbeats.
DEFAULT_SILENCE_LIMIT = 3.5 * DEFAULT_HEARTBEAT_INTERVAL
# homelab-deploy's metrics address: every address of this host, port 9972.
DEFAULT_METRICS_ADDR = ":9972"
# Seconds between SIGTERM and SIGKILL when a rebuild's or a nix step's process group is
# stopped (fleet_core.processes), and after SIGKILL.
DEFAULT_KILL_GRACE = 5.0
DEFAULT_MCP_HEARTBEAT = 5.0  # progress at least this often; the promise to clients is 10 s
DEFAULT_SANDBOX_HOSTS = 6
MIN_SANDBOX_HOSTS = 3  # a test host that deploys, one that fails, and a prod host to refuse
MAX_SANDBOX_HOSTS = 50
DEFAULT_SANDBOX_PORT = 4222
DEFAULT_SANDBOX_CLUSTER = 1  # one nats-server; more are routed into a cluster
MAX_SANDBOX_CLUSTER = 5
DEFAULT_SIM_DELAY = 0.15
# The dashboard (docs/dashboard.md): this machine only unless told otherwise.
DEFAULT_DASHBOARD_HOST = "127.0.0.1"
DEFAULT_DASHBOARD_PORT = 8420
DEFAULT_DASHBOARD_REFRESH = 30.0  # seconds between two discoveries of the host rows
DEFAULT_NIX_COMMAND = "nix"
DEFAULT_BUILD_STEP_TIMEOUT = 3600.0  # one host's closure from scratch can take long
DEFAULT_BUILD_TIMEOUT = 7200.0  # a whole fleet's build, as the build command waits for it
# History (docs/history.md): the streams keep whichever is smaller. A deploy of one host is
# ~6 messages; discovery answers (~1 KiB a host) are captured too, and are most of it.
DEFAULT_HISTORY_MAX_AGE = 90 * 86400.0  # seconds
DEFAULT_HISTORY_MAX_MSGS = 1_000_000
DEFAULT_HISTORY_MAX_BYTES = 1024**3
DEFAULT_HISTORY_REPLICAS = 1  # 3 on a cluster of 3 or more servers
DEFAULT_HISTORY_LIMIT = 20  # deployments history lists
DEFAULT_JETSTREAM_DIR = "/var/lib/nats/jetstream"  # what nats-config writes into jetstream {}
# nats-config's layouts (fleet_core.setup.nats_config): replies bound to their sender, or
# homelab-deploy's published example.
NatsLayout = Literal["bound", "homelab"]
NATS_LAYOUTS: tuple[NatsLayout, ...] = ("bound", "homelab")
DEFAULT_NATS_LAYOUT: NatsLayout = "bound"

Kind = Literal["value", "list", "switch", "positional"]


@dataclass(frozen=True, slots=True)
class Option:
    """One setting of one command.

    ``name`` is the attribute the parsed flags carry (``nats_url``); the flag is derived
    from it (``--nats-url``) and, when ``env`` is true, so is the variable
    (``FLEET_DEPLOY_NATS_URL``). ``legacy_env`` says homelab-deploy reads the same setting,
    with the same meaning, from ``HOMELAB_DEPLOY_<NAME>``: that variable is the fallback when
    ours is unset. ``default`` is the constant the settings fall back to; ``shown_default``
    is for a default that is not one value (``$STATE_DIRECTORY or …``).
    """

    name: str
    help: str
    default: object = None
    env: bool = True
    kind: Kind = "value"
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    required: bool = False
    shown_default: str | None = None
    short: str | None = None
    legacy_env: bool = False
    # The variable's name after the prefix when it is not the option's: a dashboard's key
    # must not come from the FLEET_DEPLOY_NKEY_FILE a shell set for deploying.
    env_name: str | None = None

    def __post_init__(self) -> None:
        assert self.env or not self.legacy_env, f"{self.name}: a fallback needs a variable"

    @property
    def flag(self) -> str:
        return self.name if self.kind == "positional" else "--" + self.name.replace("_", "-")

    @property
    def variable(self) -> str | None:
        return ENV_PREFIX + (self.env_name or self.name).upper() if self.env else None

    @property
    def legacy_variable(self) -> str | None:
        """homelab-deploy's variable for this setting, read when ``variable`` is unset."""
        return LEGACY_ENV_PREFIX + self.name.upper() if self.legacy_env else None

    @property
    def variables(self) -> tuple[str, ...]:
        """The variables read for this option, the one that wins first."""
        return tuple(v for v in (self.variable, self.legacy_variable) if v is not None)

    @property
    def default_text(self) -> str | None:
        """The default as a person reads it, from the constant; None when there is none."""
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None or self.kind == "switch":
            return None
        if isinstance(self.default, float) and self.default.is_integer():
            return str(int(self.default))
        if isinstance(self.default, tuple):
            return " ".join(str(item) for item in self.default)
        return str(self.default)

    def help_text(self) -> str:
        """What ``--help`` says: the help, the variable, and the default or "required"."""
        text = self.help
        if self.choices is not None and self.metavar is not None:
            text += f": one of {', '.join(self.choices)}"
        if self.variable is not None:
            text += f" [env {self.variable}]"
        if self.required:
            text += " (required)"
        elif self.default_text is not None:
            text += f" (default: {self.default_text})"
        return text.replace("%", "%%")  # argparse formats help with %


@dataclass(frozen=True, slots=True)
class Command:
    """A subcommand: its one-line help, its description (``--help``) and its options."""

    name: str
    help: str
    description: str
    options: tuple[Option, ...]


def add_arguments(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Add ``options`` to ``parser``; every value stays text (or None when not given)."""
    for option in options:
        if option.kind == "positional":
            # One with a default (or a said one) may be left off.
            nargs = "?" if option.default_text is not None else None
            parser.add_argument(
                option.name, metavar=option.metavar, nargs=nargs, help=option.help_text()
            )
            continue
        flags = [option.flag, *([option.short] if option.short else [])]
        if option.kind == "switch":
            parser.add_argument(
                *flags, dest=option.name, action="store_true", default=None, help=option.help_text()
            )
            continue
        parser.add_argument(
            *flags,
            dest=option.name,
            action="append" if option.kind == "list" else "store",
            metavar=option.metavar,
            choices=option.choices,
            help=option.help_text(),
        )


def markdown_table(options: Sequence[Option]) -> str:
    """The options as the Markdown table ``docs/cli.md`` shows for a command."""
    rows = ["| flag | variable | default | meaning |", "|---|---|---|---|"]
    for option in options:
        flag = option.flag if option.metavar is None else f"{option.flag} {option.metavar}"
        if option.kind == "positional":
            flag = option.metavar or option.name
        variable = f"`{option.variable}`" if option.variable else ""
        if option.required:
            default = "required"
        elif option.default_text is not None:
            default = f"`{option.default_text}`"
        else:
            default = ""
        meaning = option.help + (f": one of {', '.join(option.choices)}" if option.choices else "")
        meaning = meaning.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        rows.append(f"| `{flag}` | {variable} | {default} | {meaning} |")
    return "\n".join(rows)


def legacy_env_table(commands: Sequence[Command]) -> str:
    """The Markdown table of homelab-deploy's variables and the ones they stand in for.

    One row per variable (an option shared by several commands is one row), in the order
    the commands declare them, and the aliases last.
    """
    used: dict[tuple[str, str], list[str]] = {}
    for declared in commands:
        for option in declared.options:
            if option.variable is not None and option.legacy_variable is not None:
                used.setdefault((option.variable, option.legacy_variable), []).append(declared.name)
    rows = [
        "| variable | falls back to | read by |",
        "|---|---|---|",
        *(
            f"| `{ours}` | `{theirs}` | {', '.join(f'`{name}`' for name in names)} |"
            for (ours, theirs), names in used.items()
        ),
        f"| `{ALIAS_ENV_PREFIX}<NAME>` | `{LEGACY_ALIAS_ENV_PREFIX}<NAME>` | `deploy` |",
    ]
    return "\n".join(rows)


# -- shared ----------------------------------------------------------------------------------

NATS_URL = Option(
    "nats_url",
    "NATS server URL; several servers of one cluster separated by commas "
    "(nats://a:4222,nats://b:4222), each nats://, tls:// or HOST:PORT",
    metavar="URL[,URL]",
    required=True,
    legacy_env=True,
)
NKEY_FILE = Option(
    "nkey_file", "NKey seed file, mode 0600", metavar="PATH", required=True, legacy_env=True
)
JSON = Option("json", "print JSON instead of a table", env=False, kind="switch")
LOG_LEVEL = Option(
    "log_level", "log level", default=DEFAULT_LOG_LEVEL, choices=LOG_LEVELS, metavar="LEVEL"
)

# -- listener --------------------------------------------------------------------------------

LISTENER = Command(
    "listener",
    "run the deploy listener on a NixOS host (or a nix-darwin or Home Manager one)",
    "Subscribe to this host's deploy subjects, run nixos-rebuild for each valid request "
    "(one at a time) and stream its status to the requester. With --host-kind darwin or "
    "home-manager it runs darwin-rebuild or home-manager instead.\n\n"
    "Subjects default to deploy.<tier>.<hostname>, deploy.<tier>.all and "
    "deploy.<tier>.role.<role> (the last only with --role).",
    (
        Option("hostname", "this host's name in subjects", metavar="NAME", required=True),
        Option("tier", "deployment tier", choices=TIERS, metavar="TIER", required=True),
        NATS_URL,
        NKEY_FILE,
        Option(
            "flake_url",
            "flake to deploy, without #host; required unless --flake-url-file is given. A "
            "command line is public (/proc): give a URL with a token in the variable or a file",
            metavar="URL",
        ),
        Option(
            "flake_url_file",
            "file holding the flake URL instead, read once at start: keeps a token "
            "(git+https://user:TOKEN@…) off the command line",
            metavar="PATH",
        ),
        Option("role", "role for deploy.<tier>.role.<role> targeting", metavar="ROLE"),
        Option(
            "host_kind",
            "what this host is, and so what a deploy runs: nixos-rebuild (nixos), "
            "darwin-rebuild (darwin) or home-manager (home-manager); darwin-rebuild and Home "
            "Manager have no boot or test, so those actions are rejected",
            default=DEFAULT_HOST_KIND.value,
            choices=HOST_KINDS,
            metavar="KIND",
        ),
        Option(
            "configuration",
            "the flake attribute to build, <flake-url>#<NAME>: letters, digits and . _ - @ "
            "(Home Manager's are often user@host)",
            metavar="NAME",
            shown_default="the hostname",
        ),
        Option(
            "timeout",
            "deadline of one rebuild, in seconds",
            default=DEFAULT_LISTENER_TIMEOUT,
            metavar="SECONDS",
        ),
        Option(
            "deploy_subject",
            "subject template to subscribe to, repeatable; <hostname>, <tier> and <role> are "
            "expanded",
            default=DEFAULT_DEPLOY_SUBJECTS,
            env=False,
            kind="list",
            metavar="TEMPLATE",
        ),
        Option(
            "discover_subject", "discovery subject", default=DISCOVER_SUBJECT, metavar="SUBJECT"
        ),
        Option(
            "rebuild_command",
            "rebuild program and fixed arguments, split like a shell would but never run by one",
            default=DEFAULT_REBUILD_COMMAND,
            shown_default="nixos-rebuild, darwin-rebuild or home-manager, as --host-kind says",
            metavar="CMD",
        ),
        Option(
            "state_dir",
            "where job records and logs are kept",
            default=DEFAULT_STATE_DIR,
            shown_default=f"$STATE_DIRECTORY, else {DEFAULT_STATE_DIR}",
            metavar="DIR",
        ),
        Option(
            "rebuild_runner",
            "how a rebuild is run outside the listener, so that stopping the listener never "
            "stops it: systemd (a transient unit via systemd-run), session (a session of its "
            "own), or auto (systemd when the listener is a root service of a systemd system, "
            "or a home-manager listener's user service under systemd --user, whose rebuilds "
            "then run in the user's own service manager: systemd-run --user)",
            default=DEFAULT_REBUILD_RUNNER,
            choices=REBUILD_RUNNERS,
            metavar="MODE",
        ),
        Option(
            "trusted_deployer_key",
            "public key (U…) of a deployer allowed to deploy to this host; repeatable, "
            "comma-separated in the variable. Given any, a request must be signed by one of "
            "them (unsigned, forged, expired and replayed requests are rejected); given none, "
            "unsigned requests are accepted",
            kind="list",
            metavar="KEY",
        ),
        Option(
            "request_ttl",
            "how long a signed request stays valid after it was signed, in seconds "
            f"({DEFAULT_REQUEST_SKEW:g} s of clock difference are allowed on top)",
            default=DEFAULT_REQUEST_TTL,
            metavar="SECONDS",
        ),
        Option(
            "restart_if_changed",
            "after a switch or test that changed this file, report, then exit "
            f"{RESTART_EXIT_STATUS} for the service manager to restart the listener; "
            "repeatable (the NixOS module passes the listener's own unit file)",
            env=False,
            kind="list",
            metavar="PATH",
        ),
        Option(
            "no_rollback",
            "never re-activate the previous system: after a switch or test, health checks still "
            "run and are reported, but a failed one (or a failed activation) is only reported",
            kind="switch",
        ),
        Option(
            "health_checks",
            "JSON file of the health checks to run after a switch or test: a list of "
            '{"name", "command": [argv…], "timeout"} or {"name", "builtin": "system-running", '
            '"ignore_units": […], "timeout"} (the NixOS module writes it)',
            metavar="FILE",
        ),
        Option(
            "confirm_timeout",
            "after a switch or test, how long the new system has to reach NATS again (and "
            "pass its checks) before the previous one is re-activated, in seconds",
            default=DEFAULT_CONFIRM_TIMEOUT,
            metavar="SECONDS",
        ),
        Option(
            "system_profile",
            "the system profile a switch or boot changes, and a rollback sets back; discovery "
            "reports its generation (on a Home Manager host: the home-manager profile)",
            default=DEFAULT_SYSTEM_PROFILE,
            shown_default=f"{DEFAULT_SYSTEM_PROFILE}; on a Home Manager host, its profile in "
            "$XDG_STATE_HOME/nix/profiles (~/.local/state/nix/profiles)",
            env=False,
            metavar="PATH",
        ),
        Option(
            "current_system",
            "the link to the running system, recorded before a switch or test, and reported "
            "by discovery",
            default=DEFAULT_CURRENT_SYSTEM,
            env=False,
            metavar="PATH",
        ),
        Option(
            "booted_system",
            "the link to the system that was booted: discovery reports needs_reboot when its "
            "kernel, initrd or kernel modules differ from the running system's (NixOS only)",
            default=DEFAULT_BOOTED_SYSTEM,
            env=False,
            metavar="PATH",
        ),
        Option(
            "version_command",
            "what discovery runs to report the host's version and configuration revision "
            "(once per change of the running system, no shell, at most 10 s): a program "
            "printing the JSON of nixos-version --json; split like a shell would, never run "
            "by one",
            default=DEFAULT_VERSION_COMMAND,
            shown_default=f"{DEFAULT_VERSION_COMMAND}; on nix-darwin "
            f"{DEFAULT_DARWIN_VERSION_COMMAND}; none on Home Manager",
            env=False,
            metavar="CMD",
        ),
        Option(
            "nix_env_command",
            "nix-env, as a rollback runs it (nix-env --profile P --set PATH), split like a shell "
            "would but never run by one",
            default=DEFAULT_NIX_ENV_COMMAND,
            env=False,
            metavar="CMD",
        ),
        Option(
            "systemctl_command",
            "systemctl, as the system-running health check runs it",
            default=DEFAULT_SYSTEMCTL_COMMAND,
            env=False,
            metavar="CMD",
        ),
        Option(
            "nix_store_command",
            "nix-store, as a closure deploy fetches its store path (nix-store --realise PATH: "
            "from the host's own substituters, their signatures checked), split like a shell "
            "would but never run by one",
            default=DEFAULT_NIX_STORE_COMMAND,
            env=False,
            metavar="CMD",
        ),
        Option(
            "store_dir",
            "where this host's Nix store lies: a closure deploy checks and activates the "
            "fetched path there",
            default=DEFAULT_STORE_DIR,
            env=False,
            metavar="DIR",
        ),
        Option(
            "heartbeat_interval",
            "while a deploy runs, send its progress at least this often, in seconds; keep it "
            f"well below {DEFAULT_SILENCE_LIMIT:g}, after which deployers ask a silent host "
            "whether it is still at the job",
            default=DEFAULT_HEARTBEAT_INTERVAL,
            metavar="SECONDS",
        ),
        LOG_LEVEL,
        Option("debug", "log at debug level: the same as --log-level debug", kind="switch"),
        Option(
            "metrics_enabled",
            "serve Prometheus metrics over HTTP at /metrics (see --metrics-addr)",
            kind="switch",
        ),
        Option(
            "metrics_addr",
            "where to serve metrics: HOST:PORT, or :PORT for every address of this host",
            default=DEFAULT_METRICS_ADDR,
            metavar="[HOST]:PORT",
        ),
    ),
)

# -- deploy and hosts ------------------------------------------------------------------------

# Deploy and check: hosts that must answer even if discovery misses them.
EXPECT = Option(
    "expect",
    "hosts that must answer even if discovery misses them (then reported missing); repeatable",
    env=False,
    kind="list",
    metavar="HOST[,HOST]",
)

DEPLOY = Command(
    "deploy",
    "deploy to a host, a tier or a role and wait for every result",
    "Publish a deploy request and gather every host's result.\n\n"
    "TARGET is deploy.<tier>.<host>, deploy.<tier>.all, deploy.<tier>.role.<role>,\n"
    f"or an alias defined as {ALIAS_ENV_PREFIX}<NAME>=<subject> (NAME upper-cased, - as _;\n"
    f"{LEGACY_ALIAS_ENV_PREFIX}<NAME> when that is unset).\n\n"
    "With --canary or --batch a group is deployed in steps, by host name (or\n"
    "--shuffle): the canary hosts, then batches; once more than --max-failures hosts\n"
    "failed, no further batch starts and the hosts not attempted end skipped.\n"
    "--timeout then bounds each batch.\n\n"
    "Closure deploys (no evaluation on the hosts): --build REPO has the builder build\n"
    "the target's hosts from one pinned commit of --branch, and sends each host its own\n"
    "system; --from-build BUILD_ID sends those of a recorded build; --store-path PATH\n"
    "sends one host the system given. A host whose build failed is sent nothing,\n"
    "and with --max-failures it counts against the budget before the first batch.\n\n"
    "Exit status: 0 every host completed; 1 a host failed, was rejected, missing,\n"
    "lost, timed out or skipped; 2 usage, key, connection or permission error.",
    (
        Option("target", "deploy subject or alias", env=False, kind="positional", metavar="TARGET"),
        NATS_URL,
        NKEY_FILE,
        Option(
            "branch",
            "branch, tag or full commit to deploy",
            default=DEFAULT_REVISION,
            metavar="REV",
            legacy_env=True,
        ),
        Option(
            "action",
            "nixos-rebuild action",
            default=DEFAULT_ACTION.value,
            choices=ACTIONS,
            metavar="ACTION",
            legacy_env=True,
        ),
        Option(
            "timeout",
            "how long to wait for every result once the request is out, in seconds (with "
            "--canary or --batch: for each batch, from its publish)",
            default=DEFAULT_DEPLOY_TIMEOUT,
            metavar="SECONDS",
            legacy_env=True,
        ),
        EXPECT,
        # The rollout's flags have no variable: one set for every deploy would make each
        # single-host deploy a usage error.
        Option(
            "canary",
            "a group in steps: deploy K hosts first (the canary batch), and the rest only "
            "once they are all final and the failure budget holds",
            env=False,
            metavar="K",
        ),
        Option(
            "batch",
            "a group in steps: then N hosts at a time, or N% of the target's hosts (rounded "
            "up); a batch starts only once the one before is final",
            env=False,
            metavar="N[%]",
            shown_default="the rest at once",
        ),
        Option(
            "max_failures",
            "with --canary or --batch: once more than F hosts have failed, start no further "
            "batch; every host not attempted ends skipped",
            default=DEFAULT_MAX_FAILURES,
            env=False,
            metavar="F",
        ),
        Option(
            "shuffle",
            "with --canary or --batch: a random host order instead of by name (its seed is "
            "in the result)",
            env=False,
            kind="switch",
        ),
        Option(
            "no_rollback",
            "ask the hosts not to re-activate their previous system after a failed "
            "activation, health check or confirmation: they only report it",
            env=False,
            kind="switch",
        ),
        # A closure deploy's source: one of these three, none with a variable (one set for
        # every deploy would turn each into a closure deploy).
        Option(
            "build",
            "a closure deploy: the builder of repository REPO builds the target's hosts from "
            "one pinned commit of --branch, then each host is sent its own system and "
            "switches to exactly that (docs/closures.md)",
            env=False,
            metavar="REPO",
        ),
        Option(
            "from_build",
            "a closure deploy of a build that ran before (its id, as build prints it), read "
            "from the builds stream: needs the admin key",
            env=False,
            metavar="BUILD_ID",
        ),
        Option(
            "store_path",
            "a closure deploy to one host: send it this system, a store path of its own "
            "(nixos-system-<host>-…), e.g. to pin it back to a known-good one",
            env=False,
            metavar="PATH",
        ),
        Option(
            "build_timeout",
            "with --build: how long the build may take once it is asked for, in seconds",
            default=DEFAULT_BUILD_TIMEOUT,
            env=False,
            metavar="SECONDS",
        ),
        replace(JSON, help="print one JSON result object instead of a table"),
    ),
)

CHECK = Command(
    "check",
    "run the hosts' health checks now, on the systems they run, and gather the results",
    "Ask the hosts of TARGET to run their health checks (the ones a switch runs before\n"
    "it may stand: services.fleet-deploy.listener.healthChecks) on the system they run\n"
    "now, without a rebuild, and print each check's result.\n\n"
    "TARGET is deploy.<tier>.<host>, deploy.<tier>.all, deploy.<tier>.role.<role>, or an\n"
    "alias, as for deploy; a check is sent as deploy is, so a key checks where it may\n"
    "deploy.\n\n"
    "Exit status: 0 every host passed every check; 1 a check failed or a host did not\n"
    "answer; 2 usage, key, connection or permission error.",
    (
        Option("target", "deploy subject or alias", env=False, kind="positional", metavar="TARGET"),
        NATS_URL,
        NKEY_FILE,
        Option(
            "timeout",
            "how long to wait for every result once the request is out, in seconds",
            default=DEFAULT_DEPLOY_TIMEOUT,
            env=False,
            metavar="SECONDS",
        ),
        EXPECT,
        replace(JSON, help="print one JSON result object instead of a table"),
    ),
)

CANCEL = Command(
    "cancel",
    "stop a deployment: the rebuilds still building, and what has not started",
    "Send a signed cancel of DEPLOYMENT_ID (the id a deploy prints) to the hosts of each\n"
    "tier this key may deploy to (or to --host there). A host whose job of it is still\n"
    "building stops it, and that job ends failed/cancelled; one already activating its\n"
    "new system is not interrupted (it says so) and ends as it ends; every host that\n"
    "heard the cancel refuses that deployment from now on, so the later batches of a\n"
    "rollout are refused. A key cancels only where it may deploy.\n\n"
    "Exit status: 0 every host that answered stopped its job or will refuse the\n"
    "deployment; 1 a host was already activating or finished, or none answered; 2\n"
    "usage, key, connection or permission error.",
    (
        Option(
            "deployment_id",
            "the deployment's id, as deploy printed it",
            env=False,
            kind="positional",
            metavar="DEPLOYMENT_ID",
        ),
        NATS_URL,
        NKEY_FILE,
        Option("host", "only this host", env=False, metavar="HOST"),
        Option(
            "tier",
            "only this tier",
            env=False,
            choices=TIERS,
            metavar="TIER",
            shown_default="every tier this key may deploy to",
        ),
        JSON,
    ),
)

HOSTS = Command(
    "hosts",
    "discover the listening hosts",
    "Ask every listener to announce itself and print them as a table.",
    (
        NATS_URL,
        NKEY_FILE,
        Option("tier", "only hosts of this tier", env=False, choices=TIERS, metavar="TIER"),
        JSON,
    ),
)

STATUS = Command(
    "status",
    "what every host runs: behind, needs a reboot, last deploy and its outcome",
    "Discover the hosts of TARGET (a deploy subject or alias; every host this key may\n"
    "read without one) and print a row per host from the facts each measures: the\n"
    "configuration revision it runs, whether it is behind, whether it needs a reboot,\n"
    "its last deploy and outcome, and its listener's version (marked outdated when older\n"
    "than this CLI).\n\n"
    "Behind is against --revision, else against the revision last deployed to the\n"
    "target's hosts (the newest switch, boot or test among their last jobs); the output\n"
    "says which.\n\n"
    "Exit status: 0 every host is at the revision and healthy (its last deploy did not\n"
    "fail, no reboot is pending); 1 otherwise, or when no host answered; 2 usage, key,\n"
    "connection or permission error (a key that may not read the target's tier at all).",
    (
        Option(
            "target",
            "only the hosts of this deploy subject or alias",
            env=False,
            kind="positional",
            metavar="TARGET",
            shown_default="every host this key may read",
        ),
        NATS_URL,
        NKEY_FILE,
        Option(
            "revision",
            "the revision every host should run: a branch, tag or commit, as deployed",
            env=False,
            metavar="REV",
            shown_default="the revision last deployed to the target",
        ),
        JSON,
    ),
)

# -- history ---------------------------------------------------------------------------------

INVENTORY = Option(
    "inventory",
    "a TOML inventory (as nats-config reads): names the keys that signed each deployment",
    metavar="FILE",
    shown_default="the seeds beside --nkey-file name theirs",
)
HISTORY_TIER = Option(
    "tier",
    "only this tier",
    env=False,
    choices=TIERS,
    metavar="TIER",
    shown_default="every tier this key may read",
)

HISTORY = Command(
    "history",
    "list recent deployments: who, what, where, and how each host ended",
    "List the newest deployments, newest first, from the tiers' history streams in\n"
    "JetStream (docs/history.md): id, the key that signed it (named from --inventory or\n"
    "the seeds beside --nkey-file), target, action, revision, each host's outcome and\n"
    "the duration. TARGET (a deploy subject or alias) or --host narrows the list. A key\n"
    "reads only the tiers the NATS server lets it read: the test key, the test tier.\n\n"
    "Without JetStream (homelab-deploy's layout, or streams never created) the list comes\n"
    "from the hosts' own job records, through discovery, and says so.\n\n"
    "--setup creates the history streams, or brings them to the retention given (admin\n"
    "key; idempotent: run it again after changing a limit).\n\n"
    "Exit status: 0 listed (or set up); 2 usage, key, connection or permission error.",
    (
        Option(
            "target",
            "only deployments to this subject or alias (a host's: also group deploys it was in)",
            env=False,
            kind="positional",
            metavar="TARGET",
            shown_default="every deployment",
        ),
        NATS_URL,
        NKEY_FILE,
        Option("host", "only deployments that reached this host", env=False, metavar="HOST"),
        HISTORY_TIER,
        Option(
            "limit",
            "list at most this many deployments",
            default=DEFAULT_HISTORY_LIMIT,
            env=False,
            metavar="N",
        ),
        INVENTORY,
        Option(
            "setup",
            "create or update the history streams with the retention below, then exit",
            env=False,
            kind="switch",
        ),
        Option(
            "max_age",
            "with --setup: keep history this long, in seconds (a day is 86400; the "
            "default, 90 days)",
            default=DEFAULT_HISTORY_MAX_AGE,
            env=False,
            metavar="SECONDS",
        ),
        Option(
            "max_msgs",
            "with --setup: keep at most this many messages per tier",
            default=DEFAULT_HISTORY_MAX_MSGS,
            env=False,
            metavar="N",
        ),
        Option(
            "max_bytes",
            "with --setup: keep at most this many bytes per tier",
            default=DEFAULT_HISTORY_MAX_BYTES,
            env=False,
            metavar="BYTES",
        ),
        Option(
            "replicas",
            "with --setup: copies of each stream, on that many servers of a cluster (3 survives "
            "the loss of one)",
            default=DEFAULT_HISTORY_REPLICAS,
            env=False,
            metavar="N",
        ),
        JSON,
    ),
)

DEPLOYMENT_ID = Option(
    "deployment_id",
    "the deployment's id, as deploy and history print it",
    env=False,
    kind="positional",
    metavar="DEPLOYMENT_ID",
)

SHOW = Command(
    "show",
    "show one deployment: each host's final status and log tail",
    "Print the deployment DEPLOYMENT_ID from the history streams: who signed it, its\n"
    "targets, action and revision, and for each host its final status, error, message\n"
    "and the last lines of its log (escaped: text from a host is shown, never obeyed).\n"
    "Without JetStream it asks the hosts for their record of that job instead.\n\n"
    "Exit status: 0 found; 1 no record of it; 2 usage, key, connection or permission\n"
    "error.",
    (
        DEPLOYMENT_ID,
        NATS_URL,
        NKEY_FILE,
        HISTORY_TIER,
        INVENTORY,
        JSON,
    ),
)

LOGS = Command(
    "logs",
    "print a job's whole log, streamed from its host in chunks",
    "Read the whole output of the job of DEPLOYMENT_ID on --host from that host's job\n"
    "directory (it keeps its newest jobs), one bounded chunk after another, and write it\n"
    "as it comes: memory stays flat whatever the log's size. Each chunk is a signed\n"
    "request on the host's own subject deploy.<tier>.<host>, so a key reads the logs of\n"
    "exactly the hosts it may deploy to. Control characters in the log are shown\n"
    "escaped; --json writes each chunk as one JSON object per line, text exact.\n\n"
    "With --follow it keeps reading while the job runs, until it ends.\n\n"
    "Exit status: 0 the log was read (with --follow: the job ended and all of it was\n"
    "read); 1 the host keeps no job of that id; 2 usage, key, connection or permission\n"
    "error, a refusal, a listener too old to send logs, or no answer.",
    (
        DEPLOYMENT_ID,
        NATS_URL,
        NKEY_FILE,
        Option("host", "the host whose job to read", env=False, metavar="HOST", required=True),
        Option(
            "tier",
            "the host's tier",
            default=Tier.TEST.value,
            env=False,
            choices=TIERS,
            metavar="TIER",
        ),
        Option(
            "follow",
            "keep reading while the job runs, until it ends",
            env=False,
            kind="switch",
        ),
        Option(
            "offset",
            "start at this byte of the log (where an interrupted read stopped)",
            default=0,
            env=False,
            metavar="BYTES",
        ),
        Option(
            "timeout",
            "how long to wait for the host's answer to each chunk, in seconds",
            default=DEFAULT_LOGS_ANSWER_WITHIN,
            env=False,
            metavar="SECONDS",
        ),
        replace(JSON, help="print each chunk as one JSON object per line"),
    ),
)

# -- builds ----------------------------------------------------------------------------------

BUILDER = Command(
    "builder",
    "build the fleet's system closures once, on a build host",
    "Answer build requests on build.<repo>.<host> and build.<repo>.all, one at a\n"
    "time: fetch the revision once (pinned to its commit), list the flake's\n"
    "nixosConfigurations, nix build each requested host's\n"
    "config.system.build.toplevel and, with --cache, nix copy it to that binary cache,\n"
    "streaming every step's status to the requester. Hosts that use the cache as a\n"
    "substituter then download their systems instead of building them.\n\n"
    "  fleet-deploy builder --repo nixos-servers=git+https://git.example.com/nixos.git \\\n"
    "      --cache s3://nix-cache?region=eu-west-1 --nats-url nats://nats:4222 \\\n"
    "      --nkey-file /run/keys/builder.seed",
    (
        Option(
            "repo",
            "a repository to build, as NAME=FLAKE_URL (the flake without #host); NAME is the "
            "<repo> of build.<repo>.*; repeatable, comma-separated in the variable. A command "
            "line is public (/proc): give a URL with a token in --repos-file",
            kind="list",
            metavar="NAME=URL",
        ),
        Option(
            "repos_file",
            'TOML file of more repositories, one NAME = "FLAKE_URL" per line under [repos]: '
            "keeps a token off the command line",
            metavar="PATH",
        ),
        Option(
            "cache",
            "binary cache to nix copy each built closure to (a nix store URL, e.g. "
            "s3://bucket?region=eu-west-1 or ssh-ng://cache.example.com)",
            metavar="STORE_URL",
            shown_default="none: build only",
        ),
        Option(
            "name",
            "this builder's name in statuses and logs",
            metavar="NAME",
            shown_default="this machine's hostname",
        ),
        NATS_URL,
        NKEY_FILE,
        Option(
            "timeout",
            "deadline of one nix step (fetching, listing, one host's build, one copy), in seconds",
            default=DEFAULT_BUILD_STEP_TIMEOUT,
            metavar="SECONDS",
        ),
        Option(
            "nix_command",
            "nix program and fixed arguments, split like a shell would but never run by one",
            default=DEFAULT_NIX_COMMAND,
            metavar="CMD",
        ),
        Option(
            "heartbeat_interval",
            "while a build runs, send its progress at least this often, in seconds",
            default=DEFAULT_HEARTBEAT_INTERVAL,
            metavar="SECONDS",
        ),
        LOG_LEVEL,
        Option("debug", "log at debug level: the same as --log-level debug", kind="switch"),
    ),
)

BUILD = Command(
    "build",
    "ask the builder to build hosts' system closures and wait for every result",
    "Publish a build request to build.<REPO>.<TARGET> and follow it: the builder\n"
    "pins the revision to its commit, builds each host's system closure and copies it\n"
    "to its binary cache, so that a deploy afterwards downloads instead of building.\n"
    "TARGET is a host (a nixosConfiguration of the flake) or all.\n\n"
    "  fleet-deploy build nixos-servers all --branch main\n\n"
    "Exit status: 0 every host built (and copied); 1 a host failed, the build was\n"
    "rejected, no builder answered or it fell silent; 2 usage, key, connection or\n"
    "permission error.",
    (
        Option(
            "repo",
            "repository name the builder knows",
            env=False,
            kind="positional",
            metavar="REPO",
        ),
        Option(
            "target",
            "a host to build, or all",
            default="all",
            env=False,
            kind="positional",
            metavar="TARGET",
        ),
        NATS_URL,
        NKEY_FILE,
        Option(
            "branch",
            "branch, tag or full commit to build",
            default=DEFAULT_REVISION,
            metavar="REV",
            legacy_env=True,
        ),
        Option(
            "timeout",
            "how long to wait for the whole build once the request is out, in seconds",
            default=DEFAULT_BUILD_TIMEOUT,
            metavar="SECONDS",
        ),
        replace(JSON, help="print one JSON result object instead of lines"),
    ),
)

# -- setting up ------------------------------------------------------------------------------

KEYGEN = Command(
    "keygen",
    "create an NKey user seed (mode 0600) and print its public key",
    "Write a new NKey user seed to DIR/NAME.seed with mode 0600 (an existing file is\n"
    "never overwritten) and print its public key on stdout — the key that goes into\n"
    "the inventory for nats-config. The seed is the secret: it never leaves the file.\n"
    "With --public FILE, write nothing: print the public key of the seed in FILE.\n\n"
    "  fleet-deploy keygen web1 --dir /run/keys     # one per host and per deployer\n"
    "  fleet-deploy keygen --public /run/keys/web1.seed   # its public key, again",
    (
        Option(
            "name",
            "key name: the file becomes NAME.seed",
            env=False,
            kind="positional",
            metavar="NAME",
            shown_default="none; leave it out with --public",
        ),
        Option(
            "public",
            "print the public key of this existing seed file and write nothing",
            env=False,
            metavar="FILE",
        ),
        Option(
            "dir",
            "where to write it",
            default=".",
            env=False,
            metavar="DIR",
            shown_default="the current directory",
        ),
    ),
)

NATS_CONFIG = Command(
    "nats-config",
    "write the NATS authorization block for a TOML inventory",
    "Turn an inventory into nats-server's authorization block with the tiered\n"
    "permissions: one permission block per host (NATS permission templates do not\n"
    "work for nkey users), a test deployer that reaches only deploy.test.>, and an\n"
    "admin deployer that reaches everything.\n\n"
    "The output is a complete config: `nats-server -c FILE` loads it as it is, or\n"
    "`include` it from your server's own config. Check it with\n"
    "`nats-server -t -c FILE`.\n\n"
    "Inventory (see examples/inventory.toml):\n\n"
    "  [hosts.web1]\n"
    '  tier = "test"            # test or prod\n'
    '  role = "web"             # optional: deploy.<tier>.role.<role>\n'
    '  nkey = "U..."            # the listener\'s public key (fleet-deploy keygen)\n\n'
    "  [deployers.assistant]\n"
    '  access = "test"          # test: deploy.test.> only; admin: deploy.>;\n'
    '  nkey = "U..."            # observer: discovery and replies only (the dashboard)\n\n'
    "  [builders.buildbox]      # optional: a build host (fleet-deploy builder)\n"
    '  repos = ["nixos"]        # it hears build.<repo>.*; every deployer may ask\n'
    '  nkey = "U..."\n\n'
    "Layouts: `bound` (the default) lets each listener answer only on reply subjects\n"
    "that carry its own tier and hostname, so the server vouches for who sent each\n"
    "status, and keeps prod replies from the test deployer; every listener must run\n"
    "fleet-deploy. `homelab` is homelab-deploy's published example, for fleets that\n"
    "still run its listeners or deployer: the deployer then flags what it cannot\n"
    "believe, but cannot tell a forgery in a host's own name.",
    (
        Option(
            "inventory",
            "TOML inventory, or - for stdin",
            env=False,
            kind="positional",
            metavar="INVENTORY",
        ),
        Option(
            "output",
            "write the config here",
            env=False,
            metavar="FILE",
            short="-o",
            shown_default="stdout",
        ),
        Option(
            "layout",
            "which permissions to write",
            default=DEFAULT_NATS_LAYOUT,
            env=False,
            choices=NATS_LAYOUTS,
            metavar="LAYOUT",
        ),
        Option(
            "jetstream_dir",
            "with --layout bound: enable JetStream, storing the deployment history here "
            "(docs/history.md); 'none' leaves JetStream out",
            default=DEFAULT_JETSTREAM_DIR,
            env=False,
            metavar="DIR",
        ),
    ),
)

SANDBOX = Command(
    "sandbox",
    "run a whole simulated fleet on this machine: nothing to install or configure",
    "Start a real nats-server on 127.0.0.1 with freshly generated NKeys and the\n"
    "tiered permissions, and simulated hosts (test and prod tiers, a shared role,\n"
    "one host whose rebuild fails) whose listeners are real and whose nixos-rebuild\n"
    "is a packaged stand-in. JetStream and the history streams are on, so\n"
    "'fleet-deploy history' and 'show' read what you deploy. It serves the read-only\n"
    "dashboard (--dashboard-port), prints its URL, the NATS URL, the key files, commands\n"
    "to paste and an MCP client config, then runs until Ctrl-C or SIGTERM and stops\n"
    "every process it started.\n\n"
    "--once runs a guided tour instead and exits: discover, deploy to the test\n"
    "tier, explain the failing host, and show the test key refused on prod.\n"
    "--cluster 3 runs three nats-servers routed into a cluster instead of one; the\n"
    "URL printed then names all three, comma-separated, as --nats-url takes them.\n"
    "Exit status: 0 stopped by Ctrl-C or SIGTERM, or the tour went as expected;\n"
    "1 the tour saw something it did not expect; 2 a usage error such as a busy\n"
    "port; 128+N the tour was interrupted by signal N.\n\n"
    "The sandbox reads no FLEET_DEPLOY_* variable: a real fleet's settings must not leak in.",
    (
        Option(
            "hosts",
            f"number of simulated hosts, {MIN_SANDBOX_HOSTS} to {MAX_SANDBOX_HOSTS}",
            default=DEFAULT_SANDBOX_HOSTS,
            env=False,
            metavar="N",
        ),
        Option(
            "port",
            "NATS port on 127.0.0.1; 0 picks a free one",
            default=DEFAULT_SANDBOX_PORT,
            env=False,
            metavar="P",
            shown_default=f"{DEFAULT_SANDBOX_PORT}, or a free one with --once",
        ),
        Option(
            "cluster",
            f"run N nats-servers routed into a cluster, 1 to {MAX_SANDBOX_CLUSTER}; --port is "
            "the first one's, the others pick free ports",
            default=DEFAULT_SANDBOX_CLUSTER,
            env=False,
            metavar="N",
        ),
        Option(
            "dir",
            "keep keys, config and job logs here, and reuse its keys on the next run",
            env=False,
            metavar="DIR",
            shown_default="a temporary directory, removed at exit",
        ),
        Option(
            "sim_delay",
            "pause between the simulated rebuild's output lines, in seconds",
            default=DEFAULT_SIM_DELAY,
            env=False,
            metavar="SECONDS",
        ),
        Option("once", "run the guided tour, then stop and exit", env=False, kind="switch"),
        Option(
            "dashboard_port",
            "the read-only dashboard's port on 127.0.0.1 (docs/dashboard.md); when it is "
            "busy, a free one; 0 picks a free one",
            default=DEFAULT_DASHBOARD_PORT,
            env=False,
            metavar="P",
            shown_default=f"{DEFAULT_DASHBOARD_PORT}, or a free one with --once",
        ),
    ),
)

# -- the MCP server --------------------------------------------------------------------------

MCP = Command(
    "mcp",
    "serve the MCP server (same as fleet-mcp)",
    "Serve fleet-deploy's MCP server: list_hosts, deploy (test tier only),\n"
    "deployment_status, list_deployments, deployment_history (the recorded history),\n"
    "deploy_admin when --enable-admin and an admin key are given, and build and\n"
    "build_status (the builder builds closures; no host changes) with --enable-builds.\n\n"
    "Serves stdio by default (what an editor launches); --http serves streamable HTTP\n"
    "at /mcp.",
    (
        NATS_URL,
        replace(NKEY_FILE, help="seed of the test-tier deployer key, mode 0600"),
        Option(
            "enable_admin",
            "register deploy_admin (needs --admin-nkey-file)",
            kind="switch",
        ),
        Option(
            "admin_nkey_file",
            "seed of the admin deployer key, used only by deploy_admin",
            metavar="PATH",
        ),
        Option(
            "enable_builds",
            "register build and build_status: ask the builder (fleet-deploy builder) to build "
            "closures with the test key; a build changes no host",
            kind="switch",
        ),
        Option(
            "http",
            "serve streamable HTTP on HOST:PORT instead of stdio, e.g. 127.0.0.1:8765",
            env=False,
            metavar="HOST:PORT",
        ),
        Option(
            "heartbeat",
            "progress notifications at least this often while a tool waits, in seconds",
            default=DEFAULT_MCP_HEARTBEAT,
            metavar="SECONDS",
        ),
        Option(
            "deploy_timeout",
            "how long one deployment may last, in seconds",
            default=DEFAULT_DEPLOY_TIMEOUT,
            metavar="SECONDS",
        ),
        replace(LOG_LEVEL, help="log level of the JSON lines on stderr"),
    ),
)

# -- the dashboard ---------------------------------------------------------------------------

DASHBOARD = Command(
    "dashboard",
    "serve a live page of the fleet to a browser (read-only unless told otherwise)",
    "Serve a page of the fleet on --listen: one row per host (tier, role, revision,\n"
    "behind, needs reboot, last deploy and outcome, listener version, busy), the\n"
    "deployments running now with each host's live phase and latest line, a host's\n"
    "recent jobs and a failure's log tail, and the history. It prints\n"
    "'dashboard: http://HOST:PORT/' once it listens, then runs until Ctrl-C or SIGTERM.\n\n"
    'Give it an observer key (nats-config: access = "observer"): it can discover\n'
    "and read every tier but deploys nothing, so a leaked dashboard key changes no\n"
    "host. Actions (deploy, cancel, health check) exist only with --allow-actions,\n"
    "behind a login (--password-file, optionally --totp-secret-file), and are sent\n"
    "with --deploy-nkey-file's key, so they can do no more than that key may.\n\n"
    "--hash-password reads a password on stdin (twice, without echo, on a terminal)\n"
    "and prints the line to put into --password-file; nothing else runs.\n\n"
    "Exit status: 0 stopped by Ctrl-C or SIGTERM; 2 usage, key, file or connection\n"
    "error, or a busy --listen port.",
    (
        NATS_URL,
        replace(
            NKEY_FILE,
            help="seed of the key the page reads with, mode 0600: an observer's "
            '(nats-config access = "observer"), which can deploy nothing',
            env_name="dashboard_nkey_file",
            legacy_env=False,
        ),
        Option(
            "listen",
            "HOST:PORT to serve the page on; port 0 picks a free one. Anything but "
            "127.0.0.1 or localhost puts it on a network: see docs/dashboard.md",
            default=f"{DEFAULT_DASHBOARD_HOST}:{DEFAULT_DASHBOARD_PORT}",
            env_name="dashboard_listen",
            metavar="HOST:PORT",
        ),
        Option(
            "allowed_host",
            "another name the page may be reached by (a reverse proxy's, NAME or NAME:PORT), "
            "repeatable: requests naming any other Host are refused",
            env_name="dashboard_allowed_hosts",
            kind="list",
            metavar="NAME",
            shown_default="the --listen address, localhost, 127.0.0.1 and [::1]",
        ),
        Option(
            "refresh",
            "seconds between two discoveries of the host rows (deployments update live)",
            default=DEFAULT_DASHBOARD_REFRESH,
            env_name="dashboard_refresh",
            metavar="SECONDS",
        ),
        Option(
            "allow_actions",
            "offer deploy, cancel and health check, after a login (needs --deploy-nkey-file "
            "and --password-file)",
            env_name="dashboard_allow_actions",
            kind="switch",
        ),
        Option(
            "deploy_nkey_file",
            "with --allow-actions: seed of the key actions are sent with, mode 0600",
            env_name="dashboard_deploy_nkey_file",
            metavar="PATH",
        ),
        Option(
            "password_file",
            "with --allow-actions: file holding the login's password hash (from --hash-password)",
            env_name="dashboard_password_file",
            metavar="PATH",
        ),
        Option(
            "totp_secret_file",
            "with --allow-actions: file holding a base32 TOTP secret; the login then also "
            "asks for a one-time code",
            env_name="dashboard_totp_secret_file",
            metavar="PATH",
            shown_default="no one-time code",
        ),
        Option(
            "session_key_file",
            "with --allow-actions: file holding the secret that signs session cookies, so "
            "that sessions outlive a restart",
            env_name="dashboard_session_key_file",
            metavar="PATH",
            shown_default="a random key per run: a restart logs everyone out",
        ),
        Option(
            "hash_password",
            "read a password on stdin, print its hash for --password-file, and exit",
            env=False,
            kind="switch",
        ),
        LOG_LEVEL,
    ),
)

COMMANDS: tuple[Command, ...] = (
    LISTENER,
    DEPLOY,
    CHECK,
    CANCEL,
    HOSTS,
    STATUS,
    HISTORY,
    SHOW,
    LOGS,
    BUILDER,
    BUILD,
    KEYGEN,
    NATS_CONFIG,
    SANDBOX,
    MCP,
    DASHBOARD,
)


def command(name: str) -> Command:
    """The declaration of command ``name``."""
    for declared in COMMANDS:
        if declared.name == name:
            return declared
    raise KeyError(name)
