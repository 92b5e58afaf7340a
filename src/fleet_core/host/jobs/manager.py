"""A host's jobs as the listener runs them: start one, follow it, resume one a previous
listener left, and report each to its requester with its true outcome — its first outcome
stands, re-sent if a stop interrupted the sending (the deployer ignores the duplicate).

A job walks accepted → started → progress… → completed | failed. Its record (``store``) is
on disk before the requester hears of each phase, and its rebuild runs under the job runner,
outside the listener (``launch``). From the moment the runner is launched the job belongs
to the host, not to this process:

- a listener that stops (SIGTERM, ``systemctl restart``) leaves it running, logs so, and
  reports nothing — the next listener will;
- a listener that starts ``resume``s every unfinished job on disk before it takes requests:
  one whose runner still runs is followed (busy, heartbeat to the original reply subject,
  the final status when it ends); one that ended meanwhile is reported at once from its
  ``exit.json``; one whose runner vanished without a result is reported failed/cancelled
  (``fleet_core.host.jobs.resume`` decides which);
- ``stop_jobs`` is the one way this module stops a rebuild: the clean-up of test fleets and
  the sandbox, which promise that nothing they started outlives them.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import structlog

from fleet_core.config.settings import ListenerSettings
from fleet_core.errors import FleetError
from fleet_core.host.jobs.activation import confirm, read_phase, time_after, write_guard
from fleet_core.host.jobs.closure import write_plan
from fleet_core.host.jobs.follow import follow, runner_alive, stop_runner
from fleet_core.host.jobs.guard import closure_fetch_argv, closure_plan, guard_for, has_guard
from fleet_core.host.jobs.jobdir import (
    discard_argv,
    read_exit,
    read_runner,
    write_json_atomically,
)
from fleet_core.host.jobs.launch import Launched, Rebuilder, RebuildJob, StartFailed
from fleet_core.host.jobs.outcome import Outcome, RebuildResult, decide
from fleet_core.host.jobs.rebuild import build_argv
from fleet_core.host.jobs.rebuild_output import phase_of
from fleet_core.host.jobs.resume import Resume, resume_action
from fleet_core.host.jobs.store import JobRecord, JobStore
from fleet_core.host.status_reporter import StatusReporter
from fleet_core.protocol.actions import Action, rebuild_program, redact
from fleet_core.protocol.messages import DeployRequest, ErrorCode, StatusKind
from fleet_core.protocol.signing import verified_signer

__all__ = [
    "HostJobs",
    "Job",
    "Pacing",
]

log = structlog.get_logger("fleet.listener")

_PHASE_POLL = 0.2  # seconds between two looks at the runner's phase file
_CONFIRM_ROUND_TRIP = 5.0  # seconds a confirming round trip to the server may take
# What a deployer is told when the runner enters a phase after the rebuild.
_PHASE_NEWS = {
    "activating": "activating the fetched system",  # a closure deploy, past its fetch
    "checking": "running the health checks of the new system",
    "confirming": "confirming that the new system reaches NATS",
    "rolling_back": "rolling back to the previous system",
}

# (reply_to, request, request id, the request's verified signer) -> its reporter
ReporterFor = Callable[[str, DeployRequest, str, str | None], StatusReporter]
OnFinished = Callable[["Job", Outcome], Awaitable[None]]


@dataclass(slots=True)
class Pacing:
    """When a running job's next progress status is due (times from one monotonic clock).

    New output is told at most once per ``rate_limit``; silence at least once per
    ``heartbeat``, counted from the last status sent, so a rate-limit pause is part of the
    wait, not added to it. A resumed job speaks at once: its deployer has heard nothing from
    this listener yet.
    """

    heartbeat: float
    rate_limit: float
    _sent: float = 0.0

    def start(self, now: float, *, resumed: bool = False) -> None:
        self._sent = now - (self.heartbeat if resumed else 0.0)

    def sent(self, now: float) -> None:
        self._sent = now

    def wait(self, now: float) -> float:
        """How long to wait for new output before a heartbeat is due."""
        return max(0.0, self._sent + self.heartbeat - now)

    @property
    def pause(self) -> float:
        """The rest after each status: the rate limit, never longer than a heartbeat."""
        return min(self.rate_limit, self.heartbeat)


@dataclass(eq=False)
class Job:
    """One job as this listener knows it, while it runs and until its final status is sent."""

    request: DeployRequest
    request_id: str
    reporter: StatusReporter
    started: float = field(default_factory=time.monotonic)
    record: JobRecord | None = None  # None until the job's record is first written
    directory: Path | None = None  # where the runner keeps its files, once made
    durable: bool = True  # False: a temporary directory, as the state dir refused
    launched: Launched | None = None  # set once the runner runs: from then on it is the host's
    final: tuple[Outcome, float] | None = None  # the outcome and duration, once decided
    phase: str | None = None
    latest_line: str | None = None
    new_output: anyio.Event = field(default_factory=anyio.Event)
    cancelled_by: str | None = None  # who cancelled it (a public key), once someone did
    guard_phase: str | None = None  # the runner's phase after the rebuild (phase.json)

    def on_line(self, line: str) -> None:
        self.latest_line = line
        if self.guard_phase is None:  # past the rebuild, the runner's phase is the phase
            self.phase = phase_of(line, self.phase)
        self.new_output.set()


class HostJobs:
    """The jobs of one host; ``active`` are those followed now (one, but for a damaged disk)."""

    def __init__(
        self,
        settings: ListenerSettings,
        rebuilder: Rebuilder,
        *,
        reporter_for: ReporterFor,
        on_finished: OnFinished,
    ) -> None:
        self.settings = settings
        self.store = JobStore(settings.state_dir, keep=settings.jobs_kept)
        self.active: list[Job] = []
        self._rebuilder = rebuilder
        self._reporter_for = reporter_for
        self._on_finished = on_finished
        self._log = log.bind(host=settings.hostname, tier=settings.tier.value)

    # -- a new job ---------------------------------------------------------------------------

    def take(self, request: DeployRequest, request_id: str, reporter: StatusReporter) -> Job:
        """Make ``request`` the active job; the caller starts ``run(job)`` in a task."""
        job = Job(request=request, request_id=request_id, reporter=reporter)
        self.active.append(job)
        return job

    async def run(self, job: Job) -> None:
        """The job task's edge: the requester hears a final status, unless the listener
        stops while the rebuild runs — then the rebuild runs on and the next listener tells."""
        jlog = self._log.bind(
            request_id=job.request_id,
            action=job.request.action.value,
            revision=job.request.revision,
            store_path=job.request.store_path,
        )
        try:
            await self._execute(job, jlog)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                if job.final is not None:  # a stop while reporting: the first outcome stands
                    await self._finish(job, job.final[0], exit_code=None)
                elif job.launched is not None:
                    jlog.warning("job_left_running", **self._where(job))
                else:
                    await self._finish(job, self._stopped_before_start(), exit_code=None)
            raise
        except Exception:  # a bug must not leave the requester waiting or the host stuck busy
            jlog.exception("job_crashed")
            if job.launched is not None and job.final is None:
                # The rebuild runs on regardless: follow it afresh from its directory rather
                # than free the host beside it. A second failure ends in the report below.
                try:
                    result = await self._follow(job, launched_at=time.time(), resumed=True)
                    await self._judge(job, result, jlog)
                except Exception:
                    jlog.exception("job_follow_crashed_again")
            if job.final is None:
                crashed = Outcome(
                    StatusKind.FAILED,
                    ErrorCode.BUILD_FAILED,
                    f"internal error in the listener on {self.settings.hostname} (see its log); "
                    "the rebuild itself may have run on",
                )
                await self._finish(job, crashed, exit_code=None)
        finally:
            self._forget(job)

    async def _execute(self, job: Job, jlog: Any) -> None:
        request = job.request
        plan = closure_plan(self.settings, request)
        if request.action is Action.CHECK:  # no rebuild: the runner runs the checks alone
            argv: list[str] = []  # (the listener refused it on a host without checks)
        elif plan is not None:  # a closure deploy: fetched, checked, activated (host.jobs.closure)
            argv = closure_fetch_argv(self.settings, plan.store_path)
        else:
            argv = build_argv(
                self.settings.rebuild_command,
                request.action,
                flake_url=self.settings.flake_url,
                revision=request.revision,
                configuration=self.settings.flake_configuration,
                kind=self.settings.host_kind,
            )
        shown = tuple(redact(arg) for arg in argv)
        # On disk before the requester hears of it: a job it was told about has a record.
        job.record = JobRecord(
            request_id=job.request_id,
            request=request,
            argv=shown,
            started_at=time.time(),
            signer=job.reporter.signer,
        )
        job.directory = await anyio.to_thread.run_sync(self.store.create, job.record)
        if job.directory is None:  # the state dir refused: the deploy runs, but not durably
            job.durable = False
            job.directory = Path(tempfile.mkdtemp(prefix="fleet-deploy-job-"))
        what = request.store_path if plan is not None else request.revision
        await job.reporter.send(
            StatusKind.ACCEPTED, message=f"{request.action.value} of {what} accepted"
        )
        guard = guard_for(self.settings, request)
        if guard is not None:  # before the launch: the runner reads it first thing
            await anyio.to_thread.run_sync(write_guard, job.directory, guard, write_json_atomically)
        if plan is not None:  # as the guard: there before the runner looks for it
            await anyio.to_thread.run_sync(write_plan, job.directory, plan, write_json_atomically)
        with anyio.CancelScope(shield=True):  # launched and recorded, or neither
            try:
                job.launched = await self._rebuilder.start(
                    RebuildJob(
                        job_id=job.request_id,
                        argv=argv,
                        directory=job.directory,
                        timeout=self.settings.timeout,
                        kill_grace=self.settings.kill_grace,
                        after=time_after(guard) if guard is not None else 0.0,
                    )
                )
            except StartFailed as exc:
                result = RebuildResult(None, False, [str(exc)], 0.0, start_error=str(exc))
                jlog.error("job_not_started", error=str(exc))
                await self._judge(job, result, jlog)
                return
            job.record = job.record.running(pid=job.launched.pid, unit=job.launched.unit)
            await self._save(job)
        jlog.info("job_started", argv=list(shown), **self._where(job))
        await job.reporter.send(
            StatusKind.STARTED, message=" ".join(shown) or "running the health checks"
        )
        await self._judge(job, await self._follow(job, launched_at=time.time()), jlog)

    async def _judge(self, job: Job, result: RebuildResult, jlog: Any) -> None:
        outcome = decide(
            result,
            action=job.request.action,
            revision=job.request.revision,
            timeout=self.settings.timeout,
            program=rebuild_program(self.settings.host_kind),
        )
        if job.cancelled_by is not None and outcome.error is ErrorCode.CANCELLED:
            outcome = replace(
                outcome,
                message=f"cancelled (a cancel request signed by {job.cancelled_by}): the "
                "rebuild was stopped before it activated anything",
            )
        (jlog.info if outcome.ok else jlog.warning)(
            "job_finished",
            status=outcome.kind.value,
            error=outcome.error,
            exit_code=result.exit_code,
            duration_s=round(result.duration_s, 3),
        )
        await self._finish(job, outcome, exit_code=result.exit_code, duration_s=result.duration_s)
        await self._on_finished(job, outcome)

    async def _follow(
        self, job: Job, *, launched_at: float, resumed: bool = False, heartbeat: bool = True
    ) -> RebuildResult:
        """Follow the runner to its result while a companion task sends progress."""
        assert job.directory is not None and job.launched is not None
        async with anyio.create_task_group() as tasks:
            if heartbeat:
                tasks.start_soon(self._heartbeat, job, resumed)
            tasks.start_soon(self._confirm, job)
            result = await follow(
                job.directory,
                job.on_line,
                pid=job.launched.pid,
                started_at=launched_at,
                resumed=resumed,
            )
            tasks.cancel_scope.cancel()
        return result

    async def _confirm(self, job: Job) -> None:
        """Follow the runner's phase after the rebuild (checks, confirmation, rollback) into
        the job's progress, and confirm once it waits for it: this listener — perhaps one
        the switch restarted, re-attached to the job — reached NATS from the new system.
        A round trip that fails (the new system cut the network) is tried again until the
        runner stops waiting and goes back by itself."""
        assert job.directory is not None
        if not await anyio.to_thread.run_sync(has_guard, job.directory):
            return
        confirmed = False
        while True:
            phase = await anyio.to_thread.run_sync(read_phase, job.directory)
            if phase is not None and phase != job.guard_phase:
                job.phase = job.guard_phase = phase
                job.latest_line = _PHASE_NEWS.get(phase, phase)
                job.new_output.set()
            if phase == "confirming" and not confirmed:
                confirmed = await self._reaches_nats(job)
                if confirmed:
                    await anyio.to_thread.run_sync(confirm, job.directory, write_json_atomically)
                    self._log.info("activation_confirmed", request_id=job.request_id)
            await anyio.sleep(_PHASE_POLL)

    async def _reaches_nats(self, job: Job) -> bool:
        """A round trip to the server, on a connection that is up before and after it: a
        flush while nats-py reconnects returns without having reached anything."""
        bus = job.reporter.bus
        if not bus.is_connected:
            return False
        try:
            await bus.flush(timeout=_CONFIRM_ROUND_TRIP)
        except FleetError as exc:
            self._log.info("activation_not_confirmed_yet", error=str(exc))
            return False
        return bus.is_connected

    async def _heartbeat(self, job: Job, resumed: bool) -> None:
        """Progress on new output (rate-limited), and at least every heartbeat interval."""
        pacing = Pacing(self.settings.heartbeat_interval, self.settings.progress_interval)
        pacing.start(time.monotonic(), resumed=resumed)
        while True:
            with anyio.move_on_after(pacing.wait(time.monotonic())):
                await job.new_output.wait()
            job.new_output = anyio.Event()
            await job.reporter.send(
                StatusKind.PROGRESS,
                message=job.latest_line or "still running",
                phase=job.phase,
                duration_s=self._running_for(job),
            )
            pacing.sent(time.monotonic())
            await anyio.sleep(pacing.pause)

    async def cancel(self, job: Job, *, cancelled_by: str | None) -> str | None:
        """Stop ``job`` if it is still building; None when it was stopped, else why not.

        A rebuild that has begun to activate (nixos-rebuild says so, or the runner is past
        the rebuild: checking, confirming, rolling back) is never interrupted: a half
        activation helps nobody, and the job ends as it ends. The stop is the runner's own
        (SIGTERM): it records ``cancelled``, and this job reports failed/cancelled."""
        assert job.directory is not None or job.launched is None
        later = None
        if job.directory is not None:
            later = await anyio.to_thread.run_sync(read_phase, job.directory)
        if job.launched is None or job.directory is None:
            return (
                f"the job of deployment {job.request_id} on {self.settings.hostname} is "
                "starting: it was not stopped; cancel again in a moment"
            )
        if later is not None or job.phase == "activating":
            return (
                f"{self.settings.hostname} is already activating the new system of deployment "
                f"{job.request_id} ({later or job.phase}): it is not interrupted, and ends as "
                "it ends"
            )
        job.cancelled_by = cancelled_by or "an unsigned request"
        await stop_runner(job.directory, self.settings.kill_grace, pid_hint=job.launched.pid)
        return None

    # -- jobs a previous listener left -------------------------------------------------------

    async def resume(self, tasks: anyio.abc.TaskGroup) -> None:
        """Take up every unfinished job on disk: follow those still running (they make the
        host busy before any request is read), report the others at once."""
        for directory, record in await anyio.to_thread.run_sync(self.store.unfinished):
            runner = await anyio.to_thread.run_sync(read_runner, directory)
            pid = runner.runner if runner is not None else record.pid
            action = resume_action(
                exit_data=await anyio.to_thread.run_sync(read_exit, directory),
                runner_pid=pid,
                runner_alive=pid is not None and runner_alive(pid, directory),
                age_s=time.time() - record.started_at,
            )
            job = Job(
                request=record.request,
                request_id=record.request_id,
                reporter=self._reporter_for(
                    record.request.reply_to,
                    record.request,
                    record.request_id,
                    record.signer or self._signer_of(record.request),
                ),
                started=time.monotonic() - max(0.0, time.time() - record.started_at),
                record=record,
                directory=directory,
                launched=Launched(pid=pid, unit=record.unit),
            )
            self._log.info(
                "job_resumed",
                request_id=job.request_id,
                action=action.value,
                reply_to=record.request.reply_to,
                **self._where(job),
            )
            if action is not Resume.REPORT:  # LOST still stops its leftovers: busy till then
                self.active.append(job)
            tasks.start_soon(self._resumed, job, action is Resume.FOLLOW)

    def _signer_of(self, request: DeployRequest) -> str | None:
        """Who signed a request whose record does not say (a listener of the release before
        kept no signer): it arrived on one of this host's subjects, which the signature
        covers. Without it, a resumed job's final status would not count for its requester."""
        for subject in self.settings.subjects:
            signer = verified_signer(
                request.signature_fields(),
                request_id=request.id,
                subject=subject,
                action=request.action.value,
                revision=request.revision,
                store_path=request.store_path,
            )
            if signer is not None:
                return signer
        return None

    async def _resumed(self, job: Job, running: bool) -> None:
        assert job.record is not None
        jlog = self._log.bind(request_id=job.request_id, resumed=True)
        try:
            result = await self._follow(
                job, launched_at=job.record.started_at, resumed=True, heartbeat=running
            )
            await self._judge(job, result, jlog)
        except anyio.get_cancelled_exc_class():
            if job.final is None:
                jlog.warning("job_left_running", **self._where(job))
            raise
        finally:
            self._forget(job)

    async def stop_jobs(self) -> int:
        """Stop every rebuild of this state directory and report each one's end.

        Only for clean-ups that promise nothing outlives them (test fleets, the sandbox):
        stopping a listener never stops a rebuild. Call it once the listener has stopped
        serving and while its connection is open; returns how many runners were stopped.
        """
        stopped = 0
        grace = self.settings.kill_grace
        for directory, record in await anyio.to_thread.run_sync(self.store.unfinished):
            stopped += await stop_runner(directory, grace, pid_hint=record.pid)
        with anyio.move_on_after(2 * grace + 10) as deadline:
            async with anyio.create_task_group() as tasks:
                await self.resume(tasks)
        if deadline.cancelled_caught:
            self._log.error("jobs_not_stopped", jobs=[j.request_id for j in self.active])
        return stopped

    # -- reporting ---------------------------------------------------------------------------

    async def _finish(
        self,
        job: Job,
        outcome: Outcome,
        *,
        exit_code: int | None,
        duration_s: float | None = None,
    ) -> None:
        """Record the final status, then send it: a requester that heard it finds it on disk.

        The first outcome stands: a listener stopped while reporting a finished rebuild sends
        that result again instead of contradicting its own record.
        """
        if job.final is None:
            if duration_s is None:
                duration_s = self._running_for(job)
            job.final = (outcome, duration_s)
            if job.directory is not None:  # a runner that never read its argv never will
                await anyio.to_thread.run_sync(discard_argv, job.directory)
            if job.record is not None:
                job.record = job.record.finished(
                    outcome, exit_code=exit_code, duration_s=duration_s, now=time.time()
                )
                await self._save(job)
        outcome, duration_s = job.final
        await job.reporter.send(
            outcome.kind,
            error=outcome.error,
            message=outcome.message,
            duration_s=duration_s,
            phase=job.phase,
            log_tail=outcome.log_tail,
            checks=outcome.checks,
            rolled_back_to=outcome.rolled_back_to,
        )

    async def _save(self, job: Job) -> None:
        if job.durable and job.record is not None:
            await anyio.to_thread.run_sync(self.store.save, job.directory, job.record)

    def _forget(self, job: Job) -> None:
        if job in self.active:
            self.active.remove(job)
        if not job.durable and job.directory is not None and job.final is not None:
            shutil.rmtree(job.directory, ignore_errors=True)

    def _stopped_before_start(self) -> Outcome:
        return Outcome(
            StatusKind.FAILED,
            ErrorCode.CANCELLED,
            f"the listener on {self.settings.hostname} stopped before the rebuild started",
        )

    @staticmethod
    def _running_for(job: Job) -> float:
        return time.monotonic() - job.started

    @staticmethod
    def _where(job: Job) -> dict[str, object]:
        launched = job.launched or Launched()
        return {"pid": launched.pid, "unit": launched.unit, "directory": str(job.directory)}
