"""Helpers for the dashboard's tests: a served dashboard over a local fleet, and a reader of
its server-sent events that waits for what a test expects, with deadlines."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import httpx2 as httpx

from fleet_core.config.settings import ConnectionSettings, DashboardSettings, DeployTiming
from fleet_core.protocol.subjects import Tier
from fleet_core.testing import FleetHost, LocalFleet, local_fleet
from fleet_dashboard.server import Dashboard, running

from .conftest import DEPLOYERS, FAST, HOSTS

# Every host of the suite's fleet, the suite's deployers, and the dashboard's observer key.
DASH_DEPLOYERS = {**DEPLOYERS, "dash": "observer"}


@asynccontextmanager
async def dashboard_fleet(root: Any, **kwargs: Any) -> AsyncIterator[LocalFleet]:
    """The suite's hosts and deployers, plus ``dash``, an observer key, under ``root``."""
    hosts = [FleetHost(name, tier, role) for name, (tier, role) in HOSTS.items()]
    async with local_fleet(hosts, DASH_DEPLOYERS, root=root, **kwargs) as local:
        yield local


def dashboard_settings(
    local: LocalFleet, who: str = "dash", *, timing: DeployTiming = FAST, **overrides: Any
) -> DashboardSettings:
    """Settings for a dashboard on any free loopback port, reading with ``who``'s key."""
    base = DashboardSettings(
        connection=ConnectionSettings(nats_urls=local.urls, nkey_file=local.key_path(who)),
        listen=("127.0.0.1", 0),
        timing=timing,
    )
    return replace(base, **overrides) if overrides else base


@asynccontextmanager
async def serving(
    local: LocalFleet, who: str = "dash", **overrides: Any
) -> AsyncIterator[Dashboard]:
    """The real dashboard (``fleet_dashboard.server.running``), in this event loop."""
    settings = dashboard_settings(local, who, **overrides)
    async with running(settings, read_seed=local.seed(who)) as dashboard:
        yield dashboard


class Events:
    """The events of one ``/api/events`` stream, read as they come, each stamped with the
    monotonic time it arrived."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str, Any]] = []
        self.counts: dict[str, int] = {}
        self._changed = anyio.Event()
        self.closed = False

    async def read(self, client: httpx.AsyncClient, path: str = "/api/events") -> None:
        """Read the stream until it ends or the task is cancelled."""
        name, data = "message", []
        try:
            async with client.stream("GET", path, timeout=None) as response:
                assert response.status_code == 200, response.status_code
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip(" "))
                    elif not line and data:
                        self.seen.append((time.monotonic(), name, json.loads("\n".join(data))))
                        self.counts[name] = self.counts.get(name, 0) + 1
                        name, data = "message", []
                        self._changed.set()
                        self._changed = anyio.Event()
        finally:
            self.closed = True
            self._changed.set()

    async def wait_count(self, name: str, count: int, limit: float = 15.0) -> None:
        """Wait until ``count`` events called ``name`` have come."""
        with anyio.fail_after(limit):
            while self.counts.get(name, 0) < count:
                if self.closed:
                    raise AssertionError("the event stream ended")
                changed = self._changed
                await changed.wait()

    async def wait_closed(self, limit: float = 5.0) -> None:
        """Wait until the stream has ended (cleanly: a truncated one raises in ``read``)."""
        with anyio.fail_after(limit):
            while not self.closed:
                changed = self._changed
                await changed.wait()

    def of(self, name: str) -> list[Any]:
        return [data for _, event, data in self.seen if event == name]

    async def wait_for(
        self, predicate: Callable[[str, Any], bool], limit: float = 15.0, *, after: int = 0
    ) -> tuple[float, Any]:
        """The first event (from index ``after``) that ``predicate(name, data)`` accepts,
        and when it arrived; waits for it with a deadline."""
        with anyio.fail_after(limit):
            index = after
            while True:
                while index < len(self.seen):
                    at, name, data = self.seen[index]
                    index += 1
                    if predicate(name, data):
                        return at, data
                if self.closed:
                    raise AssertionError("the event stream ended")
                await self._changed.wait()


def refreshed(hosts: Mapping[str, Tier] | None = None) -> Callable[[str, Any], bool]:
    """A predicate: a ``fleet`` event after a refresh that lists at least ``hosts``."""

    def check(name: str, data: Any) -> bool:
        if name != "fleet" or data["refreshed_at"] is None:
            return False
        listed = {row["hostname"]: row["tier"] for row in data["hosts"]}
        return all(listed.get(h) == t.value for h, t in (hosts or {}).items())

    return check
