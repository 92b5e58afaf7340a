"""Running one rebuild: a process group with a deadline, its output in a ring and a log file.

The rebuild starts in a new session, so at the deadline (or when the listener shuts down)
the whole group — nixos-rebuild, nix, and anything they spawned — gets SIGTERM, then SIGKILL.
Output is read in chunks and split into lines here, so one endless line cannot exhaust memory.

``Rebuilder`` is the seam between the listener and the host: ``ProcessRebuilder`` runs a
real program; the benchmark and tests may pass anything with the same ``run`` method.
``RebuildResult`` lives with the pure judgement of it (``fleet_core.outcome``) and is
re-exported here; the job directories are ``fleet_core.jobs``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

import anyio
import anyio.abc
import structlog

from fleet_core.outcome import RebuildResult

__all__ = [
    "ProcessRebuilder",
    "RebuildJob",
    "RebuildResult",
    "Rebuilder",
    "TailBuffer",
]

log = structlog.get_logger("fleet.runner")

MAX_LINE_CHARS = 2000
MAX_LOG_BYTES = 64 * 1024 * 1024
_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class RebuildJob:
    argv: Sequence[str]
    timeout: float
    log_path: Path | None = None
    kill_grace: float = 5.0


class Rebuilder(Protocol):
    async def run(self, job: RebuildJob, on_line: Callable[[str], None]) -> RebuildResult: ...


class TailBuffer:
    """The last lines of output, bounded in count and in total characters."""

    def __init__(self, max_lines: int = 200, max_chars: int = 16 * 1024) -> None:
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._max_chars = max_chars

    def append(self, line: str) -> None:
        self._lines.append(line[:MAX_LINE_CHARS])

    def lines(self) -> list[str]:
        """The newest lines whose total size stays within the character budget."""
        budget = self._max_chars
        kept: list[str] = []
        for line in reversed(self._lines):
            budget -= len(line) + 1
            if budget < 0:
                break
            kept.append(line)
        return kept[::-1]


class _LineSplitter:
    """Turns byte chunks into lines, cutting over-long lines instead of buffering them."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._partial = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._partial += chunk
        while True:
            newline = self._partial.find(b"\n")
            if newline < 0:
                if len(self._partial) > MAX_LINE_CHARS * 4:
                    self._emit_bytes(bytes(self._partial))
                    self._partial.clear()
                return
            line = bytes(self._partial[:newline])
            del self._partial[: newline + 1]
            self._emit_bytes(line)

    def close(self) -> None:
        if self._partial:
            self._emit_bytes(bytes(self._partial))
            self._partial.clear()

    def _emit_bytes(self, raw: bytes) -> None:
        self._emit(raw.decode("utf-8", "replace").rstrip("\r")[:MAX_LINE_CHARS])


def _signal_group(pgid: int, signum: signal.Signals) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - the group was reused by another user
        return False
    return True


class ProcessRebuilder:
    """Runs the rebuild as a real process group (``start_new_session``), never via a shell."""

    async def run(self, job: RebuildJob, on_line: Callable[[str], None]) -> RebuildResult:
        tail = TailBuffer()
        started = time.monotonic()
        log_file = _open_log(job.log_path)
        logged = 0

        def emit(line: str) -> None:
            nonlocal logged
            tail.append(line)
            if log_file is not None and logged < MAX_LOG_BYTES:
                data = line + "\n"
                logged += len(data)
                log_file.write(data)
            on_line(line)

        try:
            try:
                process = await anyio.open_process(
                    list(job.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                message = f"cannot start {job.argv[0]!r}: {exc.strerror or exc}"
                emit(message)
                return RebuildResult(None, False, tail.lines(), 0.0, start_error=message)
            exit_code, timed_out = await self._supervise(process, job, emit)
        finally:
            if log_file is not None:
                log_file.close()
        return RebuildResult(exit_code, timed_out, tail.lines(), time.monotonic() - started)

    async def _supervise(
        self, process: anyio.abc.Process, job: RebuildJob, emit: Callable[[str], None]
    ) -> tuple[int | None, bool]:
        pgid = process.pid  # a new session: its leader's pid is the group id
        splitter = _LineSplitter(emit)
        timed_out = False
        output_done = anyio.Event()

        async def pump() -> None:
            assert process.stdout is not None
            try:
                async for chunk in process.stdout:
                    splitter.feed(chunk)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass
            finally:
                splitter.close()
                output_done.set()

        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(pump)
                with anyio.move_on_after(job.timeout) as deadline:
                    await process.wait()
                if deadline.cancelled_caught:
                    timed_out = True
                    emit(f"fleet-deploy: the rebuild ran past its {job.timeout:g} s deadline")
                    await self._stop_group(process, pgid, job.kill_grace)
                # Children that outlive the rebuild would hold the pipe open: stop them too.
                with anyio.move_on_after(2):
                    await output_done.wait()
                if not output_done.is_set():
                    await self._stop_group(process, pgid, job.kill_grace)
                    tasks.cancel_scope.cancel()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._stop_group(process, pgid, job.kill_grace)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await process.aclose()
        return process.returncode, timed_out

    @staticmethod
    async def _stop_group(process: anyio.abc.Process, pgid: int, grace: float) -> None:
        """SIGTERM the group, SIGKILL what is left after ``grace`` seconds."""
        if not _signal_group(pgid, signal.SIGTERM):
            return
        with anyio.move_on_after(grace):
            if process.returncode is None:
                await process.wait()
        _signal_group(pgid, signal.SIGKILL)
        with anyio.move_on_after(grace):
            if process.returncode is None:
                await process.wait()


def _open_log(path: Path | None) -> IO[str] | None:
    if path is None:
        return None
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        log.warning("job_log_unwritable", path=str(path), error=str(exc))
        return None
