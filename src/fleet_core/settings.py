"""Settings: flags and environment become one frozen object per role, here and only here.

This is the one module that reads ``os.environ``. Each ``*_settings`` function takes the
parsed flags (``None`` where a flag was not given) and an environment mapping, applies
"flag, then ``FLEET_DEPLOY_*`` variable, then default", validates, and returns a frozen
dataclass. Defaults are the named constants below; the NixOS module does not repeat them.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleet_core.errors import UsageError
from fleet_core.logging import LOG_LEVELS
from fleet_core.rebuild import (
    DEFAULT_ACTION,
    DEFAULT_REVISION,
    Action,
    validate_flake_url,
)
from fleet_core.subjects import (
    DEFAULT_DEPLOY_SUBJECTS,
    DISCOVER_SUBJECT,
    Target,
    Tier,
    expand_templates,
    resolve_target,
    validate_hostname,
    validate_role,
    validate_subject,
)

__all__ = [
    "DEFAULT_DEPLOY_TIMEOUT",
    "DEFAULT_LISTENER_TIMEOUT",
    "DEFAULT_REBUILD_COMMAND",
    "DEFAULT_STATE_DIR",
    "ENV_PREFIX",
    "ConnectionSettings",
    "DeploySettings",
    "DeployTiming",
    "HostsSettings",
    "ListenerSettings",
    "McpSettings",
    "connection_settings",
    "deploy_settings",
    "hosts_settings",
    "listener_settings",
    "mcp_settings",
]

ENV_PREFIX = "FLEET_DEPLOY_"
DEFAULT_LISTENER_TIMEOUT = 600.0
DEFAULT_DEPLOY_TIMEOUT = 900.0
DEFAULT_REBUILD_COMMAND = "nixos-rebuild"
DEFAULT_STATE_DIR = Path("/var/lib/fleet-deploy")
DEFAULT_LOG_LEVEL = "info"
HEARTBEAT_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """Everything a listener needs; ``subjects`` are the expanded deploy subjects."""

    hostname: str
    tier: Tier
    nats_url: str
    nkey_file: Path
    flake_url: str
    role: str | None = None
    timeout: float = DEFAULT_LISTENER_TIMEOUT
    deploy_subject_templates: tuple[str, ...] = DEFAULT_DEPLOY_SUBJECTS
    discover_subject: str = DISCOVER_SUBJECT
    rebuild_command: tuple[str, ...] = (DEFAULT_REBUILD_COMMAND,)
    state_dir: Path = DEFAULT_STATE_DIR
    log_level: str = DEFAULT_LOG_LEVEL
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    progress_interval: float = 1.0  # at most one output-line progress message per interval
    kill_grace: float = 5.0
    jobs_kept: int = 50
    subjects: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        validate_hostname(self.hostname)
        if self.role is not None:
            validate_role(self.role)
        validate_flake_url(self.flake_url)
        validate_subject(self.discover_subject)
        if self.timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        if not self.rebuild_command:
            raise UsageError("--rebuild-command must name a program")
        if self.log_level not in LOG_LEVELS:
            raise UsageError(
                f"log level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)} "
                f"(--log-level or {ENV_PREFIX}LOG_LEVEL)"
            )
        subjects = expand_templates(
            self.deploy_subject_templates, hostname=self.hostname, tier=self.tier, role=self.role
        )
        if not subjects:
            raise UsageError("no deploy subject is left after expanding the templates")
        object.__setattr__(self, "subjects", subjects)


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Where a deployer connects and with which key."""

    nats_url: str
    nkey_file: Path


@dataclass(frozen=True, slots=True)
class DeployTiming:
    """How long a deployer waits for what (seconds). Tests shorten these, users rarely need to."""

    answer_within: float = 5.0  # an expected host that says nothing for this long is missing
    silence_limit: float = 3.5 * HEARTBEAT_INTERVAL  # a host that went quiet this long is lost
    discovery_first: float = 1.0  # discovery gives up when nobody answers within this
    discovery_quiet: float = 0.3  # ... and closes once replies stop for this long
    discovery_cap: float = 3.0  # ... and never takes longer than this


@dataclass(frozen=True, slots=True)
class DeploySettings:
    connection: ConnectionSettings
    target: Target
    revision: str = DEFAULT_REVISION
    action: Action = DEFAULT_ACTION
    timeout: float = DEFAULT_DEPLOY_TIMEOUT
    expect: tuple[str, ...] = ()
    json: bool = False
    timing: DeployTiming = DeployTiming()


@dataclass(frozen=True, slots=True)
class HostsSettings:
    connection: ConnectionSettings
    tier: Tier | None = None
    json: bool = False
    timing: DeployTiming = DeployTiming()


def _pick(flag: object, environ: Mapping[str, str], name: str) -> str | None:
    if flag is not None:
        return str(flag)
    value = environ.get(ENV_PREFIX + name)
    return value if value else None


def _required(value: str | None, flag: str, name: str) -> str:
    if value is None:
        raise UsageError(f"{flag} is required (or set {ENV_PREFIX}{name})")
    return value


def _seconds(value: str | None, flag: str, default: float) -> float:
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"{flag} must be a number of seconds, not {value!r}") from None
    if not seconds > 0:
        raise UsageError(f"{flag} must be a positive number of seconds, not {value!r}")
    return seconds


def _tier(value: str | None, flag: str) -> Tier:
    try:
        return Tier(_required(value, flag, "TIER"))
    except ValueError:
        raise UsageError(f"{flag} must be 'test' or 'prod', not {value!r}") from None


def _action(value: str | None) -> Action:
    if value is None:
        return DEFAULT_ACTION
    try:
        return Action(value)
    except ValueError:
        choices = ", ".join(a.value for a in Action)
        raise UsageError(f"--action {value!r} is not one of {choices}") from None


def connection_settings(
    *, nats_url: str | None, nkey_file: str | None, environ: Mapping[str, str] | None = None
) -> ConnectionSettings:
    env = os.environ if environ is None else environ
    return ConnectionSettings(
        nats_url=_required(_pick(nats_url, env, "NATS_URL"), "--nats-url", "NATS_URL"),
        nkey_file=Path(_required(_pick(nkey_file, env, "NKEY_FILE"), "--nkey-file", "NKEY_FILE")),
    )


def listener_settings(
    *,
    hostname: str | None,
    tier: str | None,
    nats_url: str | None,
    nkey_file: str | None,
    flake_url: str | None,
    role: str | None = None,
    timeout: str | float | None = None,
    deploy_subjects: Sequence[str] | None = None,
    discover_subject: str | None = None,
    rebuild_command: str | None = None,
    state_dir: str | None = None,
    log_level: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ListenerSettings:
    """Settings for ``fleet-deploy listener``; systemd's ``$STATE_DIRECTORY`` is honoured."""
    env = os.environ if environ is None else environ
    command = _pick(rebuild_command, env, "REBUILD_COMMAND") or DEFAULT_REBUILD_COMMAND
    try:
        argv = tuple(shlex.split(command))
    except ValueError as exc:
        raise UsageError(f"--rebuild-command {command!r} cannot be split: {exc}") from None
    state = _pick(state_dir, env, "STATE_DIR") or env.get("STATE_DIRECTORY", "").split(":")[0]
    return ListenerSettings(
        hostname=_required(_pick(hostname, env, "HOSTNAME"), "--hostname", "HOSTNAME"),
        tier=_tier(_pick(tier, env, "TIER"), "--tier"),
        nats_url=_required(_pick(nats_url, env, "NATS_URL"), "--nats-url", "NATS_URL"),
        nkey_file=Path(_required(_pick(nkey_file, env, "NKEY_FILE"), "--nkey-file", "NKEY_FILE")),
        flake_url=_required(_pick(flake_url, env, "FLAKE_URL"), "--flake-url", "FLAKE_URL"),
        role=_pick(role, env, "ROLE"),
        timeout=_seconds(_pick(timeout, env, "TIMEOUT"), "--timeout", DEFAULT_LISTENER_TIMEOUT),
        deploy_subject_templates=tuple(deploy_subjects)
        if deploy_subjects
        else DEFAULT_DEPLOY_SUBJECTS,
        discover_subject=_pick(discover_subject, env, "DISCOVER_SUBJECT") or DISCOVER_SUBJECT,
        rebuild_command=argv,
        state_dir=Path(state) if state else DEFAULT_STATE_DIR,
        log_level=_pick(log_level, env, "LOG_LEVEL") or DEFAULT_LOG_LEVEL,
    )


def deploy_settings(
    *,
    target: str,
    nats_url: str | None,
    nkey_file: str | None,
    branch: str | None = None,
    action: str | None = None,
    timeout: str | float | None = None,
    expect: Sequence[str] = (),
    json: bool = False,
    environ: Mapping[str, str] | None = None,
) -> DeploySettings:
    """Settings for ``fleet-deploy deploy``; resolves aliases from ``FLEET_DEPLOY_ALIAS_*``."""
    env = os.environ if environ is None else environ
    hosts = tuple(
        validate_hostname(name.strip())
        for item in expect
        for name in item.split(",")
        if name.strip()
    )
    return DeploySettings(
        connection=connection_settings(nats_url=nats_url, nkey_file=nkey_file, environ=env),
        target=resolve_target(target, env),
        revision=_pick(branch, env, "BRANCH") or DEFAULT_REVISION,
        action=_action(_pick(action, env, "ACTION")),
        timeout=_seconds(_pick(timeout, env, "TIMEOUT"), "--timeout", DEFAULT_DEPLOY_TIMEOUT),
        expect=hosts,
        json=json,
    )


def hosts_settings(
    *,
    nats_url: str | None,
    nkey_file: str | None,
    tier: str | None = None,
    json: bool = False,
    environ: Mapping[str, str] | None = None,
) -> HostsSettings:
    env = os.environ if environ is None else environ
    return HostsSettings(
        connection=connection_settings(nats_url=nats_url, nkey_file=nkey_file, environ=env),
        tier=_tier(tier, "--tier") if tier is not None else None,
        json=json,
    )


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class McpSettings:
    """The MCP server: a test-tier key always; the admin key only when explicitly enabled."""

    connection: ConnectionSettings
    admin_nkey_file: Path | None = None  # set only when --enable-admin was given
    http: tuple[str, int] | None = None  # serve streamable HTTP here instead of stdio
    timing: DeployTiming = DeployTiming()


def _flag(value: bool | None, environ: Mapping[str, str], name: str) -> bool:
    if value:
        return True
    raw = environ.get(ENV_PREFIX + name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise UsageError(f"{ENV_PREFIX}{name}={raw!r} is not a boolean: use true or false")


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--http {value!r} must be HOST:PORT, e.g. 127.0.0.1:8765")
    return host.strip("[]"), int(port)


def mcp_settings(
    *,
    nats_url: str | None,
    nkey_file: str | None,
    enable_admin: bool | None = None,
    admin_nkey_file: str | None = None,
    http: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> McpSettings:
    """Settings for ``fleet-mcp``; ``--enable-admin`` without an admin key is an error."""
    env = os.environ if environ is None else environ
    admin_enabled = _flag(enable_admin, env, "ENABLE_ADMIN")
    admin_key = _pick(admin_nkey_file, env, "ADMIN_NKEY_FILE")
    if admin_enabled and admin_key is None:
        raise UsageError(
            "--enable-admin needs the admin key: pass --admin-nkey-file PATH "
            f"(or set {ENV_PREFIX}ADMIN_NKEY_FILE)"
        )
    return McpSettings(
        connection=connection_settings(nats_url=nats_url, nkey_file=nkey_file, environ=env),
        admin_nkey_file=Path(admin_key) if admin_enabled and admin_key else None,
        http=_host_port(http) if http else None,
    )
