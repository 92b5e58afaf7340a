"""The MCP tools, a thin layer over the deployer; ``server.build_server`` registers them.

    list_hosts(tier?)                                   read-only discovery
    deploy(hostname | all | role, branch, action)       the test tier, and only the test tier
    deploy_admin(tier, hostname | all | role, ...)      any tier, with the admin key
    deployment_status(deployment_id?, wait_seconds)     keeps waiting for a running deployment
    list_deployments(limit)                             read-only: this server's deployments
    build(repo, target, branch, wait_seconds)           --enable-builds: the builder builds
    build_status(build_id?, wait_seconds)               keeps waiting for a running build

The same state is readable as MCP resources (``fleet://deployments/{id}``, through
``read_deployment``), so a client can reattach to a deployment without the model keeping its
id. A tool's text is ``models.report_text``: small whatever the fleet; the structured
content has everything.

Safety does not rest on the model behaving: ``deploy`` builds its subject with the test tier
fixed, so no argument can name production whatever the key could do, and the NATS
permissions of the test key stop it independently. Arguments are checked before anything is
sent; a mistake is a tool error that says what to send instead. Tools read the lifespan's
``FleetState``: they start deployments in its registry and follow them, nothing more.

``build`` asks the fleet's builder (``fleet-deploy builder``) for system closures with the
test key: a build changes no host, and the NATS permissions let every deployer key ask for
one. Builds run in a registry of their own (``fleet_mcp.builds``) and are followed like
deployments; the two tools exist only with ``--enable-builds``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import anyio
import structlog
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, Field

from fleet_core.builds import ALL_HOSTS, BuildTarget, parse_build_target
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
from fleet_mcp.builds import KEEP_BUILDS, Build, BuildRegistry
from fleet_mcp.deployments import KEEP_DEPLOYMENTS, Deployment, FleetState
from fleet_mcp.link import NatsLink
from fleet_mcp.models import (
    DEFAULT_WAIT,
    BuildReport,
    DeploymentReport,
    DeploymentsReport,
    FleetHost,
    HostsReport,
    build_report,
    build_text,
    deployment_brief,
    deployment_report,
    deployments_report,
    hosts_report,
    hosts_text,
    report_text,
)

__all__ = [
    "DEFAULT_WAIT",
    "MAX_WAIT",
    "RECENT",
    "build",
    "build_status",
    "deploy",
    "deploy_admin",
    "deployment_status",
    "list_deployments",
    "list_hosts",
    "read_deployment",
]

log = structlog.get_logger("fleet.mcp")

MAX_WAIT = DEFAULT_DEPLOY_TIMEOUT  # waiting longer than a deployment may last is pointless
RECENT = 10  # deployments list_deployments shows unless asked for more
MAX_LISTED = 40  # and at most: forty briefs are about 15 KB of text

_ACTIONS = [a.value for a in Action]

FleetContext = Context[FleetState, Any]

# -- parameters: the schema the model sees -----------------------------------------------------

# strict=True: a model's "yes" or 1 for a boolean is a mistake to report, not a whole tier
# to deploy. (The SDK leaves JSON-looking strings alone for scalars, so "true" stays a string.)
Hostname = Annotated[
    str | None,
    Field(strict=True, description="deploy one host, by the name list_hosts shows (e.g. 'web1')"),
]
All = Annotated[
    bool, Field(strict=True, description="true: deploy every host of the tier (a JSON boolean)")
]
Role = Annotated[
    str | None,
    Field(strict=True, description="deploy every host that has this role (e.g. 'web')"),
]
Branch = Annotated[
    str,
    Field(
        strict=True,
        description="branch, tag or full 40-character commit hash of the NixOS configuration",
    ),
]
ActionName = Annotated[
    str,
    Field(
        strict=True,
        description="nixos-rebuild action: switch (activate now and at boot), boot (at next "
        "boot), test (now, not at boot), dry-activate (show what would change), build (only "
        "build)",
        json_schema_extra={"enum": _ACTIONS},
    ),
]
WaitSeconds = Annotated[
    float,
    Field(
        strict=True,
        ge=0,
        le=MAX_WAIT,
        description=f"seconds this call waits for the result (default {DEFAULT_WAIT:g}, which "
        "fits clients that cut calls off at 60 s); when it runs out the deployment goes on "
        "and deployment_status waits for the rest",
    ),
]
TierName = Annotated[
    str,
    Field(
        strict=True,
        description="'test' or 'prod'",
        json_schema_extra={"enum": [t.value for t in Tier]},
    ),
]

_DEPLOY_ARGS = ("hostname", "all", "role", "branch", "action", "wait_seconds")

RepoName = Annotated[
    str,
    Field(
        strict=True,
        description="the repository to build, by the name the builder was given for it "
        "(its --repo NAME=FLAKE_URL), e.g. 'nixos'",
    ),
]
BuildHost = Annotated[
    str,
    Field(
        strict=True,
        description="'all' (every nixosConfiguration of the flake) or the name of one, e.g. 'web1'",
    ),
]
BuildWaitSeconds = Annotated[
    float,
    Field(
        strict=True,
        ge=0,
        le=MAX_WAIT,
        description=f"seconds this call waits for the result (default {DEFAULT_WAIT:g}, which "
        "fits clients that cut calls off at 60 s); when it runs out the build goes on and "
        "build_status waits for the rest",
    ),
]

# -- tools ---------------------------------------------------------------------------------------
# Docstrings are the tools' descriptions (``server`` strips their indentation): plain sentences
# for a model, no markup.

DeployResult = Annotated[CallToolResult, DeploymentReport]


async def list_hosts(
    ctx: FleetContext,
    *,
    tier: Annotated[
        str | None,
        Field(
            strict=True,
            description="only hosts of this tier: 'test' or 'prod' (default: every tier this "
            "server shows)",
            json_schema_extra={"enum": [*(t.value for t in Tier), None]},
        ),
    ] = None,
) -> Annotated[CallToolResult, HostsReport]:
    """List the hosts whose listeners answer: name, tier, role, busy (deploying now),
    listener version, and which of this server's tools can deploy each (reachable_by).

    Read-only. Use it to find hostnames and roles before deploying. Without the admin key
    this server shows and deploys the test tier only.
    """
    state = _begin(ctx, "list_hosts", ("tier",))
    chosen = _tier(tier) if tier else None
    admin = state.admin is not None
    if not admin and chosen not in (None, Tier.TEST):
        raise ToolError(
            f"This server shows and deploys the test tier only, so it does not list {tier} "
            "hosts. Production needs deploy_admin, which a person enables by starting the "
            "server with the admin key."
        )
    link = state.admin if state.admin is not None else state.test
    deployer = await _deployer(link, "listed")
    try:
        found = await deployer.discover(chosen if admin else Tier.TEST)
    except FleetError as exc:
        raise ToolError(f"Discovery failed: {exc}") from exc
    hosts = [
        FleetHost(**host.model_dump(), reachable_by=_reachable_by(host.tier, admin=admin))
        for host in found
    ]
    hidden = [] if admin or chosen is not None else [Tier.PROD.value]
    hidden += [t.value for t in deployer.unreadable_tiers if admin and chosen in (None, t)]
    report = hosts_report(hosts, chosen.value if chosen else None, hidden=hidden)
    return _result(report, hosts_text(report))


async def deploy(
    ctx: FleetContext,
    *,
    hostname: Hostname = None,
    all: All = False,  # the protocol's own word for a whole tier
    role: Role = None,
    branch: Branch = DEFAULT_REVISION,
    action: ActionName = DEFAULT_ACTION.value,
    wait_seconds: WaitSeconds = DEFAULT_WAIT,
) -> DeployResult:
    """Deploy a NixOS configuration to hosts of the TEST tier and report each host's outcome.

    Give exactly one target: hostname, all=true, or role. Production is out of reach of this
    tool whatever the arguments. Returns when every host has finished or wait_seconds runs
    out; then state is 'running' and the deployment goes on: call deployment_status with the
    deployment_id, never deploy again. A failed host's message and log_tail carry
    nixos-rebuild's error.
    """
    state = _begin(ctx, "deploy", _DEPLOY_ARGS)
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
) -> DeployResult:
    """Deploy to any tier, production included, with the admin key a person gave this server.

    Give the tier and exactly one target: hostname, all=true, or role. Prefer deploy for the
    test tier. Deploying to prod changes live systems: do it only when the user asked for
    that deployment. Returns like deploy.
    """
    state = _begin(ctx, "deploy_admin", ("tier", *_DEPLOY_ARGS))
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
            strict=True,
            description="the deployment_id a deploy call returned (default: the newest "
            "deployment still running, else the newest one)",
        ),
    ] = None,
    wait_seconds: WaitSeconds = DEFAULT_WAIT,
) -> DeployResult:
    """Wait for a deployment started by deploy or deploy_admin, and report it like they do.

    Read-only: it never starts or stops anything. Returns at once for a finished deployment.
    Call it first after a deploy call that timed out or failed: the deployment may be
    running. Without a deployment_id it follows the newest deployment still running, else
    the newest one; list_deployments shows the others.
    """
    state = _begin(ctx, "deployment_status", ("deployment_id", "wait_seconds"))
    wanted = (deployment_id or "").strip()
    deployment = state.registry.get(wanted) if wanted else state.registry.latest()
    if deployment is None:
        if wanted:
            raise ToolError(
                f"No deployment {wanted!r} is known to this server: it keeps up to "
                f"{KEEP_DEPLOYMENTS} deployments, and forgets all of them when it restarts. "
                "Next step: call list_deployments for the ids it knows, or list_hosts to see "
                "which hosts are busy deploying now."
            )
        raise ToolError(
            "No deployment has been started through this server since it started. Next "
            "step: call list_hosts to see which hosts are busy deploying now."
        )
    return await _follow(ctx, state, deployment, wait_seconds)


async def list_deployments(
    ctx: FleetContext,
    *,
    limit: Annotated[
        int,
        Field(strict=True, ge=1, le=MAX_LISTED, description="how many to list"),
    ] = RECENT,
) -> Annotated[CallToolResult, DeploymentsReport]:
    """List the deployments started through this server, newest first: id, state, target,
    action, revision, when it started and its host counts.

    Read-only. Use it to find a deployment_id for deployment_status, for example after your
    client lost a deploy call's result.
    """
    state = _begin(ctx, "list_deployments", ("limit",))
    briefs = [
        deployment_brief(
            d.current(),
            finished=d.done,
            started=d.started_wall,
            error=_failure(d, d.error) if d.error is not None else None,
        )
        for d in state.registry.recent(limit)
    ]
    report = deployments_report(briefs, kept=KEEP_DEPLOYMENTS)
    return _result(report, report.model_dump_json())


async def read_deployment(deployment_id: str, ctx: FleetContext) -> str:
    """One deployment as JSON, as deployment_status reports it, without waiting; one that
    failed as a whole (refused, or its connection lost) is an error saying why."""
    deployment = _state(ctx).registry.get(deployment_id.strip())
    if deployment is None:
        raise ResourceError(
            f"No deployment {deployment_id!r} is known to this server (it keeps up to "
            f"{KEEP_DEPLOYMENTS} deployments while it runs)."
        )
    if deployment.error is not None:  # what deployment_status would raise, not a report
        raise ResourceError(_failure(deployment, deployment.error))
    return _report(deployment).model_dump_json()


BuildToolResult = Annotated[CallToolResult, BuildReport]


async def build(
    ctx: FleetContext,
    *,
    repo: RepoName,
    target: BuildHost = ALL_HOSTS,
    branch: Branch = DEFAULT_REVISION,
    wait_seconds: BuildWaitSeconds = DEFAULT_WAIT,
) -> BuildToolResult:
    """Ask the fleet's builder to build the NixOS system closures of a repository's hosts,
    and report each host's outcome.

    The builder pins the branch to one commit, builds every host of the flake (target='all')
    or one host, and copies each closure to its binary cache, so that a deploy afterwards
    downloads it instead of building. A build changes no host, so this server asks with its
    test-tier key. Returns when the build is over or wait_seconds runs out; then state is
    'running' and the build goes on: call build_status with the build_id, never build again.
    A failed host's message and log_tail carry nix's error.
    """
    state = _begin(ctx, "build", ("repo", "target", "branch", "wait_seconds"))
    builds = _builds(state, "build")
    chosen = _build_target(repo, target)
    revision = _revision(branch)
    deployer = await _deployer(state.test, "built")
    started = Build(chosen, revision=revision)
    builds.start(started, deployer, limit=state.build_timeout)
    return await _follow_build(ctx, state, builds, started, wait_seconds)


async def build_status(
    ctx: FleetContext,
    *,
    build_id: Annotated[
        str | None,
        Field(
            strict=True,
            description="the build_id a build call returned (default: the newest build still "
            "running, else the newest one)",
        ),
    ] = None,
    wait_seconds: BuildWaitSeconds = DEFAULT_WAIT,
) -> BuildToolResult:
    """Wait for a build started by build, and report it like build does.

    Read-only: it never starts or stops anything. Returns at once for a finished build. Call
    it first after a build call that timed out or failed: the build may be running. Without a
    build_id it follows the newest build still running, else the newest one.
    """
    state = _begin(ctx, "build_status", ("build_id", "wait_seconds"))
    builds = _builds(state, "build_status")
    wanted = (build_id or "").strip()
    followed = builds.get(wanted) if wanted else builds.latest()
    if followed is None:
        if wanted:
            raise ToolError(
                f"No build {wanted!r} is known to this server: it keeps up to {KEEP_BUILDS} "
                "builds, and forgets all of them when it restarts. Next step: call "
                "build_status without build_id for the newest build, or build to start one."
            )
        raise ToolError(
            "No build has been started through this server since it started. Next step: "
            "call build to start one."
        )
    return await _follow_build(ctx, state, builds, followed, wait_seconds)


# -- helpers ---------------------------------------------------------------------------------


def _state(ctx: FleetContext) -> FleetState:
    return ctx.request_context.lifespan_context


def _begin(ctx: FleetContext, tool: str, known: tuple[str, ...]) -> FleetState:
    """Every tool's first step: count the call (over HTTP), refuse unknown arguments."""
    state = _state(ctx)
    if state.metrics is not None:
        state.metrics.tool_called(tool)
    _reject_unknown(ctx, tool, known)
    return state


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
    if tool == "build" and {"hostname", "all", "role"} & set(unknown):
        message += ". Name the hosts with target: 'all', or one host such as 'web1'"
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


def _revision(branch: str) -> str:
    try:
        return validate_revision(branch.strip())
    except RequestRejected as exc:
        raise ToolError(str(exc)) from None


def _request(branch: str, action: str) -> tuple[str, Action]:
    try:
        return validate_revision(branch.strip()), validate_action(action.strip())
    except RequestRejected as exc:
        raise ToolError(str(exc)) from None


def _builds(state: FleetState, tool: str) -> BuildRegistry:
    """The build registry; registered only with --enable-builds, this is a second lock."""
    if state.builds is None:
        raise ToolError(
            f"{tool} is not enabled on this server: a person enables it with --enable-builds"
        )
    return state.builds


def _build_target(repo: str, target: str) -> BuildTarget:
    """A repository and 'all' or one host, as one subject's tokens; else a tool error."""
    try:
        return parse_build_target(repo.strip(), target.strip())
    except FleetUsageError as exc:
        raise ToolError(
            f"{exc}. Pass repo as the name the builder knows the repository by (its --repo "
            "NAME=FLAKE_URL) and target as 'all' or one host's configuration name, such as "
            "'web1'."
        ) from None


def _reachable_by(tier: str, *, admin: bool) -> list[str]:
    tools = ["deploy"] if tier == Tier.TEST.value else []
    return [*tools, "deploy_admin"] if admin else tools


def _result(report: BaseModel, text: str) -> CallToolResult:
    """The tool result: ``report`` as structured content, ``text`` for the model."""
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=report.model_dump(mode="json"),
    )


async def _start(
    ctx: FleetContext,
    state: FleetState,
    target: Target,
    *,
    branch: str,
    action: str,
    wait_seconds: float,
    admin: bool,
) -> CallToolResult:
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
) -> CallToolResult:
    await deployment.follow(wait_seconds, _Progress(ctx), heartbeat=state.heartbeat)
    if deployment.error is not None:
        raise ToolError(_failure(deployment, deployment.error))
    return _result(report := _report(deployment), report_text(report))


async def _follow_build(
    ctx: FleetContext,
    state: FleetState,
    builds: BuildRegistry,
    followed: Build,
    wait_seconds: float,
) -> CallToolResult:
    await followed.follow(wait_seconds, _Progress(ctx), heartbeat=state.heartbeat)
    if followed.error is not None:
        raise ToolError(_build_failure(followed, followed.error))
    other = builds.running(besides=followed)
    report = build_report(
        followed.current(), finished=followed.done, other_running=other.id if other else None
    )
    return _result(report, build_text(report))


def _build_failure(followed: Build, error: FleetError) -> str:
    """A build that ended in an error rather than a result: what, its id, what next."""
    what = f"build {followed.id} ({followed.target.subject} at {followed.revision})"
    if isinstance(error, PermissionDenied):
        return (
            f"The NATS server refused this MCP server's key, so nothing was built by {what}: "
            f"{error}. Next step: none from here — the key's NATS permissions decide what it "
            "may ask for (nats-config lets every deployer key publish build.*.*); only a "
            "person can change them or give the server another key."
        )
    if isinstance(error, ConnectionFailed):
        return (
            f"The NATS connection failed during {what}: {error}. The builder may still be "
            "building. Next step: once NATS is back, call build again with the same "
            "arguments; while the builder is still at this build it refuses the new one as "
            "already_running (then wait and ask again), and nix keeps what it already built."
        )
    return (
        f"{what[0].upper()}{what[1:]} failed: {error}. Next step: call build again if the "
        "build is still wanted (nix keeps what the builder already built)."
    )


def _report(deployment: Deployment) -> DeploymentReport:
    return deployment_report(
        deployment.current(), finished=deployment.done, test_only=not deployment.admin
    )


def _failure(deployment: Deployment, error: FleetError) -> str:
    """A deployment that ended in an error: what happened, its id, and what to do next."""
    what = (
        f"deployment {deployment.id} ({deployment.action.value} of {deployment.revision} to "
        f"{deployment.target.subject})"
    )
    if isinstance(error, PermissionDenied):
        key = "admin key" if deployment.admin else "key"
        return (
            f"The NATS server refused this MCP server's {key}, so nothing was deployed by "
            f"{what}: {error}. Next step: none from here — the key's NATS permissions decide "
            "what it may reach; only a person can change them or give the server another key."
        )
    if isinstance(error, ConnectionFailed):
        return (
            f"The NATS connection failed during {what}: {error}. The hosts may still be "
            f"deploying. Next step: call deployment_status with deployment_id="
            f"{deployment.id!r}, then list_hosts to see which hosts are busy, before deploying "
            "again."
        )
    return (
        f"{what[0].upper()}{what[1:]} failed: {error}. Next step: call list_hosts to see which "
        "hosts are busy before deploying again."
    )
