"""One deployment that outlives a tool call: its update log, and how a waiter follows it.

A deployment runs as a task of the server's lifespan task group (``fleet_mcp.registry``),
not of the tool call that started it: a client that cancels or times out stops *waiting*,
never the deployment. Every host change gets the next sequence number in the deployment's
update log; a waiter (a deploy call, or a later ``deployment_status`` call) replays the log
after the last number it reported and then sleeps until the next change, the next
heartbeat, or its own deadline. The log stays small: a host's change that repeats its
previous state (progress after progress) replaces it, and a finished deployment keeps only
each host's last state — a waiter skips what it had not reported yet and still hears every
host's final state. A drop or return of the server's own NATS connection is an entry of the
log too (the latest one replaces the one before), so a waiter says "lost its NATS
connection" and then what the hosts answered once it was back. A rollout's steps — a batch
going out, the rollout stopping — are entries too (the latest replaces the one before: a
late waiter hears where the rollout is, not its history; each host's own state comes with
it). The sentences of the notes are pure functions in ``fleet_mcp.reports.progress`` (a
rollout's in ``fleet_mcp.reports.deployment``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeAlias

import anyio
import structlog

from fleet_core.config.settings import RolloutSettings
from fleet_core.deploy.closures import Closures
from fleet_core.deploy.deployer import Deployer, new_deployment_id
from fleet_core.deploy.results import DeploymentResult, HostResult, Outage, RolloutStep
from fleet_core.errors import FleetError
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import Target
from fleet_mcp.registry import Registry
from fleet_mcp.reports.deployment import rollout_note
from fleet_mcp.reports.progress import (
    batch_note,
    connection_note,
    heartbeat_note,
    host_note,
    opening_note,
)

if TYPE_CHECKING:
    from fleet_core.metrics import DeployerMetrics, DeploymentOutcome

__all__ = [
    "BATCH",
    "COALESCE",
    "Deployment",
    "DeploymentRegistry",
    "Notify",
    "count_deployments",
]

log = structlog.get_logger("fleet.mcp")

Notify = Callable[[str], Awaitable[None]]
# A host's change, this server's NATS connection's, or a rollout's step.
Update = HostResult | Outage | RolloutStep
BATCH = 5  # more changes than this at once are reported as counts
COALESCE = 0.05  # seconds between progress notifications while changes pour in
_CONNECTION = ""  # the update log's key of the connection's entry: never a hostname
_ROLLOUT = "."  # and of the rollout's latest step: no hostname either


class Deployment:
    """One deployment: its request, its host changes, and how it ended."""

    kind = "deploy"  # its task's name in the lifespan's task group starts with this

    def __init__(
        self,
        target: Target,
        *,
        revision: str,
        action: Action,
        admin: bool,
        deployment_id: str | None = None,
        rollout: RolloutSettings | None = None,
        closures: Closures | None = None,
    ) -> None:
        self.id = deployment_id or new_deployment_id()
        self.target = target
        self.rollout = rollout  # None: one publish to the target
        self.closures = closures  # a closure deploy: each host is sent its own system
        self.revision = revision
        self.action = action
        self.admin = admin
        self.started_at = time.monotonic()
        self.started_wall = time.time()  # for people: when, in a list of deployments
        # Changes by sequence number, ascending; numbers only grow, entries may go.
        self._updates: dict[int, Update] = {}
        self._newest: dict[str, int] = {}  # hostname (or _CONNECTION) -> its latest change
        self._seq = 0  # number of the latest change
        self.result: DeploymentResult | None = None
        self.error: FleetError | None = None
        self._snapshot: DeploymentResult | None = None
        self._changed = anyio.Event()
        self.finished = anyio.Event()

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    @property
    def updates(self) -> list[HostResult]:
        """The host changes kept for waiters, oldest first."""
        return [u for u in self._updates.values() if isinstance(u, HostResult)]

    def current(self) -> DeploymentResult:
        """The final result, else the latest snapshot, else an empty one (still discovering)."""
        if self.result is not None:
            return self.result
        if self._snapshot is not None:
            return self._snapshot.model_copy(
                update={"duration_s": round(time.monotonic() - self.started_at, 3)}
            )
        return DeploymentResult(
            deployment_id=self.id,
            subject=self.target.subject,
            tier=self.target.tier.value,
            action=self.action.value,
            revision=self.revision,
            ok=False,
            done=False,
            counts={},
            hosts=[],
            duration_s=round(time.monotonic() - self.started_at, 3),
        )

    def on_update(self, host: HostResult, snapshot: DeploymentResult) -> None:
        """The deployer's callback: record the change and wake every waiter.

        A change in the state the host was already in (progress after progress) replaces
        the previous one: a waiter that had not reported that one yet reports the newer.
        """
        previous = self._updates.get(self._newest.get(host.hostname, 0))
        same = isinstance(previous, HostResult) and previous.status == host.status
        self._record(host.hostname, host, snapshot, replace=same)

    def on_connection(self, outage: Outage, snapshot: DeploymentResult) -> None:
        """The deployer's callback for this server's NATS connection dropping or coming
        back: the newest such change replaces the one before it in the log."""
        self._record(_CONNECTION, outage, snapshot, replace=True)

    def on_rollout(self, step: RolloutStep, snapshot: DeploymentResult) -> None:
        """The deployer's callback for a rollout's step: a batch went out, or it stopped."""
        self._record(_ROLLOUT, step, snapshot, replace=True)

    def _record(
        self, key: str, update: Update, snapshot: DeploymentResult, *, replace: bool
    ) -> None:
        previous = self._newest.get(key)
        if previous is not None and replace:
            del self._updates[previous]
        self._seq += 1
        self._updates[self._seq] = update
        self._newest[key] = self._seq
        self._snapshot = snapshot
        self._pulse()

    def _since(self, seen: int) -> list[Update]:
        """The changes numbered after ``seen``, oldest first."""
        newer = list(itertools.takewhile(lambda seq: seq > seen, reversed(self._updates)))
        return [self._updates[seq] for seq in reversed(newer)]

    def _compact(self) -> None:
        """Keep only each host's latest change; their numbers stay, so waiters carry on."""
        self._updates = {seq: self._updates[seq] for seq in sorted(self._newest.values())}

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def run(self, deployer: Deployer, limit: float) -> None:
        """The deployment's task; it ends with ``result`` or ``error`` set, never raising."""
        bound = log.bind(deployment_id=self.id, subject=self.target.subject)
        try:
            self.result = await deployer.deploy(
                self.target,
                revision=self.revision,
                action=self.action,
                timeout=limit,
                deployment_id=self.id,
                on_update=self.on_update,
                on_connection=self.on_connection,
                rollout=self.rollout,
                on_rollout=self.on_rollout,
                closures=self.closures,
            )
        except FleetError as exc:
            bound.warning("deployment_failed", error=str(exc))
            self.error = exc
        except anyio.get_cancelled_exc_class():
            self.error = FleetError(
                "the MCP server stopped before the deployment finished; the hosts may still be "
                "running it: check with list_hosts (busy) and deploy again if needed"
            )
            raise
        except Exception as exc:  # a bug must not leave waiters hanging
            bound.exception("deployment_crashed")
            self.error = FleetError(f"internal error in the MCP server ({type(exc).__name__})")
        finally:
            self._compact()
            self.finished.set()
            self._pulse()

    async def follow(self, wait: float, notify: Notify, *, heartbeat: float) -> None:
        """Wait up to ``wait`` seconds for the end, telling ``notify`` what happens.

        What the notes promise (``tools`` numbers them with strictly increasing progress):

        - The first note names the deployment: its id, action, revision and subject.
        - Every note starts with ``deployment <id>:``.
        - A host's change is reported soon after it happens, as the host's *latest* state:
          intermediate states (accepted, started, progress) may be skipped when a newer one
          came first — notes are ``COALESCE`` seconds apart while changes pour in, and a
          finished deployment keeps only each host's final state.
        - Per host, the reported states follow the host's own order; no change is reported
          twice.
        - Before this returns for a finished deployment, every host's final state has been
          reported: by name while a note covers at most ``BATCH`` changes, else counted in
          it (a hundred hosts answering at once make a handful of notes, not three hundred).
        - While nothing changes, a note at least every ``heartbeat`` seconds.
        - This server's NATS connection dropping, and coming back, each get a note (the
          latest of the two, if both happened since the last note), in order with the host
          changes around them; so does a rollout's latest step (a batch out, or its stop).
        """
        seen = 0  # the number of the latest change reported
        with anyio.move_on_after(wait):
            await notify(opening_note(self.current()))
            sent = anyio.current_time()
            while True:
                gap = sent + COALESCE - anyio.current_time()
                if gap > 0 and seen < self._seq and not self.done:
                    with anyio.move_on_after(gap):
                        await self.finished.wait()
                if seen < self._seq:
                    batch, seen = self._since(seen), self._seq
                    for part in _parts(batch):
                        if isinstance(part, Outage):
                            await notify(connection_note(self.id, part))
                        elif isinstance(part, RolloutStep):
                            await notify(rollout_note(self.id, part, self.current().rollout))
                        elif len(part) <= BATCH:
                            for host in part:
                                await notify(host_note(self.id, host))
                        else:
                            await notify(batch_note(part, self.current()))
                    sent = anyio.current_time()
                if self.done and seen == self._seq:
                    return
                changed = self._changed  # taken with no await since the last check
                if seen < self._seq:
                    continue  # more arrived while notifying
                with anyio.move_on_after(heartbeat) as beat:
                    await changed.wait()
                if beat.cancelled_caught:
                    await notify(heartbeat_note(self.current()))
                    sent = anyio.current_time()


def _parts(batch: list[Update]) -> list[list[HostResult] | Outage | RolloutStep]:
    """``batch`` cut at each connection change and rollout step: runs of host changes, and
    the changes and steps."""
    parts: list[list[HostResult] | Outage | RolloutStep] = []
    for update in batch:
        if isinstance(update, Outage | RolloutStep):
            parts.append(update)
        elif parts and isinstance(parts[-1], list):
            parts[-1].append(update)
        else:
            parts.append([update])
    return parts


# The deployments this server started, each run by the deployer of its link.
DeploymentRegistry: TypeAlias = Registry[Deployment, Deployer]


def count_deployments(metrics: DeployerMetrics) -> Callable[[Deployment], None]:
    """The registry's ``on_end`` over HTTP: count each deployment once it ends, by outcome."""

    def count(deployment: Deployment) -> None:
        result = deployment.result
        outcome: DeploymentOutcome = "error"  # no host reached: refused, or no connection
        if result is not None and result.hosts:
            outcome = "completed" if result.ok else "failed"
        metrics.deployment_finished(
            tier=deployment.target.tier.value,
            action=deployment.action.value,
            outcome=outcome,
        )

    return count
