"""What deployment_history returns: the deployments a tier's history recorded, newest first,
each with who signed it, where it went and how each host ended — within a text budget.

A deployment's hosts are host output only in what they said (message, error): those are
fenced in the text (``fleet_mcp.reports.untrusted``). Hostnames come from the subjects the
server vouches for; targets, actions and revisions were validated when read. A deployment
lists at most ``MAX_HOSTS_SHOWN`` hosts, the ones that did not complete first; its counts
cover them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from fleet_core.deploy.history import DeploymentRecord
from fleet_mcp.reports.untrusted import UNTRUSTED, HostOutput, TextLayout, text

__all__ = [
    "MAX_HOSTS_SHOWN",
    "HistoryEntry",
    "HistoryHost",
    "HistoryReport",
    "history_report",
    "history_text",
]

MAX_HOSTS_SHOWN: Final = 10


class HistoryHost(BaseModel):
    model_config = ConfigDict(frozen=True)

    hostname: str
    status: str = Field(description="its final status, or the last one when none was final")
    final: bool
    error: str | None = Field(None, description="error code; " + UNTRUSTED)
    message: str = Field("", description=UNTRUSTED)
    from_job_record: bool = Field(
        False, description="true when read from the host's job record, not its status"
    )


class HistoryEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    deployment_id: str
    tier: str
    targets: list[str] = Field(description="subjects its requests went to (none: not recorded)")
    action: str | None
    revision: str | None
    signer: str | None = Field(description="public key whose signature verified")
    signer_name: str | None = Field(description="that key's name, when this server knows it")
    started: str | None = Field(description="when it started (UTC, ISO 8601)")
    duration_s: float | None
    ok: bool = Field(description="true when every host completed")
    counts: dict[str, int] = Field(description="hosts by final status ('running': none yet)")
    hosts: list[HistoryHost]
    hosts_omitted: int = Field(0, description="hosts not listed here (counted in counts)")
    cancel_requested: bool = False
    request_recorded: bool = Field(
        True,
        description="false when no request of it is recorded: it aged out, or a host sent "
        "statuses under an id no deployer used; nobody is known to have asked for it",
    )


class HistoryReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    summary: str
    deployments: list[HistoryEntry]
    sources: dict[str, str] = Field(
        description="per tier: 'jetstream' (the recorded history) or 'job_records' (the "
        "hosts' own records of their recent jobs, where no history is recorded)"
    )
    next_step: str


_LAYOUT: Final = TextLayout(lists={"deployments": HostOutput(always=frozenset({"hosts"}))})


def _entry(record: DeploymentRecord) -> HistoryEntry:
    ordered = sorted(record.hosts, key=lambda h: (h.final and h.status == "completed", h.hostname))
    shown = ordered[:MAX_HOSTS_SHOWN]
    return HistoryEntry(
        deployment_id=record.id,
        tier=record.tier,
        targets=record.targets,
        action=record.action,
        revision=record.revision,
        signer=record.signer,
        signer_name=record.signer_name,
        started=datetime.fromtimestamp(record.started_at, tz=UTC).isoformat(timespec="seconds")
        if record.started_at is not None
        else None,
        duration_s=record.duration_s,
        ok=record.ok,
        counts=record.counts,
        hosts=[
            HistoryHost(
                hostname=h.hostname,
                status=h.status,
                final=h.final,
                error=h.error,
                message=h.message[:300],
                from_job_record=h.source == "job_query",
            )
            for h in shown
        ],
        hosts_omitted=len(ordered) - len(shown),
        cancel_requested=record.cancel_requested,
        request_recorded=record.request_recorded,
    )


def history_report(
    records: Sequence[DeploymentRecord],
    *,
    sources: dict[str, str],
    tiers: Sequence[str],
    filtered: bool = False,
) -> HistoryReport:
    """``records`` newest first, from the tiers ``tiers`` (what this server may read);
    ``filtered`` when a hostname narrowed them, so that none left is not "none recorded"."""
    shown = " and ".join(tiers)
    fallback = [tier for tier, source in sources.items() if source == "job_records"]
    summary = f"{len(records)} deployment(s) of the {shown} tier, newest first."
    next_step = "Call deployment_status with a deployment_id for every host's outcome and log tail."
    if not records:
        summary = f"No deployment is recorded for the {shown} tier."
        next_step = "Deploy first: the history lists deployments once there are some."
    if not records and filtered:
        summary = f"No deployment recorded for the {shown} tier reached that hostname."
        next_step = (
            "Check the hostname with list_hosts, or call deployment_history without hostname "
            "for every deployment."
        )
    if fallback:
        summary += (
            f" The {' and '.join(fallback)} tier records no history (no JetStream): these "
            "come from the hosts' own job records, only hosts that answer now, no targets."
        )
    return HistoryReport(
        summary=summary,
        deployments=[_entry(r) for r in records],
        sources=dict(sources),
        next_step=next_step,
    )


def history_text(report: HistoryReport) -> str:
    return text(report.model_dump(mode="json"), _LAYOUT)
