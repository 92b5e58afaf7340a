"""Publishing a deploy and gathering every host's answer — the engine under the CLI and MCP.

One deployment: subscribe to a fresh ``deploy.responses.<id>``; for a group target, first
discover which hosts should answer; publish; flush (so a permission violation surfaces now,
not as a silent timeout); then feed every status into a ``DeploymentTracker`` until each
host is final. It returns the moment that happens, never waiting out a timeout it need not.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable, Iterable

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fleet_core.bus import Bus, Message
from fleet_core.errors import PermissionDenied, RequestRejected, UsageError
from fleet_core.messages import (
    DeployRequest,
    DiscoverRequest,
    ErrorCode,
    HostInfo,
    encode,
    parse_host_info,
    parse_status,
)
from fleet_core.rebuild import Action
from fleet_core.settings import DeployTiming
from fleet_core.subjects import DISCOVER_SUBJECT, RESPONSES_PREFIX, Target, Tier
from fleet_core.tracking import DeploymentResult, DeploymentTracker, HostResult

__all__ = ["Deployer", "OnUpdate", "new_deployment_id"]

log = structlog.get_logger("fleet.deployer")

OnUpdate = Callable[[HostResult, DeploymentResult], None]
_Event = Message | PermissionDenied


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
    ) -> DeploymentResult:
        """Deploy ``revision`` to ``target`` and return once every host is final.

        ``expect`` names hosts that must answer even if discovery does not find them (an
        offline host then ends ``missing``). Raises ``UsageError`` for a bad revision, action
        or deployment id (building the request is their one check) and ``PermissionDenied``
        when the server refuses this key the subject.
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
            started = time.monotonic()
            tracker = DeploymentTracker(
                expected,
                started_at=started,
                timeout=timeout,
                answer_within=self.timing.answer_within,
                silence_limit=self.timing.silence_limit,
            )

            def snapshot(now: float) -> DeploymentResult:
                return tracker.result(
                    deployment_id=deployment_id,
                    subject=target.subject,
                    tier=target.tier.value,
                    action=action.value,
                    revision=revision,
                    now=now,
                )

            def report(changed: list[HostResult], now: float) -> None:
                if on_update is None or not changed:
                    return
                current = snapshot(now)
                for host in changed:
                    on_update(host, current)

            def take(event: _Event, now: float) -> list[HostResult]:
                if isinstance(event, PermissionDenied):
                    raise event
                if event.no_responders:
                    return tracker.nobody_listens(now)
                status = parse_status(event.data)
                if status is None:
                    bound.warning("status_ignored", size=len(event.data))
                    return []
                if status.request_id not in (None, deployment_id):
                    return []  # a late status of another deployment on a reused subject
                changed = tracker.observe(status, now)
                return [changed] if changed is not None else []

            bound.info("deploy_publish", expected=sorted(expected))
            await self._bus.publish(target.subject, encode(request), reply=reply)
            await self._bus.flush()
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
                        changed += take(event, now)
                now = time.monotonic()
                changed += tracker.expire(now)
                report(changed, now)
            result = snapshot(time.monotonic())
        bound.info("deploy_done", ok=result.ok, counts=result.counts)
        return result

    def _inbox(self, reply: str, watched: tuple[str, ...]) -> _Inbox:
        return _Inbox(self._bus, reply, watched)


def _listens_to(host: HostInfo, target: Target) -> bool:
    """Whether a discovered host subscribes to the target (by its own list, else by shape)."""
    if host.deploy_subjects:
        return target.subject in host.deploy_subjects
    if target.kind == "all":
        return True
    return target.kind == "role" and host.role == target.name


class _Inbox:
    """A reply subscription plus permission denials on ``watched``, as one event stream."""

    def __init__(self, bus: Bus, reply: str, watched: tuple[str, ...]) -> None:
        self._bus = bus
        self._reply = reply
        self._watched = watched

    async def __aenter__(self) -> MemoryObjectReceiveStream[_Event]:
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
        return self._receive

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop_watching()
        with anyio.CancelScope(shield=True):
            await self._subscription.unsubscribe()
        self._send.close()
        self._receive.close()
