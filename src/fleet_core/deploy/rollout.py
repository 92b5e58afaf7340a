"""A rollout's plan and its decisions (pure: no I/O) — canary, batches, the failure budget.

A group deploy given ``--canary``/``--batch`` (``RolloutSettings``) is not one publish to the
group's subject but one request per host, batch after batch, each to ``deploy.<tier>.<host>``
under the same deployment id. Here is what decides which host goes when, and whether to go on;
the deployer (``fleet_core.deploy.deployer``) only sends and listens.

- **Order**: by host name, so that the same fleet is always deployed in the same order and
  the canary is a host a person can name in advance. ``--shuffle`` instead shuffles the sorted
  names with ``random.Random(seed)``; the seed is recorded in the result, so the order of
  any run can be told again (``ordered(hosts, seed)``).
- **Batches**: the first ``canary`` hosts are batch 0; then batches of ``batch`` hosts, or of
  ``batch``% of *all* the target's hosts (the canary's included: "25%" means a quarter of
  the fleet per batch, whatever the canary), rounded up and at least one; without a batch
  size, all the rest make one batch. Batch numbers start at 1 after the canary (and without
  one), so "batch 1" is always the first batch of the bulk.
- **The budget**: a host of a batch that ran and ended anything but ``completed`` — failed,
  rejected, missing, lost, timeout — counts against it. Once more than ``max_failures`` hosts
  count, no further batch starts and every host not attempted ends ``skipped``.
- **Build failures first**: a closure deploy's host whose build failed is never sent
  anything (``fleet_core.deploy.closures``); it counts against the budget before the first
  batch (``Plan.failed_first``), so that with ``--max-failures 0`` a failed build stops the
  rollout before any host switches.
- **The deployer's own outage is no failure**: a host that ended ``timeout`` while the
  deployer's NATS connection was down (or given up) has an unknown outcome. It does not spend
  the budget, but no batch starts after it either — going on blind is what a canary exists
  to prevent; the rollout stops, saying why. A status lost in an outage and read back from the
  host's job record (``recovered``) is the host's real outcome and counts as such.

The reasons are sentences in the deployer's own words: counts, batch numbers and host names,
which are subject tokens (a host is addressed as ``deploy.<tier>.<host>``, so a rollout
holds no other name).
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from fleet_core.config.settings import RolloutSettings
from fleet_core.deploy.results import HostResult, RolloutResult

__all__ = [
    "MAX_NAMED",
    "Batch",
    "Plan",
    "Stop",
    "budget_stop",
    "failed_hosts",
    "held_too_long",
    "ordered",
    "plan_rollout",
]

MAX_NAMED = 5  # hosts a reason names before it counts the rest
MAX_FAILED = 50  # hosts a result lists as counting against the budget


@dataclass(frozen=True, slots=True)
class Batch:
    """One step of a rollout: its number (0 is the canary) and its hosts, in order."""

    number: int
    hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Stop:
    """Why a rollout starts no further batch: ``reason`` says it in a sentence; ``failed``
    names the hosts that count against the budget."""

    reason: str
    failed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """The batches of one rollout, in the order they go out."""

    settings: RolloutSettings
    batches: tuple[Batch, ...]
    seed: int | None = None  # the shuffle's; None: by name
    # Hosts that failed before the first batch (a closure deploy's failed builds): in no
    # batch, never sent anything, and counted against the budget from the start.
    failed_first: frozenset[str] = frozenset()

    @property
    def later(self) -> int:
        """How many batches come after the canary batch."""
        return sum(1 for batch in self.batches if batch.number > 0)

    def batch_of(self) -> dict[str, int]:
        """Each host's batch number."""
        return {host: batch.number for batch in self.batches for host in batch.hosts}

    def result(
        self, current: int | None, failed: Sequence[str], stop: Stop | None
    ) -> RolloutResult:
        """The rollout's part of a deployment's result."""
        return RolloutResult(
            canary=self.settings.canary,
            batch_size=self.settings.batch_text,
            max_failures=self.settings.max_failures,
            seed=self.seed,
            batches=self.later,
            current=current,
            failed=list(failed[:MAX_FAILED]),
            failed_count=len(failed),
            stopped=stop.reason if stop is not None else None,
        )


def ordered(hosts: Iterable[str], seed: int | None = None) -> list[str]:
    """The hosts in the order a rollout takes them: by name, or shuffled by ``seed``."""
    names = sorted(set(hosts))
    if seed is not None:
        random.Random(seed).shuffle(names)  # noqa: S311 - an order, not a secret
    return names


def plan_rollout(
    hosts: Iterable[str],
    settings: RolloutSettings,
    *,
    seed: int | None = None,
    failed_first: Iterable[str] = (),
) -> Plan:
    """Cut ``hosts`` into batches as ``settings`` asks: ``canary`` hosts first, then batches
    of the batch size. ``seed`` (required when ``settings.shuffle``) orders a shuffle.
    ``failed_first`` names hosts that already failed (their builds), in no batch: a
    percentage counts them among the target's hosts, and the budget counts them first."""
    if settings.shuffle and seed is None:
        raise ValueError("a shuffled rollout needs its seed")
    names = ordered(hosts, seed if settings.shuffle else None)
    batches: list[Batch] = []
    canary, rest = names[: settings.canary], names[settings.canary :]
    if canary:
        batches.append(Batch(0, tuple(canary)))
    first = frozenset(failed_first) - set(names)
    size = max(1, _batch_size(settings, len(names) + len(first)) or len(rest))
    for start in range(0, len(rest), size):
        number = len(batches) + (0 if canary else 1)  # after the canary's 0, from 1
        batches.append(Batch(number, tuple(rest[start : start + size])))
    return Plan(settings, tuple(batches), seed if settings.shuffle else None, first)


def _batch_size(settings: RolloutSettings, total: int) -> int | None:
    """Hosts per batch after the canary: N, or N% of ``total`` rounded up (at least one)."""
    if settings.batch is None:
        return None
    if settings.batch_percent:
        return max(1, math.ceil(total * settings.batch / 100))
    return settings.batch


def budget_stop(
    plan: Plan,
    hosts: Iterable[HostResult],
    *,
    unknown: Collection[str] = (),
    gone: bool = False,
) -> Stop | None:
    """Whether the rollout must stop before its next batch, given every host's state now
    (those of the batches run so far are final, and those that failed before the first):
    a host's job was cancelled, the budget is spent, or an outcome is unknown because of
    the deployer's own outage. None: go on."""
    first = plan.failed_first
    finished = [
        h
        for h in hosts
        if (h.batch is not None or h.hostname in first) and h.final and h.status != "skipped"
    ]
    failed = failed_hosts(finished, unknown, first=first)
    names = tuple(h.hostname for h in failed)
    cancelled = [h for h in failed if h.error == "cancelled"]
    if cancelled:  # someone cancelled the deployment: no budget keeps it going
        return Stop(f"the deployment was cancelled ({_who(cancelled)})", names)
    budget = plan.settings.max_failures
    if len(failed) > budget:
        return Stop(f"the failure budget ({budget}) was spent by {_who(failed)}", names)
    blind = sorted(h.hostname for h in finished if h.hostname in unknown)
    if blind or gone:
        last = max((h.batch for h in finished if h.batch is not None), default=None)
        which = _batch_named(last) if last is not None else "the rollout"
        outcome = f"the outcome of {_names(blind)} is unknown" if blind else "nothing more"
        return Stop(
            f"this deployer's NATS connection was down at the end of {which}, so {outcome} "
            "can be known (its outage spends no failure budget, but the rollout does not go "
            "on blind)",
            names,
        )
    return None


def failed_hosts(
    hosts: Iterable[HostResult], unknown: Collection[str] = (), *, first: Collection[str] = ()
) -> list[HostResult]:
    """The hosts of a rollout's batches that count against its budget: final, and neither
    completed, nor skipped (never tried), nor of an outcome the deployer's outage hid; and
    ``first``, those that failed before the first batch (``Plan.failed_first``)."""
    return [
        h
        for h in hosts
        if (h.batch is not None or h.hostname in first)
        and h.final
        and h.status not in ("completed", "skipped")
        and h.hostname not in unknown
    ]


def held_too_long(plan: Plan, number: int, waited: float) -> Stop:
    """The stop when the next batch (``number``) waited ``waited`` seconds for this
    deployer's NATS connection to come back, as long as a batch may take."""
    return Stop(
        f"this deployer's NATS connection was down for {waited:.0f} s when "
        f"{_batch_named(number)} was due, as long as a batch may take (its outage spends no "
        "failure budget)",
        (),
    )


def _batch_named(number: int) -> str:
    """Batch ``number`` in a sentence: "the canary batch", "batch 2"."""
    return "the canary batch" if number == 0 else f"batch {number}"


def _who(failed: Sequence[HostResult]) -> str:
    """The failed hosts with their batches: "web2 in batch 1", "web1 in the canary batch",
    "web3 before any batch (its build failed)"."""
    groups: dict[int | None, list[str]] = {}
    for host in failed:
        groups.setdefault(host.batch, []).append(host.hostname)
    parts = []
    shown = 0
    for number, names in groups.items():
        if shown >= MAX_NAMED:
            break
        where = (
            f"before any batch ({'its build' if len(names) == 1 else 'their builds'} failed)"
            if number is None
            else f"in {_batch_named(number)}"
        )
        parts.append(f"{_names(names, MAX_NAMED - shown)} {where}")
        shown += len(names)
    more = len(failed) - shown
    text = "; ".join(parts)
    return f"{text}; and {more} more" if more > 0 else text


def _names(names: Sequence[str], limit: int = MAX_NAMED) -> str:
    """``names`` for a sentence: "web2", "web2 and web3", "web2, web3 and 4 more"."""
    shown = list(names[:limit])
    rest = len(names) - len(shown)
    if rest > 0:
        return f"{', '.join(shown)} and {rest} more"
    if len(shown) <= 1:
        return "".join(shown)
    return f"{', '.join(shown[:-1])} and {shown[-1]}"
