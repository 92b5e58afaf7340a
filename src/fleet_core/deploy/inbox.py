"""A deployment's inbox: its reply subscriptions and the server's refusals of what it asked,
as one stream of events the deployer reads in order — with the events it posts itself (its
own connection dropping and coming back, the answers of a job query).

A refusal of a subject the deployer needs is an event, and kept: ``raise_denied`` turns all
of them into one error that says what the key is (``fleet_core.protocol.refusals``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from fleet_core.bus import CLOSE_DEADLINE, Bus, Message, Subscription
from fleet_core.errors import PermissionDenied
from fleet_core.protocol.messages import JobSummary
from fleet_core.protocol.refusals import Refusal, explain_refusals
from fleet_core.protocol.trust import Flagged

__all__ = ["ConnectionChange", "Event", "Inbox", "JobAnswers", "and_queued"]


@dataclass(frozen=True, slots=True)
class ConnectionChange:
    connected: bool
    gone: bool = False  # closed for good: nats-py ran out of reconnect attempts


@dataclass(frozen=True, slots=True)
class JobAnswers:
    answers: dict[str, JobSummary | None]
    bare: frozenset[str] = frozenset()  # hosts whose answer came on the bare reply subject
    flagged: tuple[Flagged, ...] = ()
    reply: str = ""  # the job query's reply subject


Event = Message | PermissionDenied | ConnectionChange | JobAnswers


def and_queued(first: Event, events: Inbox) -> Iterator[Event]:
    """``first``, then each event already queued behind it: what a caller stops before
    stays queued."""
    yield first
    while True:
        try:
            yield events.receive_nowait()
        except anyio.WouldBlock:
            return


class _Queue:
    """The inbox's events in order: a deque one task reads, and an event that wakes it.

    A memory object stream did this at twice the cost per message, and a deployment to ten
    thousand hosts puts thirty thousand statuses through here (``bench/scale.py``). What is
    put after ``close`` is dropped: a late reply after the deployment is no one's news, and
    nats-py must not see an error.
    """

    __slots__ = ("_closed", "_items", "_wakeup")

    def __init__(self) -> None:
        self._items: deque[Event] = deque()
        self._wakeup: anyio.Event | None = None
        self._closed = False

    def put(self, event: Event) -> None:
        if self._closed:
            return
        self._items.append(event)
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def get_nowait(self) -> Event:
        if self._items:
            return self._items.popleft()
        raise anyio.WouldBlock

    async def get(self) -> Event:
        await anyio.lowlevel.checkpoint()  # as a stream's receive: others run in between
        while not self._items:
            if self._closed:
                raise anyio.ClosedResourceError
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        return self._items.popleft()

    def close(self) -> None:
        self._closed = True
        self._items.clear()
        if self._wakeup is not None:
            self._wakeup.set()


class Inbox:
    """Reply subscriptions plus permission denials, as one event stream; ``post`` adds events
    of the deployer's own (connection changes, job answers).

    ``subjects[0]`` is the request's bare reply subject, which every deployer key may read.
    A denial on a ``watched`` subject is an event, and kept for ``raise_denied``. A denial of
    an ``optional`` subscription (a tier's replies, in discovery) is expected: it is only
    noted in ``refused``, and the bus logs it at debug level.
    """

    def __init__(
        self,
        bus: Bus,
        subjects: tuple[str, ...],
        *,
        watched: tuple[str, ...],
        optional: Iterable[str] = (),
    ) -> None:
        self._bus = bus
        self._subjects = subjects
        self._watched = set(watched)
        self._optional = frozenset(optional)
        self._denials: list[PermissionDenied] = []
        self._subscriptions: list[Subscription] = []
        self._queue = _Queue()
        self.refused: set[str] = set()

    async def receive(self) -> Event:
        return await self._queue.get()

    def receive_nowait(self) -> Event:
        return self._queue.get_nowait()

    def watch(self, subjects: Iterable[str]) -> None:
        """Report a denial on ``subjects`` too (a rollout's hosts, as each batch goes out)."""
        self._watched.update(subjects)

    def post(self, event: Event) -> None:
        self._queue.put(event)

    def raise_denied(self) -> None:
        """Raise the server's refusals so far, if any, as one error that says what this key
        is and what it may do (a test key deploying prod is refused the publish, and the
        prod replies before it)."""
        if self._denials:
            raise self._explained()

    def _explained(self) -> PermissionDenied:
        first = self._denials[0]
        refusals = [Refusal(d.operation or "publish", d.subject or "?") for d in self._denials]
        key = self._bus.public_key or ""
        explained = explain_refusals(refusals, key=key, reply=self._subjects[0])
        return PermissionDenied(
            str(explained), subject=first.subject, operation=first.operation, fix=explained.fix
        )

    async def __aenter__(self) -> Inbox:
        put = self._queue.put

        async def deliver(msg: Message) -> None:
            put(msg)

        def denied(exc: PermissionDenied) -> bool:
            if exc.subject in self._optional:
                self.refused.add(exc.subject)
                return True
            if exc.subject in self._watched:
                self._denials.append(exc)
                put(self._explained())
                return True  # raised to the caller, who says it better than a log line
            return False

        self._stop_watching = self._bus.watch_denials(denied)
        try:
            for subject in self._subjects:
                self._subscriptions.append(await self._bus.subscribe(subject, deliver))
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _close(self) -> None:
        self._stop_watching()
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_DEADLINE):
            for subscription in self._subscriptions:
                await subscription.unsubscribe()
        self._queue.close()
