"""What the MCP tools tell a model: results (pydantic models, the output schemas), their
summaries, and the progress notes sent while a deployment runs — all pure.

A tool result is read by a model, so besides the data it carries ``summary`` — one or two
sentences saying what happened and, when something went wrong, what to look at — and, while a
deployment is still running, ``next_step``: how to keep waiting for it. A progress note is one
line that starts with ``deployment <id>:``, so a client that shows notes of several calls
side by side can tell them apart; ``Deployment.follow`` decides when each is sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet_core.messages import HostInfo
from fleet_core.tracking import DeploymentResult, HostResult, Outage
from fleet_core.trust import Flagged

__all__ = [
    "MAX_NOTE_DETAIL",
    "MAX_TAIL_LINES",
    "DeploymentReport",
    "HostsReport",
    "batch_note",
    "connection_note",
    "deployment_report",
    "heartbeat_note",
    "host_note",
    "hosts_report",
    "opening_note",
]

MAX_TAIL_LINES = 50  # nix prints the cause last; fifty lines hold it and its trace
MAX_NOTE_DETAIL = 200  # characters of a host's message in a note: a glance, not the log
MAX_NAMED = 5  # hosts a summary names before it stops naming them


class DeploymentReport(BaseModel):
    """One deployment as the deploy tools and ``deployment_status`` report it."""

    model_config = ConfigDict(frozen=True)

    summary: str = Field(description="what happened, in a sentence or two; read this first")
    state: Literal["running", "finished"] = Field(
        description="'running' when wait_seconds ran out first: the deployment goes on"
    )
    ok: bool = Field(description="true only when every host's final status is completed")
    deployment_id: str = Field(description="pass to deployment_status to keep waiting")
    subject: str = Field(description="the NATS subject the request went to")
    tier: str
    action: str
    revision: str = Field(description="the branch, tag or commit deployed")
    counts: dict[str, int] = Field(description="number of hosts in each state")
    hosts: list[HostResult] = Field(
        description="per host: status, error code, message, duration_s and, for a failure, "
        "the last lines of nixos-rebuild's output (log_tail)"
    )
    duration_s: float = Field(description="seconds since the request was published")
    outages: list[Outage] = Field(
        default_factory=list,
        description="times this MCP server's own NATS connection was down during the "
        "deployment: statuses sent meanwhile were read back from the hosts' job records",
    )
    server_verified: bool = Field(
        True,
        description="false when a host answered on the bare reply subject (see unverified), "
        "which the NATS server does not bind to its sender",
    )
    unverified: list[str] = Field(
        default_factory=list, description="hosts whose status the NATS server did not vouch for"
    )
    flagged: list[Flagged] = Field(
        default_factory=list,
        description="status messages not believed and not counted: one claiming another "
        "host, tier or deployment, or an unexpected host on the bare reply subject",
    )
    flagged_count: int = Field(0, description="how many were flagged in all")
    next_step: str | None = Field(
        None, description="set while running: how to wait for the rest of the deployment"
    )


class HostsReport(BaseModel):
    """The listeners that answered discovery."""

    model_config = ConfigDict(frozen=True)

    summary: str
    tier: str | None = Field(description="the tier asked for; null means both tiers")
    hosts: list[HostInfo] = Field(
        description="hostname, tier, role, whether a deploy is running (busy), listener version"
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no hosts"


def _trimmed(host: HostResult) -> HostResult:
    if len(host.log_tail) <= MAX_TAIL_LINES:
        return host
    return host.model_copy(update={"log_tail": host.log_tail[-MAX_TAIL_LINES:]})


def _problems(result: DeploymentResult, *, test_only: bool) -> list[str]:
    """One sentence per host that did not complete, most useful first."""
    notes: list[str] = []
    for host in result.hosts:
        if not host.final or host.status == "completed":
            continue
        why = f"{host.error}: {host.message}" if host.error else host.message
        note = f"{host.hostname} {host.status} ({why})"
        if host.log_tail:
            note += "; its log_tail holds the end of nixos-rebuild's output"
        if host.status == "missing" and result.subject.endswith("." + host.hostname):
            note += (
                f"; no {result.tier}-tier listener named {host.hostname} is running — check the "
                "name with list_hosts"
            )
            if test_only:
                note += " (this tool reaches only the test tier)"
        notes.append(note)
    return notes


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%H:%M:%S UTC")


def _outage_sentence(result: DeploymentResult, *, finished: bool) -> str:
    """What this server's own NATS outages mean for the result; "" when there were none."""
    if not result.outages:
        return ""
    last = result.outages[-1]
    if last.duration_s is None:
        sentence = (
            f"The MCP server lost its NATS connection at {_clock(last.started_at)}; the "
            "hosts may still be deploying"
        )
        if finished:
            return (
                sentence + ": it was still down when the deployment's time ran out. Once NATS "
                "is back, list_hosts shows which hosts are busy; deploy again if needed."
            )
        return sentence + ": it reconnects by itself, then asks the hosts what happened."
    lost = (
        f"at {_clock(last.started_at)} for {last.duration_s:.1f} s"
        if len(result.outages) == 1
        else f"{len(result.outages)} times, last at {_clock(last.started_at)}"
    )
    recovered = [h.hostname for h in result.hosts if h.recovered]
    sentence = f"The MCP server lost its NATS connection {lost}"
    if recovered:
        names = ", ".join(recovered[:MAX_NAMED]) + ("…" if len(recovered) > MAX_NAMED else "")
        sentence += (
            f"; the outcome of {names} was read from the hosts' job records (recovered: true), "
            "as the status messages sent meanwhile were lost"
        )
    return sentence + "."


def deployment_report(
    result: DeploymentResult,
    *,
    finished: bool,
    test_only: bool,
    wait_hint: float,
) -> DeploymentReport:
    """A report for the model from the deployer's result (or its latest snapshot)."""
    what = f"{result.action} of {result.revision} to {result.subject}"
    next_step = None
    if finished:
        if result.ok:
            summary = f"{what} finished OK: {_counts(result.counts)} ({result.duration_s:.1f} s)."
        elif not result.hosts:
            summary = (
                f"{what} reached no host: no listener is subscribed to {result.subject}. "
                "Check the hostname or role with list_hosts."
            )
        else:
            summary = f"{what} finished NOT OK: {_counts(result.counts)}. " + "; ".join(
                _problems(result, test_only=test_only)
            )
            summary = summary.rstrip() + ("" if summary.endswith(".") else ".")
    else:
        summary = (
            f"{what} is still running after {result.duration_s:.0f} s: "
            f"{_counts(result.counts) if result.hosts else 'waiting for the hosts to answer'}."
        )
        next_step = (
            f"Call deployment_status with deployment_id={result.deployment_id!r} (and "
            f"wait_seconds up to {wait_hint:g}) to wait for the result. Do not deploy again: "
            "the deployment keeps running."
        )
    for sentence in (_outage_sentence(result, finished=finished), _trust_sentence(result)):
        if sentence:
            summary = f"{summary} {sentence}"
    return DeploymentReport(
        summary=summary,
        state="finished" if finished else "running",
        ok=result.ok and finished,
        deployment_id=result.deployment_id,
        subject=result.subject,
        tier=result.tier,
        action=result.action,
        revision=result.revision,
        counts=result.counts,
        hosts=[_trimmed(h) for h in result.hosts],
        duration_s=result.duration_s,
        outages=result.outages,
        server_verified=result.server_verified,
        unverified=result.unverified,
        flagged=result.flagged,
        flagged_count=result.flagged_count,
        next_step=next_step,
    )


def _trust_sentence(result: DeploymentResult) -> str:
    """What was not believed, and what the NATS server did not vouch for; "" if nothing."""
    sentences = []
    if result.flagged_count:
        first = result.flagged[0]
        sentences.append(
            f"{result.flagged_count} status message(s) were not believed and not counted "
            f"(see flagged), e.g. one for {first.hostname}: {first.reason}."
        )
    if result.unverified:
        names = ", ".join(result.unverified[:MAX_NAMED])
        names += "…" if len(result.unverified) > MAX_NAMED else ""
        sentences.append(
            f"Not server-verified: {names} answered on the bare reply subject, which the NATS "
            "server does not bind to its sender."
        )
    return " ".join(sentences)


def hosts_report(
    hosts: Sequence[HostInfo], tier: str | None, *, hidden: Sequence[str] = ()
) -> HostsReport:
    """``hidden``: tiers whose answers this server's key may not read (never listed)."""
    where = f"the {tier} tier" if tier else "any tier"
    if not hosts:
        summary = f"No listener of {where} answered discovery."
    else:
        busy = [h.hostname for h in hosts if h.busy]
        summary = f"{len(hosts)} host(s) of {where} answered" + (
            f"; busy deploying: {', '.join(busy)}." if busy else "; none is busy."
        )
    if hidden:
        summary += (
            f" Hosts of the {' and '.join(hidden)} tier are not shown: this server's NATS key "
            "may not read their answers."
        )
    return HostsReport(summary=summary, tier=tier, hosts=list(hosts))


# -- progress notes --------------------------------------------------------------------------


def opening_note(result: DeploymentResult) -> str:
    """The first note of every wait: which deployment this is, so a model can follow it up."""
    return (
        f"deployment {result.deployment_id}: {result.action} of {result.revision} to "
        f"{result.subject}"
    )


def host_note(deployment_id: str, host: HostResult) -> str:
    """One host's new state, with the first line of its message (or error) as a glance."""
    detail = ": ".join(part for part in (host.error, host.message) if part)
    first = detail.splitlines()[0][:MAX_NOTE_DETAIL] if detail else ""
    if host.recovered:
        first = f"{first} (recovered from its job record)".lstrip()
    return f"deployment {deployment_id}: {host.hostname} {host.status}" + (
        f" — {first}" if first else ""
    )


def connection_note(deployment_id: str, outage: Outage) -> str:
    """This server's NATS connection dropped (no duration yet) or came back."""
    if outage.duration_s is None:
        return (
            f"deployment {deployment_id}: the MCP server lost its NATS connection at "
            f"{_clock(outage.started_at)}; the hosts may still be deploying — waiting for it "
            "to come back"
        )
    return (
        f"deployment {deployment_id}: the MCP server's NATS connection is back after "
        f"{outage.duration_s:.1f} s; asking the hosts what happened meanwhile"
    )


def _final(result: DeploymentResult) -> str:
    return f"{sum(1 for h in result.hosts if h.final)}/{len(result.hosts)} hosts final"


def batch_note(batch: Sequence[HostResult], result: DeploymentResult) -> str:
    """Many changes at once, as counts: a note per host would flood a client at 1000 hosts."""
    counts = Counter(host.status for host in batch)
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return (
        f"deployment {result.deployment_id}: {len(batch)} host changes ({states}); "
        f"{_final(result)}; latest: {batch[-1].hostname} {batch[-1].status}"
    )


def heartbeat_note(result: DeploymentResult) -> str:
    """Nothing changed for a while: say so, so the client knows the call is alive."""
    hosts = _final(result) if result.hosts else "no answer yet"
    down = ""
    if result.outages and result.outages[-1].duration_s is None:
        down = f"; NATS connection lost at {_clock(result.outages[-1].started_at)}"
    return (
        f"deployment {result.deployment_id}: still running after {result.duration_s:.0f} s "
        f"({hosts}{down})"
    )
