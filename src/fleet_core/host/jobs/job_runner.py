"""The job runner: one rebuild, supervised outside the listener, its result left on disk.

    python -I …/fleet_core/host/jobs/job_runner.py <job-dir> --timeout S --kill-grace G

The listener starts this program (as a transient systemd unit, or in a session of its own)
and then only watches the job directory, so stopping, restarting or crashing the listener
never touches the rebuild. The runner:

- takes the rebuild's argv from ``argv.json`` in the job directory (mode 0600, written by the
  listener with ``write_argv``) and deletes that file at once: the argv holds the flake URL,
  token and all, and a command line is public (``/proc/<pid>/cmdline``, ``systemctl show``);
- for a closure deploy (a ``closure.json`` plan beside it: ``closure``) runs that argv, the
  fetch, then the check and the activation steps the plan makes, each the same way, all
  under the one deadline, and records them in ``exit.json``'s ``closure``;
- writes ``runner.json`` first (its own pid, later the rebuild's), atomically;
- runs ``argv`` in a new session and process group, stdin from /dev/null, stdout and stderr
  into one pipe that only this program reads — a listener that dies cannot SIGPIPE it;
- copies that output to ``output.log``, at most ``MAX_LOG_BYTES``, with any ``user:token@``
  of a URL replaced by ``***@`` (nix and git echo the flake URL); past the limit it writes a
  visible marker, drops the rest, and says at the end how much was dropped;
- at the deadline sends the whole group SIGTERM, then SIGKILL after the grace; on SIGTERM
  or SIGINT to itself (``systemctl stop`` of its unit, a test's clean-up) does the same and
  records ``cancelled``; children that outlive the rebuild and hold the pipe open are
  stopped the same way two seconds after it exits;
- finally writes ``exit.json`` atomically (fsynced, then renamed): ``exit_code`` (as Python
  reports it: negative for a signal), ``timed_out``, ``cancelled``, ``start_error``,
  ``started_at``, ``finished_at``, ``duration_s``. That file is the truth a listener reads,
  even one that started after the job ended.

Standard library only, and run with ``-I`` by path rather than ``-m``: it starts in tens of
milliseconds, needs no site-packages (a Nix-wrapped interpreter would not find them), and the
isolated mode keeps this package's directories off ``sys.path``. The job directory's format
is ``jobdir``'s, the file beside this one, which it loads by path: never another install's.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any


def _load(name: str) -> ModuleType:
    """``<name>.py`` beside this file, as a module of its own (run by path, this program
    has no package to import it from)."""
    spec = importlib.util.spec_from_file_location(
        f"fleet_job_runner_{name}", Path(__file__).resolve().with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING or __package__:
    from fleet_core.host.jobs import activation, closure, jobdir
else:  # run by path
    jobdir = _load("jobdir")
    activation = _load("activation")
    closure = _load("closure")

__all__ = ["MAX_LOG_BYTES", "OUTLIVE_GRACE", "main", "redact_output"]

MAX_LOG_BYTES = 64 * 1024 * 1024
OUTLIVE_GRACE = 2.0  # seconds children may hold the output open after the rebuild exits
_CHUNK = 65536
_CAPTURE_LIMIT = 64 * 1024  # of a check's output, kept for its tail
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# fleet_core.protocol.actions.redact's pattern, for bytes (this program imports nothing of
# ours but jobdir; a test holds the two to the same answers). A match never spans whitespace.
_USERINFO = re.compile(rb"(://)[^/@\s]*@")
_BLANKS = (b"\n", b"\r", b"\t", b" ", b"\x0b", b"\x0c")
_HOLD = 64 * 1024  # bytes without whitespace held back for redaction before written anyway


def redact_output(data: bytes) -> bytes:
    """``data`` with any ``user:token@`` of a URL replaced by ``***@``."""
    return _USERINFO.sub(rb"\1***@", data)


class _Log:
    """``output.log``, redacted and bounded: past the limit a marker, and at the end what was
    dropped.

    Output is written up to its last whitespace, redacted: the rest waits for more, so a URL
    split between two reads is redacted whole. A run of more than ``_HOLD`` bytes without
    whitespace is written as it is (a URL that long could be cut by that).
    """

    def __init__(self, path: Path, limit: int = MAX_LOG_BYTES) -> None:
        # 0600: nix may print the flake URL, token and all, in a fetch error.
        self._file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        self._limit = limit
        self._written = 0
        self._dropped = 0
        self._at_line_start = True
        self._pending = bytearray()

    def write(self, data: bytes) -> None:
        self._pending += data
        cut = max(self._pending.rfind(blank) for blank in _BLANKS) + 1
        if not cut and len(self._pending) > _HOLD:
            cut = len(self._pending)
        if cut:
            ready = bytes(self._pending[:cut])
            del self._pending[:cut]
            self._keep(redact_output(ready))

    def _flush_pending(self) -> None:
        ready = bytes(self._pending)
        self._pending.clear()
        if ready:
            self._keep(redact_output(ready))

    def _keep(self, data: bytes) -> None:
        room = self._limit - self._written
        kept = data[: max(room, 0)]
        if kept:
            self._file.write(kept)
            self._written += len(kept)
            self._at_line_start = kept.endswith(b"\n")
        if len(kept) < len(data):
            if not self._dropped:
                self._note(
                    f"fleet-deploy: output.log reached its limit of {self._limit} bytes; "
                    "the rest of the output is not kept"
                )
            self._dropped += len(data) - len(kept)
        self._file.flush()

    def note(self, line: str) -> None:
        """A line of the runner's own, always kept (it is not the rebuild's output), after
        the output so far."""
        self._flush_pending()
        self._note(line)

    def _note(self, line: str) -> None:
        start = b"" if self._at_line_start else b"\n"
        self._file.write(start + f"{line}\n".encode())
        self._file.flush()
        self._at_line_start = True

    def close(self) -> None:
        self._flush_pending()
        if self._dropped:
            self.note(f"fleet-deploy: {self._dropped} more bytes of output were not kept")
        with contextlib.suppress(OSError):
            os.fsync(self._file.fileno())
        self._file.close()


class _Supervisor:
    """Runs the rebuild's process group to its end, its deadline, or a stop request."""

    def __init__(self, job_dir: Path, argv: list[str] | str, timeout: float, grace: float) -> None:
        self.job_dir = job_dir
        self.argv = argv  # or why there is none to run
        self.timeout = timeout
        self.grace = grace
        self.stop_requested: str | None = None  # the signal's name, once one arrived
        self.stoppable = True  # False while rolling back: a half rollback helps nobody
        self.log: _Log  # opened once runner.json is written: that file comes first
        self._capture: bytearray | None = None  # a step's output, kept for its result
        self._running: str | None = None  # a closure deploy's step, while it runs

    def on_signal(self, signum: int, _frame: object) -> None:
        if signum != signal.SIGCHLD and self.stop_requested is None:
            self.stop_requested = signal.Signals(signum).name

    def run(self) -> dict[str, Any]:
        started_at, began = time.time(), time.monotonic()
        jobdir.write_runner(self.job_dir, jobdir.RunnerPids(os.getpid()))
        self.log = _Log(self.job_dir / jobdir.OUTPUT_LOG)
        result: dict[str, Any] = {
            "exit_code": None,
            "timed_out": False,
            "cancelled": False,
            "start_error": None,
            "started_at": started_at,
        }
        try:
            guard = activation.read_guard(self.job_dir)
            if isinstance(guard, str):
                self.log.note(f"fleet-deploy: no rollback for this job: {guard}")
                guard = None
            before = activation.snapshot(guard) if guard is not None else None
            plan = closure.read_plan(self.job_dir)
            if plan is not None:
                self._closure(plan, result, deadline=began + self.timeout)
            else:
                process = self._start(result)
                if process is not None:
                    jobdir.write_runner(self.job_dir, jobdir.RunnerPids(os.getpid(), process.pid))
                    timed_out, cancelled = self._supervise(process, self.timeout)
                    result.update(
                        exit_code=process.returncode, timed_out=timed_out, cancelled=cancelled
                    )
            if guard is not None and before is not None:
                result["activation"] = self._guard(guard, before, result).as_json()
        finally:
            self.log.close()
        result["finished_at"] = time.time()
        result["duration_s"] = round(time.monotonic() - began, 3)
        return result

    def _closure(self, plan: Any, result: dict[str, Any], *, deadline: float) -> None:
        """A closure deploy (``closure``): the fetch (the argv), the check, the activation
        steps, each stopping the job when it fails; what they did in ``result["closure"]``.
        ``deadline`` (monotonic) is the job's, over all of them."""
        if isinstance(plan, str):  # unreadable: nothing is fetched, nothing activated
            result["start_error"] = plan
            self.log.note(f"fleet-deploy: {plan}")
            return
        report = closure.Report(plan.store_path)
        result["closure"] = report.as_json()
        try:
            if not self._closure_step(closure.FETCH, self.argv, deadline, result, report):
                return
            if self.stop_requested is not None:  # asked to stop as the fetch ended
                self.log.note(f"fleet-deploy: the job runner got {self.stop_requested}: stopped")
                result["cancelled"] = True
                return
            report.steps.append(closure.CHECK)
            why = closure.system_check(plan.path)
            if why is not None:
                report.failed_step, report.error = closure.CHECK, why
                result["exit_code"] = None
                self.log.note(f"fleet-deploy: {why}")
                return
            steps = closure.activation_steps(plan)
            if steps:
                # Past the fetch: a half activation helps nobody, so no stop request is obeyed
                # from here on, and the listener answers a cancel already_activating.
                self.stoppable = False
                activation.write_phase(
                    self.job_dir, closure.ACTIVATING, jobdir.write_json_atomically
                )
            for name, argv in steps:
                if not self._closure_step(name, argv, deadline, result, report):
                    return
        finally:
            self.stoppable = True
            self._running = None
            result["closure"] = report.as_json()

    def _closure_step(
        self,
        name: str,
        argv: list[str] | str,
        deadline: float,
        result: dict[str, Any],
        report: Any,
    ) -> bool:
        """One step of a closure deploy, run as a rebuild is: its own session and process
        group, output into the log, what is left of the deadline. True when it exited 0."""
        report.steps.append(name)
        self._running = f"the {name} step"
        if isinstance(argv, str) or not argv:
            error = argv or f"the {name} step has no command line"
            result["start_error"] = error
            report.failed_step, report.error = name, error
            self.log.note(f"fleet-deploy: {error}")
            return False
        self.log.note(f"fleet-deploy: {name}: {' '.join(argv)}")
        try:
            process = subprocess.Popen(  # noqa: S603 - the listener's argv, never a shell
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            error = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
            result["start_error"] = error
            report.failed_step, report.error = name, error
            self.log.note(f"fleet-deploy: {error}")
            return False
        jobdir.write_runner(self.job_dir, jobdir.RunnerPids(os.getpid(), process.pid))
        left = max(0.0, deadline - time.monotonic())
        timed_out, cancelled = self._supervise(process, left)
        result.update(exit_code=process.returncode, timed_out=timed_out, cancelled=cancelled)
        if process.returncode == 0 and not timed_out and not cancelled:
            return True
        report.failed_step = name
        return False

    def _guard(self, guard: Any, before: dict[str, str | None], result: dict[str, Any]) -> Any:
        """Checks, confirmation and, if need be, the rollback (``activation``)."""
        rebuild_ok = (
            result["exit_code"] == 0
            and not result["timed_out"]
            and not result["cancelled"]
            and result["start_error"] is None
        )

        def phase(name: str) -> None:
            self.stoppable = name != "rolling_back"
            activation.write_phase(self.job_dir, name, jobdir.write_json_atomically)

        return activation.guard_activation(
            self.job_dir,
            guard,
            before,
            rebuild_ok=rebuild_ok,
            run=self._step,
            note=self.log.note,
            phase=phase,
            stopped=lambda: self.stop_requested is not None,
        )

    def _step(self, argv: Sequence[str], timeout: float) -> Any:
        """Run one command of the activation's (a check, a rollback step) as the rebuild
        runs: its own process group, output into the log, a deadline; what it printed is
        kept for its result."""
        # A check dies with the runner (a runner killed between starting one and recording
        # its pid would leave it behind); a rollback step does not: better whole than cut.
        tied = self.stoppable and sys.platform.startswith("linux")
        try:
            process = subprocess.Popen(  # noqa: S603 - the listener's argv, never a shell
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()) if tied else None,  # noqa: PLW1509
            )
        except OSError as exc:
            error = f"cannot start {argv[0]!r}: {exc.strerror or exc}"
            self.log.note(f"fleet-deploy: {error}")
            return activation.Step(None, start_error=error)
        jobdir.write_runner(self.job_dir, jobdir.RunnerPids(os.getpid(), process.pid))
        self._capture = bytearray()
        try:
            timed_out, _ = self._supervise(process, timeout)
            output = self._capture.decode("utf-8", "replace").splitlines()
        finally:
            self._capture = None
        return activation.Step(process.returncode, timed_out=timed_out, output=output)

    def _start(self, result: dict[str, Any]) -> subprocess.Popen[bytes] | None:
        """The rebuild, started; None, with ``start_error`` set and noted, if it cannot be.
        A job without a rebuild (an empty argv: health checks on demand) has none to start,
        and ends 0."""
        if self.argv == []:
            result["exit_code"] = 0
            return None
        if isinstance(self.argv, str):
            error = self.argv
        else:
            try:
                return subprocess.Popen(  # noqa: S603 - the listener's argv, never a shell
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                error = f"cannot start {self.argv[0]!r}: {exc.strerror or exc}"
        result["start_error"] = error
        self.log.note(error)
        return None

    def _supervise(self, process: subprocess.Popen[bytes], timeout: float) -> tuple[bool, bool]:
        assert process.stdout is not None
        pipe = process.stdout.fileno()
        os.set_blocking(pipe, False)
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        deadline = time.monotonic() + timeout
        reason: str | None = None  # why the group is being stopped, once it is
        next_step = deadline  # the next moment something is due: the deadline, or a signal
        killed = False
        exited_at: float | None = None
        eof = False
        while not (eof and process.poll() is not None):
            now = time.monotonic()
            if exited_at is None and process.poll() is not None:
                exited_at = now
                next_step = min(next_step, now + OUTLIVE_GRACE)
            if reason is None:
                reason = self._stop_reason(now, deadline, exited_at, timeout)
                if reason is not None:
                    _signal_group(process.pid, signal.SIGTERM)
                    next_step = now + self.grace
            elif now >= next_step and not killed:
                _signal_group(process.pid, signal.SIGKILL)
                killed, next_step = True, now + self.grace
            elif now >= next_step:
                break  # killed, and still the output is held open: by nothing of the group
            wait = max(0.0, min(next_step, now + 1.0) - now)
            watched = [wake_read] if eof else [wake_read, pipe]
            readable, _, _ = select.select(watched, [], [], wait)
            if wake_read in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_read, 512)
            if pipe in readable:
                eof = self._pump(pipe)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(self.grace)
        signal.set_wakeup_fd(-1)
        os.close(wake_read)
        os.close(wake_write)
        process.stdout.close()
        return reason == "deadline", reason == "signal"

    def _stop_reason(
        self, now: float, deadline: float, exited_at: float | None, timeout: float
    ) -> str | None:
        """Why the group must be stopped now, noted in the log; None while it may run on."""
        stop_requested = self.stop_requested if self.stoppable else None
        what = "the rebuild" if self._capture is None else "the command"
        limit = f"its {timeout:g} s deadline"
        if self._running is not None:  # a closure deploy's step: the job's deadline, not its own
            what, limit = self._running, f"the job's {self.timeout:g} s deadline"
        if stop_requested is not None and exited_at is None:
            got = self.stop_requested
            self.log.note(f"fleet-deploy: the job runner got {got}: stopping {what}")
            return "signal"
        if stop_requested is not None:
            return "outlived"  # the rebuild had already exited: its result stands
        if now >= deadline and exited_at is None:
            self.log.note(f"fleet-deploy: {what} ran past {limit}")
            return "deadline"
        if exited_at is not None and now >= exited_at + OUTLIVE_GRACE:
            return "outlived"  # its children hold the output open: stop them too
        return None

    def _pump(self, pipe: int) -> bool:
        """Copy what is waiting in the pipe to the log; True at end of output."""
        try:
            chunk = os.read(pipe, _CHUNK)
        except BlockingIOError:
            return False
        if not chunk:
            return True
        self.log.write(chunk)
        if self._capture is not None and len(self._capture) < _CAPTURE_LIMIT:
            self._capture += chunk[: _CAPTURE_LIMIT - len(self._capture)]
        return False


def _die_with_parent(parent: int) -> Callable[[], None]:
    """What a child runs before its program, on Linux: SIGTERM when the runner dies
    (``PR_SET_PDEATHSIG``), and an exit if it died already."""

    def tie() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return tie


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pgid, signum)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-deploy job runner", allow_abbrev=False)
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--kill-grace", type=float, required=True)
    return parser


def main(args: list[str] | None = None) -> int:
    options = _parser().parse_args(sys.argv[1:] if args is None else args)
    job_dir: Path = options.job_dir
    argv = jobdir.take_argv(job_dir)  # first: the file holding the token is gone at once
    supervisor = _Supervisor(job_dir, argv, options.timeout, options.kill_grace)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(signum, supervisor.on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        result = supervisor.run()
        jobdir.write_json_atomically(job_dir / jobdir.EXIT_FILE, result)
    except OSError as exc:
        print(f"fleet-deploy job runner: {job_dir}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
