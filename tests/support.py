"""Helpers that more than one test module uses: one home, so no test module imports another.

Fixtures stay in conftest.py; these are plain functions and classes a test calls.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import mcp
import pytest
from anyio.abc import Process
from mcp.types import CallToolResult, TextContent
from prometheus_client.parser import text_string_to_metric_families

from fleet_core.build.builder import Builder
from fleet_core.build.client import BuildClient
from fleet_core.build.protocol import (
    NIX_FEATURES,
    BuildResult,
    parse_build_target,
)
from fleet_core.bus import Bus, Message
from fleet_core.config.resolve import mcp_settings
from fleet_core.config.settings import BuilderSettings, DeployTiming, McpSettings
from fleet_core.errors import PermissionDenied
from fleet_core.protocol.messages import Status, parse_status
from fleet_core.testing import FLAKE_URL, LocalFleet, simulated_nix_command
from fleet_core.testing.embedded_server import EmbeddedNatsServer
from fleet_mcp.reports.deployment import DeploymentReport
from fleet_mcp.reports.untrusted import BEGIN, END, LABEL, REPORT
from fleet_mcp.server import build_server

from .conftest import FAST, Fleet, scripts_dir


class Replies:
    """Statuses arriving on one reply subject, with a way to wait for a condition."""

    def __init__(self) -> None:
        self.statuses: list[Status] = []
        self._changed = anyio.Event()

    async def deliver(self, msg: Message) -> None:
        status = parse_status(msg.data)
        assert status is not None, f"listener sent a non-status: {msg.data[:200]!r}"
        self.statuses.append(status)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[list[Status]], bool], limit: float = 10) -> None:
        with anyio.fail_after(limit):
            while not predicate(self.statuses):
                await self._changed.wait()

    def final(self) -> list[Status]:
        return [s for s in self.statuses if s.is_final]


START_LIMIT = 30.0

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]

# A builder heartbeats every 0.5 s here, so a deployer may call one silent after 3 s.
TIMING = DeployTiming(answer_within=5.0, silence_limit=3.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def read_until(process: Process, needle: bytes, limit: float = 15) -> bytes:
    """Read the process's stderr until ``needle`` appears (the listener logs there)."""
    assert process.stderr is not None
    seen = b""
    with anyio.fail_after(limit):
        async for chunk in process.stderr:
            seen += chunk
            if needle in seen:
                return seen
    raise AssertionError(f"{needle!r} never appeared in: {seen.decode()[-2000:]}")


@asynccontextmanager
async def replies_on(bus: Bus, subject: str) -> AsyncIterator[Replies]:
    replies = Replies()
    subscription = await bus.subscribe(subject, replies.deliver)
    await bus.flush()
    try:
        yield replies
    finally:
        await subscription.unsubscribe()


def process_gone(pid: int, limit: float) -> bool:
    """Wait (without polling) until ``pid`` has exited; True if it did within ``limit``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], limit)
        return bool(readable)
    finally:
        os.close(fd)


class Daemon:
    """A ``fleet-deploy listener`` subprocess whose JSON log lines are read as they come."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.log = b""
        self._changed = anyio.Event()

    async def drain(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.log += chunk
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for(self, needle: str, limit: float = START_LIMIT) -> None:
        with anyio.fail_after(limit):
            while needle.encode() not in self.log:
                await self._changed.wait()

    def events(self) -> list[dict[str, object]]:
        lines = self.log.decode(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def event(self, name: str) -> dict[str, object]:
        return next(e for e in self.events() if e["event"] == name)

    async def exit_code(self, limit: float = 20) -> int:
        with anyio.fail_after(limit):
            return await self.process.wait()


@asynccontextmanager
async def running_daemon(argv: list[str], env: Mapping[str, str]) -> AsyncIterator[Daemon]:
    """A ``fleet-deploy listener`` process with its log drained as it comes; killed at the
    end if it still runs, and reaped whatever ended the block."""
    process = await anyio.open_process(argv, env=dict(env))
    daemon = Daemon(process)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(daemon.drain)
            yield daemon
            if process.returncode is None:
                process.kill()
            await process.wait()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()


async def wait_for_file(path: Path, limit: float = 10) -> None:
    """Wait for a file the runner writes: it offers no event to wait on, so this polls for
    the condition, with a deadline (never a fixed sleep standing in for it)."""
    with anyio.fail_after(limit):
        while not await anyio.Path(path).exists():  # noqa: ASYNC110 - no event to wait on
            await anyio.sleep(0.01)


def series(text: str) -> Series:
    """Every sample of a scrape: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Series, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def scrape(port: int, host: str = "127.0.0.1") -> str:
    """GET /metrics (blocking: run it in a thread)."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/plain")
        return response.read().decode()
    finally:
        connection.close()


CONFIGURATIONS = ("db1", "web1", "web2")


def commit_of(revision: str, url: str = FLAKE_URL) -> str:
    """The commit the stand-in pins ``revision`` to (see fleet_core.testing.simulated_nix)."""
    import hashlib

    return hashlib.sha256(f"{url}\n{revision}".encode()).hexdigest()[:40]


@dataclass
class Builds:
    local: LocalFleet
    root: Path

    @property
    def record(self) -> Path:
        return self.root / "nix.jsonl"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def sim(self, *extra: str) -> tuple[str, ...]:
        return simulated_nix_command(
            "--sim-hosts", ",".join(CONFIGURATIONS), "--sim-record", str(self.record), *extra
        )

    def settings(self, *extra: str, **overrides: Any) -> BuilderSettings:
        fast: dict[str, Any] = {
            "nix_command": self.sim(*extra),
            "heartbeat_interval": 0.5,
            "progress_interval": 0.05,
            "cache": f"file://{self.cache}",
        }
        label = overrides.pop("label", "builder")
        return replace(self.local.builder_settings("builder", **(fast | overrides)), name=label)

    @asynccontextmanager
    async def builder(self, *extra: str, **overrides: Any) -> AsyncIterator[Builder]:
        """A builder serving for the block's length on a connection of its own."""
        builder = Builder(self.settings(*extra, **overrides))
        async with await self.local.connect("builder") as bus, anyio.create_task_group() as tg:
            await tg.start(builder.serve, bus)
            yield builder
            tg.cancel_scope.cancel()

    async def build(
        self, target: str = "all", *, who: str = "deployer", revision: str = "master", **kw: Any
    ) -> BuildResult:
        async with await self.local.connect(who) as bus:
            return await BuildClient(bus, timing=TIMING).build(
                parse_build_target("nixos", target), revision=revision, timeout=60, **kw
            )

    def runs(self) -> list[list[str]]:
        """Every nix argv so far, after the experimental features each one must enable."""
        if not self.record.exists():
            return []
        argvs = [json.loads(line)["argv"] for line in self.record.read_text().splitlines()]
        assert all(argv[:2] == list(NIX_FEATURES) for argv in argvs), argvs
        return [argv[2:] for argv in argvs]

    def cached(self) -> set[str]:
        if not self.cache.exists():
            return set()
        return {  # a signed narinfo has more lines: its StorePath is the path
            line.removeprefix("StorePath: ").strip()
            for p in self.cache.glob("*.narinfo")
            for line in p.read_text().splitlines()
            if line.startswith("StorePath: ")
        }


BASE_TOOLS = {
    "list_hosts",
    "deploy",
    "deployment_status",
    "list_deployments",
    "cancel_deployment",
    "fleet_status",
    "deployment_history",
    "deployment_logs",
}


def settings_for(
    fleet: Fleet, *, key: str = "deployer", admin: str | None = None, url: str | None = None
) -> McpSettings:
    settings = mcp_settings(
        {
            "nats_url": url or fleet.url,
            "nkey_file": str(fleet.keys[key]),
            "enable_admin": admin is not None,
            "admin_nkey_file": str(fleet.keys[admin]) if admin else None,
        },
        environ={},
    )
    return replace(settings, timing=FAST)


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


@dataclass
class ResultText:
    """A result's text cut into its parts: the server's prose (summary, next step, labels),
    the report's JSON line, and the fenced host output lines."""

    prose: list[str]
    report: str
    fenced: list[str]

    def read(self) -> dict[str, Any]:
        """The report the text shows, host output put back where each line's "at" says."""
        data: dict[str, Any] = json.loads(self.report)
        summary, *rest = self.prose
        data["summary"] = summary
        for line in rest:
            if line.startswith("Next step: "):
                data["next_step"] = line.removeprefix("Next step: ")
        for line in self.fenced:
            output = json.loads(line)
            at = output.pop("at")
            if at == "result":
                data.update(output)
                continue
            found = re.fullmatch(r"(\w+)\[(\d+)\]", at)
            assert found is not None, at
            data[found[1]][int(found[2])].update(output)
        return data


def result_text(text: str) -> ResultText:
    """``text`` cut into its parts, checking its shape on the way: prose, the report label,
    one line of JSON, and — when any host sent text — the labelled fence, one JSON object
    per line between its BEGIN and END lines, and nothing after."""
    lines = text.split("\n")
    at = lines.index(REPORT)
    prose, report, rest = lines[:at], lines[at + 1], lines[at + 2 :]
    fenced: list[str] = []
    if rest:
        assert rest[:2] == [LABEL, BEGIN] and rest[-1] == END, rest[:2] + rest[-1:]
        fenced = rest[2:-1]
        assert all(line.startswith('{"at": ') for line in fenced), fenced
    return ResultText(prose=prose, report=report, fenced=fenced)


def read_text(text: str) -> dict[str, Any]:
    """The report a result's text shows, host output included (see ``ResultText.read``)."""
    return result_text(text).read()


@dataclass
class Session:
    """A client session that records every progress notification it receives."""

    client: mcp.Client
    progress: list[tuple[float, str]] = field(default_factory=list)

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, message or ""))

    async def call(self, tool: str, **arguments: Any) -> CallToolResult:
        return await self.client.call_tool(tool, arguments, progress_callback=self.on_progress)

    async def deploy(self, tool: str = "deploy", **arguments: Any) -> DeploymentReport:
        result = await self.call(tool, **arguments)
        assert not result.is_error, text_of(result)
        return DeploymentReport.model_validate(result.structured_content)

    async def error(self, tool: str, **arguments: Any) -> str:
        result = await self.call(tool, **arguments)
        assert result.is_error, text_of(result)
        return text_of(result)

    def messages(self) -> list[str]:
        return [message for _, message in self.progress]


@asynccontextmanager
async def session(settings: McpSettings, mode: str) -> AsyncIterator[Session]:
    async with mcp.Client(build_server(settings), mode=mode) as client:
        yield Session(client)


@asynccontextmanager
async def prod_witness(fleet: Fleet) -> AsyncIterator[list[str]]:
    """Every subject a message was published to under ``deploy.prod.>`` while the block ran."""
    seen: list[str] = []
    bus: Bus = await fleet.connect("admin")

    async def record(msg: Message) -> None:
        seen.append(msg.subject)

    try:
        subscription = await bus.subscribe("deploy.prod.>", record)
        await bus.flush()
        yield seen
        await bus.flush()
        await subscription.unsubscribe()
    finally:
        await bus.close()


@asynccontextmanager
async def fleet_mcp_over_http(fleet: Fleet, *flags: str) -> AsyncIterator[int]:
    """The installed ``fleet-mcp --http`` with the test key (and ``flags``) on a free port,
    once uvicorn says it runs; its log is drained all along, so it never blocks on stderr.
    Yields the port; SIGTERM at the block's end."""
    port = free_port()
    argv = [
        str(scripts_dir() / "fleet-mcp"),
        *flags,
        *("--http", f"127.0.0.1:{port}", "--log-level", "info"),
        *("--nats-url", fleet.url, "--nkey-file", str(fleet.keys["deployer"])),
    ]
    ready = anyio.Event()
    log = bytearray()

    async def drain(stream: anyio.abc.ByteReceiveStream) -> None:
        async for chunk in stream:
            log.extend(chunk)
            if b"Uvicorn running on" in log:
                ready.set()

    async with (
        await anyio.open_process(argv, env=fleet.cli_env()) as process,
        anyio.create_task_group() as tasks,
    ):
        assert process.stderr is not None
        tasks.start_soon(drain, process.stderr)
        try:
            with anyio.fail_after(30):
                await ready.wait()
            yield port
        finally:
            process.terminate()


@contextmanager
def successor_server(fleet: Fleet) -> Iterator[EmbeddedNatsServer]:
    """A nats-server to start in place of the fleet's once it is stopped: same port, same
    config (its clients reconnect to it as to the first); stopped at the end."""
    port = int(fleet.url.rpartition(":")[2])
    config = fleet.server.config_path.read_text()
    again = EmbeddedNatsServer(fleet.root / "nats-successor", config, port=port)
    try:
        yield again
    finally:
        again.stop()


@dataclass
class FinalStatuses:
    """Each host's final status, as this process's listeners hand it to their connection
    (``spy_final_statuses``): an event per host, set even when NATS is down."""

    sent: dict[str, anyio.Event] = field(default_factory=dict)

    def of(self, host: str) -> anyio.Event:
        return self.sent.setdefault(host, anyio.Event())


def spy_final_statuses(monkeypatch: pytest.MonkeyPatch) -> FinalStatuses:
    """Watch every ``Bus.publish`` of this process for final statuses."""
    spy = FinalStatuses()
    publish = Bus.publish

    async def spy_publish(bus: Bus, subject: str, payload: bytes, **kwargs: Any) -> None:
        await publish(bus, subject, payload, **kwargs)
        if subject.startswith("deploy.responses."):
            status = parse_status(payload)
            if status is not None and status.is_final:
                spy.of(status.hostname).set()

    monkeypatch.setattr(Bus, "publish", spy_publish)
    return spy


class Denials(list[str]):
    """A denial watcher (``Bus.watch_denials``) that notes each refused subject, lowercased
    as nats-py reports it, and lets the bus log it as unexpected; ``wait_for`` waits for the
    count to be reached. Refusals come through the connection's error callback, after a
    flush has returned: the watcher's call is the event to wait for."""

    def __init__(self) -> None:
        super().__init__()
        self._noted = anyio.Event()

    def __call__(self, denial: PermissionDenied) -> bool:
        self.append((denial.subject or "").lower())
        self._noted.set()
        return False

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        with anyio.fail_after(timeout):
            while len(self) < count:
                self._noted = anyio.Event()
                await self._noted.wait()
