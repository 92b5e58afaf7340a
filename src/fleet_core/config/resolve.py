"""Flags and environment become one frozen settings object per command, here and only here.

This is the one module that reads ``os.environ``. Each ``*_settings`` function takes the
parsed flags (a mapping from option name to text, ``None`` where a flag was not given —
what ``vars(parser.parse_args())`` gives) and an environment mapping, applies "flag, then
``FLEET_DEPLOY_*`` variable, then homelab-deploy's ``HOMELAB_DEPLOY_*`` where the option
declares one, then default" as ``fleet_core.config.options`` declares it, validates, and
returns a frozen settings object (``fleet_core.config.settings``). An error names the flag or
variable the bad value came from.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path

from fleet_core.config.options import (
    DEFAULT_DARWIN_VERSION_COMMAND,
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_LOG_LEVEL,
    DEFAULT_NATS_LAYOUT,
    DEFAULT_REBUILD_RUNNER,
    DEFAULT_SANDBOX_PORT,
    DEFAULT_STATE_DIR,
    ENV_PREFIX,
    LEGACY_ENV_PREFIX,
    MAX_SANDBOX_CLUSTER,
    MAX_SANDBOX_HOSTS,
    MIN_SANDBOX_HOSTS,
    SYSTEM_RUNNING_CHECK,
    Command,
    command,
)
from fleet_core.config.parsers import parse_listen_address, parse_nats_urls
from fleet_core.config.settings import (
    BuilderSettings,
    BuildSettings,
    CancelSettings,
    ClosureSettings,
    ConnectionSettings,
    DashboardSettings,
    DeploySettings,
    FactsSettings,
    HealthCheckSpec,
    HistorySettings,
    HostsSettings,
    KeygenSettings,
    ListenerSettings,
    LogsSettings,
    McpSettings,
    NatsConfigSettings,
    PasswordHashSettings,
    RollbackSettings,
    RolloutSettings,
    SandboxSettings,
    ShowSettings,
    StatusSettings,
)
from fleet_core.errors import RequestRejected, UsageError
from fleet_core.protocol.actions import (
    DEFAULT_HOST_KIND,
    DEFAULT_REVISION,
    Action,
    HostKind,
    rebuild_program,
    validate_configuration,
    validate_revision,
)
from fleet_core.protocol.messages import is_request_id
from fleet_core.protocol.subjects import (
    Tier,
    resolve_target,
    validate_hostname,
)

__all__ = [
    "Flags",
    "build_settings",
    "builder_settings",
    "cancel_settings",
    "check_settings",
    "choose_rebuild_runner",
    "dashboard_settings",
    "deploy_settings",
    "history_settings",
    "hosts_settings",
    "in_user_manager",
    "keygen_settings",
    "listener_settings",
    "logs_settings",
    "mcp_settings",
    "nats_config_settings",
    "sandbox_settings",
    "show_settings",
]

Flags = Mapping[str, object]
SEED_SUFFIX = ".seed"
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
# What systemd sets for one unit: a transient unit gets its own, never the listener's.
_PER_UNIT_VARIABLES = frozenset(
    {
        "CREDENTIALS_DIRECTORY",
        "INVOCATION_ID",
        "JOURNAL_STREAM",
        "LISTEN_FDNAMES",
        "LISTEN_FDS",
        "LISTEN_PID",
        "MAINPID",
        "MANAGERPID",
        "NOTIFY_SOCKET",
        "RUNTIME_DIRECTORY",
        "STATE_DIRECTORY",
        "CACHE_DIRECTORY",
        "LOGS_DIRECTORY",
        "CONFIGURATION_DIRECTORY",
        "SYSTEMD_EXEC_PID",
        "WATCHDOG_PID",
        "WATCHDOG_USEC",
    }
)


# -- reading one option ----------------------------------------------------------------------


class _Values:
    """The options of one command, read as "flag, then variable, then default"."""

    def __init__(self, declared: Command, flags: Flags, environ: Mapping[str, str] | None):
        self._options = {option.name: option for option in declared.options}
        self._flags = flags
        self.environ: Mapping[str, str] = os.environ if environ is None else environ

    def given(self, name: str) -> tuple[str, str] | None:
        """The text given for ``name`` and where it came from (flag or variable), if any."""
        option = self._options[name]
        flag = self._flags.get(name)
        if flag is not None:
            return str(flag), option.flag
        return self._variable(name)

    def _variable(self, name: str) -> tuple[str, str] | None:
        """The first of the option's variables that is set (not empty), and its name: ours,
        then homelab-deploy's."""
        for variable in self._options[name].variables:
            value = self.environ.get(variable, "")
            if value.strip():
                return value, variable
        return None

    def text(self, name: str) -> str | None:
        given = self.given(name)
        if given is not None:
            return given[0]
        default = self._options[name].default
        return None if default is None else str(default)

    def required(self, name: str) -> str:
        value = self.text(name)
        if value is None:
            option = self._options[name]
            alternative = f" (or set {option.variable})" if option.variable else ""
            # With what it is for, as --help says it: "--host is required: the host whose
            # job to read" tells a first-time user what to give.
            raise UsageError(f"{option.flag} is required{alternative}: {option.help}")
        return value

    def choice(self, name: str) -> str | None:
        """The value, checked against the option's choices (argparse checks only flags)."""
        given = self.given(name)
        value = self.text(name)
        choices = self._options[name].choices or ()
        if value is not None and value not in choices:
            source = given[1] if given else self._options[name].flag
            raise UsageError(f"{source} {value!r} is not one of {', '.join(choices)}")
        return value

    def required_choice(self, name: str) -> str:
        self.required(name)
        value = self.choice(name)
        assert value is not None
        return value

    def number(self, name: str, *, positive: bool = True) -> float:
        given = self.given(name)
        if given is None:
            default = self._options[name].default
            assert isinstance(default, int | float), f"{name} declares no numeric default"
            return float(default)
        text, source = given
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{source} must be a number of seconds, not {text!r}") from None
        if positive and not value > 0:
            raise UsageError(f"{source} must be a positive number of seconds, not {text!r}")
        return value

    def integer(self, name: str, default: int | None = None) -> int:
        given = self.given(name)
        if given is None:
            fallback = default if default is not None else self._options[name].default
            assert isinstance(fallback, int), f"{name} declares no whole-number default"
            return fallback
        text, source = given
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"{source} must be a whole number, not {text!r}") from None

    def switch(self, name: str) -> bool:
        if self._flags.get(name):
            return True
        given = self._variable(name)
        if given is None:
            return False
        raw, variable = given[0].strip().lower(), given[1]
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise UsageError(f"{variable}={raw!r} is not a boolean: use true or false")

    def items(self, name: str) -> tuple[str, ...]:
        """A repeatable flag's values, else its variable's comma-separated ones; the declared
        default when neither was given."""
        given = self._flags.get(name)
        if isinstance(given, list | tuple) and given:
            return tuple(str(item) for item in given)
        listed = self._variable(name)
        if listed is not None:
            return tuple(item.strip() for item in listed[0].split(",") if item.strip())
        default = self._options[name].default
        return tuple(default) if isinstance(default, tuple) else ()


def _metrics_addr(values: _Values) -> tuple[str, int] | None:
    """The metrics address when metrics are on, else None. Checked either way, so that a
    typo shows before the day metrics are turned on."""
    text = values.required("metrics_addr")
    given = values.given("metrics_addr")
    address = parse_listen_address(text, given[1] if given else "--metrics-addr")
    return address if values.switch("metrics_enabled") else None


def _nats_urls(values: _Values) -> tuple[str, ...]:
    text = values.required("nats_url")
    given = values.given("nats_url")
    return parse_nats_urls(text, given[1] if given else "--nats-url")


def _connection(values: _Values) -> ConnectionSettings:
    return ConnectionSettings(
        nats_urls=_nats_urls(values), nkey_file=Path(values.required("nkey_file"))
    )


def _tier(value: str | None) -> Tier | None:
    return Tier(value) if value is not None else None


def _flake_url(values: _Values) -> str:
    """``--flake-url`` (or its variable), or the content of ``--flake-url-file``: one only.
    No error shows the URL: it may carry a token."""
    url = values.given("flake_url")
    path = values.given("flake_url_file")
    if url is not None and path is not None:
        raise UsageError(f"give {url[1]} or {path[1]}, not both")
    if url is not None:
        return url[0]
    if path is None:
        raise UsageError(
            "--flake-url is required (or set FLEET_DEPLOY_FLAKE_URL), or --flake-url-file "
            "with the URL in a file"
        )
    try:
        text = Path(path[0]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise UsageError(f"{path[1]}: cannot read {path[0]}: {reason}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise UsageError(
            f"{path[1]}: {path[0]} must hold the flake URL on one line, not {len(lines)} lines"
        )
    return lines[0]


# -- one builder per command -----------------------------------------------------------------


def listener_settings(
    flags: Flags,
    *,
    environ: Mapping[str, str] | None = None,
    systemd_booted: bool | None = None,
    root: bool | None = None,
) -> ListenerSettings:
    """Settings for ``fleet-deploy listener``; systemd's ``$STATE_DIRECTORY`` is honoured.

    ``systemd_booted`` and ``root`` are facts about this machine and process that choose the
    rebuild runner (``choose_rebuild_runner``); None looks them up, a test states them.
    """
    values = _Values(command("listener"), flags, environ)
    host_kind = HostKind(values.choice("host_kind") or DEFAULT_HOST_KIND)
    given_command = values.given("rebuild_command")
    # Unless given, the program follows the kind: nixos-rebuild, darwin-rebuild, home-manager.
    rebuild = given_command[0] if given_command else rebuild_program(host_kind)
    try:
        argv = tuple(shlex.split(rebuild))
    except ValueError as exc:
        raise UsageError(f"--rebuild-command {rebuild!r} cannot be split: {exc}") from None
    state = values.given("state_dir")
    state_dir = state[0] if state else values.environ.get("STATE_DIRECTORY", "").split(":")[0]
    log_level = values.choice("log_level") or DEFAULT_LOG_LEVEL
    if systemd_booted is None:
        systemd_booted = Path("/run/systemd/system").is_dir()
    if root is None:
        root = os.geteuid() == 0
    runner = choose_rebuild_runner(
        values.choice("rebuild_runner") or DEFAULT_REBUILD_RUNNER,
        invocation_id=values.environ.get("INVOCATION_ID"),
        systemd_booted=systemd_booted,
        root=root,
        host_kind=host_kind,
    )
    return ListenerSettings(
        hostname=values.required("hostname"),
        tier=Tier(values.required_choice("tier")),
        nats_urls=_nats_urls(values),
        nkey_file=Path(values.required("nkey_file")),
        flake_url=_flake_url(values),
        role=values.text("role"),
        host_kind=host_kind,
        configuration=_configuration(values),
        timeout=values.number("timeout"),
        deploy_subject_templates=values.items("deploy_subject"),
        discover_subject=values.required("discover_subject"),
        rebuild_command=argv,
        # Absolute: the job runner is matched against it in /proc/<pid>/cmdline.
        state_dir=Path(state_dir).absolute() if state_dir else DEFAULT_STATE_DIR,
        log_level="debug" if values.switch("debug") else log_level,
        heartbeat_interval=values.number("heartbeat_interval"),
        metrics_addr=_metrics_addr(values),
        rebuild_runner=runner,
        systemd_user=in_user_manager(runner, root=root, host_kind=host_kind),
        restart_if_changed=tuple(Path(p) for p in values.items("restart_if_changed")),
        rebuild_env=tuple(
            sorted(
                name
                for name in values.environ
                # The listener's own settings stay its own: a transient unit's environment is
                # shown to every local user (systemctl show), and FLEET_DEPLOY_FLAKE_URL may
                # hold a token. homelab-deploy's variables are settings of ours too.
                if name not in _PER_UNIT_VARIABLES
                and not name.startswith((ENV_PREFIX, LEGACY_ENV_PREFIX))
            )
        ),
        trusted_deployer_keys=tuple(dict.fromkeys(values.items("trusted_deployer_key"))),
        request_ttl=values.number("request_ttl"),
        rollback=_rollback(values),
        facts=_facts(values, host_kind),
        nix_store_command=_command(values, "nix_store_command"),
        store_dir=Path(values.required("store_dir")),
    )


def _facts(values: _Values, host_kind: HostKind) -> FactsSettings:
    """Where discovery's host facts come from: the links and version program of the kind.

    A Home Manager host's "system" is its home-manager profile (``$XDG_STATE_HOME`` or
    ``~/.local/state``, as home-manager puts it), it has no booted system and no version
    program; nix-darwin has no booted-system link and a ``darwin-version`` of its own.
    """
    profile = values.given("system_profile")
    command = values.given("version_command")
    if host_kind is HostKind.HOME_MANAGER:
        user_home = values.environ.get("HOME") or str(Path.home())
        state = values.environ.get("XDG_STATE_HOME") or str(Path(user_home, ".local", "state"))
        home = Path(profile[0]) if profile else Path(state) / "nix" / "profiles" / "home-manager"
        return FactsSettings(
            current_system=home,
            booted_system=None,
            system_profile=home,
            version_command=_command(values, "version_command") if command else (),
        )
    darwin = host_kind is HostKind.DARWIN
    version = (
        _command(values, "version_command")
        if command or not darwin
        else tuple(DEFAULT_DARWIN_VERSION_COMMAND.split())
    )
    return FactsSettings(
        current_system=Path(values.required("current_system")),
        booted_system=None if darwin else Path(values.required("booted_system")),
        system_profile=Path(values.required("system_profile")),
        version_command=version,
    )


def _rollback(values: _Values) -> RollbackSettings:
    """The guard of a switch or test: its links, its commands, its checks."""
    checks_file = values.text("health_checks")
    return RollbackSettings(
        enabled=not values.switch("no_rollback"),
        system_profile=Path(values.required("system_profile")),
        current_system=Path(values.required("current_system")),
        nix_env=_command(values, "nix_env_command"),
        systemctl=_command(values, "systemctl_command"),
        checks=_health_checks(checks_file) if checks_file else (),
        confirm_timeout=values.number("confirm_timeout"),
    )


def _command(values: _Values, name: str) -> tuple[str, ...]:
    text = values.required(name)
    flag = "--" + name.replace("_", "-")
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"{flag} {text!r} cannot be split: {exc}") from None
    if not argv:
        raise UsageError(f"{flag} must name a program")
    return argv


def _health_checks(path: str) -> tuple[HealthCheckSpec, ...]:
    """The checks of ``--health-checks FILE``: every mistake names the file and the check."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read --health-checks {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--health-checks {path} is not JSON: {exc}") from None
    if not isinstance(data, list):
        raise UsageError(f"--health-checks {path} must hold a JSON list of checks")
    checks = [
        _health_check(item, f"--health-checks {path}, check {n}") for n, item in enumerate(data)
    ]
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise UsageError(f"--health-checks {path}: two checks have the same name")
    return tuple(checks)


def _health_check(item: object, where: str) -> HealthCheckSpec:
    if not isinstance(item, dict):
        raise UsageError(f"{where} must be an object")
    name, command, builtin = item.get("name"), item.get("command"), item.get("builtin")
    timeout, ignore = item.get("timeout", 60), item.get("ignore_units", [])
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"{where} needs a name")
    where = f"{where} ({name})"
    if builtin is not None and builtin != SYSTEM_RUNNING_CHECK:
        raise UsageError(f"{where}: builtin must be {SYSTEM_RUNNING_CHECK!r}")
    if builtin is None and not (
        isinstance(command, list) and command and all(isinstance(a, str) for a in command)
    ):
        raise UsageError(f"{where}: command must be a list of strings (an argv, never a shell)")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise UsageError(f"{where}: timeout must be a positive number of seconds")
    if not isinstance(ignore, list) or not all(isinstance(u, str) for u in ignore):
        raise UsageError(f"{where}: ignore_units must be a list of unit names")
    return HealthCheckSpec(
        name=name,
        argv=tuple(command) if isinstance(command, list) and builtin is None else (),
        timeout=float(timeout),
        builtin=builtin,
        ignore_units=tuple(ignore),
    )


def _configuration(values: _Values) -> str | None:
    """``--configuration`` (or its variable), checked; an error names where it came from."""
    given = values.given("configuration")
    if given is None:
        return None
    try:
        return validate_configuration(given[0])
    except UsageError as exc:
        raise UsageError(f"{given[1]}: {exc}") from None


def choose_rebuild_runner(
    requested: str,
    *,
    invocation_id: str | None,
    systemd_booted: bool,
    root: bool,
    host_kind: HostKind = DEFAULT_HOST_KIND,
) -> str:
    """``--rebuild-runner``, with ``auto`` resolved: ``systemd`` when the listener is a
    service of a systemd system (``$INVOCATION_ID`` is set by the service manager,
    /run/systemd/system exists when systemd is PID 1) that can start transient units — as
    root in the system manager, or, for Home Manager, as the user in the user's own manager
    (``in_user_manager``) — else ``session``.

    A non-root NixOS or nix-darwin listener stays ``session``: its rebuild needs root, which
    the user's manager cannot give, and the system manager would ask polkit. ``session`` is
    also what escapes launchd on macOS, which stops a job's whole process group with it.
    """
    if requested != "auto":
        return requested
    if invocation_id and systemd_booted and (root or host_kind is HostKind.HOME_MANAGER):
        return "systemd"
    return "session"


def in_user_manager(runner: str, *, root: bool, host_kind: HostKind) -> bool:
    """Whether the listener's transient units go to the user's service manager
    (``systemd-run --user``): a Home Manager listener that is not root runs under
    ``systemd --user``, where a unit it starts is the user's, outside the listener's cgroup,
    so ``systemctl --user restart`` of the listener leaves the rebuild running."""
    return runner == "systemd" and not root and host_kind is HostKind.HOME_MANAGER


def _expected_hosts(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(
        validate_hostname(name.strip())
        for item in items
        for name in item.split(",")
        if name.strip()
    )


def deploy_settings(flags: Flags, *, environ: Mapping[str, str] | None = None) -> DeploySettings:
    """Settings for ``fleet-deploy deploy``; resolves aliases from ``FLEET_DEPLOY_ALIAS_*``."""
    values = _Values(command("deploy"), flags, environ)
    try:  # checked here, so that a bad revision is told before anything connects
        revision = validate_revision(values.required("branch"))
    except RequestRejected as exc:
        raise UsageError(str(exc)) from None
    return DeploySettings(
        connection=_connection(values),
        target=resolve_target(
            values.required("target"), os.environ if environ is None else environ
        ),
        revision=revision,
        action=Action(values.required_choice("action")),
        timeout=values.number("timeout"),
        expect=_expected_hosts(values.items("expect")),
        json=values.switch("json"),
        rollout=_rollout(values),
        no_rollback=values.switch("no_rollback"),
        closures=_closures(values),
    )


def _closures(values: _Values) -> ClosureSettings | None:
    """A closure deploy's source (``--build``, ``--from-build``, ``--store-path``); None when
    none is given. ``--build-timeout`` alone is a usage error: it times a build."""
    given = {name: values.text(name) for name in ("build", "from_build", "store_path")}
    if all(value is None for value in given.values()):
        if values.given("build_timeout") is not None:
            raise UsageError("--build-timeout times the build of --build REPO: give --build")
        return None
    return ClosureSettings(
        build_repo=given["build"],
        from_build=given["from_build"],
        store_path=given["store_path"],
        build_timeout=values.number("build_timeout"),
    )


def cancel_settings(flags: Flags, *, environ: Mapping[str, str] | None = None) -> CancelSettings:
    """Settings for ``fleet-deploy cancel``."""
    values = _Values(command("cancel"), flags, environ)
    tier = _tier(values.choice("tier"))
    host = values.text("host")
    return CancelSettings(
        connection=_connection(values),
        deployment_id=values.required("deployment_id"),
        tiers=(tier,) if tier is not None else (Tier.TEST, Tier.PROD),
        host=validate_hostname(host) if host is not None else None,
        json=values.switch("json"),
    )


def check_settings(flags: Flags, *, environ: Mapping[str, str] | None = None) -> DeploySettings:
    """Settings for ``fleet-deploy check``: a deploy of the ``check`` action, which rebuilds
    nothing (so no revision), in one step."""
    values = _Values(command("check"), flags, environ)
    return DeploySettings(
        connection=_connection(values),
        target=resolve_target(
            values.required("target"), os.environ if environ is None else environ
        ),
        revision=DEFAULT_REVISION,
        action=Action.CHECK,
        timeout=values.number("timeout"),
        expect=_expected_hosts(values.items("expect")),
        json=values.switch("json"),
    )


_BATCH = re.compile(r"\s*(\d+)\s*(%?)\s*")


def _rollout(values: _Values) -> RolloutSettings | None:
    """The rollout ``--canary``, ``--batch``, ``--max-failures`` and ``--shuffle`` ask for;
    None when none of them is given, or only ``--canary 0`` (no canary: one publish)."""
    given = {name: values.given(name) for name in ("canary", "batch", "max_failures")}
    shuffle = values.switch("shuffle")
    if not shuffle and all(v is None for v in given.values()):
        return None
    canary = values.integer("canary", 0)
    if canary < 0:
        raise UsageError(f"--canary must be 0 or more hosts, not {canary}")
    if not shuffle and given["batch"] is None and given["max_failures"] is None and not canary:
        return None
    batch, percent = None, False
    if given["batch"] is not None:
        found = _BATCH.fullmatch(given["batch"][0])
        if found is None:
            raise UsageError(
                f"--batch must be a number of hosts (N) or a percentage of the target's hosts "
                f"(N%), not {given['batch'][0]!r}"
            )
        batch, percent = int(found.group(1)), bool(found.group(2))
    return RolloutSettings(
        canary=canary,
        batch=batch,
        batch_percent=percent,
        max_failures=values.integer("max_failures"),
        shuffle=shuffle,
    )


def _readable_tiers(values: _Values) -> tuple[Tier, ...]:
    tier = _tier(values.choice("tier"))
    return (tier,) if tier is not None else (Tier.TEST, Tier.PROD)


def _inventory(values: _Values) -> Path | None:
    text = values.text("inventory")
    return Path(text) if text else None


def _at_least(values: _Values, name: str, minimum: int) -> int:
    number = values.integer(name)
    if number < minimum:
        raise UsageError(f"--{name.replace('_', '-')} must be at least {minimum}, not {number}")
    return number


def history_settings(flags: Flags, *, environ: Mapping[str, str] | None = None) -> HistorySettings:
    """Settings for ``fleet-deploy history``."""
    values = _Values(command("history"), flags, environ)
    target = values.text("target")
    host = values.text("host")
    if target is not None and host is not None:
        raise UsageError("give TARGET or --host, not both")
    replicas = _at_least(values, "replicas", 1)
    if replicas > 5:
        raise UsageError(f"--replicas must be 1 to 5 (JetStream's limit), not {replicas}")
    return HistorySettings(
        connection=_connection(values),
        target=resolve_target(target, os.environ if environ is None else environ)
        if target is not None
        else None,
        host=validate_hostname(host) if host is not None else None,
        tiers=_readable_tiers(values),
        limit=_at_least(values, "limit", 1),
        inventory=_inventory(values),
        setup=values.switch("setup"),
        max_age=values.number("max_age"),
        max_msgs=_at_least(values, "max_msgs", 1),
        max_bytes=_at_least(values, "max_bytes", 1024 * 1024),
        replicas=replicas,
        json=values.switch("json"),
    )


def show_settings(flags: Flags, *, environ: Mapping[str, str] | None = None) -> ShowSettings:
    """Settings for ``fleet-deploy show``."""
    values = _Values(command("show"), flags, environ)
    deployment_id = values.required("deployment_id")
    if not is_request_id(deployment_id):  # as logs: a usage error, not "no record of it"
        raise UsageError(
            f"{deployment_id[:80]!r} is not a deployment id: ids are 1-64 letters, digits, "
            "'-' or '_', as deploy and history print them"
        )
    return ShowSettings(
        connection=_connection(values),
        deployment_id=deployment_id,
        tiers=_readable_tiers(values),
        inventory=_inventory(values),
        json=values.switch("json"),
    )


def logs_settings(flags: Flags, *, environ: Mapping[str, str] | None = None) -> LogsSettings:
    """Settings for ``fleet-deploy logs``."""
    values = _Values(command("logs"), flags, environ)
    deployment_id = values.required("deployment_id")
    if not is_request_id(deployment_id):
        raise UsageError(
            f"{deployment_id[:80]!r} is not a deployment id: ids are 1-64 letters, digits, "
            "'-' or '_', as deploy and history print them"
        )
    return LogsSettings(
        connection=_connection(values),
        deployment_id=deployment_id,
        host=values.required("host"),
        tier=Tier(values.required_choice("tier")),
        follow=values.switch("follow"),
        offset=values.integer("offset"),
        answer_within=values.number("timeout"),
        json=values.switch("json"),
    )


def hosts_settings(flags: Flags, *, environ: Mapping[str, str] | None = None) -> HostsSettings:
    """Settings for ``fleet-deploy hosts``."""
    values = _Values(command("hosts"), flags, environ)
    return HostsSettings(
        connection=_connection(values),
        tier=_tier(values.choice("tier")),
        json=values.switch("json"),
    )


def status_settings(flags: Flags, *, environ: Mapping[str, str] | None = None) -> StatusSettings:
    """Settings for ``fleet-deploy status``; the revision is checked as a deploy's is."""
    values = _Values(command("status"), flags, environ)
    target = values.text("target")
    revision = values.text("revision")
    if revision is not None:
        try:
            revision = validate_revision(revision)
        except RequestRejected as exc:
            raise UsageError(f"--revision: {exc}") from None
    return StatusSettings(
        connection=_connection(values),
        target=(
            resolve_target(target, os.environ if environ is None else environ)
            if target is not None
            else None
        ),
        revision=revision,
        json=values.switch("json"),
    )


def _repos(values: _Values) -> dict[str, str]:
    """``--repo NAME=URL`` entries and the ``[repos]`` table of ``--repos-file``; a name given
    twice is an error, and no message shows a URL (it may carry a token)."""
    from fleet_core.build.protocol import validate_repo

    repos: dict[str, str] = {}

    def add(name: str, url: str, source: str) -> None:
        name = name.strip()
        if name in repos:
            raise UsageError(f"{source}: repository {name!r} is given twice")
        validate_repo(name)
        repos[name] = url.strip()

    for item in values.items("repo"):
        name, sep, url = item.partition("=")
        if not sep or not url.strip():
            raise UsageError(
                f"--repo {name.strip()[:40]!r}…: give NAME=FLAKE_URL, e.g. "
                "nixos-servers=git+https://git.example.com/nixos.git"
            )
        add(name, url, "--repo")
    given = values.given("repos_file")
    if given is not None:
        path, source = given
        try:
            mode = Path(path).stat().st_mode
            if mode & 0o077:
                raise UsageError(
                    f"{source}: {path} may be read by others (mode {mode & 0o777:04o}) and its "
                    f"URLs may hold tokens: run `chmod 600 {path}`"
                )
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"{source}: cannot read {path}: {exc.strerror}") from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError):
            raise UsageError(f"{source}: {path} is not a TOML file of [repos]") from None
        table = data.get("repos")
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise UsageError(
                f'{source}: {path} must hold a [repos] table of NAME = "FLAKE_URL" lines'
            )
        for name, url in table.items():
            add(name, url, f"{source} {path}")
    return repos


def builder_settings(flags: Flags, *, environ: Mapping[str, str] | None = None) -> BuilderSettings:
    """Settings for ``fleet-deploy builder``."""
    values = _Values(command("builder"), flags, environ)
    nix = values.required("nix_command")
    try:
        argv = tuple(shlex.split(nix))
    except ValueError as exc:
        raise UsageError(f"--nix-command {nix!r} cannot be split: {exc}") from None
    log_level = values.choice("log_level") or DEFAULT_LOG_LEVEL
    return BuilderSettings(
        name=values.text("name") or os.uname().nodename.split(".")[0] or "builder",
        nats_urls=_nats_urls(values),
        nkey_file=Path(values.required("nkey_file")),
        repos=_repos(values),
        cache=values.text("cache") or None,
        nix_command=argv,
        timeout=values.number("timeout"),
        heartbeat_interval=values.number("heartbeat_interval"),
        log_level="debug" if values.switch("debug") else log_level,
    )


def build_settings(flags: Flags, *, environ: Mapping[str, str] | None = None) -> BuildSettings:
    """Settings for ``fleet-deploy build``."""
    from fleet_core.build.protocol import parse_build_target

    values = _Values(command("build"), flags, environ)
    try:
        target = parse_build_target(values.required("repo"), values.required("target"))
        revision = validate_revision(values.required("branch"))
    except RequestRejected as exc:
        raise UsageError(str(exc)) from None
    return BuildSettings(
        connection=_connection(values),
        target=target,
        revision=revision,
        timeout=values.number("timeout"),
        json=values.switch("json"),
    )


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if (
        not sep
        or not host
        or not (port.isascii() and port.isdigit() and len(port) <= 5)
        or not 0 < int(port) < 65536
    ):
        raise UsageError(f"--http {value!r} must be HOST:PORT, e.g. 127.0.0.1:8765")
    return host.strip("[]"), int(port)


def mcp_settings(flags: Flags, *, environ: Mapping[str, str] | None = None) -> McpSettings:
    """Settings for ``fleet-mcp``; ``--enable-admin`` without an admin key is an error."""
    values = _Values(command("mcp"), flags, environ)
    admin_enabled = values.switch("enable_admin")
    admin_key = values.text("admin_nkey_file")
    if admin_enabled and admin_key is None:
        raise UsageError(
            "--enable-admin needs the admin key: pass --admin-nkey-file PATH "
            f"(or set {ENV_PREFIX}ADMIN_NKEY_FILE)"
        )
    http = values.text("http")
    return McpSettings(
        connection=_connection(values),
        admin_nkey_file=Path(admin_key) if admin_enabled and admin_key else None,
        http=_host_port(http) if http else None,
        log_level=values.choice("log_level") or DEFAULT_LOG_LEVEL,
        heartbeat=values.number("heartbeat"),
        deploy_timeout=values.number("deploy_timeout"),
        enable_builds=values.switch("enable_builds"),
    )


# A DNS name or IPv4 address, or an IPv6 address in brackets; in a Host header a port may
# follow.
_LABEL = r"[A-Za-z0-9][A-Za-z0-9-]{0,62}"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])"
_HOST_ONLY = re.compile(_HOST)
_HOST_HEADER = re.compile(_HOST + r"(?::[0-9]{1,5})?")
_MIN_DASHBOARD_REFRESH = 1.0  # a discovery of the whole fleet each second is plenty


def _dashboard_listen(values: _Values) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT``, port 0 meaning any free one. The host must be said:
    an empty one would mean every address, and a page that can act on the fleet goes on a
    network only when someone wrote so."""
    text = values.required("listen")
    given = values.given("listen")
    source = given[1] if given else "--listen"
    host, sep, port = text.strip().rpartition(":")
    example = "e.g. 127.0.0.1:8420, [::1]:8420, or 0.0.0.0:8420 for every address"
    if not sep or not (port.isascii() and port.isdigit() and len(port) <= 5):
        raise UsageError(f"{source} {text!r} must be HOST:PORT: {example}")
    if not 0 <= int(port) <= 65535:
        raise UsageError(f"{source} {text!r}: the port must be 0 (any free one) to 65535")
    if not _HOST_ONLY.fullmatch(host):
        raise UsageError(
            f"{source} {text!r}: {host!r} is not a host name or address (an IPv6 address "
            f"goes in brackets): {example}"
        )
    return host.removeprefix("[").removesuffix("]"), int(port)


def _allowed_hosts(values: _Values) -> tuple[str, ...]:
    """The extra Host names, lower-cased as the check compares them."""
    names: list[str] = []
    for item in values.items("allowed_host"):
        name = item.strip().lower()
        if not _HOST_HEADER.fullmatch(name):
            raise UsageError(
                f"--allowed-host {item!r} is not a host name (NAME or NAME:PORT, as a "
                "browser sends it in the Host header, e.g. fleet.example.com)"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def _optional_path(values: _Values, name: str) -> Path | None:
    text = values.text(name)
    return Path(text) if text else None


def dashboard_settings(
    flags: Flags, *, environ: Mapping[str, str] | None = None
) -> DashboardSettings | PasswordHashSettings:
    """Settings for ``fleet-deploy dashboard``, or for its ``--hash-password``, which needs
    nothing else. ``--allow-actions`` without the deploy key or the password file is an error
    naming the flag; without ``--allow-actions`` the action files are not even kept, so a
    read-only dashboard never loads a key that can deploy."""
    values = _Values(command("dashboard"), flags, environ)
    if values.switch("hash_password"):
        return PasswordHashSettings()
    listen = _dashboard_listen(values)
    allowed = _allowed_hosts(values)
    refresh = values.number("refresh")
    if refresh < _MIN_DASHBOARD_REFRESH:
        given = values.given("refresh")
        raise UsageError(
            f"{given[1] if given else '--refresh'} must be at least "
            f"{_MIN_DASHBOARD_REFRESH:g} second: each refresh discovers the whole fleet"
        )
    allow_actions = values.switch("allow_actions")
    if allow_actions:
        for name, why in (
            ("deploy_nkey_file", "the seed of the key actions are sent with"),
            (
                "password_file",
                "the login's password hash (make one with "
                "`fleet-deploy dashboard --hash-password`)",
            ),
        ):
            if values.text(name) is None:
                option = next(o for o in command("dashboard").options if o.name == name)
                raise UsageError(
                    f"--allow-actions needs {option.flag} PATH (or set {option.variable}): {why}"
                )
    return DashboardSettings(
        connection=_connection(values),
        listen=listen,
        allowed_hosts=allowed,
        refresh=refresh,
        allow_actions=allow_actions,
        deploy_nkey_file=_optional_path(values, "deploy_nkey_file") if allow_actions else None,
        password_file=_optional_path(values, "password_file") if allow_actions else None,
        totp_secret_file=_optional_path(values, "totp_secret_file") if allow_actions else None,
        session_key_file=_optional_path(values, "session_key_file") if allow_actions else None,
        log_level=values.choice("log_level") or DEFAULT_LOG_LEVEL,
    )


def sandbox_settings(flags: Flags) -> SandboxSettings:
    """Settings for ``fleet-deploy sandbox``, from flags alone: the sandbox reads no
    environment, so a real fleet's ``FLEET_DEPLOY_*`` variables cannot leak into it."""
    values = _Values(command("sandbox"), flags, {})
    count = values.integer("hosts")
    if not MIN_SANDBOX_HOSTS <= count <= MAX_SANDBOX_HOSTS:
        raise UsageError(
            f"--hosts must be {MIN_SANDBOX_HOSTS} to {MAX_SANDBOX_HOSTS} (a working test host, "
            f"a failing one and a prod host at least), not {count}"
        )
    once = values.switch("once")
    # The tour needs no fixed port, and a fixed one could collide with a real NATS server.
    port = values.integer("port", 0 if once else DEFAULT_SANDBOX_PORT)
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0 (any free port) to 65535, not {port}")
    cluster = values.integer("cluster")
    if not 1 <= cluster <= MAX_SANDBOX_CLUSTER:
        raise UsageError(
            f"--cluster must be 1 (a single nats-server) to {MAX_SANDBOX_CLUSTER}, not {cluster}"
        )
    delay = values.number("sim_delay", positive=False)
    if not 0 <= delay <= 60:
        raise UsageError(f"--sim-delay must be 0 to 60 seconds, not {values.text('sim_delay')!r}")
    directory = values.text("dir")
    dashboard_port = values.integer("dashboard_port", 0 if once else DEFAULT_DASHBOARD_PORT)
    if not 0 <= dashboard_port <= 65535:
        raise UsageError(
            f"--dashboard-port must be 0 (any free port) to 65535, not {dashboard_port}"
        )
    return SandboxSettings(
        hosts=count,
        port=port,
        cluster=cluster,
        directory=Path(directory) if directory else None,
        sim_delay=delay,
        once=once,
        dashboard_port=dashboard_port,
    )


def keygen_settings(flags: Flags) -> KeygenSettings:
    """Settings for ``fleet-deploy keygen``: a plain key name, never a path."""
    values = _Values(command("keygen"), flags, {})
    public, name = values.text("public"), values.text("name")
    if public is not None:
        if name is not None:
            raise UsageError(
                f"give a key NAME to write a new seed, or --public FILE to print the public "
                f"key of an existing one, not both (NAME {name!r}, --public {public!r})"
            )
        return KeygenSettings(path=Path(public), public=True)
    if name is None:
        raise UsageError(
            "NAME is required: the new seed is written to DIR/NAME.seed (or give --public "
            "FILE to print the public key of an existing seed)"
        )
    base = name.removesuffix(SEED_SUFFIX)
    if not _KEY_NAME.fullmatch(base):
        hint = (
            f"; to print the public key of an existing seed, use --public {name}"
            if "/" in name
            else ""
        )
        raise UsageError(
            f"invalid key name {name!r}: use 1-63 letters, digits, '-' or '_' (no path: "
            f"choose the folder with --dir){hint}"
        )
    return KeygenSettings(path=Path(values.required("dir")) / f"{base}{SEED_SUFFIX}")


def nats_config_settings(flags: Flags) -> NatsConfigSettings:
    """Settings for ``fleet-deploy nats-config``."""
    values = _Values(command("nats-config"), flags, {})
    output = values.text("output")
    layout = values.choice("layout")
    jetstream_dir = values.required("jetstream_dir")
    return NatsConfigSettings(
        inventory=values.required("inventory"),
        output=Path(output) if output else None,
        layout="homelab" if layout == "homelab" else DEFAULT_NATS_LAYOUT,
        jetstream_dir=None if jetstream_dir.strip().lower() in ("", "none") else jetstream_dir,
    )
