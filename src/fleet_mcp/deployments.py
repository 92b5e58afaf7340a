"""The server's moving parts, without MCP: NATS links, and deployments that outlive a tool call.

A deployment runs as a task of the server's lifespan task group, not of the tool call that
started it: a client that cancels or times out stops *waiting*, never the deployment.
Every host change gets the next sequence number in the deployment's update log; a waiter (a
deploy call, or a later ``deployment_status`` call) replays the log after the last number it
reported and then sleeps until the next change, the next heartbeat, or its own deadline. The
log stays small: a host's change that repeats its previous state (progress after progress)
replaces it, and a finished deployment keeps only each host's last state — a waiter skips
what it had not reported yet and still hears every host's final state.

A ``NatsLink`` connects lazily: the lifespan starts the first attempt in the background (so
the server answers ``tools/list`` at once, NATS or not) and a tool that finds no connection
tries again before it gives up — a NATS server that comes up later is picked up on the next
call. Tools and deployments hold the connection through a ``Lease``. A connection that
dropped is replaced by a fresh one and closed as soon as no lease holds it: a deployment
running on it is not disturbed, and it does not linger once nats-py has reconnected it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import structlog

from fleet_core.bus import Bus
from fleet_core.deployer import Deployer, new_deployment_id
from fleet_core.errors import ConnectionFailed, FleetError
from fleet_core.keys import Seed
from fleet_core.rebuild import Action
from fleet_core.settings import DeployTiming
from fleet_core.subjects import Target
from fleet_core.tracking import DeploymentResult, HostResult

__all__ = [
    "BATCH",
    "COALESCE",
    "KEEP_DEPLOYMENTS",
    "Deployment",
    "DeploymentRegistry",
    "FleetState",
    "Lease",
    "NatsLink",
]

log = structlog.get_logger("fleet.mcp")

Notify = Callable[[str], Awaitable[None]]
BATCH = 5  # more changes than this at once are reported as counts
COALESCE = 0.05  # seconds between progress notifications while changes pour in
KEEP_DEPLOYMENTS = 200  # finished deployments remembered for deployment_status


@dataclass(eq=False)
class _Connection:
    """One NATS connection of a link, and how many leases hold it."""

    bus: Bus
    deployer: Deployer
    users: int = 0
    retired: bool = False


class Lease:
    """A deployer held by one tool call or one deployment; ``release()`` once done with it."""

    def __init__(
        self, deployer: Deployer, release: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.deployer = deployer
        self._release = release

    async def release(self) -> None:
        """Give the connection back; safe to call twice."""
        release, self._release = self._release, None
        if release is not None:
            await release()


class NatsLink:
    """One NATS identity (the test key or the admin key), connected on demand."""

    def __init__(
        self,
        url: str,
        seed: Seed,
        *,
        name: str,
        timing: DeployTiming,
        connect_timeout: float = 3.0,
    ) -> None:
        self.url = url
        self.public_key = seed.public_key
        self._seed = seed
        self._name = name
        self._timing = timing
        self._connect_timeout = connect_timeout
        self._current: _Connection | None = None
        self._retired: list[_Connection] = []  # dropped, still held by a lease
        self._lock = anyio.Lock()

    async def connect_quietly(self) -> None:
        """The lifespan's first attempt: a failure is remembered, not raised."""
        with contextlib.suppress(ConnectionFailed):
            async with self._lock:
                await self._connect()

    async def lease(self) -> Lease:
        """A deployer on a live connection, held until the lease is released; connects (again)
        if there is none.

        Raises ``ConnectionFailed`` when the server cannot be reached or refuses the key.
        """
        async with self._lock:  # one attempt at a time; later callers share its outcome
            connection = await self._connect()
            connection.users += 1
        return Lease(connection.deployer, functools.partial(self._release, connection))

    async def _connect(self) -> _Connection:
        """The current connection, or a new one; the caller holds the lock."""
        current = self._current
        if current is not None and current.bus.is_connected:
            return current
        if current is not None:
            # Dropped and not (yet) back: use a fresh connection from now on. A deployment
            # may still run on this one (nats-py may reconnect it), so it is closed only
            # when its last lease is released — now, if none holds it.
            self._current = None
            current.retired = True
            if current.users:
                self._retired.append(current)
            else:
                await self._close(current, "dropped")
        try:
            bus = await Bus.connect(
                self.url, self._seed, name=self._name, connect_timeout=self._connect_timeout
            )
        except ConnectionFailed as exc:
            log.warning("nats_unreachable", link=self._name, url=self.url, error=str(exc))
            raise
        self._current = _Connection(bus, Deployer(bus, timing=self._timing))
        log.info("nats_connected", link=self._name, url=self.url)
        return self._current

    async def _release(self, connection: _Connection) -> None:
        connection.users -= 1
        if connection.users == 0 and connection in self._retired:
            self._retired.remove(connection)
            await self._close(connection, "dropped earlier, no longer used")

    async def _close(self, connection: _Connection, reason: str) -> None:
        # Shielded: a cancelled caller (a deployment stopped at exit) must not leave it open.
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await connection.bus.close()
        log.info("nats_connection_closed", link=self._name, reason=reason)

    async def close(self) -> None:
        connections = [*self._retired, *([self._current] if self._current is not None else [])]
        self._current = None
        self._retired = []
        for connection in connections:
            await self._close(connection, "server exit")


class Deployment:
    """One deployment: its request, its host changes, and how it ended."""

    def __init__(
        self,
        target: Target,
        *,
        revision: str,
        action: Action,
        admin: bool,
        deployment_id: str | None = None,
    ) -> None:
        self.id = deployment_id or new_deployment_id()
        self.target = target
        self.revision = revision
        self.action = action
        self.admin = admin
        self.started_at = time.monotonic()
        # Host changes by sequence number, ascending; numbers only grow, entries may go.
        self._updates: dict[int, HostResult] = {}
        self._newest: dict[str, int] = {}  # hostname -> number of its latest change
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
        return list(self._updates.values())

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
        previous = self._newest.get(host.hostname)
        if previous is not None and self._updates[previous].status == host.status:
            del self._updates[previous]
        self._seq += 1
        self._updates[self._seq] = host
        self._newest[host.hostname] = self._seq
        self._snapshot = snapshot
        self._pulse()

    def _since(self, seen: int) -> list[HostResult]:
        """The changes numbered after ``seen``, oldest first."""
        newer = list(itertools.takewhile(lambda seq: seq > seen, reversed(self._updates)))
        return [self._updates[seq] for seq in reversed(newer)]

    def _compact(self) -> None:
        """Keep only each host's latest change; their numbers stay, so waiters carry on."""
        self._updates = {seq: self._updates[seq] for seq in sorted(self._newest.values())}

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def run(self, lease: Lease, limit: float) -> None:
        """The deployment's task; it ends with ``result`` or ``error`` set, never raising.

        The lease is released once waiters have been woken.
        """
        try:
            await self._run(lease.deployer, limit)
        finally:
            await lease.release()

    async def _run(self, deployer: Deployer, limit: float) -> None:
        bound = log.bind(deployment_id=self.id, subject=self.target.subject)
        try:
            self.result = await deployer.deploy(
                self.target,
                revision=self.revision,
                action=self.action,
                timeout=limit,
                deployment_id=self.id,
                on_update=self.on_update,
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
        """Wait up to ``wait`` seconds for the end, calling ``notify`` after every host change
        (replayed from the start of the deployment, as far as the log keeps it) and at least
        every ``heartbeat`` seconds.

        Notifications are at least ``COALESCE`` seconds apart, except the last one of a
        finished deployment: changes that arrive in between are reported together, each host
        on its own while there are at most ``BATCH`` of them, else as counts. A hundred hosts
        answering at once make a handful of notifications, not three hundred, and every change
        is still followed by a notification within ``COALESCE`` seconds.
        """
        seen = 0  # the number of the latest change reported
        with anyio.move_on_after(wait):
            await notify(self._opening())
            sent = anyio.current_time()
            while True:
                gap = sent + COALESCE - anyio.current_time()
                if gap > 0 and seen < self._seq and not self.done:
                    with anyio.move_on_after(gap):
                        await self.finished.wait()
                if seen < self._seq:
                    batch, seen = self._since(seen), self._seq
                    if len(batch) <= BATCH:
                        for host in batch:
                            await notify(self._describe(host))
                    else:
                        await notify(self._describe_many(batch))
                    sent = anyio.current_time()
                if self.done and seen == self._seq:
                    return
                changed = self._changed  # taken with no await since the last check
                if seen < self._seq:
                    continue  # more arrived while notifying
                with anyio.move_on_after(heartbeat) as beat:
                    await changed.wait()
                if beat.cancelled_caught:
                    await notify(self._heartbeat())
                    sent = anyio.current_time()

    def _opening(self) -> str:
        return (
            f"deployment {self.id}: {self.action.value} of {self.revision} to {self.target.subject}"
        )

    def _describe(self, host: HostResult) -> str:
        detail = f"{host.error}: {host.message}" if host.error else host.message
        first = detail.splitlines()[0] if detail else ""
        return f"deployment {self.id}: {host.hostname} {host.status}" + (
            f" — {first[:200]}" if first else ""
        )

    def _describe_many(self, batch: list[HostResult]) -> str:
        counts = Counter(host.status for host in batch)
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        current = self.current()
        final = sum(1 for h in current.hosts if h.final)
        return (
            f"deployment {self.id}: {len(batch)} host changes ({states}); "
            f"{final}/{len(current.hosts)} hosts final; latest: {batch[-1].hostname} "
            f"{batch[-1].status}"
        )

    def _heartbeat(self) -> str:
        current = self.current()
        final = sum(1 for h in current.hosts if h.final)
        hosts = f"{final}/{len(current.hosts)} hosts final" if current.hosts else "no answer yet"
        return f"deployment {self.id}: still running after {current.duration_s:.0f} s ({hosts})"


class DeploymentRegistry:
    """Deployments started by this server, newest last; finished ones beyond ``keep`` go."""

    def __init__(self, tasks: anyio.abc.TaskGroup, *, keep: int = KEEP_DEPLOYMENTS) -> None:
        self._tasks = tasks
        self._keep = keep
        self._deployments: OrderedDict[str, Deployment] = OrderedDict()

    def start(self, deployment: Deployment, lease: Lease, *, limit: float) -> Deployment:
        """Run ``deployment`` in the lifespan's task group; it may last ``limit`` seconds.

        The deployment releases ``lease`` when it ends.
        """
        self._deployments[deployment.id] = deployment
        self._tasks.start_soon(deployment.run, lease, limit, name=f"deploy {deployment.id}")
        self._prune()
        return deployment

    def get(self, deployment_id: str) -> Deployment | None:
        return self._deployments.get(deployment_id)

    def latest(self) -> Deployment | None:
        return next(reversed(self._deployments.values()), None)

    def __len__(self) -> int:
        return len(self._deployments)

    def _prune(self) -> None:
        excess = len(self._deployments) - self._keep
        if excess <= 0:
            return
        for deployment_id, deployment in list(self._deployments.items()):
            if excess <= 0:
                break
            if deployment.done:
                del self._deployments[deployment_id]
                excess -= 1


@dataclass
class FleetState:
    """What the lifespan yields to every tool call."""

    test: NatsLink
    admin: NatsLink | None
    registry: DeploymentRegistry
    heartbeat: float
    deploy_timeout: float
