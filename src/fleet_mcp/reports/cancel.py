"""A cancel as cancel_deployment reports it: each host's answer, in this server's words.

What a host answered is an outcome this server names from the answer's status, error code
and phase (``fleet_core.deploy.cancellation``), never from its words; the host's message is
host output, fenced in the text like every other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fleet_core.deploy.cancellation import CancelAnswer, CancelResult
from fleet_mcp.reports.untrusted import UNTRUSTED, HostOutput, TextLayout, named, text
from fleet_mcp.reports.wording import some_names

__all__ = ["LAYOUT", "CancelReport", "ReportedAnswer", "cancel_report", "cancel_text"]


class ReportedAnswer(CancelAnswer):
    message: str = Field("", description=f"the host's own sentence: {UNTRUSTED}")


class CancelReport(BaseModel):
    """Which hosts stopped the deployment's job, which will refuse it, which went on."""

    model_config = ConfigDict(frozen=True)

    summary: str = Field(description="what the cancel did, in a sentence or two; read this first")
    deployment_id: str
    ok: bool = Field(description="true when every host that answered stopped or will refuse it")
    answers: list[ReportedAnswer] = Field(
        description="per host: outcome stopped (its rebuild was stopped; its job ends "
        "failed/cancelled), refused (the deployment had not reached it, and never will), "
        "activating (not interrupted: it ends as it ends), finished (it was over)"
    )
    refused_tiers: list[str] = Field(
        default_factory=list, description="tiers this server's key may not cancel in"
    )
    next_step: str


LAYOUT = TextLayout(
    lists={"answers": HostOutput(always=frozenset({"message"}), plain=frozenset({"hostname"}))}
)


def cancel_report(result: CancelResult) -> CancelReport:
    """The report of a cancel, its sentences made only of outcomes and plain names."""
    by_outcome: dict[str, list[str]] = {}
    for answer in result.answers:
        by_outcome.setdefault(answer.outcome, []).append(named(answer.hostname))
    parts = [
        f"{label}: {some_names(by_outcome[outcome])}"
        for outcome, label in (
            ("stopped", "stopped"),
            ("activating", "already activating, not interrupted"),
            ("finished", "already finished"),
            ("refused", "not reached yet, will refuse it"),
            ("rejected", "refused the cancel"),
        )
        if outcome in by_outcome
    ]
    what = f"Cancel of deployment {result.deployment_id}"
    if not result.answers:
        summary = f"{what}: no host answered."
        next_step = (
            "Check the deployment_id with list_deployments or deployment_status; a deployment "
            "of another tier cannot be cancelled with this server's key."
        )
    else:
        summary = f"{what}: " + "; ".join(parts) + "."
        next_step = (
            "Call deployment_status with this deployment_id: the stopped hosts end "
            "failed/cancelled, a rollout starts no further batch (its untouched hosts end "
            "skipped), and hosts already activating end as they end."
        )
    return CancelReport(
        summary=summary,
        deployment_id=result.deployment_id,
        ok=result.ok,
        answers=[ReportedAnswer.model_validate(a.model_dump()) for a in result.answers],
        refused_tiers=result.refused_tiers,
        next_step=next_step,
    )


def cancel_text(report: CancelReport) -> str:
    return text(report.model_dump(mode="json"), LAYOUT)
