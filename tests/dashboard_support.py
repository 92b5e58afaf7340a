"""Helpers for the dashboard's tests: a served dashboard over a local fleet, a reader of its
server-sent events that waits for what a test expects, with deadlines, and the
``fleet-deploy dashboard --allow-actions`` process with a logged-in HTTP client."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2 as httpx

from fleet_core.config.settings import ConnectionSettings, DashboardSettings, DeployTiming
from fleet_core.protocol.subjects import Tier
from fleet_core.testing import FleetHost, LocalFleet, local_fleet
from fleet_dashboard.auth import hash_password
from fleet_dashboard.server import Dashboard, running

from .conftest import DEPLOYERS, FAST, HOSTS, Fleet, scripts_dir

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


@asynccontextmanager
async def reading(client: httpx.AsyncClient) -> AsyncIterator[Events]:
    """``client``'s event stream, read as it comes by a task of its own, for the block."""
    events = Events()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(events.read, client)
        yield events
        tasks.cancel_scope.cancel()


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


# -- the dashboard as a process, acting: its login and an HTTP client -------------------------

PASSWORD = "correct horse battery staple"  # noqa: S105 - the test login's own
TOTP_KEY = os.urandom(20)
START_LIMIT = 30.0


def _secret(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@dataclass
class DashboardClient:
    """A running ``fleet-deploy dashboard``: its URL, and an HTTP client with its cookies."""

    url: str
    client: httpx.AsyncClient
    output: list[bytes] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return self.url.rstrip("/")

    async def login(self, password: str = PASSWORD, totp: str | None = None) -> httpx.Response:
        body = {"password": password} | ({"totp": totp} if totp is not None else {})
        return await self.client.post("/login", json=body, headers={"Origin": self.origin})

    async def csrf(self) -> str:
        session = (await self.client.get("/api/session")).json()
        assert session["logged_in"], session
        token: str = session["csrf"]
        return token

    async def act(
        self, what: str, body: dict[str, str], *, csrf: str | None = None, **headers: str
    ) -> httpx.Response:
        """POST an action with this dashboard's Origin and the session's CSRF token."""
        sent = {"Origin": self.origin, "X-CSRF-Token": csrf or await self.csrf()} | headers
        return await self.client.post(f"/api/actions/{what}", json=body, headers=sent)

    async def sees(self, deployment_id: str, limit: float = 15.0) -> None:
        """Until the dashboard's event stream shows the deployment: its board has it."""

        def shown(name: str, data: Any) -> bool:
            if name == "deployment":
                return bool(data["id"] == deployment_id)
            return name == "fleet" and any(d["id"] == deployment_id for d in data["deployments"])

        async with reading(self.client) as events:
            await events.wait_for(shown, limit)


@asynccontextmanager
async def dashboard(
    fleet: Fleet, tmp_path: Path, *, deploy_key: str = "admin", totp: bool = False
) -> AsyncIterator[DashboardClient]:
    """``fleet-deploy dashboard --allow-actions`` on a free port, read with the observer key
    and acting with ``deploy_key``'s; stopped with SIGTERM at the end."""
    password_file = _secret(tmp_path / "password", hash_password(PASSWORD) + "\n")
    flags = [
        "--allow-actions",
        *("--deploy-nkey-file", str(fleet.keys[deploy_key])),
        *("--password-file", str(password_file)),
    ]
    if totp:
        secret = _secret(tmp_path / "totp", base64.b32encode(TOTP_KEY).decode())
        flags += ["--totp-secret-file", str(secret)]
    async with (
        running_dashboard(fleet, *flags) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield DashboardClient(url, client)


@asynccontextmanager
async def running_dashboard(fleet: Fleet, *flags: str) -> AsyncIterator[str]:
    """The dashboard process on 127.0.0.1:0 with the observer key and ``flags``: its URL,
    read from the line it prints once it listens. Its log is drained as it comes (and shown
    if it never listens); SIGTERM stops it at the end, which must exit 0."""
    argv = [
        str(scripts_dir() / "fleet-deploy"),
        "dashboard",
        *("--listen", "127.0.0.1:0", "--nats-url", fleet.url),
        *("--nkey-file", str(fleet.keys["dash"])),
        *flags,
    ]
    process = await anyio.open_process(argv, env=fleet.cli_env())
    log = bytearray()

    async def drain() -> None:
        assert process.stderr is not None
        async for chunk in process.stderr:
            log.extend(chunk)

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(drain)
            try:
                url = await _listening(process)
            except TimeoutError:
                raise AssertionError(
                    f"the dashboard never listened: {log.decode()[-3000:]}"
                ) from None
            yield url
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                assert await process.wait() == 0, log.decode()[-3000:]
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()


async def _listening(process: anyio.abc.Process) -> str:
    """The URL of the ``dashboard: URL`` line the process prints once it listens."""
    assert process.stdout is not None
    seen = b""
    with anyio.fail_after(START_LIMIT):
        async for chunk in process.stdout:
            seen += chunk
            for line in seen.split(b"\n")[:-1]:  # whole lines only
                if line.startswith(b"dashboard: "):
                    return line.removeprefix(b"dashboard: ").decode().strip()
    raise TimeoutError  # stdout closed: the process ended without listening
