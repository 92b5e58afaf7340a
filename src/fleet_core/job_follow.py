"""Following a job from its directory: its output as lines, its end, and its runner's life.

Whatever launched the job runner (``fleet_core.runner``), a listener knows the job only
through the files the runner writes (``fleet_core.job_runner``) and the runner's pid. So the
same code follows a job this listener started and one a previous listener left behind:

- ``output.log`` is read as it grows, split into lines (an endless line is cut, not
  buffered), kept in a bounded tail and handed to ``on_line`` for progress messages;
- the runner's pid is watched through a pidfd, so its end is noticed at once, and checked
  against ``/proc/<pid>/cmdline`` so that a reused pid is never taken for it. Where there
  is no ``/proc`` (macOS, for a Home Manager or nix-darwin listener) ``ps`` (run from an
  argv) shows the command line instead, the end is polled for, and a process group is
  looked for with signal 0;
- the end is ``exit.json``; a runner that is gone without one is a lost result, and what is
  left of its rebuild's process group is stopped, so two rebuilds never overlap.

Which action a fact leads to is decided in ``fleet_core.job_state`` (pure); this module only
gathers the facts and waits.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import structlog

from fleet_core.job_runner import EXIT_FILE, OUTPUT_LOG, RUNNER_FILE
from fleet_core.job_state import (
    START_GRACE,
    RunnerPids,
    is_job_runner,
    is_job_runner_command,
    lost_before_start,
    lost_runner,
    parse_runner,
    result_from_exit,
)
from fleet_core.outcome import RebuildResult

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
# Linux's process table. Where it is missing (macOS) ps and signal 0 stand in; tests point
# this elsewhere to take that path on Linux.
_PROC = Path("/proc")
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


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def read_runner(directory: Path) -> RunnerPids | None:
    """The pids the job runner of ``directory`` recorded, if it got that far."""
    return parse_runner(_read(directory / RUNNER_FILE))


def read_exit(directory: Path) -> bytes | None:
    return _read(directory / EXIT_FILE)


def runner_alive(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is (still) the job runner of ``directory``."""
    if not _PROC.is_dir():
        shown = _ps(pid)
        return shown is not None and is_job_runner_command(shown[1], str(directory))
    cmdline = _read(_PROC / str(pid) / "cmdline")
    return cmdline is not None and is_job_runner(cmdline, str(directory))


def _ps(pid: int) -> tuple[str, str] | None:
    """The state and command line of ``pid`` as ``ps`` shows them, where there is no /proc;
    None for no such process, or a zombie (it has exited, whoever reaps it)."""
    try:
        done = subprocess.run(  # noqa: S603 - a fixed argv, no shell
            ["ps", "-ww", "-o", "stat=,command=", "-p", str(pid)],  # noqa: S607 - ps on PATH
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = done.stdout.strip().split(None, 1)
    if done.returncode != 0 or not fields or fields[0].startswith("Z"):
        return None
    return fields[0], fields[1] if len(fields) > 1 else ""


_START_SLACK = 2.0  # ps shows start times to the second; a file's mtime is finer
_BOOTTIME = re.compile(r"sec = (\d+)")


def _group_exists_by_ps(group: int, since: float | None) -> bool:
    """Where there is no /proc the session cannot be read, so the group's leader tells: its
    id is the leader's pid. A job recorded (``since``) before this boot left nothing. While
    the leader lives, the group is ours only if it started by ``since`` (a pid reused after
    a reboot started later); once it is gone, the id cannot be reused while any member
    lives, so signal 0 tells.
    """
    booted = _booted_at()
    if since is not None and booted is not None and since < booted:
        return False
    started = _ps_started(group)
    if started is not None:
        return since is None or started <= since + _START_SLACK
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there is one, of another user
        return True
    return True


def _booted_at() -> float | None:
    """When this machine booted, where there is no /proc: BSD's ``kern.boottime``."""
    sysctl = shutil.which("sysctl")
    if sysctl is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603 - a fixed argv, no shell
            [sysctl, "-n", "kern.boottime"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = _BOOTTIME.search(done.stdout)
    return float(found.group(1)) if done.returncode == 0 and found else None


def _ps_started(pid: int) -> float | None:
    """When ``pid`` started, as ``ps -o lstart=`` says (the C locale's format); None for
    no such process, a zombie, or a start ps did not tell."""
    ps = shutil.which("ps")
    if ps is None:
        return None
    try:
        done = subprocess.run(  # noqa: S603 - a fixed argv, no shell
            [ps, "-o", "stat=", "-o", "lstart=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env={"LC_ALL": "C", "TZ": "UTC"},  # a fixed format, and a zone to read it in
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = done.stdout.strip().split(None, 1)
    if done.returncode != 0 or len(fields) != 2 or fields[0].startswith("Z"):
        return None
    try:
        shown = time.strptime(" ".join(fields[1].split()), "%a %b %d %H:%M:%S %Y")
    except ValueError:
        return None
    return float(calendar.timegm(shown))


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
    if not _PROC.is_dir():
        return _ps(pid) is not None
    stat = _read(_PROC / str(pid) / "stat")
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


async def stop_leftovers(directory: Path, grace: float = 5.0) -> None:
    """Stop what is left of the rebuild's process group once its runner is gone.

    Its output has no reader any more, and it must not run beside the next rebuild. Only a
    group that is still a session of its own under the recorded id is signalled, so a reused
    id is left alone.
    """
    runner = await anyio.to_thread.run_sync(read_runner, directory)
    group = runner.rebuild if runner is not None else None
    since = _mtime(directory / RUNNER_FILE)  # the rebuild had started when this was written
    if group is None or not await _group_alive(group, since):
        return
    log.warning("job_leftovers_stopped", group=group, directory=str(directory))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGTERM)
    limit = time.monotonic() + grace
    # No pidfd exists for a whole group: its end can only be polled for.
    while await _group_alive(group, since) and time.monotonic() < limit:  # noqa: ASYNC110
        await anyio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


async def _group_alive(group: int, since: float | None = None) -> bool:
    """``_group_exists`` off the event loop: it reads /proc/*/stat of every process."""
    return await anyio.to_thread.run_sync(_group_exists, group, since)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _group_exists(group: int, since: float | None = None) -> bool:
    """Whether a live process is in process group and session ``group`` (as the runner made).

    Without /proc (macOS) see ``_group_exists_by_ps``.
    """
    if not _PROC.is_dir():
        return _group_exists_by_ps(group, since)
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read(entry / "stat")
        if stat is None:
            continue
        fields = stat.rpartition(b")")[2].split()
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[2]) == int(fields[3]) == group:
            return True
    return False
