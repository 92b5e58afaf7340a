"""The settings objects: what each command runs with, frozen.

Each command receives one of these and nothing else: no code below a command reads the
environment or a flag. They are built in ``fleet_core.config.resolve`` (flags, then
``FLEET_DEPLOY_*`` variables, then homelab-deploy's, then defaults); each checks its own
invariants when made, so a test or the sandbox that builds one directly gets the same errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from fleet_core.config.options import (
    DEFAULT_BOOTED_SYSTEM,
    DEFAULT_BUILD_STEP_TIMEOUT,
    DEFAULT_BUILD_TIMEOUT,
    DEFAULT_CONFIRM_TIMEOUT,
    DEFAULT_CURRENT_SYSTEM,
    DEFAULT_DASHBOARD_HOST,
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_DASHBOARD_REFRESH,
    DEFAULT_DEPLOY_TIMEOUT,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_HISTORY_MAX_AGE,
    DEFAULT_HISTORY_MAX_BYTES,
    DEFAULT_HISTORY_MAX_MSGS,
    DEFAULT_HISTORY_REPLICAS,
    DEFAULT_KILL_GRACE,
    DEFAULT_LISTENER_TIMEOUT,
    DEFAULT_LOG_LEVEL,
    DEFAULT_LOGS_ANSWER_WITHIN,
    DEFAULT_MCP_HEARTBEAT,
    DEFAULT_NATS_LAYOUT,
    DEFAULT_NIX_COMMAND,
    DEFAULT_NIX_ENV_COMMAND,
    DEFAULT_NIX_STORE_COMMAND,
    DEFAULT_REBUILD_COMMAND,
    DEFAULT_REQUEST_TTL,
    DEFAULT_SANDBOX_CLUSTER,
    DEFAULT_SANDBOX_HOSTS,
    DEFAULT_SANDBOX_PORT,
    DEFAULT_SILENCE_LIMIT,
    DEFAULT_SIM_DELAY,
    DEFAULT_STATE_DIR,
    DEFAULT_STORE_DIR,
    DEFAULT_SYSTEM_PROFILE,
    DEFAULT_SYSTEMCTL_COMMAND,
    DEFAULT_VERSION_COMMAND,
    NatsLayout,
)
from fleet_core.config.parsers import check_public_key
from fleet_core.errors import UsageError
from fleet_core.protocol.actions import (
    DEFAULT_HOST_KIND,
    Action,
    HostKind,
    redact,
    validate_configuration,
    validate_flake_url,
)
from fleet_core.protocol.subjects import (
    DEFAULT_DEPLOY_SUBJECTS,
    DISCOVER_SUBJECT,
    Target,
    Tier,
    expand_templates,
    validate_hostname,
    validate_role,
    validate_subject,
)

if TYPE_CHECKING:  # the build models load only with a build command: not in a listener
    from fleet_core.build.protocol import BuildTarget

__all__ = [
    "HEARTBEAT_INTERVAL",
    "BuildSettings",
    "BuilderSettings",
    "CancelSettings",
    "ClosureSettings",
    "ConnectionSettings",
    "DashboardSettings",
    "DeploySettings",
    "DeployTiming",
    "FactsSettings",
    "HealthCheckSpec",
    "HistorySettings",
    "HostsSettings",
    "KeygenSettings",
    "ListenerSettings",
    "LogsSettings",
    "McpSettings",
    "NatsConfigSettings",
    "PasswordHashSettings",
    "RollbackSettings",
    "RolloutSettings",
    "SandboxSettings",
    "ShowSettings",
    "StatusSettings",
]

HEARTBEAT_INTERVAL = (
    DEFAULT_HEARTBEAT_INTERVAL  # the protocol's promise (fleet_core.config.options)
)


@dataclass(frozen=True, slots=True)
class HealthCheckSpec:
    """A health check as declared: ``argv`` run without a shell, ok when it exits 0 within
    ``timeout``; or the built-in ``system-running`` (``builtin``), ignoring ``ignore_units``.

    ``host.jobs.activation.HealthCheck`` has the same fields on purpose: the job runner that
    runs the checks loads that module by path, with the standard library alone, so it cannot
    import this one (``host.jobs.guard`` copies one into the other)."""

    name: str
    argv: tuple[str, ...] = ()
    timeout: float = 60.0
    builtin: str | None = None
    ignore_units: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RollbackSettings:
    """How a switch or test is guarded (``fleet_core.host.jobs.activation``): the links it
    records, the commands it runs to check and to go back, and whether it goes back."""

    enabled: bool = True
    system_profile: Path = DEFAULT_SYSTEM_PROFILE
    current_system: Path = DEFAULT_CURRENT_SYSTEM
    nix_env: tuple[str, ...] = (DEFAULT_NIX_ENV_COMMAND,)
    systemctl: tuple[str, ...] = (DEFAULT_SYSTEMCTL_COMMAND,)
    checks: tuple[HealthCheckSpec, ...] = ()
    confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT

    def __post_init__(self) -> None:
        if not self.confirm_timeout > 0:
            raise UsageError("--confirm-timeout must be a positive number of seconds")
        if not self.nix_env or not self.systemctl:
            raise UsageError("--nix-env-command and --systemctl-command must name a program")


@dataclass(frozen=True, slots=True)
class FactsSettings:
    """Where a listener measures its host's facts (``fleet_core.host.facts``): the links
    it reads, and the program that prints its version as JSON (empty: none is run, as on a
    Home Manager host). ``booted_system`` None: the host kind has no booted system.

    Apart from ``RollbackSettings`` although two links are the same: a Home Manager host
    has facts (its profile) but no rollback, and tests point each at what they simulate."""

    current_system: Path = DEFAULT_CURRENT_SYSTEM
    booted_system: Path | None = DEFAULT_BOOTED_SYSTEM
    system_profile: Path = DEFAULT_SYSTEM_PROFILE
    version_command: tuple[str, ...] = tuple(DEFAULT_VERSION_COMMAND.split())
    # Seconds between two looks at the links (a discovery within it is answered from the
    # cache); a job this listener ran, once over, makes the next discovery look at once.
    recheck_after: float = 1.0
    # Seconds a discovery answer waits for the version program after a link moved; past
    # them it goes without the version, which later answers carry (a hung program must not
    # keep the host out of discovery windows, which give up after 1 s of silence).
    version_grace: float = 0.5


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """Everything a listener needs; ``subjects`` are the expanded deploy subjects."""

    hostname: str
    tier: Tier
    nats_urls: tuple[str, ...]  # one server, or several of one cluster (parse_nats_urls)
    nkey_file: Path
    flake_url: str = field(repr=False)  # it may carry a token: never in a repr
    role: str | None = None
    host_kind: HostKind = (
        DEFAULT_HOST_KIND  # which program deploys it (fleet_core.protocol.actions)
    )
    configuration: str | None = None  # the flake attribute to build; None: the hostname
    timeout: float = DEFAULT_LISTENER_TIMEOUT
    deploy_subject_templates: tuple[str, ...] = DEFAULT_DEPLOY_SUBJECTS
    discover_subject: str = DISCOVER_SUBJECT
    rebuild_command: tuple[str, ...] = (DEFAULT_REBUILD_COMMAND,)
    state_dir: Path = DEFAULT_STATE_DIR
    log_level: str = DEFAULT_LOG_LEVEL
    heartbeat_interval: float = HEARTBEAT_INTERVAL  # progress at least this often while running
    progress_interval: float = 1.0  # at most one output-line progress message per interval
    # Where to serve Prometheus metrics (host "" is every address); None: not served.
    metrics_addr: tuple[str, int] | None = None
    kill_grace: float = DEFAULT_KILL_GRACE
    jobs_kept: int = 50
    rebuild_runner: str = "session"  # systemd or session: "auto" is resolved when built
    restart_if_changed: tuple[Path, ...] = ()
    rebuild_env: tuple[str, ...] = ()  # variables a transient unit takes from the listener's
    systemd_run: tuple[str, ...] = ("systemd-run",)
    # Transient units go to the user's own service manager (systemd-run --user): a Home
    # Manager listener run by systemd --user (in_user_manager).
    systemd_user: bool = False
    # Public keys of the deployers whose signed requests this host (its tier) accepts; when
    # there are none, unsigned requests are accepted (fleet_core.protocol.signing).
    trusted_deployer_keys: tuple[str, ...] = ()
    request_ttl: float = DEFAULT_REQUEST_TTL
    rollback: RollbackSettings = RollbackSettings()
    facts: FactsSettings = FactsSettings()  # what discovery reports of this host
    # A closure deploy (fleet_core.host.jobs.closure): what fetches its store path, and where
    # this host's store lies (a simulated host's is below its own root).
    nix_store_command: tuple[str, ...] = (DEFAULT_NIX_STORE_COMMAND,)
    store_dir: Path = DEFAULT_STORE_DIR
    subjects: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        validate_hostname(self.hostname)
        if not self.nats_urls:
            raise UsageError("--nats-url must name at least one NATS server")
        if self.role is not None:
            validate_role(self.role)
        if self.configuration is not None:
            validate_configuration(self.configuration, self.host_kind)
        validate_flake_url(self.flake_url)
        validate_subject(self.discover_subject)
        if self.timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        if not self.heartbeat_interval > 0:
            raise UsageError("--heartbeat-interval must be a positive number of seconds")
        if not self.rebuild_command:
            raise UsageError("--rebuild-command must name a program")
        _check_store(self.nix_store_command, self.store_dir)
        if self.rebuild_runner not in ("systemd", "session"):
            raise UsageError(f"--rebuild-runner {self.rebuild_runner!r} is not systemd or session")
        for path in self.restart_if_changed:
            if not path.is_absolute():
                raise UsageError(f"--restart-if-changed {str(path)!r} must be an absolute path")
        for key in self.trusted_deployer_keys:
            check_public_key(key, "--trusted-deployer-key")
        if not self.request_ttl > 0:
            raise UsageError("--request-ttl must be a positive number of seconds")
        subjects = expand_templates(
            self.deploy_subject_templates, hostname=self.hostname, tier=self.tier, role=self.role
        )
        if not subjects:
            raise UsageError("no deploy subject is left after expanding the templates")
        object.__setattr__(self, "subjects", subjects)

    @property
    def flake_configuration(self) -> str:
        """The flake attribute a deploy builds: ``configuration``, else the hostname."""
        return self.configuration if self.configuration is not None else self.hostname


def _check_store(nix_store_command: tuple[str, ...], store_dir: Path) -> None:
    """A closure deploy's settings (``ListenerSettings``): a fetch program, an absolute store."""
    if not nix_store_command:
        raise UsageError("--nix-store-command must name a program")
    if not store_dir.is_absolute():
        raise UsageError(f"--store-dir {str(store_dir)!r} must be an absolute path")


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Where a deployer connects (one server, or several of one cluster) and with which key."""

    nats_urls: tuple[str, ...]
    nkey_file: Path


@dataclass(frozen=True, slots=True)
class DeployTiming:
    """How long a deployer waits for what (seconds). Tests shorten these, users rarely need to."""

    answer_within: float = 5.0  # an expected host that says nothing for this long is missing
    silence_limit: float = DEFAULT_SILENCE_LIMIT  # a host quiet this long is asked, then lost
    discovery_first: float = 1.0  # discovery gives up when nobody answers within this
    discovery_quiet: float = 0.3  # ... and closes once replies stop for this long
    discovery_cap: float = 3.0  # ... and never takes longer than this
    # A request sent to a host's own subject that met "no responders" goes out once more
    # after this long: a listener still resubscribing after a NATS restart gets it (well
    # within answer_within, which still counts from the first send).
    resend_after: float = 1.0


@dataclass(frozen=True, slots=True)
class RolloutSettings:
    """A group deploy in steps (``--canary``, ``--batch``, ``--max-failures``, ``--shuffle``;
    the MCP tools' ``canary``, ``batch_size``/``batch_percent``, ``max_failures``).

    ``canary`` hosts go first, then batches of ``batch`` hosts (``batch_percent``: that
    percentage of the target's hosts, rounded up, at least one; None: all the rest at once).
    Once more than ``max_failures`` hosts have failed no further batch starts. ``seed``
    orders a ``shuffle`` (None: the deployer draws one and records it in the result).
    ``fleet_core.deploy.rollout`` turns this into batches; a deploy without it publishes
    once to the target's subject, as it always did.
    """

    canary: int = 0
    batch: int | None = None
    batch_percent: bool = False
    max_failures: int = 0
    shuffle: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.canary < 0:
            raise UsageError(f"--canary must be 0 or more hosts, not {self.canary}")
        if self.batch is not None and self.batch < 1:
            raise UsageError(f"--batch must be at least 1 host, not {self.batch_text}")
        if self.batch_percent and (self.batch is None or self.batch > 100):
            raise UsageError(
                f"--batch {self.batch_text} is more than all the hosts: use 1% to 100%"
            )
        if self.max_failures < 0:
            raise UsageError(f"--max-failures must be 0 or more hosts, not {self.max_failures}")
        if not self.canary and self.batch is None:
            raise UsageError(
                "--max-failures and --shuffle shape the steps of a rollout: give --canary K "
                "or --batch N (or N%) with them"
            )

    @property
    def batch_text(self) -> str | None:
        """The batch size as the user gives it: "2" or "50%"; None: the rest at once."""
        if self.batch is None:
            return None
        return f"{self.batch}%" if self.batch_percent else str(self.batch)


@dataclass(frozen=True, slots=True)
class ClosureSettings:
    """Where a closure deploy's systems come from (docs/closures.md): a build asked for now
    (``--build REPO``, of ``DeploySettings.revision``), a recorded build (``--from-build``)
    or one system given (``--store-path``). Exactly one of the three."""

    build_repo: str | None = None
    from_build: str | None = None
    store_path: str | None = None
    build_timeout: float = DEFAULT_BUILD_TIMEOUT

    def __post_init__(self) -> None:
        from fleet_core.build.protocol import validate_repo
        from fleet_core.protocol.closures import is_store_path
        from fleet_core.protocol.messages import is_request_id

        given = [
            flag
            for flag, value in (
                ("--build", self.build_repo),
                ("--from-build", self.from_build),
                ("--store-path", self.store_path),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise UsageError(
                f"{' and '.join(given) or 'nothing'}: a closure deploy takes its systems from "
                "one of --build REPO, --from-build BUILD_ID or --store-path PATH"
            )
        if self.build_repo is not None:
            validate_repo(self.build_repo)
        if self.from_build is not None and not is_request_id(self.from_build):
            raise UsageError(
                f"--from-build {self.from_build[:80]!r} is not a build id: ids are 1-64 "
                "letters, digits, '-' or '_', as build prints them"
            )
        if self.store_path is not None and not is_store_path(self.store_path):
            raise UsageError(
                f"--store-path {self.store_path[:80]!r} is not a store path: "
                "/nix/store/<32-character hash>-<name>, as nix build --print-out-paths prints it"
            )
        if not self.build_timeout > 0:
            raise UsageError("--build-timeout must be a positive number of seconds")


@dataclass(frozen=True, slots=True)
class DeploySettings:
    connection: ConnectionSettings
    target: Target
    revision: str
    action: Action
    timeout: float = DEFAULT_DEPLOY_TIMEOUT
    expect: tuple[str, ...] = ()
    json: bool = False
    timing: DeployTiming = DeployTiming()
    rollout: RolloutSettings | None = None  # None: one publish to the target's subject
    no_rollback: bool = False  # the hosts only report a failed activation, check or confirm
    closures: ClosureSettings | None = None  # None: the hosts evaluate the revision

    def __post_init__(self) -> None:
        if self.rollout is not None and not self.target.is_group:
            raise UsageError(
                f"--canary and --batch deploy a group in steps, and {self.target.subject} is "
                f"one host: target deploy.{self.target.tier.value}.all or "
                f"deploy.{self.target.tier.value}.role.<role>, or leave them out"
            )
        if (
            self.closures is not None
            and self.closures.store_path is not None
            and self.target.is_group
        ):
            raise UsageError(
                f"--store-path sends one host its own system, and {self.target.subject} is a "
                f"group: target one host (deploy.{self.target.tier.value}.<host>), or build "
                "each host's system with --build REPO"
            )
        if self.closures is not None and self.closures.store_path is not None:
            # Another host's system, or no system at all, is told before anything connects
            # (the host would refuse it too, but only after the deploy had begun).
            from fleet_core.protocol.closures import system_refusal

            refusal = system_refusal(self.closures.store_path, [self.target.name or ""])
            if refusal is not None:
                raise UsageError(f"--store-path: {refusal}")


@dataclass(frozen=True, slots=True)
class CancelSettings:
    connection: ConnectionSettings
    deployment_id: str
    tiers: tuple[Tier, ...] = (Tier.TEST, Tier.PROD)
    host: str | None = None
    json: bool = False
    timing: DeployTiming = DeployTiming()


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """``fleet-deploy history``: which deployments to list, or (``setup``) the retention
    to create the streams with. ``target`` is a deploy subject, already resolved."""

    connection: ConnectionSettings
    target: Target | None = None
    host: str | None = None
    tiers: tuple[Tier, ...] = (Tier.TEST, Tier.PROD)
    limit: int = DEFAULT_HISTORY_LIMIT
    inventory: Path | None = None  # names the signing keys, with the seeds beside the key
    setup: bool = False
    max_age: float = DEFAULT_HISTORY_MAX_AGE
    max_msgs: int = DEFAULT_HISTORY_MAX_MSGS
    max_bytes: int = DEFAULT_HISTORY_MAX_BYTES
    replicas: int = DEFAULT_HISTORY_REPLICAS
    json: bool = False
    timing: DeployTiming = DeployTiming()


@dataclass(frozen=True, slots=True)
class ShowSettings:
    """``fleet-deploy show``: one deployment by id."""

    connection: ConnectionSettings
    deployment_id: str
    tiers: tuple[Tier, ...] = (Tier.TEST, Tier.PROD)
    inventory: Path | None = None  # names the signing keys, with the seeds beside the key
    json: bool = False
    timing: DeployTiming = DeployTiming()


@dataclass(frozen=True, slots=True)
class LogsSettings:
    """``fleet-deploy logs``: which job's log, on which host, from where, for how long."""

    connection: ConnectionSettings
    deployment_id: str
    host: str
    tier: Tier = Tier.TEST
    follow: bool = False
    offset: int = 0
    answer_within: float = DEFAULT_LOGS_ANSWER_WITHIN
    json: bool = False

    def __post_init__(self) -> None:
        validate_hostname(self.host)
        if self.offset < 0:
            raise UsageError(f"--offset must be 0 or more bytes, not {self.offset}")


@dataclass(frozen=True, slots=True)
class HostsSettings:
    connection: ConnectionSettings
    tier: Tier | None = None
    json: bool = False
    timing: DeployTiming = DeployTiming()


@dataclass(frozen=True, slots=True)
class StatusSettings:
    """``fleet-deploy status``: whose hosts (None: every host this key may read), and the
    revision they should run (None: the one last deployed to them)."""

    connection: ConnectionSettings
    target: Target | None = None
    revision: str | None = None
    json: bool = False
    timing: DeployTiming = DeployTiming()


@dataclass(frozen=True, slots=True)
class BuilderSettings:
    """A builder: its repositories by name (their URLs may carry a token: never in a repr)."""

    name: str
    nats_urls: tuple[str, ...]
    nkey_file: Path
    repos: Mapping[str, str] = field(repr=False)
    cache: str | None = None
    nix_command: tuple[str, ...] = (DEFAULT_NIX_COMMAND,)
    timeout: float = DEFAULT_BUILD_STEP_TIMEOUT
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    progress_interval: float = 1.0  # at most one output-line progress message per interval
    kill_grace: float = DEFAULT_KILL_GRACE
    log_level: str = DEFAULT_LOG_LEVEL

    def __post_init__(self) -> None:
        from fleet_core.build.protocol import validate_repo

        if not self.repos:
            raise UsageError(
                "give the builder a repository: --repo NAME=FLAKE_URL, or --repos-file PATH"
            )
        for name, url in self.repos.items():
            validate_repo(name)
            validate_flake_url(url)
        if not self.nix_command:
            raise UsageError("--nix-command must name a program")
        if self.cache is not None and redact(self.cache) != self.cache:
            raise UsageError(
                "--cache must not carry user:secret@: every deployer reads where closures were "
                "copied. Give nix its credentials instead (netrc-file, AWS_* or an ssh key)"
            )
        if not self.timeout > 0:
            raise UsageError("--timeout must be a positive number of seconds")
        if not self.heartbeat_interval > 0:
            raise UsageError("--heartbeat-interval must be a positive number of seconds")
        object.__setattr__(self, "repos", MappingProxyType(dict(self.repos)))


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """``fleet-deploy build``: which repository and hosts, at which revision."""

    connection: ConnectionSettings
    target: BuildTarget
    revision: str
    timeout: float = DEFAULT_BUILD_TIMEOUT
    json: bool = False
    timing: DeployTiming = DeployTiming()


@dataclass(frozen=True, slots=True)
class McpSettings:
    """The MCP server: a test-tier key always; the admin key only when explicitly enabled."""

    connection: ConnectionSettings
    admin_nkey_file: Path | None = None  # set only when --enable-admin was given
    http: tuple[str, int] | None = None  # serve streamable HTTP here instead of stdio
    log_level: str = DEFAULT_LOG_LEVEL
    heartbeat: float = DEFAULT_MCP_HEARTBEAT
    deploy_timeout: float = DEFAULT_DEPLOY_TIMEOUT
    enable_builds: bool = False  # build and build_status, with the test key
    timing: DeployTiming = DeployTiming()


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """``fleet-deploy dashboard``: a page of the fleet, read with ``connection``'s key (an
    observer's, ideally: it can deploy nothing), served on ``listen``.

    Actions (deploy, cancel, health check) exist only with ``allow_actions``, behind a login:
    the password hash in ``password_file`` (``--hash-password`` makes one), the TOTP secret in
    ``totp_secret_file`` when given, sessions signed with the key in ``session_key_file``
    (None: a random key per run, so a restart logs everyone out). They are sent with the
    key in ``deploy_nkey_file``, and can do no more than it may."""

    connection: ConnectionSettings
    listen: tuple[str, int] = (DEFAULT_DASHBOARD_HOST, DEFAULT_DASHBOARD_PORT)  # 0: any port
    allowed_hosts: tuple[str, ...] = ()  # more Host names to accept (a reverse proxy's)
    refresh: float = DEFAULT_DASHBOARD_REFRESH  # seconds between two discoveries of the rows
    allow_actions: bool = False
    deploy_nkey_file: Path | None = None
    password_file: Path | None = None
    totp_secret_file: Path | None = None
    session_key_file: Path | None = None
    session_ttl: float = 12 * 3600.0
    log_level: str = DEFAULT_LOG_LEVEL
    timing: DeployTiming = DeployTiming()


@dataclass(frozen=True, slots=True)
class PasswordHashSettings:
    """``fleet-deploy dashboard --hash-password``: read a password, print its hash, exit.

    A settings object of its own, not a flag of ``DashboardSettings``: hashing a password
    needs no NATS URL or key, and must not ask for them."""


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """``port`` 0 means any free port; ``directory`` None means a temporary one; ``cluster``
    is how many routed nats-servers (1: a single server)."""

    hosts: int = DEFAULT_SANDBOX_HOSTS
    port: int = DEFAULT_SANDBOX_PORT
    cluster: int = DEFAULT_SANDBOX_CLUSTER
    directory: Path | None = None
    sim_delay: float = DEFAULT_SIM_DELAY
    once: bool = False
    # The dashboard's port on 127.0.0.1; a busy one falls back to a free port. 0: any.
    dashboard_port: int = DEFAULT_DASHBOARD_PORT


@dataclass(frozen=True, slots=True)
class KeygenSettings:
    """``path`` is where the new seed goes (``<dir>/<name>.seed``) or, when ``public``
    is true, the existing seed whose public key is asked for."""

    path: Path
    public: bool = False


@dataclass(frozen=True, slots=True)
class NatsConfigSettings:
    """``inventory`` is a path or ``-`` (stdin); ``output`` None means stdout."""

    inventory: str
    output: Path | None = None
    layout: NatsLayout = DEFAULT_NATS_LAYOUT
    jetstream_dir: str | None = None  # None: no jetstream {} block
