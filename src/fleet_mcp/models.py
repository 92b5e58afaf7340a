"""What the MCP tools tell a model: results (pydantic models, the output schemas), their
summaries, and the progress notes sent while a deployment runs — all pure.

A tool result is read by a model, so besides the data it carries ``summary`` — one or two
sentences saying what happened and, when something went wrong, what to look at — and
``next_step``: what to do now (keep waiting with ``deployment_status`` while it runs, read
the failures when it failed). A progress note is one line that starts with
``deployment <id>:``, so a client that shows notes of several calls side by side can tell
them apart; ``Deployment.follow`` decides when each is sent.

A model reads a result's *text*, and its context is small: ``report_text`` is the whole
report while it fits ``TEXT_BUDGET``, and beyond that (a thousand hosts and up) keeps every
host that did not complete in full and counts the completed ones. The structured content
always has every host.

Builds (``build`` and ``build_status``, with ``--enable-builds``) follow the same rules:
``BuildReport`` with its ``summary`` and ``next_step``, ``build_text`` within the same
budget, and notes that start with ``build <id>:``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet_core.builds import BuildError, BuildResult, HostBuild, HostBuildState
from fleet_core.messages import HostInfo
from fleet_core.tracking import DeploymentResult, HostResult, Outage
from fleet_core.trust import Flagged

__all__ = [
    "DEFAULT_WAIT",
    "MAX_NOTE_DETAIL",
    "MAX_TAIL_LINES",
    "TEXT_BUDGET",
    "BuildReport",
    "DeploymentBrief",
    "DeploymentReport",
    "DeploymentsReport",
    "FleetHost",
    "HostsReport",
    "batch_note",
    "build_accepted_note",
    "build_batch_note",
    "build_end_note",
    "build_heartbeat_note",
    "build_host_note",
    "build_opening_note",
    "build_report",
    "build_status_step",
    "build_text",
    "connection_note",
    "deployment_brief",
    "deployment_report",
    "deployment_resource",
    "deployments_report",
    "heartbeat_note",
    "host_note",
    "hosts_report",
    "hosts_text",
    "opening_note",
    "report_text",
    "status_step",
]

# How long a deploy or deployment_status call waits by default. Claude Desktop and the
# official TypeScript SDK end a call after 60 s whatever progress says; 45 s leaves 15 s for
# the connection, the result's transfer and the client's own latency. A deployment that needs
# longer is not cut short: the call returns it as running, and deployment_status waits again.
DEFAULT_WAIT = 45.0
MAX_TAIL_LINES = 50  # nix prints the cause last; fifty lines hold it and its trace
MAX_NOTE_DETAIL = 200  # characters of a host's message in a note: a glance, not the log
MAX_NAMED = 5  # hosts a summary names before it stops naming them
TEXT_BUDGET = 15_000  # bytes of a result's text: under 16 KB, whatever the fleet's size
_LISTED = 20  # hosts named in a text that had to count the rest
_TEXT_TAIL = 10  # log lines per host in a digest that could not hold the whole tails


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
    next_step: str = Field(
        description="what to do now: while running, how to wait for the rest (never deploy "
        "again); when finished, what to read or check"
    )


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


class FleetHost(HostInfo):
    """A listener that answered discovery, and which of this server's tools can deploy it."""

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
        "version, and which tools can deploy it (reachable_by)"
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
        message = _glance(host.message)
        why = f"{host.error}: {message}" if host.error else message
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


def _glance(text: str) -> str:
    """The first line of a message, at most ``MAX_NOTE_DETAIL`` characters: a sentence
    names the cause; the host's own entry has the rest."""
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= MAX_NOTE_DETAIL else first[: MAX_NOTE_DETAIL - 1] + "…"


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


def status_step(deployment_id: str) -> str:
    """How to keep waiting for a running deployment: the same words in results and errors."""
    return (
        f"Call deployment_status with deployment_id={deployment_id!r} to wait for the rest "
        f"(it waits up to {DEFAULT_WAIT:g} s per call, which fits clients that cut calls off "
        "at 60 s; call it again while state is 'running'). Do not deploy again: the "
        "deployment keeps running."
    )


def deployment_report(
    result: DeploymentResult,
    *,
    finished: bool,
    test_only: bool,
) -> DeploymentReport:
    """A report for the model from the deployer's result (or its latest snapshot)."""
    what = f"{result.action} of {result.revision} to {result.subject}"
    if finished:
        if result.ok:
            summary = f"{what} finished OK: {_counts(result.counts)} ({result.duration_s:.1f} s)."
            next_step = "Nothing to wait for: every host completed."
        elif not result.hosts:
            summary = (
                f"{what} reached no host: no listener is subscribed to {result.subject}. "
                "Check the hostname or role with list_hosts."
            )
            next_step = (
                "Call list_hosts to see the hostnames and roles of this tier, then deploy to "
                "one of them."
            )
        else:
            problems = _problems(result, test_only=test_only)
            if len(problems) > MAX_NAMED:
                more = len(problems) - MAX_NAMED
                problems = [*problems[:MAX_NAMED], f"and {more} more host(s) (see hosts)"]
            summary = f"{what} finished NOT OK: {_counts(result.counts)}. " + "; ".join(problems)
            summary = summary.rstrip() + ("" if summary.endswith(".") else ".")
            next_step = (
                "Read each host's message and log_tail that did not complete: they hold "
                "nixos-rebuild's error. Fix the cause before deploying again, and then deploy "
                "only to the hosts that did not complete (hostname=...)."
            )
    else:
        summary = (
            f"{what} is still running after {result.duration_s:.0f} s: "
            f"{_counts(result.counts) if result.hosts else 'waiting for the hosts to answer'}."
        )
        next_step = status_step(result.deployment_id)
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


def deployment_resource(deployment_id: str) -> str:
    """The URI of a deployment's MCP resource."""
    return f"fleet://deployments/{deployment_id}"


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
    named = ", ".join(running[:MAX_NAMED]) + ("…" if len(running) > MAX_NAMED else "")
    if not briefs:
        return DeploymentsReport(
            summary="No deployment has been started through this server since it started.",
            deployments=[],
            next_step="Call list_hosts, then deploy.",
        )
    summary = f"{len(briefs)} deployment(s), newest first; " + (
        f"running: {named}." if running else "none is running."
    )
    if running:
        next_step = status_step(running[0])
    else:
        next_step = (
            "Call deployment_status with a deployment_id to see its hosts (this server keeps "
            f"up to {kept} deployments)."
        )
    return DeploymentsReport(summary=summary, deployments=list(briefs), next_step=next_step)


def report_text(report: DeploymentReport) -> str:
    """The result's text for the model: all of it while it fits ``TEXT_BUDGET``, else a
    digest — every host that did not complete, problems first, as many as fit (an entry too
    big is cut down: its message to the first line, its log tail to the last lines, each line
    shortened), the completed ones counted, long lists cut; the structured content keeps
    every host."""
    full = _json(report.model_dump(mode="json"))
    if _size(full) <= TEXT_BUDGET:
        return full
    digest: dict[str, Any] = report.model_dump(
        mode="json", exclude={"hosts", "unverified", "flagged", "outages"}
    )
    digest["unverified_count"] = len(report.unverified)
    digest["unverified"] = report.unverified[:_LISTED]
    digest["flagged"] = [f.model_dump(mode="json") for f in report.flagged[:MAX_NAMED]]
    digest["outage_count"] = len(report.outages)
    digest["outages"] = [o.model_dump(mode="json") for o in report.outages[-MAX_NAMED:]]
    completed = [h.hostname for h in report.hosts if h.status == "completed"]
    digest["completed_hosts"] = {"count": len(completed), "first": completed[:_LISTED]}
    others = sorted(
        (h for h in report.hosts if h.status != "completed"),
        key=lambda h: (not h.final, h.hostname),  # final problems first, then the open ones
    )
    digest["note"] = (
        f"This text is a digest of {len(report.hosts)} hosts: hosts_not_completed lists the "
        "hosts that did not complete, as far as they fit; the structured content and the "
        f"resource {deployment_resource(report.deployment_id)} have every host in full."
    )
    room = TEXT_BUDGET - _size(_json(digest)) - 300  # for what is added below
    shown = _fit(others, room, tail=None)
    if len(shown) < len(others):  # the cause is at a tail's end: shorter tails, more hosts
        cut = _fit(others, room, tail=_TEXT_TAIL)
        if len(cut) > len(shown):
            shown = cut
            digest["note"] += f" Log tails are cut to their last {_TEXT_TAIL} lines here."
    digest["hosts_not_completed"] = shown
    if len(shown) < len(others):
        left = Counter(h.status for h in others[len(shown) :])
        digest["hosts_not_completed_omitted"] = {
            "count": len(others) - len(shown),
            "by_status": dict(sorted(left.items())),
        }
    return _within_budget(digest)


def _json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False)


def _size(text: str) -> int:
    return len(text.encode())


def _within_budget(digest: dict[str, Any]) -> str:
    """The digest as text; should a summary of very long names still overflow, the summary
    is cut (the structured content keeps it whole)."""
    text = _json(digest)
    excess = _size(text) - TEXT_BUDGET
    if excess > 0:
        summary = str(digest.get("summary", ""))
        digest["summary"] = summary[: max(0, len(summary) - excess - 2)] + "…"
        text = _json(digest)
    return text


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


def _fit(
    hosts: Sequence[HostResult] | Sequence[HostBuild], room: int, *, tail: int | None
) -> list[dict[str, Any]]:
    """As many of ``hosts`` (in order) as fit in ``room`` bytes of JSON, log tails cut to
    ``tail`` lines when given. An entry too big for a quarter of the room is cut down rather
    than dropped: one host's huge log must not hide every failure."""
    shown: list[dict[str, Any]] = []
    limit = max(room // 4, 1000)
    for host in hosts:
        entry = host.model_dump(mode="json")
        if tail is not None:
            entry["log_tail"] = entry["log_tail"][-tail:]
        if _size(_json(entry)) > limit:
            entry = _shrunk(entry, limit)
        room -= _size(_json(entry)) + 2
        if room < 0:
            break
        shown.append(entry)
    return shown


def _shrunk(entry: dict[str, Any], limit: int) -> dict[str, Any]:
    """``entry`` within ``limit`` bytes: the message's first line, short log lines, and as
    many of the last log lines as fit."""
    entry = {**entry, "message": _glance(str(entry.get("message") or ""))}
    name = "hostname" if "hostname" in entry else "host"  # a deployment's host, or a build's
    entry[name] = str(entry[name])[:MAX_NOTE_DETAIL]
    lines = [line if len(line) <= 300 else line[:299] + "…" for line in entry["log_tail"]]
    entry["log_tail"] = []
    room = limit - _size(_json(entry))
    kept: list[str] = []
    for line in reversed(lines):
        room -= _size(_json(line)) + 2
        if room < 0:
            break
        kept.append(line)
    entry["log_tail"] = kept[::-1]
    entry["cut"] = True
    return entry


def hosts_report(
    hosts: Sequence[FleetHost], tier: str | None, *, hidden: Sequence[str] = ()
) -> HostsReport:
    """``hidden``: tiers this server does not show (the test key's server shows only test)."""
    where = f"the {tier} tier" if tier else "any tier"
    if not hosts:
        summary = f"No listener of {where} answered discovery."
    else:
        busy = [h.hostname for h in hosts if h.busy]
        summary = f"{len(hosts)} host(s) of {where} answered" + (
            f"; busy deploying: {', '.join(busy[:MAX_NAMED])}"
            f"{'…' if len(busy) > MAX_NAMED else ''}."
            if busy
            else "; none is busy."
        )
    if hidden:
        summary += (
            f" Hosts of the {' and '.join(hidden)} tier are not shown: this server deploys to "
            "the test tier only (production needs deploy_admin, which a person enables with "
            "the admin key)."
        )
    return HostsReport(summary=summary, tier=tier, hosts=list(hosts))


def hosts_text(report: HostsReport) -> str:
    """The text of a ``list_hosts`` result: all of it while it fits ``TEXT_BUDGET``, else
    counts per tier and role (the largest groups), the busy hosts, and as many hostnames
    as fit; the structured content has every host."""
    full = _json(report.model_dump(mode="json"))
    if _size(full) <= TEXT_BUDGET:
        return full
    groups = Counter((h.tier, h.role or "", tuple(h.reachable_by)) for h in report.hosts)
    largest = groups.most_common(_LISTED)
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
        "busy": [h.hostname for h in busy[:_LISTED]],
        "note": f"This text is a digest of {len(report.hosts)} hosts; the structured content "
        "has every host. Deploy by role or all=true rather than host by host.",
    }
    room = TEXT_BUDGET - _size(_json(digest)) - 100
    names: list[str] = []
    for host in report.hosts:
        room -= _size(_json(host.hostname)) + 2
        if room < 0:
            break
        names.append(host.hostname)
    digest["hostnames"] = names
    digest["hostnames_omitted"] = len(report.hosts) - len(names)
    return _within_budget(digest)


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


# -- builds ----------------------------------------------------------------------------------


class BuildReport(BaseModel):
    """One build as the build tool and ``build_status`` report it."""

    model_config = ConfigDict(frozen=True)

    summary: str = Field(description="what happened, in a sentence or two; read this first")
    state: Literal["running", "finished"] = Field(
        description="'running' when wait_seconds ran out first: the build goes on"
    )
    ok: bool = Field(
        description="true only when every host was built (and copied to the binary cache, "
        "when the builder has one)"
    )
    build_id: str = Field(description="pass to build_status to keep waiting")
    status: str = Field(
        description="the build's own status: running, completed, failed, rejected (the "
        "builder refused the request: see error and message), lost (the builder fell silent) "
        "or no_builder (no builder listens on subject)"
    )
    subject: str = Field(description="the NATS subject the request went to")
    repo: str = Field(description="the repository's name, as the builder knows it")
    revision: str = Field(description="the branch, tag or commit asked for")
    commit: str | None = Field(
        description="the commit the builder pinned the revision to: every host of the build "
        "comes from it"
    )
    builder: str | None = Field(description="the builder that took the build")
    error: str | None = Field(description="the error code of the build as a whole, if any")
    message: str = Field(description="the builder's last word on the whole build")
    counts: dict[str, int] = Field(description="number of hosts in each state")
    hosts: list[HostBuild] = Field(
        description="per host: state (waiting, building, built, failed, lost), phase, error "
        "code, message, store_path, copied_to (the binary cache), duration_s and, for a "
        "failure, the last lines of nix's output (log_tail)"
    )
    elapsed_s: float = Field(description="seconds since the request was published")
    next_step: str = Field(
        description="what to do now: while running, how to wait for the rest (never build "
        "again); when finished, what to read, fix or run"
    )


_DONE_BUILDS = (HostBuildState.BUILT, HostBuildState.FAILED, HostBuildState.LOST)
# Problems first in a digest: failures, then hosts the build lost, then the open ones.
_BUILD_RANK = {
    HostBuildState.FAILED: 0,
    HostBuildState.LOST: 1,
    HostBuildState.BUILDING: 2,
    HostBuildState.WAITING: 3,
    HostBuildState.BUILT: 4,
}


def build_status_step(build_id: str) -> str:
    """How to keep waiting for a running build: the same words in results and errors."""
    return (
        f"Call build_status with build_id={build_id!r} to wait for the rest (it waits up to "
        f"{DEFAULT_WAIT:g} s per call, which fits clients that cut calls off at 60 s; call it "
        "again while state is 'running'). Do not build again: the build keeps running, and "
        "the builder refuses a second one meanwhile."
    )


def _trimmed_build(host: HostBuild) -> HostBuild:
    if len(host.log_tail) <= MAX_TAIL_LINES:
        return host
    return host.model_copy(update={"log_tail": host.log_tail[-MAX_TAIL_LINES:]})


def _build_problems(result: BuildResult) -> list[str]:
    """One sentence per host that failed or was lost, in the build's order."""
    notes = []
    for host in result.hosts:
        if host.state not in (HostBuildState.FAILED, HostBuildState.LOST):
            continue
        message = _glance(host.message)
        why = f"{host.error}: {message}" if host.error else message
        note = f"{host.host} {host.state.value} ({why})"
        if host.log_tail:
            note += "; its log_tail holds the end of nix's output"
        notes.append(note)
    return notes


def _sentence(text: str) -> str:
    text = text.rstrip()
    return text if text.endswith((".", "?", "!")) else text + "."


def build_report(
    result: BuildResult, *, finished: bool, other_running: str | None = None
) -> BuildReport:
    """A report for the model from the deployer's build result (or its latest state).

    ``other_running``: the id of another build this server is following, if any — what a
    build refused as ``already_running`` most likely waits for.
    """
    what = f"build of {result.target} at {result.revision}"
    if result.commit:
        what += f" (commit {result.commit[:12]})"
    if not finished:
        summary, next_step = _build_running(result, what)
    elif result.ok:
        summary, next_step = _build_ok(result, what)
    elif result.status in ("no_builder", "rejected", "lost"):
        summary, next_step = _build_unanswered(result, what, other_running)
    else:
        summary, next_step = _build_failed(result, what)
    return BuildReport(
        summary=summary,
        state="finished" if finished else "running",
        ok=result.ok and finished,
        build_id=result.build_id,
        status=result.status,
        subject=result.target,
        repo=result.repo,
        revision=result.revision,
        commit=result.commit,
        builder=result.builder,
        error=result.error,
        message=result.message,
        counts=result.counts(),
        hosts=[_trimmed_build(h) for h in result.hosts],
        elapsed_s=result.elapsed_s,
        next_step=next_step,
    )


def _builder_name(result: BuildResult) -> str:
    return f"builder {result.builder}" if result.builder else "the builder"


def _build_running(result: BuildResult, what: str) -> tuple[str, str]:
    if result.hosts:
        doing = _counts(result.counts())
    elif result.builder:
        doing = f"{_builder_name(result)} is fetching the revision and listing its hosts"
    else:
        doing = "waiting for a builder to answer"
    summary = f"{what} is still running after {result.elapsed_s:.0f} s: {doing}."
    return summary, build_status_step(result.build_id)


def _build_ok(result: BuildResult, what: str) -> tuple[str, str]:
    summary = (
        f"{what} finished OK by {_builder_name(result)}: {_counts(result.counts())} "
        f"({result.elapsed_s:.1f} s)."
    )
    caches = {h.copied_to for h in result.hosts if h.copied_to}
    cached = f" and copied to the binary cache {sorted(caches)[0]}" if caches else ""
    next_step = f"Nothing to wait for: every host was built{cached}."
    if result.commit:
        next_step += (
            f" To deploy exactly what was built, deploy with branch={result.commit!r} "
            f"(the branch {result.revision!r} may move on)."
        )
    return summary, next_step


def _build_unanswered(result: BuildResult, what: str, other_running: str | None) -> tuple[str, str]:
    """No builder, a refusal, or a builder that fell silent: nothing (more) was built."""
    message = _sentence(_glance(result.message))
    if result.status == "no_builder":
        return f"{what}: nothing was built. {message}", (
            f"Nothing is building. Check the repository name {result.repo!r}; if it is right, "
            "ask the user to start a builder for it: fleet-deploy builder --repo "
            f"{result.repo}=<flake URL>, with a builder key whose NATS permissions "
            f"(nats-config's [builders.<name>] with repos = [{result.repo!r}]) let it hear "
            f"{result.target}. Then call build again."
        )
    if result.status == "lost":
        return f"{what} was lost: {message} Hosts: {_counts(result.counts())}.", (
            "Ask the user to check the builder (its service and its logs): it stopped "
            "answering. nix keeps what it built, so building again once it is back redoes "
            "only the rest."
        )
    summary = f"{what} was refused by {_builder_name(result)} ({result.error}): {message}"
    if result.error == BuildError.CANCELLED.value:
        return summary, (
            "The builder is shutting down: nothing is wrong with the request. Build again "
            "once it is back (ask the user if it does not come back)."
        )
    if result.error != BuildError.ALREADY_RUNNING.value:
        return summary, (
            "Read message: it says what the builder found wrong with the request. Fix that "
            "before building again."
        )
    if other_running:
        return summary, (
            f"The builder is busy with build {other_running}, which this server follows: call "
            f"build_status with build_id={other_running!r} until it is finished, then build "
            "again."
        )
    return summary, (
        "The builder is busy with a build someone else asked for (it takes one at a time). "
        "Tell the user, and build again once that build is over."
    )


def _build_failed(result: BuildResult, what: str) -> tuple[str, str]:
    problems = _build_problems(result)
    if not problems:
        message = _sentence(_glance(result.message))
        return f"{what} failed ({result.error or result.status}): {message}", (
            "Read message: it says why the build failed as a whole (a host the flake does not "
            "have, a revision that could not be fetched or evaluated, a builder that "
            "stopped). Fix that before building again."
        )
    if len(problems) > MAX_NAMED:
        more = len(problems) - MAX_NAMED
        problems = [*problems[:MAX_NAMED], f"and {more} more host(s) (see hosts)"]
    summary = f"{what} finished NOT OK: {_counts(result.counts())}. " + "; ".join(problems)
    return _sentence(summary), _build_advice(result)


def _build_advice(result: BuildResult) -> str:
    """What to do about a build that ended with failed hosts, by why they failed: a stopped
    or slow builder is not a broken configuration."""
    codes = {host.error for host in result.hosts if host.error}
    if codes <= {"cancelled", "lost"}:
        return (
            "The builder stopped before it finished: nothing is wrong with the configuration. "
            "Build again once the builder is back (nix keeps what it already built)."
        )
    if codes <= {"timeout", "lost"}:
        return (
            "A nix step ran past the builder's --timeout: the build may just be big. Build "
            "the slow hosts again one at a time (target='<host>'), or ask the user to raise "
            "the builder's timeout."
        )
    if codes <= {"copy_failed", "lost"}:
        return (
            "The hosts were built but could not be copied to the binary cache: tell the user "
            "the cache refused (message says how). Nothing is wrong with the configuration."
        )
    stopped = (
        " The builder stopped before the rest, so build again once it is back."
        if result.error == "cancelled"
        else ""
    )
    return (
        "Read the message and log_tail of each host that failed: they hold nix's error. Fix "
        "the cause in the configuration before building again; target='<host>' builds only "
        f"that host.{stopped}"
    )


def build_text(report: BuildReport) -> str:
    """The text of a build result: all of it while it fits ``TEXT_BUDGET``, else a digest
    like ``report_text``'s — the hosts that were not built, failures first, as many as fit
    (an entry too big cut down), the built ones counted; the structured content keeps every
    host."""
    full = _json(report.model_dump(mode="json"))
    if _size(full) <= TEXT_BUDGET:
        return full
    digest: dict[str, Any] = report.model_dump(mode="json", exclude={"hosts", "message"})
    digest["message"] = _glance(report.message)
    built = [h.host for h in report.hosts if h.state is HostBuildState.BUILT]
    digest["built_hosts"] = {"count": len(built), "first": built[:_LISTED]}
    others = sorted(
        (h for h in report.hosts if h.state is not HostBuildState.BUILT),
        key=lambda h: (_BUILD_RANK[h.state], h.host),
    )
    digest["note"] = (
        f"This text is a digest of {len(report.hosts)} hosts: hosts_not_built lists the "
        "hosts that were not built, failures first, as far as they fit; the structured "
        "content has every host in full."
    )
    room = TEXT_BUDGET - _size(_json(digest)) - 300  # for what is added below
    shown = _fit(others, room, tail=None)
    if len(shown) < len(others):  # nix prints the cause last: shorter tails, more hosts
        cut = _fit(others, room, tail=_TEXT_TAIL)
        if len(cut) > len(shown):
            shown = cut
            digest["note"] += f" Log tails are cut to their last {_TEXT_TAIL} lines here."
    digest["hosts_not_built"] = shown
    if len(shown) < len(others):
        left = Counter(h.state.value for h in others[len(shown) :])
        digest["hosts_not_built_omitted"] = {
            "count": len(others) - len(shown),
            "by_state": dict(sorted(left.items())),
        }
    return _within_budget(digest)


def build_opening_note(result: BuildResult) -> str:
    """The first note of every wait: which build this is, so a model can follow it up."""
    return f"build {result.build_id}: {result.target} at {result.revision}"


def build_accepted_note(result: BuildResult) -> str:
    """A builder took the build: who, which commit, how many hosts (as far as known)."""
    note = f"build {result.build_id}: builder {result.builder} took it"
    if result.commit:
        note += f"; {result.revision} is commit {result.commit}"
    if result.hosts:
        note += f"; {len(result.hosts)} host(s) to build"
    return note


def build_host_note(build_id: str, host: HostBuild) -> str:
    """One host's new state: its phase while building, its store path once built, its error
    (and the first line of its message) when it failed."""
    detail = ""
    if host.state is HostBuildState.BUILDING:
        detail = f"({host.phase})" if host.phase else ""
    elif host.state is HostBuildState.BUILT:
        detail = f"— {host.store_path}" if host.store_path else ""
    elif host.error or host.message:
        detail = "— " + ": ".join(p for p in (host.error, _glance(host.message)) if p)
    return f"build {build_id}: {host.host} {host.state.value} {detail}".rstrip()


def _done_of(result: BuildResult) -> str:
    done = sum(1 for h in result.hosts if h.state in _DONE_BUILDS)
    return f"{done}/{len(result.hosts)} hosts done"


def build_batch_note(build_id: str, batch: Sequence[HostBuild], result: BuildResult) -> str:
    """Many changes at once (a waiter that comes late, a builder stopping), as counts."""
    counts = Counter(host.state.value for host in batch)
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return (
        f"build {build_id}: {len(batch)} host changes ({states}); {_done_of(result)}; "
        f"latest: {batch[-1].host} {batch[-1].state.value}"
    )


def build_heartbeat_note(result: BuildResult) -> str:
    """Nothing changed for a while: how long, how far, and the host being built."""
    if not result.hosts:
        where = "waiting for the builder" if result.builder is None else "listing the hosts"
        return f"build {result.build_id}: still running after {result.elapsed_s:.0f} s ({where})"
    building = next((h for h in result.hosts if h.state is HostBuildState.BUILDING), None)
    now = f"; {building.host} {building.phase or 'building'}" if building else ""
    return (
        f"build {result.build_id}: still running after {result.elapsed_s:.0f} s "
        f"({_done_of(result)}{now})"
    )


def build_end_note(result: BuildResult) -> str:
    """The last note of a finished build: its status and the first line of its message."""
    message = _glance(result.message)
    return f"build {result.build_id}: {result.status}" + (f" — {message}" if message else "")
