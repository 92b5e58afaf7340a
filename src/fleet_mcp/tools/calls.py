"""What every tool call does around its own work: count the call (over HTTP), refuse
unknown arguments, reach NATS through a link, send progress notes, and shape the result.

A tool's result is ``tool_result``: the report as structured content (its output schema)
and, for the model, a text that stays small whatever the fleet (``fleet_mcp.reports``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import structlog
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel

from fleet_core.deploy.deployer import Deployer
from fleet_core.errors import ConnectionFailed
from fleet_mcp.link import NatsLink
from fleet_mcp.reports.wording import full_stop
from fleet_mcp.state import FleetState
from fleet_mcp.tools.arguments import reject_unknown

__all__ = [
    "FleetContext",
    "Progress",
    "begin",
    "connected_deployer",
    "lifespan_state",
    "tool_result",
]

log = structlog.get_logger("fleet.mcp")

FleetContext = Context[FleetState, Any]


def lifespan_state(ctx: FleetContext) -> FleetState:
    return ctx.request_context.lifespan_context


def begin(ctx: FleetContext, tool: str, known: tuple[str, ...]) -> FleetState:
    """Every tool's first step: count the call (over HTTP), refuse unknown arguments."""
    state = lifespan_state(ctx)
    if state.metrics is not None:
        state.metrics.tool_called(tool)
    params: Mapping[str, Any] = ctx.request_context.params or {}
    reject_unknown(tool, known, params.get("arguments") or {})
    return state


def tool_result(report: BaseModel, text: str) -> CallToolResult:
    """The tool result: ``report`` as structured content, ``text`` for the model."""
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structured_content=report.model_dump(mode="json"),
    )


async def connected_deployer(link: NatsLink, verb: str) -> Deployer:
    """The link's deployer, or a tool error that says what a person should check."""
    try:
        return await link.deployer()
    except ConnectionFailed as exc:
        raise ToolError(
            f"No NATS connection, so nothing was {verb}: {full_stop(str(exc))} This server "
            "keeps trying to connect in the background. If it keeps failing, ask the user to "
            "check that nats-server is running and reachable, that --nats-url "
            f"(FLEET_DEPLOY_NATS_URL, now {link.url}) is right, and that the NATS server "
            f"accepts this server's key {link.public_key}."
        ) from exc


class Progress:
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
