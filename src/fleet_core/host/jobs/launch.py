"""Starting a rebuild outside the listener: the ``Rebuilder`` seam and its two launch modes.

A rebuild never runs as the listener's child in its process group: it runs under the job
runner (``fleet_core.host.jobs.job_runner``), which owns the deadline, the process group and the
job's result on disk, so stopping, restarting or crashing the listener never stops a switch.
The runner is launched one of two ways (``--rebuild-runner``):

- ``systemd``: a transient unit, ``systemd-run --unit fleet-deploy-job-<id> --collect …``,
  in a cgroup of its own, so ``systemctl restart`` of the listener's unit, and its
  KillMode, cannot reach it. The listener's environment (minus what systemd sets per unit,
  and its own ``FLEET_DEPLOY_*`` settings) is passed on with ``--setenv NAME``, as a
  transient unit starts with a clean one. A Home Manager listener run by ``systemd --user``
  asks its own user manager (``systemd-run --user``): the unit is the user's, outside the
  listener's cgroup all the same. It runs in the listener's working directory
  (``--same-dir``), as in session mode, rather than the user's home: ``home-manager build``
  leaves its ``result`` link there.
- ``session``: the runner in a new session (``setsid``), its stdio on /dev/null; for hosts
  without systemd, tests and the sandbox. Under a systemd unit this does *not* survive a
  restart of that unit (KillMode=control-group reaches every process of its cgroup).

Either way the rebuild's argv, which holds the flake URL and any token in it, reaches the
runner in a file of the job directory (mode 0600, deleted once read), never on the runner's
command line, which every local user can read. ``Rebuilder.start`` only launches; following
the job to its end is the same for every mode, through the job directory
(``fleet_core.host.jobs.follow``). ``fleet_core.testing.InstantRebuilder`` is a rebuilder that
"launches" by writing a finished job's files itself.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import anyio
import structlog

from fleet_core.config.options import DEFAULT_KILL_GRACE
from fleet_core.config.settings import ListenerSettings
from fleet_core.host.jobs.follow import MAX_LINE_CHARS, TailBuffer, adopt_child
from fleet_core.host.jobs.jobdir import discard_argv, runner_argv, write_argv
from fleet_core.host.jobs.outcome import RebuildResult

__all__ = [
    "MAX_LINE_CHARS",
    "Launched",
    "ProcessRebuilder",
    "RebuildJob",
    "RebuildResult",
    "Rebuilder",
    "RunnerMode",
    "StartFailed",
    "TailBuffer",
    "rebuilder_for",
    "unit_name",
]

log = structlog.get_logger("fleet.runner")

RunnerMode = Literal["systemd", "session"]
UNIT_PREFIX = "fleet-deploy-job-"
SYSTEMD_RUN_LIMIT = 30.0  # seconds systemd-run may take to start the unit (it may be busy)


@dataclass(frozen=True, slots=True)
class RebuildJob:
    """One rebuild to start: ``directory`` is its job directory, ``job_id`` its request id."""

    job_id: str
    argv: Sequence[str] = field(repr=False)  # it holds the flake URL, token and all
    directory: Path
    timeout: float
    kill_grace: float = DEFAULT_KILL_GRACE
    after: float = 0.0  # what the runner may need after the rebuild: checks, rollback


@dataclass(frozen=True, slots=True)
class Launched:
    """How a started job can be found again: the runner's pid (None until a transient unit's
    runner has written it) and the transient unit's name (None in session mode)."""

    pid: int | None = None
    unit: str | None = None


class StartFailed(Exception):
    """The job runner could not be launched; the message says why (``systemd-run``'s own)."""


class Rebuilder(Protocol):
    async def start(self, job: RebuildJob) -> Launched: ...


def unit_name(job_id: str) -> str:
    """The transient unit of a job (a request id is a valid unit name; one job at a time)."""
    return f"{UNIT_PREFIX}{job_id}"


class ProcessRebuilder:
    """Launches the job runner as a transient systemd unit or in a session of its own.

    ``pass_env`` names the variables a transient unit gets from the listener's environment;
    ``systemd_run`` is the program (a stand-in in tests:
    ``fleet_core.testing.simulated_systemd_run``).
    """

    def __init__(
        self,
        mode: RunnerMode = "session",
        *,
        systemd_run: Sequence[str] = ("systemd-run",),
        pass_env: Sequence[str] = (),
    ) -> None:
        self.mode = mode
        self._systemd_run = tuple(systemd_run)
        self._pass_env = tuple(pass_env)

    async def start(self, job: RebuildJob) -> Launched:
        """Launch the runner; the rebuild's argv reaches it in a file, not a command line."""
        directory = job.directory.absolute()
        argv = runner_argv(
            sys.executable, directory, timeout=job.timeout, kill_grace=job.kill_grace
        )
        try:
            write_argv(directory, job.argv)
        except OSError as exc:
            raise StartFailed(
                f"cannot hand the rebuild's command line to the job runner: {exc.strerror or exc}"
            ) from exc
        try:
            if self.mode == "systemd":
                return await self._start_unit(job, argv)
            return self._start_session(argv)
        except StartFailed:
            discard_argv(directory)  # no runner will read it
            raise

    def _start_session(self, argv: list[str]) -> Launched:
        try:
            process = subprocess.Popen(  # noqa: S603 - our own runner, from an argv
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            raise StartFailed(f"cannot start the job runner: {exc.strerror or exc}") from exc
        adopt_child(process)
        return Launched(pid=process.pid)

    async def _start_unit(self, job: RebuildJob, argv: list[str]) -> Launched:
        unit = unit_name(job.job_id)
        # The runner's own deadlines come first: the rebuild's, then its guard's.
        backstop = job.timeout + job.after + 2 * job.kill_grace + 30
        command = [
            *self._systemd_run,
            "--unit",
            unit,
            "--description",
            f"fleet-deploy job {job.job_id}",
            "--collect",
            "--quiet",
            "--service-type=exec",
            "--property",
            f"RuntimeMaxSec={backstop:g}",
            *(f"--setenv={name}" for name in self._pass_env),
            "--",
            *argv,
        ]
        try:
            with anyio.fail_after(SYSTEMD_RUN_LIMIT):
                done = await anyio.run_process(command, check=False, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise StartFailed(f"cannot run {command[0]!r}: {exc.strerror or exc}") from exc
        except TimeoutError:
            raise StartFailed(
                f"systemd-run did not start {unit} within {SYSTEMD_RUN_LIMIT:g} s"
            ) from None
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip()[-500:]
            raise StartFailed(
                f"systemd-run could not start {unit} (exit {done.returncode}): {said}"
            )
        return Launched(unit=unit)


def rebuilder_for(settings: ListenerSettings) -> ProcessRebuilder:
    """The rebuilder a listener with ``settings`` uses unless it is given one."""
    user = ("--user", "--same-dir") if settings.systemd_user else ()
    return ProcessRebuilder(
        "systemd" if settings.rebuild_runner == "systemd" else "session",
        systemd_run=(*settings.systemd_run, *user),
        pass_env=settings.rebuild_env,
    )
