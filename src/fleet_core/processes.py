"""Process groups: whether one is still alive, and stopping one (SIGTERM, grace, SIGKILL).

A rebuild (run by the job runner) and a builder's nix step each run in a session of their
own, so their whole process group, children left behind included, can be signalled and
waited for. The listener (a lost job's leftovers, ``host.jobs.follow``) and the builder
(``build.builder``) stop them the same way, here.

Where there is ``/proc`` a group is alive while a live (not zombie) process has that group
and session id. Where there is none (macOS, a Home Manager or nix-darwin listener) ``ps``,
run from an argv, tells: see ``_group_exists_by_ps``.
"""

from __future__ import annotations

import calendar
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from fleet_core.config.options import DEFAULT_KILL_GRACE

__all__ = [
    "KILL_GRACE",
    "PROC",
    "group_alive",
    "group_exists",
    "ps_command",
    "read_proc",
    "signal_group",
    "stop_group",
]

KILL_GRACE = DEFAULT_KILL_GRACE
# Linux's process table. Where it is missing (macOS) ps and signal 0 stand in; tests point
# this elsewhere to take that path on Linux.
PROC = Path("/proc")
_POLL = 0.05  # no pidfd exists for a whole group: its end can only be polled for
_START_SLACK = 2.0  # ps shows start times to the second; a file's mtime is finer
_BOOTTIME = re.compile(r"sec = (\d+)")


def signal_group(group: int, signum: signal.Signals) -> bool:
    """Send ``signum`` to process group ``group``; False if nobody of it was left to signal."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member of another user's: nothing we may stop
        return True
    return True


async def stop_group(
    group: int,
    *,
    grace: float = KILL_GRACE,
    since: float | None = None,
    leader: anyio.abc.Process | None = None,
) -> None:
    """End process group ``group``: SIGTERM, and SIGKILL only if it outlives ``grace``.

    ``leader`` is the group's leader when this process started it (it is reaped here, so
    its zombie does not count as alive); ``since`` is when the group was known to be ours
    (see ``group_exists``). The id stays reserved while any member lives, so this never
    signals a stranger.
    """
    if not signal_group(group, signal.SIGTERM):
        return
    with anyio.move_on_after(grace):
        await _ended(group, since, leader)
        return
    signal_group(group, signal.SIGKILL)
    with anyio.move_on_after(grace):
        await _ended(group, since, leader)


async def _ended(group: int, since: float | None, leader: anyio.abc.Process | None) -> None:
    if leader is not None:
        await leader.wait()
    while await group_alive(group, since):  # noqa: ASYNC110 - no pidfd exists for a group
        await anyio.sleep(_POLL)


async def group_alive(group: int, since: float | None = None) -> bool:
    """``group_exists`` off the event loop: it reads /proc/*/stat of every process."""
    return await anyio.to_thread.run_sync(group_exists, group, since)


def group_exists(group: int, since: float | None = None) -> bool:
    """Whether a live process is in process group and session ``group`` (as a process
    started with a session of its own makes). ``since``: see ``_group_exists_by_ps``."""
    if not PROC.is_dir():
        return _group_exists_by_ps(group, since)
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = read_proc(entry / "stat")
        if stat is None:
            continue
        fields = stat.rpartition(b")")[2].split()
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[2]) == int(fields[3]) == group:
            return True
    return False


def read_proc(path: Path) -> bytes | None:
    """A /proc file's bytes; None once the process is gone."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def ps_command(pid: int) -> tuple[str, str] | None:
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
