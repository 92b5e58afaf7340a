"""fleet-deploy's MCP server: safe AI-assisted deploys over the ``fleet_core`` deployer.

``build_server(settings)`` (from ``fleet_mcp.server``) builds it; ``fleet-mcp`` serves it.
Importing this package is cheap: the MCP stack loads only when the server module does.
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
