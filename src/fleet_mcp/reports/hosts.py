"""The hosts as list_hosts reports them: each listener that answered discovery, and which
of this server's tools can deploy it — so that a model picks hostnames and roles it can
reach, and learns why the production hosts are missing from a server without the admin key.

Every field but ``busy`` is a listener's own answer. The trust layer checks hostnames; a
listener's version, subjects and job, and a role, tier or kind that is not a plain token,
are host output (``untrusted``): the version of a listener built from a branch is whatever
that branch says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet_core.protocol.facts import HostFacts
from fleet_core.protocol.messages import HostInfo
from fleet_mcp.reports.fitting import (
    LISTED,
    TEXT_BUDGET,
    byte_size,
    whole,
    within_budget,
)
from fleet_mcp.reports.untrusted import (
    UNTRUSTED,
    HostOutput,
    TextLayout,
    as_json,
    named,
    plain,
    text,
)
from fleet_mcp.reports.wording import some_names

__all__ = ["LAYOUT", "FleetHost", "HostsReport", "hosts_report", "hosts_text"]


class FleetHost(HostInfo):
    """A listener that answered discovery, and which of this server's tools can deploy it."""

    version: str = Field("", description=f"the listener's version: {UNTRUSTED}")
    deploy_subjects: list[str] = Field(
        default_factory=list, description=f"the subjects the listener hears: {UNTRUSTED}"
    )
    running_job: str | None = Field(
        None, description=f"the request id of its job in progress: {UNTRUSTED}"
    )
    facts: HostFacts | None = Field(
        None,
        description="what the host runs, as it measured it: current_system, booted_system, "
        "needs_reboot, nixos_version, configuration_revision, generation, uptime_s (of the "
        f"listener) and last_job; null from a listener too old to report them: {UNTRUSTED}",
    )
    reachable_by: list[str] = Field(
        description="the tools of this server that can deploy this host: 'deploy' for the "
        "test tier, 'deploy_admin' (only with the admin key) for any tier"
    )


class HostsReport(BaseModel):
    """The listeners that answered discovery."""

    model_config = ConfigDict(frozen=True)

    summary: str
    tier: str | None = Field(description="the tier asked for; null means every tier shown")
    hosts: list[FleetHost] = Field(
        description="hostname, tier, role, whether a deploy is running (busy), listener "
        "version, and which tools can deploy it (reachable_by). Each is what the listener "
        f"answered: its version, subjects and job are {UNTRUSTED}"
    )


# A listener's answer: hostnames are checked by the trust layer; the rest is its own word.
_HOST = HostOutput(
    always=frozenset({"version", "deploy_subjects", "running_job", "job", "facts", "recent_jobs"}),
    plain=frozenset({"hostname", "tier", "role", "kind"}),
)
LAYOUT = TextLayout(lists={"hosts": _HOST, "groups": HostOutput(plain=frozenset({"tier", "role"}))})


def hosts_report(
    hosts: Sequence[FleetHost], tier: str | None, *, hidden: Sequence[str] = ()
) -> HostsReport:
    """``hidden``: tiers this server does not show (the test key's server shows only test)."""
    shown = sorted({h.tier for h in hosts if plain(h.tier)})
    if tier:
        where = f"the {tier} tier"
    elif hidden:  # every tier this server shows: not "any", when some are hidden
        where = f"the {' and '.join(shown) or 'shown'} tier{'s' if len(shown) > 1 else ''}"
    else:
        where = "any tier"
    if not hosts:
        summary = f"No listener of {where} answered discovery."
    else:
        busy = [named(h.hostname) for h in hosts if h.busy]
        summary = f"{len(hosts)} host(s) of {where} answered" + (
            f"; busy deploying: {some_names(busy)}." if busy else "; none is busy."
        )
        summary += _attention(hosts)
    if hidden:
        summary += (
            f" Hosts of the {' and '.join(hidden)} tier are not shown: this server deploys to "
            "the test tier only (production needs deploy_admin, which a person enables with "
            "the admin key)."
        )
    return HostsReport(summary=summary, tier=tier, hosts=list(hosts))


def _attention(hosts: Sequence[FleetHost]) -> str:
    """Counts of what needs a look, from the facts (fleet_status has the details)."""
    reboot = sum(1 for h in hosts if h.facts is not None and h.facts.needs_reboot)
    failed = sum(
        1
        for h in hosts
        if h.facts is not None
        and h.facts.last_job is not None
        and h.facts.last_job.status in ("failed", "rejected")
    )
    notes = [
        f"{count} {what}"
        for count, what in ((reboot, "need(s) a reboot"), (failed, "failed the last deploy"))
        if count
    ]
    return f" Of them, {' and '.join(notes)} (fleet_status has details)." if notes else ""


def hosts_text(report: HostsReport) -> str:
    """The text of a ``list_hosts`` result: all of it while it fits ``TEXT_BUDGET``, else
    counts per tier and role (the largest groups), the busy hosts, and as many hostnames
    as fit; the structured content has every host."""
    full = whole(report, LAYOUT)
    if full is not None:
        return full
    groups = Counter((h.tier, h.role or "", tuple(h.reachable_by)) for h in report.hosts)
    largest = groups.most_common(LISTED)
    busy = [h for h in report.hosts if h.busy]
    digest: dict[str, Any] = {
        "summary": report.summary,
        "tier": report.tier,
        "host_count": len(report.hosts),
        "groups": [
            {"tier": tier, "role": role or None, "reachable_by": list(by), "count": n}
            for (tier, role, by), n in largest
        ],
        "groups_omitted": len(groups) - len(largest),
        "busy_count": len(busy),
        "busy": [named(h.hostname) for h in busy[:LISTED]],
        "needs_reboot_count": sum(1 for h in report.hosts if h.facts and h.facts.needs_reboot),
        "note": f"This text is a digest of {len(report.hosts)} hosts; the structured content "
        "has every host. Deploy by role or all=true rather than host by host.",
    }
    room = TEXT_BUDGET - byte_size(text(digest, LAYOUT)) - 100
    names: list[str] = []
    for host in report.hosts:
        room -= byte_size(as_json(host.hostname)) + 2
        if room < 0:
            break
        names.append(named(host.hostname))
    digest["hostnames"] = names
    digest["hostnames_omitted"] = len(report.hosts) - len(names)
    return within_budget(digest, LAYOUT)
