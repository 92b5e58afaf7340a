"""Publishing a deploy and gathering every host's answer — the engine under the CLI and MCP.

One deployment: subscribe to a fresh ``deploy.responses.<id>``; for a group target, first
discover which hosts should answer; publish; flush (so a permission violation surfaces now,
not as a silent timeout); then feed every status into a ``DeploymentTracker`` until each
host is final. It returns the moment that happens, never waiting out a timeout it need not.

Core NATS is at-most-once, so the deployment also follows its own connection: a drop and a
reconnect go to the tracker (and to ``on_connection``), and the job queries the tracker
asks for — after a reconnect, and before a silent host is called lost — run as tasks of the
deployment whose answers come back through the same event stream as the statuses. The
decisions are all the tracker's; this module only does the I/O.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from fleet_core.bus import Bus, Message
from fleet_core.errors import (
    FleetError,
    PermissionDenied,
    RequestRejected,
    UsageError,
    only_fleet_error,
)
from fleet_core.messages import (
    DeployRequest,
    DiscoverRequest,
    ErrorCode,
    HostInfo,
    JobPhase,
    JobSummary,
    encode,
    parse_host_info,
    parse_status,
)
from fleet_core.rebuild import Action
from fleet_core.settings import DeployTiming
from fleet_core.subjects import DISCOVER_SUBJECT, RESPONSES_PREFIX, Target, Tier
from fleet_core.tracking import DeploymentResult, DeploymentTracker, HostResult, Outage

__all__ = ["Deployer", "OnConnection", "OnUpdate", "new_deployment_id"]

log = structlog.get_logger("fleet.deployer")

OnUpdate = Callable[[HostResult, DeploymentResult], None]
# The deployer's connection dropped (``outage.duration_s`` is None) or came back.
OnConnection = Callable[[Outage, DeploymentResult], None]


@dataclass(frozen=True, slots=True)
class _Connection:
    connected: bool
    gone: bool = False  # closed for good: nats-py ran out of reconnect attempts


@dataclass(frozen=True, slots=True)
class _JobAnswers:
    answers: dict[str, JobSummary | None]


_Event = Message | PermissionDenied | _Connection | _JobAnswers


def new_deployment_id() -> str:
    return uuid.uuid4().hex


class Deployer:
    """Deploys and discovers over one ``Bus``; safe to use for several deployments at once."""

    def __init__(self, bus: Bus, *, timing: DeployTiming | None = None) -> None:
        self._bus = bus
        self.timing = timing or DeployTiming()

    async def discover(self, tier: Tier | None = None) -> list[HostInfo]:
        """Ask every listener (of ``tier``) to answer; the window closes once replies stop."""
        reply = RESPONSES_PREFIX + uuid.uuid4().hex
        found = await self._ask(DiscoverRequest(reply_to=reply, tier=tier))
        return sorted(found.values(), key=lambda h: (h.tier, h.hostname))

    async def query_job(
        self, request_id: str, *, hosts: Iterable[str], tier: Tier | None = None
    ) -> dict[str, HostInfo]:
        """Ask ``hosts`` what they know of the job ``request_id`` (a job query).

        Returns the answers by hostname as soon as every host named has answered, else when
        the discovery window closes. An answer whose ``job`` is None came from a listener
        that does not know job queries: it is alive, but cannot tell.
        """
        names = sorted(set(hosts))
        if not names:
            return {}
        reply = RESPONSES_PREFIX + uuid.uuid4().hex
        request = DiscoverRequest(reply_to=reply, tier=tier, job=request_id, hosts=names)
        found = await self._ask(request, until=set(names))
        return {name: info for name, info in found.items() if name in names}

    async def _ask(
        self, request: DiscoverRequest, *, until: set[str] | None = None
    ) -> dict[str, HostInfo]:
        """Publish a discovery request and gather the answers of its tier.

        The window closes once replies stop coming (``discovery_quiet`` after the last, or
        ``discovery_first`` when none comes), at ``discovery_cap``, or as soon as every host
        in ``until`` has answered.
        """
        timing = self.timing
        tier = request.tier
        hosts: dict[str, HostInfo] = {}
        reply = request.reply_to
        async with self._inbox(reply, (DISCOVER_SUBJECT, reply)) as events:
            await self._bus.publish(DISCOVER_SUBJECT, encode(request), reply=reply)
            await self._bus.flush()
            with anyio.move_on_after(timing.discovery_cap):
                wait = timing.discovery_first
                while until is None or not until <= hosts.keys():
                    with anyio.move_on_after(wait) as window:
                        event = await events.receive()
                    if window.cancelled_caught:
                        break
                    if isinstance(event, PermissionDenied):
                        raise event
                    if not isinstance(event, Message):
                        continue  # only a deployment posts events of its own
                    if event.no_responders:
                        break
                    info = parse_host_info(event.data)
                    if info is not None and (tier is None or info.tier == tier.value):
                        hosts[info.hostname] = info
                    wait = timing.discovery_quiet
        return hosts

    async def deploy(
        self,
        target: Target,
        *,
        revision: str,
        action: Action,
        timeout: float,
        expect: Iterable[str] = (),
        deployment_id: str | None = None,
        on_update: OnUpdate | None = None,
        on_connection: OnConnection | None = None,
    ) -> DeploymentResult:
        """Deploy ``revision`` to ``target`` and return once every host is final.

        ``expect`` names hosts that must answer even if discovery does not find them (an
        offline host then ends ``missing``). ``on_update`` hears every host change,
        ``on_connection`` every drop and return of this deployer's own NATS connection.
        Raises ``UsageError`` for a bad revision, action or deployment id (building the
        request is their one check) and ``PermissionDenied`` when the server refuses this key
        the subject.
        """
        deployment_id = deployment_id or new_deployment_id()
        reply = RESPONSES_PREFIX + deployment_id
        try:
            request = DeployRequest(
                action=action, revision=revision, reply_to=reply, id=deployment_id
            )
        except RequestRejected as exc:
            if exc.code == ErrorCode.INVALID_REQUEST:  # here only the id can make the reply bad
                raise UsageError(
                    f"deployment id {deployment_id!r} must be 1-64 letters, digits, '-' or '_'"
                ) from None
            raise UsageError(str(exc)) from None
        bound = log.bind(
            deployment_id=deployment_id,
            subject=target.subject,
            action=action.value,
            revision=revision,
        )
        async with self._inbox(reply, (target.subject, reply, DISCOVER_SUBJECT)) as events:
            expected = set(expect)
            if target.is_group:
                found = await self.discover(target.tier)
                expected |= {h.hostname for h in found if _listens_to(h, target)}
            elif target.name is not None:
                expected.add(target.name)
            tracker = DeploymentTracker(
                expected,
                started_at=time.monotonic(),
                timeout=timeout,
                answer_within=self.timing.answer_within,
                silence_limit=self.timing.silence_limit,
            )
            gathering = _Gathering(
                tracker,
                deployment_id=deployment_id,
                target=target,
                action=action,
                revision=revision,
                log=bound,
                on_update=on_update,
                on_connection=on_connection,
            )
            bound.info("deploy_publish", expected=sorted(expected))
            stop_watching = self._bus.watch_connection(
                lambda connected: events.post(_Connection(connected, gone=self._bus.is_closed))
            )
            try:
                await self._bus.publish(target.subject, encode(request), reply=reply)
                await self._bus.flush()
                await self._gather(gathering, events)
            finally:
                stop_watching()
            result = gathering.snapshot(time.monotonic())
        bound.info("deploy_done", ok=result.ok, counts=result.counts)
        return result

    async def _gather(self, gathering: _Gathering, events: _Inbox) -> None:
        """Feed the tracker until every host is final, sending the job queries it asks for.

        Raises ``PermissionDenied`` as itself, not wrapped by the queries' task group.
        """
        try:
            await self._gather_with_queries(gathering, events)
        except BaseExceptionGroup as group:
            raise only_fleet_error(group) from None

    async def _gather_with_queries(self, gathering: _Gathering, events: _Inbox) -> None:
        tracker = gathering.tracker
        async with anyio.create_task_group() as queries:
            while not tracker.done:
                changed: list[HostResult] = []
                with anyio.move_on_after(max(0.0, tracker.next_check() - time.monotonic())):
                    batch = [await events.receive()]
                    # Take everything that is already here before reporting once.
                    with contextlib.suppress(anyio.WouldBlock):
                        while True:
                            batch.append(events.receive_nowait())
                    now = time.monotonic()
                    for event in batch:
                        changed += gathering.take(event, now)
                now = time.monotonic()
                changed += tracker.expire(now)
                ask = tracker.due_queries(now)
                if ask:
                    gathering.log.info("job_query", hosts=len(ask))
                    queries.start_soon(self._ask_for_jobs, events, gathering, ask)
                gathering.report(changed, now)
            queries.cancel_scope.cancel()  # a query still out has nothing left to say

    async def _ask_for_jobs(self, events: _Inbox, gathering: _Gathering, hosts: list[str]) -> None:
        """Send the job query the tracker asked for; its answers, even none, come back as
        one event (a query that could not be sent has no answers)."""
        request_id = gathering.deployment_id
        answers: dict[str, JobSummary | None] = {}
        try:
            found = await self.query_job(request_id, hosts=hosts, tier=gathering.target.tier)
        except FleetError as exc:
            gathering.log.info("job_query_failed", error=str(exc))
        else:
            answers = {name: _job_of(info, request_id) for name, info in found.items()}
        events.post(_JobAnswers(answers))

    def _inbox(self, reply: str, watched: tuple[str, ...]) -> _Inbox:
        return _Inbox(self._bus, reply, watched)


class _Gathering:
    """One deployment's tracker and its caller's callbacks: what each event does to them."""

    def __init__(
        self,
        tracker: DeploymentTracker,
        *,
        deployment_id: str,
        target: Target,
        action: Action,
        revision: str,
        log: Any,
        on_update: OnUpdate | None,
        on_connection: OnConnection | None,
    ) -> None:
        self.tracker = tracker
        self.deployment_id = deployment_id
        self.target = target
        self.log = log
        self._action = action
        self._revision = revision
        self._on_update = on_update
        self._on_connection = on_connection

    def snapshot(self, now: float) -> DeploymentResult:
        return self.tracker.result(
            deployment_id=self.deployment_id,
            subject=self.target.subject,
            tier=self.target.tier.value,
            action=self._action.value,
            revision=self._revision,
            now=now,
        )

    def report(self, changed: list[HostResult], now: float) -> None:
        if self._on_update is None or not changed:
            return
        current = self.snapshot(now)
        for host in changed:
            self._on_update(host, current)

    def take(self, event: _Event, now: float) -> list[HostResult]:
        """One event into the tracker; returns the hosts that changed."""
        if isinstance(event, PermissionDenied):
            raise event
        if isinstance(event, _Connection):
            return self._connection(event, now)
        if isinstance(event, _JobAnswers):
            changed = self.tracker.take_job_answers(event.answers, now)
            for host in changed:
                self.log.info(
                    "job_query_settled",
                    host=host.hostname,
                    status=host.status,
                    recovered=host.recovered,
                )
            return changed
        if event.no_responders:
            return self.tracker.nobody_listens(now)
        status = parse_status(event.data)
        if status is None:
            self.log.warning("status_ignored", size=len(event.data))
            return []
        if status.request_id not in (None, self.deployment_id):
            return []  # a late status of another deployment on a reused subject
        updated = self.tracker.observe(status, now)
        return [updated] if updated is not None else []

    def _connection(self, event: _Connection, now: float) -> list[HostResult]:
        if event.gone:
            self.log.warning("deploy_connection_gone")
            return self.tracker.connection_gone(now)
        if event.connected:
            outage = self.tracker.connection_back(now)
        else:
            outage = self.tracker.connection_lost(now, at=time.time())
        if outage is None:
            return []
        if event.connected:
            self.log.info("deploy_connection_back", outage_s=outage.duration_s)
        else:
            self.log.info("deploy_connection_lost")
        if self._on_connection is not None:
            self._on_connection(outage, self.snapshot(now))
        return []


def _job_of(info: HostInfo, request_id: str) -> JobSummary | None:
    """What a job query's answer says of the job; None when the listener cannot tell."""
    if info.job is not None:
        return info.job
    if info.running_job == request_id:  # knows running_job but not job: still, it runs
        return JobSummary(request_id=request_id, phase=JobPhase.RUNNING)
    return None


def _listens_to(host: HostInfo, target: Target) -> bool:
    """Whether a discovered host subscribes to the target (by its own list, else by shape)."""
    if host.deploy_subjects:
        return target.subject in host.deploy_subjects
    if target.kind == "all":
        return True
    return target.kind == "role" and host.role == target.name


class _Inbox:
    """A reply subscription plus permission denials on ``watched``, as one event stream;
    ``post`` adds events of the deployer's own (connection changes, job answers)."""

    def __init__(self, bus: Bus, reply: str, watched: tuple[str, ...]) -> None:
        self._bus = bus
        self._reply = reply
        self._watched = watched

    async def receive(self) -> _Event:
        return await self._receive.receive()

    def receive_nowait(self) -> _Event:
        return self._receive.receive_nowait()

    def post(self, event: _Event) -> None:
        with contextlib.suppress(anyio.ClosedResourceError):  # the deployment is over
            self._send.send_nowait(event)

    async def __aenter__(self) -> _Inbox:
        send: MemoryObjectSendStream[_Event]
        send, self._receive = anyio.create_memory_object_stream[_Event](math.inf)

        async def deliver(msg: Message) -> None:
            send.send_nowait(msg)

        def denied(exc: PermissionDenied) -> None:
            if exc.subject in self._watched:
                send.send_nowait(exc)

        self._send = send
        self._stop_watching = self._bus.watch_denials(denied)
        try:
            self._subscription = await self._bus.subscribe(self._reply, deliver)
        except BaseException:
            self._stop_watching()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop_watching()
        with anyio.CancelScope(shield=True):
            await self._subscription.unsubscribe()
        self._send.close()
        self._receive.close()
