"""Following a job from its directory: its output as lines, its end, and its runner's life.

Whatever launched the job runner (``launch``), a listener knows the job only through the
files the runner writes (``jobdir``) and the runner's pid. So the same code follows a job
this listener started and one a previous listener left behind:

- ``output.log`` is read as it grows, split into lines (an endless line is cut, not
  buffered), kept in a bounded tail and handed to ``on_line`` for progress messages;
- the runner's pid is watched through a pidfd, so its end is noticed at once, and checked
  against ``/proc/<pid>/cmdline`` so that a reused pid is never taken for it. Where there
  is no ``/proc`` (macOS, for a Home Manager or nix-darwin listener) ``ps`` (run from an
  argv) shows the command line instead, the end is polled for, and a process group is
  looked for with signal 0;
- the end is ``exit.json``; a runner that is gone without one is a lost result, and what is
  left of its rebuild's process group is stopped, so two rebuilds never overlap.

Which action a fact leads to is decided in ``fleet_core.host.jobs.resume`` (pure); this module only
gathers the facts and waits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import structlog

from fleet_core import processes
from fleet_core.host.jobs.jobdir import OUTPUT_LOG, RUNNER_FILE, read_exit, read_runner
from fleet_core.host.jobs.outcome import RebuildResult
from fleet_core.host.jobs.resume import (
    START_GRACE,
    is_job_runner,
    is_job_runner_command,
    lost_before_start,
    lost_runner,
    result_from_exit,
)
from fleet_core.processes import KILL_GRACE, group_alive, ps_command, read_proc, stop_group

__all__ = [
    "MAX_LINE_CHARS",
    "OnLine",
    "TailBuffer",
    "adopt_child",
    "follow",
    "read_runner",
    "runner_alive",
    "stop_runner",
]

log = structlog.get_logger("fleet.jobs")

OnLine = Callable[[str], None]

MAX_LINE_CHARS = 2000
POLL_INTERVAL = 0.25  # how often output.log is read while the runner is quiet
RESUME_WINDOW = 256 * 1024  # a resumed job's tail is read from this far before the end
_CHUNK = 1024 * 1024

# Job runners this process started in a session of its own are still its children: they are
# held here until they have ended and been reaped, never dropped while running.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def adopt_child(process: subprocess.Popen[bytes]) -> None:
    """Hold a job runner this process spawned, so that its end is reaped, not a zombie."""
    _CHILDREN[process.pid] = process


def _reap() -> None:
    for pid, process in list(_CHILDREN.items()):
        if process.poll() is not None:
            del _CHILDREN[pid]


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


class _OutputReader:
    """``output.log`` read from ``offset`` on as it grows, as lines into a tail and a callback."""

    def __init__(self, path: Path, on_line: OnLine, *, resumed: bool) -> None:
        self._path = path
        self._on_line = on_line
        self._offset = 0
        self._skip_partial = False
        if resumed:
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                self._offset = max(0, size - RESUME_WINDOW)
                self._skip_partial = self._offset > 0
        self._partial = bytearray()
        self.tail = TailBuffer()

    def read_new(self) -> list[bytes]:
        """The whole lines written since the last call (blocking file I/O: run in a thread)."""
        try:
            with self._path.open("rb") as file:
                file.seek(self._offset)
                data = file.read(_CHUNK)
        except OSError:  # not written yet
            return []
        self._offset += len(data)
        self._partial += data
        lines: list[bytes] = []
        while True:
            newline = self._partial.find(b"\n")
            if newline < 0:
                if len(self._partial) > MAX_LINE_CHARS * 4:  # an endless line is cut
                    lines.append(bytes(self._partial))
                    self._partial.clear()
                break
            lines.append(bytes(self._partial[:newline]))
            del self._partial[: newline + 1]
        if self._skip_partial and lines:
            lines.pop(0)  # the first line of a resumed read starts mid-line
            self._skip_partial = False
        return lines

    async def pump(self, *, final: bool = False) -> None:
        """Hand every new line to the tail and ``on_line``; ``final`` flushes a last partial."""
        while True:
            lines = await anyio.to_thread.run_sync(self.read_new)
            for raw in lines:
                self._emit(raw)
            if len(lines) == 0 or not final:
                break
        if final and self._partial:
            self._emit(bytes(self._partial))
            self._partial.clear()

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")[:MAX_LINE_CHARS]
        self.tail.append(line)
        self._on_line(line)


def runner_alive(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is (still) the job runner of ``directory``."""
    if not processes.PROC.is_dir():
        shown = ps_command(pid)
        return shown is not None and is_job_runner_command(shown[1], str(directory))
    cmdline = read_proc(processes.PROC / str(pid) / "cmdline")
    return cmdline is not None and is_job_runner(cmdline, str(directory))


def _still_ours(pid: int, directory: Path, started_at: float) -> bool:
    """Whether ``pid`` is (or is about to become) the job runner of ``directory``.

    Between fork and exec a freshly launched runner still shows the listener's command line,
    and it writes ``runner.json`` first thing once it runs: until then a live process of
    that pid is given the start grace.
    """
    if runner_alive(pid, directory):
        return True
    if read_runner(directory) is not None or time.time() - started_at > START_GRACE:
        return False
    if not processes.PROC.is_dir():
        return ps_command(pid) is not None
    stat = read_proc(processes.PROC / str(pid) / "stat")
    return stat is not None and stat.rpartition(b")")[2].split()[:1] != [b"Z"]


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):  # gone already, or no pidfd here: fall back to polling
        return None


async def _wait_for_end(pidfd: int | None, limit: float) -> None:
    """Return when the process behind ``pidfd`` ends, or after ``limit`` seconds."""
    with anyio.move_on_after(limit):
        if pidfd is None:
            await anyio.sleep(limit)
        else:
            await anyio.wait_readable(pidfd)


async def follow(
    directory: Path,
    on_line: OnLine,
    *,
    pid: int | None,
    started_at: float,
    resumed: bool = False,
) -> RebuildResult:
    """Follow the job in ``directory`` until its result is known.

    ``pid`` is the job runner's, when the launcher knows it; otherwise it is read from
    ``runner.json``, which must appear within ``START_GRACE`` seconds of ``started_at``
    (wall clock). A ``resumed`` job's output is read from near its end.
    """
    reader = _OutputReader(directory / OUTPUT_LOG, on_line, resumed=resumed)
    pidfd: int | None = None
    try:
        while True:
            await reader.pump()
            exit_data = await anyio.to_thread.run_sync(read_exit, directory)
            if exit_data is not None:
                await reader.pump(final=True)
                _reap()
                return result_from_exit(exit_data, reader.tail.lines())
            if pid is None:
                runner = await anyio.to_thread.run_sync(read_runner, directory)
                if runner is not None:
                    pid = runner.runner
                elif time.time() - started_at > START_GRACE:
                    return lost_before_start(time.time() - started_at)
            if pid is not None:
                if pidfd is None:
                    pidfd = _open_pidfd(pid)
                if not await anyio.to_thread.run_sync(_still_ours, pid, directory, started_at):
                    if read_exit(directory) is not None:  # written just before it exited
                        continue
                    _reap()
                    await stop_leftovers(directory)
                    await reader.pump(final=True)
                    log.error("job_runner_lost", pid=pid, directory=str(directory))
                    return lost_runner(pid, reader.tail.lines(), time.time() - started_at)
            await _wait_for_end(pidfd, POLL_INTERVAL)
    finally:
        if pidfd is not None:
            os.close(pidfd)


async def stop_runner(directory: Path, grace: float, *, pid_hint: int | None = None) -> bool:
    """Stop the job runner of ``directory`` the way ``systemctl stop`` would: SIGTERM, so it
    stops its rebuild and records ``cancelled``; SIGKILL if it is still there after its own
    grace twice over. ``pid_hint`` (the job record's) serves until the runner has written
    ``runner.json``. True if there was a runner to stop."""
    runner = await anyio.to_thread.run_sync(read_runner, directory)
    pid = runner.runner if runner is not None else pid_hint
    if pid is None or not runner_alive(pid, directory):
        return False
    pidfd = _open_pidfd(pid)
    try:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        limit = time.monotonic() + 2 * grace + 5
        while runner_alive(pid, directory) and time.monotonic() < limit:
            await _wait_for_end(pidfd, min(POLL_INTERVAL, max(0.0, limit - time.monotonic())))
        if runner_alive(pid, directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await stop_leftovers(directory)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    _reap()
    return True


async def stop_leftovers(directory: Path, grace: float = KILL_GRACE) -> None:
    """Stop what is left of the rebuild's process group once its runner is gone.

    Its output has no reader any more, and it must not run beside the next rebuild. Only a
    group that is still a session of its own under the recorded id is signalled, so a reused
    id is left alone.
    """
    runner = await anyio.to_thread.run_sync(read_runner, directory)
    group = runner.rebuild if runner is not None else None
    since = _mtime(directory / RUNNER_FILE)  # the rebuild had started when this was written
    if group is None or not await group_alive(group, since):
        return
    log.warning("job_leftovers_stopped", group=group, directory=str(directory))
    await stop_group(group, grace=grace, since=since)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
