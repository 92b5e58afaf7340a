"""The server's moving parts, without MCP: NATS links, and deployments that outlive a tool call.

A deployment runs as a task of the server's lifespan task group, not of the tool call that
started it: a client that cancels or times out stops *waiting*, never the deployment.
Every host change is appended to the deployment's update log; a waiter (a deploy call, or a
later ``deployment_status`` call) replays the log from where it stands and then sleeps until
the next change, the next heartbeat, or its own deadline.

A ``NatsLink`` connects lazily: the lifespan starts the first attempt in the background (so
the server answers ``tools/list`` at once, NATS or not) and a tool that finds no connection
tries again before it gives up — a NATS server that comes up later is picked up on the next
call.
"""

from __future__ import annotations

import contextlib
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
    "NatsLink",
]

log = structlog.get_logger("fleet.mcp")

Notify = Callable[[str], Awaitable[None]]
BATCH = 5  # more changes than this at once are reported as counts
COALESCE = 0.05  # seconds between progress notifications while changes pour in
KEEP_DEPLOYMENTS = 200  # finished deployments remembered for deployment_status


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
        self._bus: Bus | None = None
        self._deployer: Deployer | None = None
        self._retired: list[Bus] = []
        self._lock = anyio.Lock()

    async def connect_quietly(self) -> None:
        """The lifespan's first attempt: a failure is remembered, not raised."""
        with contextlib.suppress(ConnectionFailed):
            await self.deployer()

    async def deployer(self) -> Deployer:
        """A deployer on a live connection; connects (again) if there is none.

        Raises ``ConnectionFailed`` when the server cannot be reached or refuses the key.
        """
        async with self._lock:  # one attempt at a time; later callers share its outcome
            if self._bus is not None and self._deployer is not None and self._bus.is_connected:
                return self._deployer
            if self._bus is not None:
                # Dropped and not (yet) back. Keep it open — a deployment may still be using
                # it and it may reconnect — but use a fresh connection from now on.
                self._retired.append(self._bus)
                self._bus = self._deployer = None
            try:
                bus = await Bus.connect(
                    self.url, self._seed, name=self._name, connect_timeout=self._connect_timeout
                )
            except ConnectionFailed as exc:
                log.warning("nats_unreachable", link=self._name, url=self.url, error=str(exc))
                raise
            self._bus, self._deployer = bus, Deployer(bus, timing=self._timing)
            log.info("nats_connected", link=self._name, url=self.url)
            return self._deployer

    async def close(self) -> None:
        buses = [*self._retired, *([self._bus] if self._bus is not None else [])]
        self._bus = self._deployer = None
        self._retired = []
        for bus in buses:
            with anyio.move_on_after(5):
                await bus.close()


class Deployment:
    """One deployment: its request, every host change so far, and how it ended."""

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
        self.updates: list[HostResult] = []
        self.result: DeploymentResult | None = None
        self.error: FleetError | None = None
        self._snapshot: DeploymentResult | None = None
        self._changed = anyio.Event()
        self.finished = anyio.Event()

    @property
    def done(self) -> bool:
        return self.finished.is_set()

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
        """The deployer's callback: record the change and wake every waiter."""
        self.updates.append(host)
        self._snapshot = snapshot
        self._pulse()

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
            self.finished.set()
            self._pulse()

    async def follow(self, wait: float, notify: Notify, *, heartbeat: float) -> None:
        """Wait up to ``wait`` seconds for the end, calling ``notify`` after every host change
        (replayed from the start of the deployment) and at least every ``heartbeat`` seconds.

        Notifications are at least ``COALESCE`` seconds apart, except the last one of a
        finished deployment: changes that arrive in between are reported together, each host
        on its own while there are at most ``BATCH`` of them, else as counts. A hundred hosts
        answering at once make a handful of notifications, not three hundred, and every change
        is still followed by a notification within ``COALESCE`` seconds.
        """
        seen = 0
        with anyio.move_on_after(wait):
            await notify(self._opening())
            sent = anyio.current_time()
            while True:
                gap = sent + COALESCE - anyio.current_time()
                if gap > 0 and seen < len(self.updates) and not self.done:
                    with anyio.move_on_after(gap):
                        await self.finished.wait()
                if seen < len(self.updates):
                    batch = self.updates[seen:]
                    seen += len(batch)
                    if len(batch) <= BATCH:
                        for host in batch:
                            await notify(self._describe(host))
                    else:
                        await notify(self._describe_many(batch))
                    sent = anyio.current_time()
                if self.done and seen == len(self.updates):
                    return
                changed = self._changed  # taken with no await since the last check
                if seen < len(self.updates):
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

    def start(self, deployment: Deployment, deployer: Deployer, *, limit: float) -> Deployment:
        """Run ``deployment`` in the lifespan's task group; it may last ``limit`` seconds."""
        self._deployments[deployment.id] = deployment
        self._tasks.start_soon(deployment.run, deployer, limit, name=f"deploy {deployment.id}")
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
