"""Checking what a model sent, before anything is sent to the fleet.

The parameter types here are the schema a model sees for the arguments several tools share;
``strict=True`` because a model's "yes" or 1 for a boolean is a mistake to report, not a whole
tier to deploy (the SDK leaves JSON-looking strings alone for scalars, so "true" stays a
string). A mistake becomes a ``ToolError`` that says what to send instead, and an unknown
argument is refused, not ignored: a silently dropped ``tier`` misleads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from fleet_core.config.options import DEFAULT_DEPLOY_TIMEOUT
from fleet_core.errors import RequestRejected
from fleet_core.protocol.actions import validate_revision
from fleet_core.protocol.subjects import Tier
from fleet_mcp.reports.wording import DEFAULT_WAIT

__all__ = [
    "MAX_WAIT",
    "Branch",
    "WaitSeconds",
    "parse_revision",
    "parse_tier",
    "reject_unknown",
]

MAX_WAIT = DEFAULT_DEPLOY_TIMEOUT  # waiting longer than a deployment may last is pointless

Branch = Annotated[
    str,
    Field(
        strict=True,
        description="branch, tag or full 40-character commit hash of the NixOS configuration",
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


def reject_unknown(tool: str, known: tuple[str, ...], arguments: Mapping[str, Any]) -> None:
    """A tool error naming the arguments ``tool`` does not take, if any, and what it takes."""
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


def parse_tier(value: str) -> Tier:
    try:
        return Tier(value.strip())
    except ValueError:
        raise ToolError(f"tier must be 'test' or 'prod', not {value!r}") from None


def parse_revision(branch: str) -> str:
    try:
        return validate_revision(branch.strip())
    except RequestRejected as exc:
        raise ToolError(str(exc)) from None
