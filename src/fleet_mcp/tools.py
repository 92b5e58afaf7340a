"""The MCP tools, a thin layer over the deployer; ``server.build_server`` registers them.

    list_hosts(tier?)                                   read-only discovery
    deploy(hostname | all | role, branch, action)       the test tier, and only the test tier
    deploy_admin(tier, hostname | all | role, ...)      any tier, with the admin key
    deployment_status(deployment_id?, wait_seconds)     keeps waiting for a running deployment

Safety does not rest on the model behaving: ``deploy`` builds its subject with the test tier
fixed, so no argument can name production whatever the key could do, and the NATS
permissions of the test key stop it independently. Arguments are checked before anything is
sent; a mistake is a tool error that says what to send instead. Tools read the lifespan's
``FleetState``: they start deployments in its registry and follow them, nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import anyio
import structlog
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from fleet_core.deployer import Deployer
from fleet_core.errors import ConnectionFailed, FleetError, PermissionDenied, RequestRejected
from fleet_core.errors import UsageError as FleetUsageError
from fleet_core.rebuild import (
    DEFAULT_ACTION,
    DEFAULT_REVISION,
    Action,
    validate_action,
    validate_revision,
)
from fleet_core.settings import DEFAULT_DEPLOY_TIMEOUT
from fleet_core.subjects import Target, Tier
from fleet_mcp.deployments import KEEP_DEPLOYMENTS, Deployment, FleetState
from fleet_mcp.link import NatsLink
from fleet_mcp.models import DeploymentReport, HostsReport, deployment_report, hosts_report

__all__ = [
    "DEFAULT_WAIT",
    "MAX_WAIT",
    "deploy",
    "deploy_admin",
    "deployment_status",
    "list_hosts",
]

log = structlog.get_logger("fleet.mcp")

DEFAULT_WAIT = 300.0  # an ordinary rebuild finishes well within this
MAX_WAIT = DEFAULT_DEPLOY_TIMEOUT  # waiting longer than a deployment may last is pointless

_ACTIONS = [a.value for a in Action]

FleetContext = Context[FleetState, Any]

# -- parameters: the schema the model sees -----------------------------------------------------

Hostname = Annotated[
    str | None, Field(description="deploy one host, by the name list_hosts shows (e.g. 'web1')")
]
All = Annotated[bool, Field(description="deploy every host of the tier")]
Role = Annotated[str | None, Field(description="deploy every host that has this role (e.g. 'web')")]
Branch = Annotated[
    str,
    Field(description="branch, tag or full 40-character commit hash of the NixOS configuration"),
]
ActionName = Annotated[
    str,
    Field(
        description="nixos-rebuild action: switch (activate now and at boot), boot (at next "
        "boot), test (now, not at boot), dry-activate (show what would change), build (only "
        "build)",
        json_schema_extra={"enum": _ACTIONS},
    ),
]
WaitSeconds = Annotated[
    float,
    Field(
        ge=0,
        le=MAX_WAIT,
        description="how long this call waits for the result; when it runs out the deployment "
        "goes on and deployment_status waits for the rest. If your client cuts tool calls off "
        "after about a minute, pass 45.",
    ),
]
TierName = Annotated[
    str, Field(description="'test' or 'prod'", json_schema_extra={"enum": [t.value for t in Tier]})
]

_DEPLOY_ARGS = ("hostname", "all", "role", "branch", "action", "wait_seconds")

# -- tools ---------------------------------------------------------------------------------------


async def list_hosts(
    ctx: FleetContext,
    *,
    tier: Annotated[
        str | None,
        Field(
            description="only hosts of this tier: 'test' or 'prod' (default: both)",
            json_schema_extra={"enum": [*(t.value for t in Tier), None]},
        ),
    ] = None,
) -> HostsReport:
    """List the hosts whose listeners answer: name, tier, role, busy (deploying now), version.

    Read-only. Use it to find hostnames and roles before deploying. Hosts of a tier this
    server's key may not read (production, with the usual test key) are not listed.
    """
    _reject_unknown(ctx, "list_hosts", ("tier",))
    state = _state(ctx)
    chosen = _tier(tier) if tier else None
    deployer = await _deployer(state.test, "listed")
    try:
        hosts = await deployer.discover(chosen)
    except FleetError as exc:
        raise ToolError(f"Discovery failed: {exc}") from exc
    hidden = [t.value for t in Tier if t in deployer.unreadable_tiers and chosen in (None, t)]
    return hosts_report(hosts, chosen.value if chosen else None, hidden=hidden)


async def deploy(
    ctx: FleetContext,
    *,
    hostname: Hostname = None,
    all: All = False,  # the protocol's own word for a whole tier
    role: Role = None,
    branch: Branch = DEFAULT_REVISION,
    action: ActionName = DEFAULT_ACTION.value,
    wait_seconds: WaitSeconds = DEFAULT_WAIT,
) -> DeploymentReport:
    """Deploy a NixOS configuration to hosts of the TEST tier and report each host's outcome.

    Give exactly one target: hostname, all=true, or role. Production is out of reach of this
    tool whatever the arguments. Returns when every host has finished or wait_seconds runs out
    (then state is 'running': call deployment_status with the deployment_id to keep waiting).
    A failed host's message and log_tail carry nixos-rebuild's error.
    """
    _reject_unknown(ctx, "deploy", _DEPLOY_ARGS)
    state = _state(ctx)
    target = _target(Tier.TEST, hostname, all, role)
    return await _start(
        ctx, state, target, branch=branch, action=action, wait_seconds=wait_seconds, admin=False
    )


async def deploy_admin(
    ctx: FleetContext,
    *,
    tier: TierName,
    hostname: Hostname = None,
    all: All = False,  # the protocol's own word for a whole tier
    role: Role = None,
    branch: Branch = DEFAULT_REVISION,
    action: ActionName = DEFAULT_ACTION.value,
    wait_seconds: WaitSeconds = DEFAULT_WAIT,
) -> DeploymentReport:
    """Deploy to any tier, production included, with the admin key a person gave this server.

    Give the tier and exactly one target: hostname, all=true, or role. Prefer `deploy` for
    the test tier. Deploying to prod changes live systems: do it only when the user asked for
    that deployment. Returns like `deploy`.
    """
    _reject_unknown(ctx, "deploy_admin", ("tier", *_DEPLOY_ARGS))
    state = _state(ctx)
    if state.admin is None:  # registered only with an admin key; this is a second lock
        raise ToolError("deploy_admin is not enabled on this server")
    target = _target(_tier(tier), hostname, all, role)
    return await _start(
        ctx, state, target, branch=branch, action=action, wait_seconds=wait_seconds, admin=True
    )


async def deployment_status(
    ctx: FleetContext,
    *,
    deployment_id: Annotated[
        str | None,
        Field(
            description="the deployment_id a deploy call returned (default: the most recent "
            "deployment started through this server)"
        ),
    ] = None,
    wait_seconds: WaitSeconds = DEFAULT_WAIT,
) -> DeploymentReport:
    """Wait for a deployment started by deploy or deploy_admin, and report it like they do.

    Read-only: it never starts or stops anything. Returns at once for a finished deployment.
    """
    _reject_unknown(ctx, "deployment_status", ("deployment_id", "wait_seconds"))
    state = _state(ctx)
    wanted = (deployment_id or "").strip()
    deployment = state.registry.get(wanted) if wanted else state.registry.latest()
    if deployment is None:
        if wanted:
            raise ToolError(
                f"No deployment {wanted!r} is known to this server: use the deployment_id from "
                f"a deploy or deploy_admin result (the server keeps the last {KEEP_DEPLOYMENTS}), "
                "or omit it for the most recent deployment."
            )
        raise ToolError("No deployment has been started through this server yet.")
    return await _follow(ctx, state, deployment, wait_seconds)


# -- helpers ---------------------------------------------------------------------------------


def _state(ctx: FleetContext) -> FleetState:
    return ctx.request_context.lifespan_context


def _reject_unknown(ctx: FleetContext, tool: str, known: tuple[str, ...]) -> None:
    """Unknown arguments are refused, not ignored: a silently dropped ``tier`` misleads."""
    params: Mapping[str, Any] = ctx.request_context.params or {}
    arguments = params.get("arguments") or {}
    unknown = sorted(set(arguments) - set(known))
    if not unknown:
        return
    message = f"{tool} has no argument {', '.join(map(repr, unknown))}: it takes " + ", ".join(
        known
    )
    if tool == "deploy" and "tier" in unknown:
        message += (
            ". deploy always targets the test tier; production cannot be reached with it "
            "(only a person-enabled deploy_admin can)"
        )
    raise ToolError(message + ".")


def _tier(value: str) -> Tier:
    try:
        return Tier(value.strip())
    except ValueError:
        raise ToolError(f"tier must be 'test' or 'prod', not {value!r}") from None


def _target(tier: Tier, hostname: str | None, all_hosts: bool, role: str | None) -> Target:
    """Exactly one selector becomes a ``Target`` of ``tier``; anything else is a tool error."""
    host = (hostname or "").strip() or None
    group = (role or "").strip() or None
    chosen = [
        name for name, given in (("hostname", host), ("all", all_hosts), ("role", group)) if given
    ]
    choices = (
        f"hostname='web1' (one host), all=true (every {tier.value} host) or role='web' "
        f"(every {tier.value} host with that role)"
    )
    if not chosen:
        raise ToolError(f"Say which hosts to deploy: pass exactly one of {choices}.")
    if len(chosen) > 1:
        raise ToolError(f"Pass exactly one target, not {' and '.join(chosen)}: {choices}.")
    try:
        if host is not None:
            return Target.host(tier, host)
        if group is not None:
            return Target.role(tier, group)
        return Target.all(tier)
    except FleetUsageError as exc:
        hint = "pass all=true instead" if host == "all" else "list_hosts shows hostnames and roles"
        raise ToolError(f"{exc}: {hint}.") from None


def _request(branch: str, action: str) -> tuple[str, Action]:
    try:
        return validate_revision(branch.strip()), validate_action(action.strip())
    except RequestRejected as exc:
        raise ToolError(str(exc)) from None


async def _start(
    ctx: FleetContext,
    state: FleetState,
    target: Target,
    *,
    branch: str,
    action: str,
    wait_seconds: float,
    admin: bool,
) -> DeploymentReport:
    """Check the request, start the deployment in the server's registry, and follow it."""
    revision, chosen = _request(branch, action)
    link = state.admin if admin else state.test
    assert link is not None  # deploy_admin checked that the admin link exists
    deployer = await _deployer(link, "deployed")
    deployment = Deployment(target, revision=revision, action=chosen, admin=admin)
    state.registry.start(deployment, deployer, limit=state.deploy_timeout)
    return await _follow(ctx, state, deployment, wait_seconds)


async def _deployer(link: NatsLink, verb: str) -> Deployer:
    """The link's deployer, or a tool error that says what a person should check."""
    try:
        return await link.deployer()
    except ConnectionFailed as exc:
        reason = str(exc).rstrip()
        reason += "" if reason.endswith((".", "?", "!")) else "."
        raise ToolError(
            f"No NATS connection, so nothing was {verb}: {reason} This server keeps trying to "
            "connect in the background. If it keeps failing, ask the user to check that "
            "nats-server is running and reachable, that --nats-url (FLEET_DEPLOY_NATS_URL, now "
            f"{link.url}) is right, and that the NATS server accepts this server's key "
            f"{link.public_key}."
        ) from exc


class _Progress:
    """Progress notifications of one call: increasing numbers, the news in the message."""

    def __init__(self, ctx: FleetContext) -> None:
        self._ctx = ctx
        self._sent = 0
        self._broken = False

    async def __call__(self, message: str) -> None:
        if self._broken:
            return
        self._sent += 1
        try:
            await self._ctx.report_progress(self._sent, None, message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            self._broken = True  # the client went away; the waiting (and deployment) go on
            log.debug("progress_not_sent", error=type(exc).__name__)


async def _follow(
    ctx: FleetContext, state: FleetState, deployment: Deployment, wait_seconds: float
) -> DeploymentReport:
    await deployment.follow(wait_seconds, _Progress(ctx), heartbeat=state.heartbeat)
    if deployment.error is not None:
        raise ToolError(_failure(deployment, deployment.error))
    return deployment_report(
        deployment.current(),
        finished=deployment.done,
        test_only=not deployment.admin,
        wait_hint=wait_seconds or DEFAULT_WAIT,
    )


def _failure(deployment: Deployment, error: FleetError) -> str:
    what = f"{deployment.action.value} of {deployment.revision} to {deployment.target.subject}"
    if isinstance(error, PermissionDenied):
        key = "admin key" if deployment.admin else "key"
        return (
            f"The NATS server refused this MCP server's {key}, so nothing was deployed "
            f"({what}): {error}. The key's NATS permissions decide what it may reach; only a "
            "person can change them or give the server another key."
        )
    if isinstance(error, ConnectionFailed):
        return f"The NATS connection failed during the deployment ({what}): {error}"
    return f"The deployment ({what}) failed: {error}"
