"""fleet-deploy's MCP server: safe AI-assisted deploys over the ``fleet_core`` deployer.

``build_server(settings)`` (from ``fleet_mcp.server``) builds it; ``fleet-mcp`` serves it.
Importing this package is cheap: the MCP stack loads only when the server module does.

Modules:
    cli          ``fleet-mcp`` (and ``fleet-deploy mcp``): flags, settings, stdio or HTTP
    server       builds the server: tools, resources, prompt, instructions, lifespan
    tools/       one module per tool family; ``deploy`` pins the test tier
    reports/     what the tools return, within a text budget, and their progress notes
    registry     deployments and builds that outlive the call that started them
    deployments  one deployment, and how a caller waits on it
    builds       one build, and how a caller waits on it
    state        what the tools share for the server's lifetime
    link         one NATS connection per key
    prompts      the deploy_safely prompt
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleet_mcp.server import build_server

__all__ = ["build_server"]


def __getattr__(name: str) -> Any:
    if name == "build_server":
        from fleet_mcp.server import build_server  # lazily: importing fleet_mcp stays cheap

        return build_server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
