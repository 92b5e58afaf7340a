"""The MCP server: ``build_server(settings)`` registers the tools of ``fleet_mcp.tools``.

``deploy_admin`` is registered only when the settings carry an admin key (``--enable-admin``
with ``--admin-nkey-file``), and both seeds are loaded here, so a bad key fails at start.
The lifespan owns a task group holding one NATS connection per key (``fleet_mcp.link``:
connected in the background, so ``tools/list`` never waits for NATS) and the deployments;
at exit it cancels the group, which stops following deployments (the hosts carry on) and
closes the connections.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import structlog
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

from fleet_core import __version__
from fleet_core.keys import load_seed
from fleet_core.settings import McpSettings
from fleet_mcp.deployments import DeploymentRegistry, FleetState
from fleet_mcp.link import NatsLink
from fleet_mcp.tools import (
    DEFAULT_WAIT,
    MAX_WAIT,
    deploy,
    deploy_admin,
    deployment_status,
    list_hosts,
)

__all__ = ["DEFAULT_WAIT", "MAX_WAIT", "SERVER_NAME", "build_server"]

log = structlog.get_logger("fleet.mcp")

SERVER_NAME = "fleet-deploy"

_SDK_LEVELS: dict[str, Literal["DEBUG", "INFO", "WARNING", "ERROR"]] = {
    "debug": "DEBUG",
    "info": "INFO",
    "warning": "WARNING",
    "error": "ERROR",
}
_READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)


def _instructions(admin: bool) -> str:
    lines = [
        "fleet-deploy deploys NixOS configurations to hosts over NATS.",
        "Hosts belong to a tier: 'test' (deploy freely) or 'prod' (production).",
        "Target exactly one of: hostname='web1', all=true (the whole tier) or role='web'.",
        "Call list_hosts first to see hostnames, tiers, roles and which hosts are busy.",
        "deploy reaches the test tier only. A deploy returns when every host has finished or "
        "wait_seconds runs out; then call deployment_status with the deployment_id (the "
        "deployment keeps running — never start it again). If your client cuts tool calls "
        "off after about a minute, pass wait_seconds=45.",
        "A failed host's message and log_tail hold nixos-rebuild's error: read them before "
        "retrying.",
    ]
    if admin:
        lines.append(
            "deploy_admin (tier='test' or 'prod') uses the admin key a person gave this "
            "server; deploy to prod only when the user asked for exactly that."
        )
    else:
        lines.append(
            "Production needs deploy_admin, which is not enabled here: a person must start the "
            "server with the admin key."
        )
    return "\n".join(lines)


def build_server(settings: McpSettings) -> MCPServer[FleetState]:
    """Build the server from settings; seeds are loaded now, so a bad key fails at start.

    NATS is not touched here: the lifespan connects in the background when a session starts.
    ``settings.log_level`` is also the SDK's and uvicorn's (stdlib logging, on stderr).
    Raises ``KeyFileError`` for a seed that is missing, unreadable or readable by others.
    """
    urls = settings.connection.nats_urls
    test_seed = load_seed(settings.connection.nkey_file)
    admin_seed = load_seed(settings.admin_nkey_file) if settings.admin_nkey_file else None

    @asynccontextmanager
    async def lifespan(_: MCPServer[FleetState]) -> AsyncIterator[FleetState]:
        test = NatsLink(urls, test_seed, name="fleet-mcp", timing=settings.timing)
        admin = (
            NatsLink(urls, admin_seed, name="fleet-mcp admin", timing=settings.timing)
            if admin_seed is not None
            else None
        )
        async with anyio.create_task_group() as tasks:
            for link in (test, admin):
                if link is not None:
                    tasks.start_soon(link.run, name=f"nats link {link.public_key}")
            yield FleetState(
                test=test,
                admin=admin,
                registry=DeploymentRegistry(tasks),
                heartbeat=settings.heartbeat,
                deploy_timeout=settings.deploy_timeout,
            )
            # Stop following deployments (the hosts carry on) and close the connections.
            tasks.cancel_scope.cancel()

    server: MCPServer[FleetState] = MCPServer(
        SERVER_NAME,
        version=__version__,
        instructions=_instructions(admin_seed is not None),
        lifespan=lifespan,
        log_level=_SDK_LEVELS.get(settings.log_level, "WARNING"),
    )
    tools: list[tuple[Callable[..., Any], str, ToolAnnotations]] = [
        (list_hosts, "List fleet hosts", _READ_ONLY),
        (deploy, "Deploy to the test tier", _destructive()),
        (deployment_status, "Follow a deployment", _READ_ONLY),
    ]
    if admin_seed is not None:
        tools.insert(2, (deploy_admin, "Deploy to any tier (admin key)", _destructive()))
    for fn, title, hints in tools:
        server.add_tool(fn, title=title, annotations=hints, structured_output=True)
    log.info(
        "mcp_server_built",
        nats_url=",".join(urls),
        key=test_seed.public_key,
        admin_key=admin_seed.public_key if admin_seed else None,
    )
    return server


def _destructive() -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
    )
