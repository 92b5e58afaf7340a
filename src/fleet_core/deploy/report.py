"""Turning results into text for people (pure): live status lines, summaries, host tables.

Every text a host sent — its hostname and role, messages, error codes, phases, log lines,
version — goes through ``printable`` on its way into a line, so that a build log's escape
sequences cannot retitle the terminal, overwrite the verdict or hide a line
(``fleet_core.protocol.text``). A multi-line message is shown as one line, its newlines
escaped: a host must not print a line of its own, such as a fake verdict.

A rollout's result adds a BATCH column and a paragraph on its steps; each batch that goes
out gets a live line (``rollout_line``: ``canary: web1``, ``batch 2/4: web3, web4``), and so
does its stop, which names the skipped hosts once instead of a line each.

A closure deploy's result names the build and the commit its systems were built from, and
lists the exact system each host was sent (``systems_lines``).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

from fleet_core.deploy.cancellation import CancelResult
from fleet_core.deploy.results import (
    DeploymentResult,
    HostResult,
    Outage,
    RolloutResult,
    RolloutStep,
)
from fleet_core.protocol.messages import HostInfo
from fleet_core.protocol.text import printable

__all__ = [
    "LISTED_NAMES",
    "RECOVERED",
    "TAIL_LINES",
    "batch_label",
    "cancel_summary",
    "check_lines",
    "connection_line",
    "directory_hint",
    "host_line",
    "hosts_table",
    "rollout_line",
    "rollout_paragraph",
    "summary",
    "systems_lines",
    "trust_lines",
]

TAIL_LINES = 20  # the lines of a failure's output a summary shows
LISTED_NAMES = 12  # names a hint lists before "and N more"
RECOVERED = "(recovered from its job record)"  # a final status whose message was lost


def connection_line(outage: Outage) -> str:
    """The deployer's own connection dropped (no duration yet) or came back."""
    if outage.duration_s is None:
        return "NATS connection lost — reconnecting"
    return f"reconnected after {outage.duration_s:.1f} s"


def batch_label(number: int, later: int) -> str:
    """Batch ``number`` of a rollout with ``later`` batches after its canary: "canary",
    "batch 2/4"."""
    return "canary" if number == 0 else f"batch {number}/{later}"


def rollout_line(step: RolloutStep, rollout: RolloutResult | None) -> str:
    """A rollout's step as it happens: the batch that went out and its hosts, or why no
    further batch starts and which hosts that leaves out."""
    later = rollout.batches if rollout is not None else 0
    names = listed([printable(name) for name in step.hosts])
    if step.kind == "batch":
        return f"{batch_label(step.batch, later)}: {names}"
    why = printable(rollout.stopped) if rollout is not None and rollout.stopped else "stopped"
    return f"no further batch: {why}. Skipped ({len(step.hosts)}): {names}"


def host_line(host: HostResult) -> str:
    """One line for a host whose state just changed."""
    detail = printable(host.message)
    if host.phase and host.status == "progress":
        detail = f"[{printable(host.phase)}] {detail}"
    if host.error:
        detail = f"{printable(host.error)}: {detail}"
    if host.recovered:
        detail = f"{detail} {RECOVERED}"
    return f"  {printable(host.hostname):<20} {host.status:<10} {detail}".rstrip()


def summary(result: DeploymentResult) -> str:
    """The final report: a row per host, the log tail of every failure, and a verdict."""
    rollout = result.rollout
    what = _what(result)
    lines = [
        f"deployment {result.deployment_id}: {what} ({result.duration_s:.1f} s)",
        "",
        f"  {'HOST':<20} {'BATCH  ' if rollout else ''}{'STATUS':<10} {'TIME':>8}  MESSAGE",
    ]
    hosts = result.hosts
    if rollout is not None:  # in the order they were deployed
        hosts = sorted(hosts, key=lambda h: h.batch if h.batch is not None else math.inf)
    for host in hosts:
        took = f"{host.duration_s:.1f}s" if host.duration_s is not None else "-"
        note = f"{host.error}: {host.message}" if host.error else host.message
        marker = "" if host.expected else " (unexpected)"
        marker += f" {RECOVERED}" if host.recovered else ""
        name = printable(host.hostname)
        batch = f"{_batch_cell(host):<6} " if rollout else ""
        lines.append(f"  {name:<20} {batch}{host.status:<10} {took:>8}  {printable(note)}{marker}")
    lines += systems_lines(result.hosts)
    lines += check_lines(result.hosts)
    for host in result.hosts:
        if host.log_tail:
            lines += ["", f"--- last output of {printable(host.hostname)} ---"]
            lines += [f"  {printable(line)}" for line in host.log_tail[-TAIL_LINES:]]
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result.counts.items()))
    verdict = "OK" if result.ok else "NOT OK"
    if not result.hosts:
        counts = "no host answered"
    hint = directory_hint(result)
    if hint:
        lines += ["", hint]
    if rollout is not None and result.hosts:
        lines += ["", rollout_paragraph(result)]
    if result.outages:
        lines += ["", _outages(result)]
    lines += trust_lines(result)
    if result.ok and not result.server_verified:
        verdict += " (not server-verified)"
    lines += ["", f"{verdict}: {counts}"]
    return "\n".join(lines)


def _what(result: DeploymentResult) -> str:
    """What the deployment did, for the first line: a closure deploy names its build and
    commit (the revision is then the commit), or says that it sent a given system."""
    if result.action == "check":
        return f"health checks of {result.subject}"
    if result.build_id is not None:
        at = f" (commit {printable(result.commit[:12])})" if result.commit else ""
        return (
            f"{result.action} of the systems of build {printable(result.build_id)}{at} to "
            f"{result.subject}"
        )
    if any(host.store_path for host in result.hosts):
        return f"{result.action} of a given system to {result.subject}"
    return f"{result.action} of {result.revision} to {result.subject}"


def systems_lines(hosts: Sequence[HostResult]) -> list[str]:
    """A closure deploy: the exact system each host was sent, a line per host."""
    sent = [host for host in hosts if host.store_path]
    if not sent:
        return []
    lines = ["", "--- systems sent ---"]
    lines += [
        f"  {printable(host.hostname):<20} {printable(host.store_path or '')}" for host in sent
    ]
    return lines


def cancel_summary(result: CancelResult) -> str:
    """A cancel's answers: a row per host, the tiers this key could not reach, a verdict."""
    lines = [f"cancel of deployment {result.deployment_id}", ""]
    lines += [
        f"  {printable(a.hostname):<20} {a.outcome:<10} {printable(a.message)}".rstrip()
        for a in result.answers
    ]
    if not result.answers:
        lines.append("  no host answered: none of them knows this deployment's hosts' subjects")
    for tier in result.refused_tiers:
        lines.append(f"  ({tier}: this key may not deploy there, so it may not cancel there)")
    stopped = len(result.stopped)
    verdict = "OK" if result.ok else "NOT OK"
    lines += ["", f"{verdict}: {stopped} stopped, {len(result.answers) - stopped} other answers"]
    return "\n".join(lines)


def check_lines(hosts: Sequence[HostResult]) -> list[str]:
    """The health checks each host ran after activating, a line per check: its verdict, its
    time and, for a failed one, the last line it printed (host output, made printable)."""
    lines: list[str] = []
    for host in hosts:
        if not host.checks:
            continue
        lines += ["", f"--- health checks of {printable(host.hostname)} ---"]
        for check in host.checks:
            took = f"{check.duration_s:.1f}s" if check.duration_s is not None else "-"
            said = check.output_tail[-1] if check.output_tail and not check.ok else ""
            verdict = "ok" if check.ok else "FAILED"
            lines.append(
                f"  {printable(check.name):<20} {verdict:<6} {took:>8}  {printable(said)}".rstrip()
            )
    return lines


def directory_hint(result: DeploymentResult, *, suggest: bool = True) -> str | None:
    """When the target reached no host: the roles or hosts discovery found in its tier, and
    (with ``suggest``) the nearest to what was typed. None when there is nothing to tell.

    The names are subject tokens (the deployer keeps no other), so they are fit for a
    sentence. An MCP client gets no suggestion: a model told "did you mean web1?" about a
    prod host's name may deploy web1, a host nobody asked for."""
    directory = result.found_in_tier
    if directory is None:
        return None
    tier = directory.tier
    if not directory.hosts:
        return (
            f"Discovery found no host in the {tier} tier: check that the listeners are "
            "running and connected to this NATS server, and that this key may read their "
            "answers."
        )
    hosts = f"Hosts there: {listed(directory.hosts)}."
    kind, _, name = result.subject.removeprefix(f"deploy.{tier}.").rpartition(".")
    if kind == "role" and directory.roles:
        return (
            f"No host in the {tier} tier has the role {name!r}. Roles there: "
            f"{listed(directory.roles)}.{_nearest(name, directory.roles, suggest)} {hosts}"
        )
    if kind == "role":
        return f"No host in the {tier} tier has a role. {hosts}"
    if not kind and name != "all":
        return (
            f"No listener named {name!r} answers in the {tier} tier. "
            f"{hosts}{_nearest(name, directory.hosts, suggest)}"
        )
    return None


def _batch_cell(host: HostResult) -> str:
    if host.batch is None:
        return "-"
    return "canary" if host.batch == 0 else str(host.batch)


def rollout_paragraph(result: DeploymentResult) -> str:
    """How a rollout went: what was asked, how far it got, and why it stopped."""
    rollout = result.rollout
    assert rollout is not None
    asked = [f"canary {rollout.canary}"] if rollout.canary else []
    asked.append(f"batches of {rollout.batch_size}" if rollout.batch_size else "then the rest")
    asked.append(f"failure budget {rollout.max_failures}")
    asked.append(f"shuffled, seed {rollout.seed}" if rollout.seed is not None else "by name")
    has_canary = any(h.batch == 0 for h in result.hosts)
    total = rollout.batches + has_canary
    started = 0 if rollout.current is None else rollout.current + has_canary
    text = f"Rollout ({', '.join(asked)}): {started} of {total} batches started"
    if rollout.stopped:
        text += f"; no further batch, as {printable(rollout.stopped)}"
    skipped = [printable(h.hostname) for h in result.hosts if h.status == "skipped"]
    if skipped:
        text += f". Skipped, never sent a request ({len(skipped)}): {listed(skipped)}"
    return text + "."


def listed(names: Sequence[str]) -> str:
    """``names`` joined for a sentence, the first ``LISTED_NAMES`` of them and a count."""
    shown = ", ".join(names[:LISTED_NAMES])
    rest = len(names) - LISTED_NAMES
    return f"{shown} and {rest} more" if rest > 0 else shown


def _nearest(typed: str, names: Sequence[str], suggest: bool) -> str:
    if not suggest:
        return ""
    close = difflib.get_close_matches(typed, names, n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def trust_lines(result: DeploymentResult) -> list[str]:
    """What the deployer did not believe, and what it believed without the server's word."""
    lines: list[str] = []
    if result.flagged_count:
        lines += ["", f"Not believed, so not counted ({result.flagged_count}):"]
        lines += [
            f"  {printable(f.hostname):<20} {printable(f.claim):<10} on {printable(f.subject)}: "
            f"{printable(f.reason)}"
            for f in result.flagged
        ]
        if result.flagged_count > len(result.flagged):
            lines.append(f"  … and {result.flagged_count - len(result.flagged)} more")
    if result.unverified:
        lines += [
            "",
            f"Not server-verified: {printable(', '.join(result.unverified))} answered on the "
            "bare reply subject (as homelab-deploy listeners do), which any listener key may "
            "publish to under homelab-deploy's NATS layout.",
        ]
    return lines


def _outages(result: DeploymentResult) -> str:
    """What the deployer's own outages did: a status sent meanwhile is read back, not lost."""
    times = "once" if len(result.outages) == 1 else f"{len(result.outages)} times"
    down = sum(o.duration_s or 0.0 for o in result.outages)
    text = f"This deployer's NATS connection was lost {times} ({down:.1f} s in all)"
    if result.outages[-1].duration_s is None:
        text += " and was still down at the end"
    recovered = [host.hostname for host in result.hosts if host.recovered]
    if len(recovered) == 1:
        text += (
            f"; the final status of {printable(recovered[0])}, sent meanwhile, was read back "
            "from its job record"
        )
    elif recovered:
        text += (
            f"; the final statuses of {len(recovered)} hosts, sent meanwhile, were read back "
            "from their job records"
        )
    return text + "."


def hosts_table(hosts: Sequence[HostInfo]) -> str:
    """Discovered hosts as an aligned table; a KIND column only when a host is not NixOS
    (a listener that does not say is NixOS), so an all-NixOS fleet's table is unchanged.
    Every cell is a host's answer, so every cell is made printable."""
    if not hosts:
        return "no hosts answered discovery"
    kinds = [h.kind or "nixos" for h in hosts]
    with_kind = any(kind != "nixos" for kind in kinds)
    rows = [("HOST", "TIER", "ROLE", *(("KIND",) if with_kind else ()), "STATE", "VERSION")]
    rows += [
        tuple(
            printable(cell)
            for cell in (
                h.hostname,
                h.tier,
                h.role or "-",
                *((kind,) if with_kind else ()),
                "busy" if h.busy else "idle",
                h.version or "-",
            )
        )
        for h, kind in zip(hosts, kinds, strict=True)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
