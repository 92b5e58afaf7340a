"""The deployments this server knows, as list_deployments reports them: a brief per
deployment — enough to pick one and its id, not its hosts — newest first, the running
ones named in the summary so that a model that lost a deploy call's result finds it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet_core.deploy.results import DeploymentResult
from fleet_mcp.reports.deployment import deployment_resource, status_step
from fleet_mcp.reports.wording import some_names

__all__ = ["DeploymentBrief", "DeploymentsReport", "deployment_brief", "deployments_report"]


class DeploymentBrief(BaseModel):
    """One deployment in a list: enough to pick it, not its hosts."""

    model_config = ConfigDict(frozen=True)

    deployment_id: str
    state: Literal["running", "finished"]
    ok: bool = Field(description="true only when finished and every host completed")
    subject: str
    tier: str
    action: str
    revision: str
    started: str = Field(description="when it started (UTC, ISO 8601)")
    counts: dict[str, int] = Field(description="number of hosts in each state")
    resource: str = Field(description="the deployment's MCP resource, a recovery handle")
    error: str | None = Field(
        None, description="why the deployment itself failed (no host reached), if it did"
    )


class DeploymentsReport(BaseModel):
    """The deployments this server knows, newest first."""

    model_config = ConfigDict(frozen=True)

    summary: str
    deployments: list[DeploymentBrief]
    next_step: str


def deployment_brief(
    result: DeploymentResult, *, finished: bool, started: float, error: str | None = None
) -> DeploymentBrief:
    """``started``: Unix time the deployment started; ``error``: why it failed as a whole."""
    return DeploymentBrief(
        deployment_id=result.deployment_id,
        state="finished" if finished else "running",
        ok=result.ok and finished,
        subject=result.subject,
        tier=result.tier,
        action=result.action,
        revision=result.revision,
        started=datetime.fromtimestamp(started, tz=UTC).isoformat(timespec="seconds"),
        counts=result.counts,
        resource=deployment_resource(result.deployment_id),
        error=error,
    )


def deployments_report(briefs: Sequence[DeploymentBrief], *, kept: int) -> DeploymentsReport:
    """``briefs`` newest first; ``kept``: how many finished deployments the server keeps."""
    running = [b.deployment_id for b in briefs if b.state == "running"]
    if not briefs:
        return DeploymentsReport(
            summary="No deployment has been started through this server since it started.",
            deployments=[],
            next_step="Call list_hosts, then deploy.",
        )
    summary = f"{len(briefs)} deployment(s), newest first; " + (
        f"running: {some_names(running)}." if running else "none is running."
    )
    if running:
        next_step = status_step(running[0])
    else:
        next_step = (
            "Call deployment_status with a deployment_id to see its hosts (this server keeps "
            f"up to {kept} deployments)."
        )
    return DeploymentsReport(summary=summary, deployments=list(briefs), next_step=next_step)
