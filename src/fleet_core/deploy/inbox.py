"""A deployment's inbox: its reply subscriptions and the server's refusals of what it asked,
as one stream of events the deployer reads in order — with the events it posts itself (its
own connection dropping and coming back, the answers of a job query).

A refusal of a subject the deployer needs is an event, and kept: ``raise_denied`` turns all
of them into one error that says what the key is (``fleet_core.protocol.refusals``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectSendStream

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
        self.refused: set[str] = set()

    async def receive(self) -> Event:
        return await self._receive.receive()

    def receive_nowait(self) -> Event:
        return self._receive.receive_nowait()

    def watch(self, subjects: Iterable[str]) -> None:
        """Report a denial on ``subjects`` too (a rollout's hosts, as each batch goes out)."""
        self._watched.update(subjects)

    def post(self, event: Event) -> None:
        with contextlib.suppress(anyio.ClosedResourceError):  # the deployment is over
            self._send.send_nowait(event)

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
        send: MemoryObjectSendStream[Event]
        send, self._receive = anyio.create_memory_object_stream[Event](math.inf)

        async def deliver(msg: Message) -> None:
            # A late reply after the inbox closed is no one's news; nats-py must not see an
            # error.
            try:  # noqa: SIM105 - once per message: a try costs nothing, suppress() a call
                send.send_nowait(msg)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass

        def denied(exc: PermissionDenied) -> bool:
            if exc.subject in self._optional:
                self.refused.add(exc.subject)
                return True
            if exc.subject in self._watched:
                self._denials.append(exc)
                send.send_nowait(self._explained())
                return True  # raised to the caller, who says it better than a log line
            return False

        self._send = send
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
        self._send.close()
        self._receive.close()
