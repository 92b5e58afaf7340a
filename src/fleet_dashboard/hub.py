"""Fan-out of the board's events to every page that watches, each with a bounded backlog.

Each event is encoded once (``Event``: a name and its JSON text) and handed to every
``Feed``: one per open ``/api/events`` stream. A feed holds at most ``MAX_PENDING`` events.
A page that reads slower than the fleet changes (a slow network, a tab in the background)
would otherwise make the server hold an ever longer backlog for it; past the bound its feed
drops the backlog and turns *stale*, and the stream sends one fresh ``fleet`` body instead:
the whole state, which replaces everything the dropped events would have told.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, NamedTuple

import anyio

__all__ = ["MAX_PENDING", "Event", "Feed", "Hub"]

MAX_PENDING: Final = 64  # events a feed holds before it turns stale


class Event(NamedTuple):
    """One server-sent event: ``name`` (fleet, deployment, host) and its JSON ``data``."""

    name: str
    data: str


class Feed:
    """One watcher's events, waiting to be sent."""

    def __init__(self) -> None:
        self._pending: deque[Event] = deque()
        self._stale = False
        self._wake = anyio.Event()
        self.closed = False  # the server stops: the stream ends cleanly
        self.peak = 0  # the most events it ever held: what a test of the bound reads
        self.stale_count = 0  # how often it fell behind

    def put(self, event: Event) -> None:
        if not self._stale:
            if len(self._pending) >= MAX_PENDING:
                self._pending.clear()
                self._stale = True
                self.stale_count += 1
            else:
                self._pending.append(event)
                self.peak = max(self.peak, len(self._pending))
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def take(self) -> tuple[bool, list[Event]]:
        """Wait for events; returns whether the feed fell behind (send the whole state
        first) and the events queued since."""
        if not self._pending and not self._stale and not self.closed:
            self._wake = anyio.Event()
            await self._wake.wait()
        stale, self._stale = self._stale, False
        events = list(self._pending)
        self._pending.clear()
        return stale, events


class Hub:
    """Every open feed; ``publish`` gives an event to each."""

    def __init__(self) -> None:
        self._feeds: set[Feed] = set()
        self._closed = False

    def publish(self, name: str, data: str) -> None:
        event = Event(name, data)
        for feed in self._feeds:
            feed.put(event)

    @contextmanager
    def feed(self) -> Iterator[Feed]:
        """A feed for the block's length: what one ``/api/events`` stream reads."""
        feed = Feed()
        if self._closed:
            feed.close()
        self._feeds.add(feed)
        try:
            yield feed
        finally:
            self._feeds.discard(feed)

    def close(self) -> None:
        """End every stream: uvicorn waits for open responses before it stops, and an event
        stream never ends by itself. Each ends with its closing chunk, as a response should
        (the page's ``EventSource`` reconnects once the server is back)."""
        self._closed = True
        for feed in self._feeds:
            feed.close()

    @property
    def feeds(self) -> list[Feed]:
        return list(self._feeds)
