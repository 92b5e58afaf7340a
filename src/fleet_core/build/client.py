"""Asking a builder for a build and following it — the engine under ``fleet-deploy build`` and
the MCP ``build`` tool.

One build: subscribe to a fresh ``build.responses.<id>``; publish the request; flush (so a
permission violation surfaces now, not as a silent timeout); then feed every status, and
every drop and return of this client's own connection, into a ``BuildTracker`` until the
build is over. The decisions — ``no_builder``, ``lost``, the deadline — are all the
tracker's, on the clock this module reads; this module only does the I/O, through ``Bus``.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fleet_core.build.protocol import (
    BUILD_RESPONSES_PREFIX,
    BuildRequest,
    BuildResult,
    BuildTarget,
    parse_build_status,
)
from fleet_core.build.tracker import BuildTracker
from fleet_core.bus import CLOSE_DEADLINE, Bus, Message, Subscription
from fleet_core.config.settings import DeployTiming
from fleet_core.errors import PermissionDenied, RequestRejected, UsageError
from fleet_core.protocol.messages import MAX_REQUEST_BYTES
from fleet_core.protocol.refusals import Refusal, explain_refusals

__all__ = ["BuildClient", "OnBuildUpdate", "new_build_id"]

log = structlog.get_logger("fleet.deployer")

OnBuildUpdate = Callable[[BuildResult], None]


def new_build_id() -> str:
    return uuid.uuid4().hex


class BuildClient:
    """Asks for builds over one ``Bus``; safe to use for several builds at once.

    Build requests are never signed: a build changes no host, and the NATS permissions let
    every deployer key ask for one.
    """

    def __init__(self, bus: Bus, *, timing: DeployTiming | None = None) -> None:
        self._bus = bus
        self.timing = timing or DeployTiming()

    async def build(
        self,
        target: BuildTarget,
        *,
        revision: str,
        timeout: float,
        build_id: str | None = None,
        on_update: OnBuildUpdate | None = None,
        hosts: Collection[str] | None = None,
    ) -> BuildResult:
        """Ask a builder to build ``target`` at ``revision``; return once the build is over.

        The result is ``no_builder`` when the server says nobody listens on the subject (or
        nothing answers within ``answer_within``), ``lost`` when the builder falls silent for
        ``silence_limit`` or 3.5 of the heartbeats it announced, whichever is longer, or
        ``timeout`` passes. This client's own outage is not the builder's silence: the
        clock stops while the connection is down (what the builder sent meanwhile is gone,
        so the report then says so); ``fleet_core.build.tracker`` holds these rules.
        ``on_update`` hears the result after every status that changed it. Raises
        ``UsageError`` for a bad revision or id and ``PermissionDenied`` when the server refuses
        this key the subject.

        ``hosts`` (with a target of ``all``) asks for exactly those configurations, from the
        one pinned commit; when their names do not fit in one request (a thousand or so),
        the request asks for ``all`` and the caller takes the hosts it wants from the result.
        """
        build_id = build_id or new_build_id()
        reply = BUILD_RESPONSES_PREFIX + build_id
        named = sorted(set(hosts)) if hosts is not None and target.host is None else None
        try:
            request = BuildRequest(revision=revision, reply_to=reply, id=build_id, hosts=named)
        except RequestRejected as exc:
            raise UsageError(str(exc)) from None
        if named is not None and len(request.encode()) > MAX_REQUEST_BYTES:
            log.info("build_hosts_do_not_fit", build_id=build_id, hosts=len(named))
            request = request.model_copy(update={"hosts": None})
        result = BuildResult(
            build_id=build_id, target=target.subject, repo=target.repo, revision=revision
        )
        tracker = BuildTracker(
            result,
            started_at=time.monotonic(),
            timeout=timeout,
            answer_within=self.timing.answer_within,
            silence_limit=self.timing.silence_limit,
        )
        bound = log.bind(build_id=build_id, subject=target.subject, revision=revision)
        async with _Inbox(self._bus, reply, watched=(target.subject, reply)) as events:
            bound.info("build_publish")
            await self._bus.publish(target.subject, request.encode(), reply=reply)
            await self._bus.flush()
            events.raise_denied()
            tracker.published(time.monotonic())
            await _follow(tracker, events, on_update)
        result = tracker.result_at(time.monotonic())
        bound.info("build_done", status=result.status, counts=result.counts())
        return result


async def _follow(tracker: BuildTracker, events: _Inbox, on_update: OnBuildUpdate | None) -> None:
    """Feed the tracker until the build is over, waking for each event and for the moment
    the tracker names; ``on_update`` hears every status that changed the result."""
    while not tracker.done:
        with anyio.move_on_after(max(0.0, tracker.next_check() - time.monotonic())):
            event = await events.receive()
            if _take(tracker, event, time.monotonic()) and on_update is not None:
                on_update(tracker.result)
        tracker.expire(time.monotonic())


def _take(tracker: BuildTracker, event: _Event, now: float) -> bool:
    """One event into the tracker; returns whether a status changed the result."""
    if isinstance(event, PermissionDenied):
        raise event
    if isinstance(event, _Connection):
        if not event.connected and event.gone:
            tracker.connection_gone()
        elif not event.connected:
            tracker.connection_lost(now)
        else:
            tracker.connection_back(now)
        return False
    if event.no_responders:
        tracker.nobody_listens()
        return False
    status = parse_build_status(event.data)
    return status is not None and tracker.feed(status, now)


@dataclass(frozen=True, slots=True)
class _Connection:
    connected: bool
    gone: bool = False  # closed for good: nats-py ran out of reconnect attempts


_Event = Message | PermissionDenied | _Connection


class _Inbox:
    """The build's reply subscription, the server's refusals of its ``watched`` subjects and
    this connection's drops and returns, as one event stream.

    A refusal is an event, and kept for ``raise_denied``.
    """

    def __init__(self, bus: Bus, subject: str, *, watched: tuple[str, ...]) -> None:
        self._bus = bus
        self._subject = subject
        self._watched = watched
        self._denials: list[PermissionDenied] = []
        self._subscription: Subscription | None = None
        self._stop_watching_denials: Callable[[], None] = _nothing
        self._stop_watching_connection: Callable[[], None] = _nothing
        send: MemoryObjectSendStream[_Event]
        receive: MemoryObjectReceiveStream[_Event]
        send, receive = anyio.create_memory_object_stream[_Event](math.inf)
        self._send, self._receive = send, receive

    async def receive(self) -> _Event:
        return await self._receive.receive()

    def raise_denied(self) -> None:
        """Raise the server's refusals so far, if any, as one error that says what this key
        is (a key refused the publish is refused the replies before it, too)."""
        if self._denials:
            raise self._explained()

    def _explained(self) -> PermissionDenied:
        first = self._denials[0]
        refusals = [Refusal(d.operation or "publish", d.subject or "?") for d in self._denials]
        explained = explain_refusals(refusals, key=self._bus.public_key or "", reply=self._subject)
        return PermissionDenied(
            str(explained), subject=first.subject, operation=first.operation, fix=explained.fix
        )

    def _post(self, event: _Event) -> None:
        # A late message after the build closed its inbox is no one's news; nats-py must not
        # see an error.
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._send.send_nowait(event)

    async def __aenter__(self) -> _Inbox:
        bus = self._bus

        async def deliver(msg: Message) -> None:
            self._post(msg)

        def denied(exc: PermissionDenied) -> bool:
            if exc.subject in self._watched:
                self._denials.append(exc)
                self._post(self._explained())
                return True  # raised to the caller, who says it better than a log line
            return False

        self._stop_watching_denials = bus.watch_denials(denied)
        try:
            self._subscription = await bus.subscribe(self._subject, deliver)
        except BaseException:
            await self._close()
            raise
        self._stop_watching_connection = bus.watch_connection(
            lambda connected: self._post(_Connection(connected, gone=bus.is_closed))
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _close(self) -> None:
        self._stop_watching_connection()
        self._stop_watching_denials()
        if self._subscription is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_DEADLINE):
                await self._subscription.unsubscribe()
        self._send.close()
        self._receive.close()


def _nothing() -> None:
    """Stops nothing: what the inbox has not begun to watch."""
