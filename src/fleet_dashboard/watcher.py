"""The dashboard's eyes on NATS: one connection with the read key feeds the board (I/O).

It subscribes to ``deploy.responses.>``, where every host's statuses go (an observer key
reads both tiers' replies; the test key only test's), and hands each status to the board
(``fleet_dashboard.board``, which decides everything). It re-discovers the fleet every
``refresh`` seconds, soon after a deployment ends (the hosts' facts changed; at most once
per ``ENDED_REFRESH_GAP``) and after the connection comes back from a drop (nats-py
re-subscribes by itself; a status missed in the outage shows in the host's facts). And it
sends the board's changes to the pages (``fleet_dashboard.hub``): ``fleet`` after each
refresh, ``host`` when a status changed a row (or one ``fleet`` when many rows changed at
once), ``deployment`` when the board says one is due (coalesced there).

What it ignores on the reply subjects: log chunks and history reads (their subjects say
so), answers of the JetStream API (a history read of the test tier is answered on a bare
reply subject: its messages carry the stream's headers, and would replay old statuses as
new), and anything that is not a status. A tier whose replies the server refuses this key
is listed as hidden, not an error.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import anyio
import anyio.abc
import structlog

from fleet_core.bus import Bus, Message
from fleet_core.config.settings import DeployTiming
from fleet_core.deploy.deployer import Deployer
from fleet_core.errors import FleetError
from fleet_core.protocol.messages import parse_status
from fleet_core.protocol.subjects import RESPONSES_PREFIX
from fleet_dashboard.board import Board, origin_of
from fleet_dashboard.hub import Hub

__all__ = ["CATCH_UP_INTERVAL", "CATCH_UP_REFRESHES", "ENDED_REFRESH_GAP", "Watcher"]

log = structlog.get_logger("fleet.dashboard")

# After the connection comes back, the rows are re-read at once and then a few more times
# soon after: each listener reconnects on its own, up to a couple of seconds later.
CATCH_UP_REFRESHES = 3
CATCH_UP_INTERVAL = 2.0
# The refresh that the end of a deployment asks for comes at least this long after the one
# before: any listener can end a deployment of its own making with one small status, and
# each refresh is a discovery that every host of the fleet answers.
ENDED_REFRESH_GAP = 5.0
_JETSTREAM_HEADERS = ("Nats-Stream", "Nats-Sequence")
_BACKLOG = 100_000  # statuses waiting for the board: a deploy of thousands, several times


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class Watcher:
    """Feeds ``board`` from ``bus`` and tells ``hub``; ``run`` until cancelled."""

    def __init__(
        self,
        bus: Bus,
        board: Board,
        hub: Hub,
        *,
        refresh: float,
        timing: DeployTiming | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.board = board
        self.hub = hub
        self.refresh = refresh
        self.deployer = Deployer(bus, timing=timing)
        self._clock = clock
        self._changed = anyio.Event()
        self._soon = anyio.Event()
        self._catching_up = 0  # refreshes left at CATCH_UP_INTERVAL after a reconnect
        self.statuses = 0  # statuses taken: a count for logs and tests
        self.refreshes = 0  # discoveries run: a count for logs and tests
        self._refreshed_at = -math.inf  # when the last refresh began (the clock's time)
        self._ended_waiting = False  # a deployment ended since: a refresh is owed

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Subscribe, then refresh and emit until cancelled; started once subscribed."""
        subscription = await self.bus.subscribe(
            RESPONSES_PREFIX + ">", self._on_message, backlog=_BACKLOG
        )
        stop_watching = self.bus.watch_connection(self._on_connection)
        try:
            await self.bus.flush()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._refresher)
                tasks.start_soon(self._emitter)
                task_status.started()
        finally:
            stop_watching()
            with anyio.CancelScope(shield=True):
                await subscription.unsubscribe()

    def refresh_soon(self) -> None:
        """Re-read the rows now rather than at the next period."""
        self._soon.set()

    def _on_connection(self, connected: bool) -> None:
        if connected:
            log.info("dashboard_reconnected")
            self._catching_up = CATCH_UP_REFRESHES
            self._soon.set()

    async def _on_message(self, message: Message) -> None:
        if message.no_responders or any(h in message.headers for h in _JETSTREAM_HEADERS):
            return
        origin = origin_of(message.subject)
        if origin is None or b'"status"' not in message.data:
            return
        status = parse_status(message.data)
        if status is None:
            return
        self.statuses += 1
        self.board.take_status(origin, status, now=self._clock())
        self._changed.set()

    async def _refresher(self) -> None:
        while True:
            self._soon = anyio.Event()
            await self.refresh_once()
            wait = self.refresh
            if self._catching_up:  # listeners reconnect over a few seconds after an outage
                self._catching_up -= 1
                wait = min(wait, CATCH_UP_INTERVAL)
            with anyio.move_on_after(wait):
                await self._soon.wait()

    async def refresh_once(self) -> None:
        """One discovery into the board's rows, and a ``fleet`` event with them."""
        self.refreshes += 1
        self._refreshed_at = self._clock()
        self._ended_waiting = False
        try:
            hosts = await self.deployer.discover()
        except FleetError as exc:
            # An outage, or a key that may not discover: the rows stay, the page says why.
            log.warning("dashboard_refresh_failed", error=str(exc))
            self.board.failed_refresh(str(exc))
        else:
            hidden = [tier.value for tier in self.deployer.unreadable_tiers]
            self.board.refresh(hosts, hidden=hidden, now=self._clock())
            log.info("dashboard_refreshed", hosts=len(hosts), hidden=hidden)
        self.hub.publish("fleet", self.board.fleet_json(now=self._clock()))

    async def _emitter(self) -> None:
        """Send what the board says is due; sleep until the next thing can be."""
        while True:
            now = self._clock()
            ended = self.board.tick(now)
            if ended:
                log.info("deployments_ended", count=len(ended), ids=ended[:3])
            sends, later = self.board.due(now)
            for live in sends:
                self.hub.publish("deployment", _dumps(live))
            rows = self.board.changed_rows()
            if rows is None:  # too many at once: the whole board, once
                self.hub.publish("fleet", self.board.fleet_json(now=now))
            for row in rows or ():
                self.hub.publish("host", _dumps(row))
            if ended:
                self._ended_waiting = True  # their hosts' facts changed: re-read the rows
            owed_at = self._refreshed_at + ENDED_REFRESH_GAP if self._ended_waiting else None
            if owed_at is not None and owed_at <= self._clock():
                self._soon.set()
                owed_at = None
            wake = [t for t in (later, self.board.next_tick(), owed_at) if t is not None]
            wait = max(0.0, min(wake) - self._clock()) if wake else math.inf
            with anyio.move_on_after(wait):
                await self._changed.wait()
            self._changed = anyio.Event()
