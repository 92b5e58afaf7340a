"""A job directory's files: their names, how each is written, and how each is read.

One job is one directory under the listener's state directory. Two programs share it: the
listener (``manager``, ``store``, ``follow``, ``launch``) and the job runner, a separate
stdlib-only program that outlives the listener. Both import this module, so the format has
one home::

    job.json      the job record (``store``): request, reply subject, phase, final status
    argv.json     the rebuild's argv, mode 0600; the runner deletes it once read (it may
                  hold a flake URL's token, and a command line is public); empty for a
                  job that rebuilds nothing (a health check on demand)
    guard.json    what the runner guards after the rebuild (``activation``)
    closure.json  a closure deploy's plan: the fetched path, what activates it (``closure``)
    phase.json    where the runner is after the rebuild: checking, confirming, rolling back
    confirmed.json  the listener's word that it reached NATS from the new system
    runner.json   the runner's pid, then also the rebuild's (its process group)
    output.log    the rebuild's output, redacted and bounded
    exit.json     the rebuild's end: exit code, timed out, cancelled, start error, times;
                  a closure deploy's steps and the one that failed (``closure``)

Every file but ``output.log`` is replaced atomically (``write_atomically``): a crash leaves
the old file or the new one, never half of one.

Standard library only: the job runner loads this file by path (see ``job_runner``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ARGV_FILE",
    "EXIT_FILE",
    "OUTPUT_LOG",
    "RECORD_FILE",
    "RUNNER_FILE",
    "RUNNER_PROGRAM",
    "RunnerPids",
    "discard_argv",
    "fsync_directory",
    "json_object",
    "parse_runner",
    "read_exit",
    "read_runner",
    "runner_argv",
    "take_argv",
    "write_argv",
    "write_atomically",
    "write_json_atomically",
    "write_runner",
]

RECORD_FILE = "job.json"
ARGV_FILE = "argv.json"
RUNNER_FILE = "runner.json"
EXIT_FILE = "exit.json"
OUTPUT_LOG = "output.log"
RUNNER_PROGRAM = Path(__file__).resolve().with_name("job_runner.py")


def runner_argv(python: str, job_dir: Path, *, timeout: float, kill_grace: float) -> list[str]:
    """The command line that runs the job in ``job_dir`` under the job runner; the rebuild's
    own argv goes in the job's ``ARGV_FILE`` (``write_argv``), never on a command line."""
    return [
        python,
        "-I",
        str(RUNNER_PROGRAM),
        str(job_dir),
        "--timeout",
        f"{timeout:g}",
        "--kill-grace",
        f"{kill_grace:g}",
    ]


def write_atomically(path: Path, data: bytes, *, mode: int = 0o640) -> None:
    """Replace ``path`` with ``data``, durably: a crash leaves the old file or the new one.

    Written to a temporary file in the same directory, fsynced, renamed over ``path``, and
    the rename fsynced too.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)


def write_json_atomically(path: Path, value: dict[str, Any]) -> None:
    """``write_atomically`` of ``value`` as one line of JSON."""
    write_atomically(path, (json.dumps(value) + "\n").encode())


def fsync_directory(directory: Path) -> None:
    """Make a rename or new entry in ``directory`` durable (where the file system can)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_argv(job_dir: Path, argv: Sequence[str]) -> None:
    """Leave the rebuild's ``argv`` for the runner in ``job_dir``, readable by the owner only
    (mode 0600, as ``mkstemp`` makes it); the runner deletes it once read."""
    fd, temporary = tempfile.mkstemp(dir=job_dir, prefix=f".{ARGV_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(list(argv), file)
        os.replace(temporary, job_dir / ARGV_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def discard_argv(job_dir: Path) -> None:
    """Delete the job's argv file if it is still there (its runner never read it)."""
    with contextlib.suppress(OSError):
        (job_dir / ARGV_FILE).unlink()


def take_argv(job_dir: Path) -> list[str] | str:
    """The argv the listener left, its file deleted; a sentence saying why not, if not."""
    path = job_dir / ARGV_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read the job's {ARGV_FILE}: {exc.strerror or exc}"
    finally:
        discard_argv(job_dir)
    try:
        argv = json.loads(data)
    except ValueError:
        argv = None
    # An empty list is a job without a rebuild: a health check on demand.
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return f"the job's {ARGV_FILE} does not hold a command line"
    return argv


@dataclass(frozen=True, slots=True)
class RunnerPids:
    """``runner.json``: the job runner's pid, and the rebuild's (its process group) once known."""

    runner: int
    rebuild: int | None = None


def write_runner(job_dir: Path, pids: RunnerPids) -> None:
    """Record the runner's pid (and the rebuild's, once it runs) in ``runner.json``."""
    value: dict[str, Any] = {"pid": pids.runner}
    if pids.rebuild is not None:
        value["rebuild_pid"] = pids.rebuild
    write_json_atomically(job_dir / RUNNER_FILE, value)


def parse_runner(data: bytes | None) -> RunnerPids | None:
    """The pids ``runner.json`` holds; None when it is absent or not what the runner writes."""
    value = json_object(data)
    if value is None:
        return None
    runner, rebuild = value.get("pid"), value.get("rebuild_pid")
    if not _is_pid(runner):
        return None
    assert isinstance(runner, int)
    return RunnerPids(runner, rebuild if isinstance(rebuild, int) and _is_pid(rebuild) else None)


def read_runner(job_dir: Path) -> RunnerPids | None:
    """The pids the job runner of ``job_dir`` recorded, if it got that far."""
    return parse_runner(_read(job_dir / RUNNER_FILE))


def read_exit(job_dir: Path) -> bytes | None:
    """``exit.json``'s bytes, or None while the rebuild has not ended (``resume`` judges them)."""
    return _read(job_dir / EXIT_FILE)


def json_object(data: bytes | None) -> dict[str, Any] | None:
    """``data`` as a JSON object; None for no data, bad JSON or another JSON value."""
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:  # includes a UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _is_pid(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
