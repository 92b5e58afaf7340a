"""``fleet-deploy status`` and the MCP ``fleet_status`` tool, decided (pure: no I/O).

From the discovery answers of a target's hosts (``HostInfo`` with ``HostFacts``) this builds
one row per host and the fleet's verdict. The decisions, and why:

- **Reference revision**: ``--revision`` when given; else the revision of the newest
  deploy (switch, boot or test, by ``finished_at``) among the hosts' last jobs — "the
  revision last deployed to that target" — and the output says which it is. None when no
  host has deployed anything: then "behind" is unknown, and not held against the fleet.
- **What a host runs** (``revision``): its configuration revision (``nixos-version
  --json``, measured), and also the revision of its last job when that was a completed
  switch or test (deployers name revisions as branches, while a configuration revision is
  usually a commit: either matching the reference counts as "at the revision"). A branch
  that moved since cannot be seen here: the comparison is by name. A closure deploy's job
  (``store_path``) names what its system was built from only when its revision is a full
  commit (a build's); a system given by path (``--store-path``) names none, so such a job
  neither says what the host runs nor sets the reference.
- **Healthy**: the last job did not fail or get rejected, and no reboot is pending.
- **Exit status**: 0 when every host is at the reference revision (or there is none) and
  healthy; 1 otherwise: a host behind, or whose revision cannot be told (no facts, no
  version program and no completed switch on record: "at the revision" is not shown), and
  when no host (or not the one host named) answered. An outdated listener (older than
  this CLI) is shown, not failed: it still deploys.

All text in a row comes from a host: the table makes every cell printable; JSON is escaped
where printed (``fleet_core.protocol.text``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from fleet_core.protocol.facts import HostFacts, LastJob
from fleet_core.protocol.messages import HostInfo, is_request_id
from fleet_core.protocol.subjects import Target
from fleet_core.protocol.text import counted, printable

__all__ = [
    "DEPLOY_ACTIONS",
    "FleetStatus",
    "HostStatus",
    "fleet_status",
    "in_target",
    "older_version",
    "status_table",
]

# The actions that change what a host runs or boots: "the revision last deployed".
DEPLOY_ACTIONS = frozenset({"switch", "boot", "test"})
_RUNS_IT = frozenset({"switch", "test"})  # a completed one of these runs its revision
_FAILED = frozenset({"failed", "rejected"})
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")

ReferenceSource = Literal["flag", "history", "last_deploy"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HostStatus(_Model):
    """One host's row. ``behind``/``needs_reboot``/``outdated`` are None when unknown."""

    hostname: str
    tier: str
    role: str | None = None
    kind: str | None = None
    answered: bool = True  # False: a host the target names that did not answer
    revision: str | None = None  # the configuration revision it runs, measured
    behind: bool | None = None
    needs_reboot: bool | None = None
    generation: int | None = None
    current_system: str | None = None
    last_job: LastJob | None = None
    listener_version: str | None = None
    outdated: bool | None = None
    busy: bool = False
    healthy: bool = True
    ok: bool = True  # answered, healthy, and at the reference revision (when there is one)
    problems: list[str] = []  # short reasons, in our words: why this host is not ok


class FleetStatus(_Model):
    """The whole answer: the reference revision, its source, the rows and the verdict."""

    target: str | None = None
    revision: str | None = None
    revision_source: ReferenceSource | None = None
    # With revision_source "history": the id of the recorded deployment it came from.
    revision_deployment: str | None = None
    # With revision_source "last_deploy": the host and time of the deploy it came from.
    revision_from_host: str | None = None
    cli_version: str
    hosts: list[HostStatus]
    ok: bool
    summary: str


def older_version(version: str | None, than: str) -> bool | None:
    """Whether listener ``version`` is older than ``than`` (both ``X.Y[.Z]``, a suffix
    ignored); None when either does not read as a version."""
    mine, theirs = _version_tuple(version), _version_tuple(than)
    if mine is None or theirs is None:
        return None
    return mine < theirs


def _version_tuple(version: str | None) -> tuple[int, int, int] | None:
    match = _VERSION.match(version or "")
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def in_target(host: HostInfo, target: Target | None) -> bool:
    """Whether ``target`` addresses ``host`` (every host, without a target)."""
    if target is None:
        return True
    if host.tier != target.tier.value:
        return False
    if target.kind == "host":
        return host.hostname == target.name
    return target.kind == "all" or host.role == target.name


def _runs(facts: HostFacts | None) -> set[str]:
    """The revision names a host runs, as far as can be told (see the module docstring)."""
    if facts is None:
        return set()
    names = {facts.configuration_revision} if facts.configuration_revision else set()
    job = facts.last_job
    if job is not None and job.action in _RUNS_IT and job.status == "completed" and _names(job):
        names.add(str(job.revision))
    return names


def _names(job: LastJob) -> bool:
    """Whether ``job``'s revision names what it deployed: always for a rebuild, and for a
    closure deploy only a full commit (a build's; one given by path carries a mere branch)."""
    if not job.revision:
        return False
    return job.store_path is None or _COMMIT.fullmatch(job.revision) is not None


def _last_deploy(hosts: Sequence[HostInfo]) -> tuple[str, str] | None:
    """The revision of the newest deploy among the hosts' last jobs, and its host."""
    newest: tuple[float, str, str] | None = None
    for host in hosts:
        job = host.facts.last_job if host.facts is not None else None
        if job is None or job.action not in DEPLOY_ACTIONS or not _names(job):
            continue
        when = job.finished_at if job.finished_at is not None else float("inf")  # running
        if newest is None or when > newest[0]:
            newest = (when, str(job.revision), host.hostname)
    return (newest[1], newest[2]) if newest is not None else None


def _row(host: HostInfo, reference: str | None, cli_version: str) -> HostStatus:
    facts = host.facts
    runs = _runs(facts)
    behind: bool | None = None
    if reference is not None and facts is not None:
        behind = reference not in runs if runs else None
    needs_reboot = facts.needs_reboot if facts is not None else None
    job = facts.last_job if facts is not None else None
    outdated = older_version(host.version, cli_version)
    problems: list[str] = []
    if facts is None:
        problems.append("reports no facts (a listener older than facts, or homelab-deploy's)")
    if behind:
        problems.append(f"not at {reference}")
    elif behind is None and reference is not None and facts is not None:
        problems.append("revision unknown")
    if needs_reboot:
        problems.append("needs a reboot")
    failed = _failed(job)
    if failed and job is not None:
        problems.append(f"last {job.action or 'job'} {job.status}")
    return HostStatus(
        hostname=host.hostname,
        tier=host.tier,
        role=host.role,
        kind=host.kind,
        revision=facts.configuration_revision if facts is not None else None,
        behind=behind,
        needs_reboot=needs_reboot,
        generation=facts.generation if facts is not None else None,
        current_system=facts.current_system if facts is not None else None,
        last_job=job,
        listener_version=host.version or None,
        outdated=outdated,
        busy=host.busy,
        healthy=not failed and not needs_reboot,
        ok=not failed and not needs_reboot and (reference is None or behind is False),
        problems=problems,
    )


def fleet_status(
    hosts: Sequence[HostInfo],
    *,
    target: Target | None,
    revision: str | None,
    cli_version: str,
    recorded: tuple[str, str] | None = None,
) -> FleetStatus:
    """The status of ``target``'s hosts (every host given, without one) against ``revision``
    (None: the revision last deployed to them).

    ``recorded`` is the revision and id of the newest deploy to them that the history
    recorded, when it could be read: what a deployer signed and sent, preferred to the
    hosts' own word of their last jobs, which one hostile host could bend."""
    chosen = sorted((h for h in hosts if in_target(h, target)), key=lambda h: (h.tier, h.hostname))
    source: ReferenceSource | None = "flag" if revision is not None else None
    from_host: str | None = None
    from_deployment: str | None = None
    if revision is None and recorded is not None:
        revision, from_deployment = recorded
        source = "history"
    if revision is None and (last := _last_deploy(chosen)) is not None:
        revision, from_host = last
        source = "last_deploy"
    rows = [_row(h, revision, cli_version) for h in chosen]
    if target is not None and target.kind == "host" and not rows:
        assert target.name is not None
        rows.append(
            HostStatus(
                hostname=target.name,
                tier=target.tier.value,
                answered=False,
                healthy=False,
                ok=False,
                problems=["did not answer discovery"],
            )
        )
    ok = bool(rows) and all(row.ok for row in rows)
    return FleetStatus(
        target=target.subject if target is not None else None,
        revision=revision,
        revision_source=source,
        revision_deployment=from_deployment,
        revision_from_host=from_host,
        cli_version=cli_version,
        hosts=rows,
        ok=ok,
        summary=_summary(rows, revision),
    )


def _summary(rows: Sequence[HostStatus], revision: str | None) -> str:
    """Counts only, in our words: a model reads this as the server's sentence."""
    if not rows:
        return "no host answered discovery"
    reboot = sum(1 for r in rows if r.needs_reboot)
    counts: tuple[tuple[str, int], ...] = (
        ("behind", sum(1 for r in rows if r.behind)),
        ("of unknown revision", sum(1 for r in rows if r.answered and r.behind is None)),
        ("needs a reboot" if reboot == 1 else "need a reboot", reboot),
        ("whose last deploy failed", sum(1 for r in rows if _failed(r.last_job))),
        ("with an outdated listener", sum(1 for r in rows if r.outdated)),
        ("not answering", sum(1 for r in rows if not r.answered)),
    )
    parts = [counted(len(rows), "host")]
    if revision is not None:
        parts.append(f"{sum(1 for r in rows if r.behind is False)} at the revision")
    else:  # nothing to be behind of: "of unknown revision" would say nothing
        counts = counts[2:]
    parts += [f"{count} {label}" for label, count in counts if count]
    return ", ".join(parts)


def _failed(job: LastJob | None) -> bool:
    return job is not None and job.status in _FAILED


def _age(finished_at: float | None, now: float) -> str:
    if finished_at is None:
        return "running"
    seconds = max(0, int(now - finished_at))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _yes_no(value: bool | None, yes: str, no: str = "no") -> str:
    return "?" if value is None else yes if value else no


def status_table(status: FleetStatus, *, now: float | None = None) -> str:
    """The status as the CLI prints it: which revision it compares with and why, a row per
    host, and a summary line. Every cell that a host sent is made printable."""
    now = time.time() if now is None else now
    if status.revision is None:
        head = "reference revision: none (no --revision, and no host has a deploy on record)"
    elif status.revision_source == "flag":
        head = f"reference revision: {printable(status.revision)} (--revision)"
    elif status.revision_source == "history":
        head = (
            f"reference revision: {printable(status.revision)} (the newest deploy to these "
            f"hosts in the history, {printable(status.revision_deployment or '?')}; "
            "--revision REV to compare with another)"
        )
    else:
        head = (
            f"reference revision: {printable(status.revision)} (the newest deploy on record, "
            f"on {printable(status.revision_from_host or '?')}; --revision REV to compare "
            "with another)"
        )
    tiers = sorted({row.tier for row in status.hosts})
    if status.revision_source in ("history", "last_deploy") and len(tiers) > 1:
        # Test usually runs ahead of prod: one tier's deploy is no news for the other.
        head += (
            f"\nit spans the {' and '.join(tiers)} tiers: 'status deploy.<tier>.all' "
            "compares each tier with its own last deploy"
        )
    rows: list[tuple[str, ...]] = [
        (
            "HOST",
            "TIER",
            "ROLE",
            "REVISION",
            "BEHIND",
            "REBOOT",
            "LAST DEPLOY",
            "OUTCOME",
            "LISTENER",
        )
    ]
    for row in status.hosts:
        job = row.last_job
        if not row.answered:
            rows.append(
                (printable(row.hostname), row.tier, "-", "-", "?", "?", "-", "did not answer", "-")
            )
            continue
        last = "-"
        outcome = "-"
        if job is not None:
            last = f"{job.action or '?'} {job.revision or '?'} {_age(job.finished_at, now)}"
            outcome = job.status or "?"
            if job.error:
                outcome += f" ({job.error})"
        listener = row.listener_version or "?"
        if row.outdated:
            listener += " (outdated)"
        rows.append(
            tuple(
                printable(cell)
                for cell in (
                    row.hostname,
                    row.tier,
                    row.role or "-",
                    row.revision or "?",
                    _yes_no(row.behind, "BEHIND") if status.revision is not None else "-",
                    _yes_no(row.needs_reboot, "REBOOT"),
                    last,
                    outcome,
                    listener,
                )
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip()
        for r in rows
    )
    verdict = "ok" if status.ok else "NOT OK"
    return f"{head}\n{table}\n{verdict}: {status.summary}" + "".join(
        _where_to_look(row) for row in status.hosts
    )


def _where_to_look(row: HostStatus) -> str:
    """For a host whose last deploy failed, the commands that show why (the id is the
    host's word: printed only when it is an id, as ``show`` and ``logs`` take it)."""
    job = row.last_job
    if not _failed(job) or job is None or not is_request_id(job.id):
        return ""
    tier = "" if row.tier == "test" else f" --tier {printable(row.tier)}"
    name = printable(row.hostname)
    return (
        f"\n  {name}: fleet-deploy show {job.id}{tier}; "
        f"fleet-deploy logs {job.id} --host {name}{tier}"
    )
