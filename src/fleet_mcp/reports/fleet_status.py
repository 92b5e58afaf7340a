"""The fleet's state as fleet_status reports it: one row per host from the facts each
measured (``fleet_core.deploy.fleet_status`` decides), a verdict, and a short text.

The rows are the hosts' own word: a revision, a store path, a last job's action, revision,
status and error, a listener version are host output (``untrusted``), and so is the
reference revision when it was taken from a host's last job. The server's sentences are
counts and states only (``fleet_core.deploy.fleet_status`` words its summary that way).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet_core.deploy.fleet_status import FleetStatus, HostStatus
from fleet_mcp.reports.fitting import LISTED, TEXT_BUDGET, byte_size, whole, within_budget
from fleet_mcp.reports.untrusted import UNTRUSTED, HostOutput, TextLayout, named, text

__all__ = ["LAYOUT", "FleetStatusReport", "fleet_status_report", "fleet_status_text"]


class FleetStatusReport(BaseModel):
    """Every host of the target: what it runs, whether it is behind, needs a reboot, and
    how its last deploy ended."""

    model_config = ConfigDict(frozen=True)

    summary: str
    next_step: str
    ok: bool = Field(
        description="true when every host is at the reference revision (or there is none), "
        "its last deploy did not fail, and no reboot is pending"
    )
    target: str | None = Field(description="the deploy subject asked about")
    revision: str | None = Field(
        description="the reference revision: the one asked for, else the newest deployed "
        f"among the hosts' last jobs ({UNTRUSTED} then)"
    )
    revision_source: str | None = Field(
        description="'flag': the revision argument; 'history': the newest deploy to these "
        "hosts that the history recorded; 'last_deploy': the newest among the hosts' last jobs"
    )
    revision_from_host: str | None = None
    cli_version: str = Field(description="this server's version; older listeners are outdated")
    hosts: list[HostStatus] = Field(
        description="one row per host: revision (its configuration revision), behind, "
        "needs_reboot, generation, current_system, last_job, listener_version, outdated, "
        f"problems. What a host reported (revision, paths, last_job, version) is {UNTRUSTED}"
    )


_ROW = HostOutput(
    always=frozenset({"revision", "current_system", "last_job", "listener_version", "problems"}),
    plain=frozenset({"hostname", "tier", "role", "kind"}),
)
LAYOUT = TextLayout(
    top=HostOutput(always=frozenset({"revision"}), plain=frozenset({"revision_from_host"})),
    lists={"hosts": _ROW, "attention": _ROW},
)


def fleet_status_report(status: FleetStatus) -> FleetStatusReport:
    """The report, with a next step in the server's own words."""
    if not status.hosts:
        next_step = "Call list_hosts to see which hosts answer at all."
    elif status.ok:
        next_step = "Nothing to do: every host is at the revision and healthy."
    else:
        needs = []
        if any(h.behind for h in status.hosts):
            needs.append("deploy the revision to the hosts that are behind")
        if any(h.needs_reboot for h in status.hosts):
            needs.append("ask a person to reboot the hosts that need it")
        if any(h.last_job and h.last_job.status in ("failed", "rejected") for h in status.hosts):
            needs.append("look at the failed hosts' last deploy (deployment_status)")
        if any(not h.answered for h in status.hosts):
            needs.append(
                "check the names of the hosts that did not answer with list_hosts (a listener "
                "that stopped answers nothing either)"
            )
        next_step = "; ".join(needs).capitalize() + "." if needs else "Look at the problems."
    return FleetStatusReport(
        summary=status.summary + ".",
        next_step=next_step,
        ok=status.ok,
        target=status.target,
        revision=status.revision,
        revision_source=status.revision_source,
        revision_from_host=status.revision_from_host,
        cli_version=status.cli_version,
        hosts=status.hosts,
    )


def fleet_status_text(report: FleetStatusReport) -> str:
    """All of it while it fits ``TEXT_BUDGET``; else the counts, and the hosts that are not
    ok, as many as fit (the structured content has every host)."""
    full = whole(report, LAYOUT)
    if full is not None:
        return full
    attention = [h for h in report.hosts if not h.ok]
    reasons = Counter(
        "behind" if h.behind else "needs_reboot" if h.needs_reboot else "other" for h in attention
    )
    digest: dict[str, Any] = {
        "summary": report.summary,
        "next_step": report.next_step,
        "ok": report.ok,
        "target": report.target,
        "revision": report.revision,
        "revision_source": report.revision_source,
        "host_count": len(report.hosts),
        "attention_count": len(attention),
        "attention_by_reason": dict(sorted(reasons.items())),
        "note": f"This text is a digest of {len(report.hosts)} hosts; the structured content "
        "has every host. Listed under attention: hosts that are not ok, as many as fit.",
    }
    room = TEXT_BUDGET - byte_size(text(digest, LAYOUT)) - 400
    shown: list[dict[str, Any]] = []
    for index, host in enumerate(attention[: LISTED * 5]):
        entry = host.model_dump(mode="json", exclude={"current_system"})
        room -= LAYOUT.entry_cost("attention", index, entry)
        if room < 0:
            break
        shown.append(entry)
    digest["attention"] = shown
    digest["attention_omitted"] = len(attention) - len(shown)
    digest["attention_named"] = [
        named(h.hostname) for h in attention[len(shown) : len(shown) + LISTED]
    ]
    return within_budget(digest, LAYOUT)
