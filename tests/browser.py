"""What the dashboard's browser tests run on: Debian's chromium driven by Playwright, the real
``fleet-deploy sandbox`` and ``fleet-deploy dashboard`` subprocesses, and a record of what the
page said in its console.

The browser is the system's (``/usr/bin/chromium``, ``apt-get install -y chromium``), handed
to Playwright as ``executable_path``: no browser download. Without it the tests are skipped,
naming the command; under ``CI=true`` they fail instead (as the Nix and node checks do).

Processes are read line by line with deadlines: readiness is a line a process prints (the
sandbox's ready line, the dashboard's ``dashboard: http://…/``), never a fixed wait.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.streams.text import TextReceiveStream
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from fleet_core.testing.sandbox import READY_LINE

from .conftest import scripts_dir
from .tools import missing_tool

FLEET_DEPLOY = str(scripts_dir() / "fleet-deploy")
INSTALL_CHROMIUM = "apt-get install -y chromium (Debian), as .ci/run does"
DASHBOARD_LINE = r"dashboard: (http://\S+/)"
_NATS_URL = re.compile(r"nats://127\.0\.0\.1:\d+(?:,nats://127\.0\.0\.1:\d+)*")
_SANDBOX_DASHBOARD = re.compile(r"^\s+dashboard\s+(http://\S+/)", re.MULTILINE)  # its banner
START_LIMIT = 60.0  # for a sandbox or a dashboard to say it is ready
STOP_LIMIT = 20.0  # for one to exit after SIGTERM


def chromium() -> str:
    """The system's chromium, for Playwright's ``executable_path``."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        missing_tool("chromium is not installed", INSTALL_CHROMIUM)
    return path


def clean_env() -> dict[str, str]:
    """This environment without FLEET_DEPLOY_* variables: only the flags a test passes count."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FLEET_DEPLOY_")}


# -- the browser ----------------------------------------------------------------------------------


@asynccontextmanager
async def launched() -> AsyncIterator[Browser]:
    """A headless chromium, closed on the way out."""
    executable = chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Console:
    """What a page reported: console errors (a CSP violation is one), uncaught exceptions and
    failed requests. A healthy page reports none of them."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("requestfailed", self._on_failed)

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type in {"error", "warning"}:
            self.errors.append(f"console {message.type}: {message.text}")

    def _on_failed(self, request: object) -> None:
        url = getattr(request, "url", "?")
        failure = getattr(request, "failure", None)
        # The event stream is cut when the page is closed or navigates away: not a fault.
        if "/api/events" in str(url):
            return
        self.errors.append(f"request failed: {url} ({failure})")

    def csp_violations(self) -> list[str]:
        return [e for e in self.errors if "Content Security Policy" in e]


async def new_page(browser: Browser) -> tuple[Page, Console]:
    """A page in a fresh context (its own cookies), its console watched."""
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    console = Console()
    console.watch(page)
    return page, console


# -- processes ------------------------------------------------------------------------------------


class Output:
    """A process's stdout, line by line, with waits that have deadlines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._read = 0
        self._changed = anyio.Event()
        self.ended = False

    async def pump(self, stream: anyio.abc.ByteReceiveStream) -> None:
        buffered = ""
        async for chunk in TextReceiveStream(stream):
            buffered += chunk
            *complete, buffered = buffered.split("\n")
            if complete:
                self.lines.extend(complete)
                self._wake()
        if buffered:
            self.lines.append(buffered)
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, pattern: str, limit: float = START_LIMIT) -> re.Match[str]:
        """The first line not looked at yet that matches ``pattern``."""
        compiled = re.compile(pattern)
        with anyio.fail_after(limit):
            while True:
                while self._read < len(self.lines):
                    line = self.lines[self._read]
                    self._read += 1
                    if match := compiled.search(line):
                        return match
                if self.ended:
                    pytest.fail(f"output ended without {pattern!r}:\n{self.text()}")
                await self._changed.wait()

    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Running:
    """A started subprocess: its stdout, and where its stderr went."""

    process: anyio.abc.Process
    output: Output
    stderr: Path

    def errors(self) -> str:
        return self.stderr.read_text()


@asynccontextmanager
async def running(argv: Sequence[str], stderr: Path) -> AsyncIterator[Running]:
    """``argv`` until the block ends; then SIGTERM and a wait with a deadline (SIGKILL after)."""
    with stderr.open("wb") as err:
        process = await anyio.open_process(
            list(argv), stdin=subprocess.DEVNULL, stderr=err, env=clean_env()
        )
    output = Output()
    assert process.stdout is not None
    async with process, anyio.create_task_group() as tasks:
        tasks.start_soon(output.pump, process.stdout)
        try:
            yield Running(process, output, stderr)
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    with anyio.move_on_after(STOP_LIMIT):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
            tasks.cancel_scope.cancel()


@dataclass
class Sandbox:
    """``fleet-deploy sandbox`` as a user runs it, with the read-only dashboard it starts."""

    running: Running
    directory: Path
    nats_url: str
    dashboard_url: str

    def key(self, name: str) -> Path:
        return self.directory / "keys" / f"{name}.seed"


@asynccontextmanager
async def sandbox(tmp_path: Path, *args: str) -> AsyncIterator[Sandbox]:
    """The sandbox in ``tmp_path/sandbox``, on free ports, up to its ready line."""
    directory = tmp_path / "sandbox"
    argv = [
        *(FLEET_DEPLOY, "sandbox", "--dir", str(directory)),
        *("--port", "0", "--dashboard-port", "0", *args),
    ]
    async with running(argv, tmp_path / "sandbox.err") as started:
        await started.output.wait_for(re.escape(READY_LINE))
        banner = started.output.text()
        nats_url, page = _NATS_URL.search(banner), _SANDBOX_DASHBOARD.search(banner)
        assert nats_url and page, banner
        yield Sandbox(started, directory, nats_url.group(0), page.group(1))


@asynccontextmanager
async def dashboard(
    tmp_path: Path, nats_url: str, key: Path, *args: str, name: str = "dashboard"
) -> AsyncIterator[tuple[Running, str]]:
    """``fleet-deploy dashboard`` on a free port, up to the line that says where it listens."""
    argv = [
        FLEET_DEPLOY,
        "dashboard",
        "--nats-url",
        nats_url,
        "--nkey-file",
        str(key),
        "--listen",
        "127.0.0.1:0",
        *args,
    ]
    async with running(argv, tmp_path / f"{name}.err") as started:
        match = await started.output.wait_for(DASHBOARD_LINE)
        yield started, match.group(1)


async def cli(sandbox: Sandbox, key: str, *args: str, limit: float = 90.0) -> str:
    """A ``fleet-deploy`` command against the sandbox, with its key; its stdout."""
    argv = [
        FLEET_DEPLOY,
        *args,
        "--nats-url",
        sandbox.nats_url,
        "--nkey-file",
        str(sandbox.key(key)),
    ]
    with anyio.fail_after(limit):
        done = await anyio.run_process(argv, env=clean_env(), check=False)
    return done.stdout.decode()
