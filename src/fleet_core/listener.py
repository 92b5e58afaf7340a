"""The host daemon: answer discovery, take one deploy at a time, stream its status.

A deploy request walks accepted → started → progress… → completed | failed, or is rejected
at once with an error code. The NATS callbacks only validate, reply and hand the job to a
task the listener owns; the rebuild itself never runs inside a callback. Whatever arrives,
the callbacks catch it: bad input costs a log line, never the daemon.

Every status goes out through the request's ``StatusReporter``; each phase of a job is in its
record on disk (``fleet_core.jobs``) before the requester hears of it; and which final status
a rebuild's result becomes is ``fleet_core.outcome.decide``, a pure function.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import structlog

from fleet_core import __version__
from fleet_core.bus import Bus, Message, Subscription
from fleet_core.errors import FleetError
from fleet_core.jobs import OUTPUT_LOG, JobRecord, JobStore
from fleet_core.messages import (
    DeployRequest,
    ErrorCode,
    HostInfo,
    InvalidRequest,
    JobPhase,
    JobSummary,
    StatusKind,
    encode,
    parse_deploy_request,
    parse_discover_request,
)
from fleet_core.outcome import Outcome, RebuildResult, decide
from fleet_core.rebuild import build_argv, redact
from fleet_core.rebuild_output import phase_of
from fleet_core.runner import Rebuilder, RebuildJob
from fleet_core.settings import ListenerSettings
from fleet_core.status_reporter import StatusReporter

__all__ = ["Listener"]

log = structlog.get_logger("fleet.listener")


@dataclass
class _Job:
    request: DeployRequest
    request_id: str
    reporter: StatusReporter
    started: float = field(default_factory=time.monotonic)
    record: JobRecord | None = None  # None until the job's record is first written
    directory: Path | None = None  # None when the state dir cannot be written
    final: tuple[Outcome, float] | None = None  # the outcome and duration, once decided
    phase: str | None = None
    latest_line: str | None = None
    new_output: anyio.Event = field(default_factory=anyio.Event)


class Listener:
    """Serves deploy requests for one host until its ``serve`` task is cancelled."""

    def __init__(self, settings: ListenerSettings, rebuilder: Rebuilder) -> None:
        self.settings = settings
        self._rebuilder = rebuilder
        self._jobs = JobStore(settings.state_dir, keep=settings.jobs_kept)
        self._job: _Job | None = None
        self._bus: Bus | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._log = log.bind(host=settings.hostname, tier=settings.tier.value)

    @property
    def busy(self) -> bool:
        return self._job is not None

    async def serve(
        self, bus: Bus, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Subscribe, report ready through ``task_status``, and serve until cancelled.

        On cancellation no new request is taken from that moment on (each is answered
        ``rejected/cancelled`` until the subscriptions are gone), and a running job is
        cancelled: its process group is killed and its requester told ``failed/cancelled``.
        """
        self._bus = bus
        subscriptions: list[Subscription] = []
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                for subject in self.settings.subjects:
                    subscriptions.append(await bus.subscribe(subject, self._on_deploy))
                subscriptions.append(
                    await bus.subscribe(self.settings.discover_subject, self._on_discover)
                )
                await bus.flush()
                self._log.info(
                    "listening",
                    subjects=list(self.settings.subjects),
                    discover=self.settings.discover_subject,
                    version=__version__,
                )
                task_status.started()
                try:
                    await anyio.sleep_forever()
                finally:
                    # Before the running job is cancelled: from here on a request is refused.
                    self._tasks = None
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                for subscription in subscriptions:
                    await subscription.unsubscribe()
            self._tasks = None
            self._log.info("stopped")

    # -- callbacks: the edge where every error is caught -------------------------------------

    async def _on_deploy(self, msg: Message) -> None:
        try:
            await self._handle_deploy(msg)
        except FleetError as exc:
            self._log.error("deploy_request_failed", subject=msg.subject, error=str(exc))
        except Exception:  # the daemon outlives any bug in one request
            self._log.exception("deploy_request_crashed", subject=msg.subject)

    async def _on_discover(self, msg: Message) -> None:
        try:
            await self._handle_discover(msg)
        except FleetError as exc:
            self._log.error("discover_failed", error=str(exc))
        except Exception:  # the daemon outlives any bug in one request
            self._log.exception("discover_crashed")

    # -- handling ----------------------------------------------------------------------------

    def _reporter(
        self, reply_to: str, request: DeployRequest | None = None, request_id: str | None = None
    ) -> StatusReporter:
        assert self._bus is not None
        return StatusReporter(
            self._bus,
            hostname=self.settings.hostname,
            tier=self.settings.tier.value,
            reply_to=reply_to,
            request=request,
            request_id=request_id,
        )

    async def _handle_deploy(self, msg: Message) -> None:
        try:
            request = parse_deploy_request(msg.data, nats_reply=msg.reply)
        except InvalidRequest as exc:
            self._log.warning(
                "request_rejected",
                subject=msg.subject,
                error=exc.code,
                reason=str(exc),
                reply_to=exc.reply_to,
                size=len(msg.data),
            )
            if exc.reply_to is not None:
                reporter = self._reporter(exc.reply_to)
                await reporter.send(StatusKind.REJECTED, error=exc.code, message=str(exc))
            return
        request_id = request.id or uuid.uuid4().hex
        reporter = self._reporter(request.reply_to, request, request_id)
        if self._tasks is None:
            self._log.info("request_rejected", request_id=request_id, error="shutting_down")
            await reporter.send(
                StatusKind.REJECTED,
                error=ErrorCode.CANCELLED,
                message=f"the listener on {self.settings.hostname} is shutting down: "
                "deploy again once it is back",
            )
            return
        if self._job is not None:
            running = self._job.request_id
            self._log.info(
                "request_rejected",
                request_id=request_id,
                error=ErrorCode.ALREADY_RUNNING.value,
                running=running,
            )
            await reporter.send(
                StatusKind.REJECTED,
                error=ErrorCode.ALREADY_RUNNING,
                message=f"{self.settings.hostname} is already running deploy {running}: "
                "wait for it to finish",
            )
            return
        # Taken before the first await, so a second request can never slip in beside it.
        job = _Job(request=request, request_id=request_id, reporter=reporter)
        self._tasks.start_soon(self._run_job, job)
        self._job = job

    async def _handle_discover(self, msg: Message) -> None:
        try:
            request = parse_discover_request(msg.data, nats_reply=msg.reply)
        except InvalidRequest as exc:
            self._log.warning("discover_ignored", reason=str(exc), size=len(msg.data))
            return
        if request.tier is not None and request.tier != self.settings.tier:
            return
        if request.hosts is not None and self.settings.hostname not in request.hosts:
            return
        assert self._bus is not None
        running = self._job.request_id if self._job is not None else None
        info = HostInfo(
            hostname=self.settings.hostname,
            tier=self.settings.tier.value,
            role=self.settings.role,
            version=__version__,
            busy=self.busy,
            deploy_subjects=list(self.settings.subjects),
            running_job=running,
            job=await self._job_summary(request.job) if request.job is not None else None,
        )
        await self._bus.publish(request.reply_to, encode(info))

    async def _job_summary(self, request_id: str) -> JobSummary:
        """What this host knows of the job ``request_id``: its record, or ``unknown``."""
        job = self._job
        if job is not None and job.request_id == request_id and job.record is not None:
            record: JobRecord | None = job.record
        else:
            record = await anyio.to_thread.run_sync(self._jobs.load, request_id)
        if record is None:
            return JobSummary(request_id=request_id, phase=JobPhase.UNKNOWN)
        return record.summary()

    async def _run_job(self, job: _Job) -> None:
        """The job task's edge: whatever happens, the requester hears a final status."""
        request = job.request
        jlog = self._log.bind(
            request_id=job.request_id, action=request.action.value, revision=request.revision
        )
        try:
            await self._execute(job, jlog)
        except anyio.get_cancelled_exc_class():
            stopped = Outcome(
                StatusKind.FAILED,
                ErrorCode.CANCELLED,
                f"the listener on {self.settings.hostname} stopped during the rebuild",
            )
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._finish(job, stopped, exit_code=None)
            jlog.warning("job_cancelled")
            raise
        except Exception:  # a bug must not leave the requester waiting or the host stuck busy
            jlog.exception("job_crashed")
            crashed = Outcome(
                StatusKind.FAILED,
                ErrorCode.BUILD_FAILED,
                f"internal error in the listener on {self.settings.hostname}: see its log",
            )
            await self._finish(job, crashed, exit_code=None)
        finally:
            self._job = None

    async def _execute(self, job: _Job, jlog: Any) -> None:
        request = job.request
        argv = build_argv(
            self.settings.rebuild_command,
            request.action,
            flake_url=self.settings.flake_url,
            revision=request.revision,
            hostname=self.settings.hostname,
        )
        shown = tuple(redact(arg) for arg in argv)
        # On disk before the requester hears of it: a job it was told about has a record.
        job.record = JobRecord(
            request_id=job.request_id, request=request, argv=shown, started_at=time.time()
        )
        job.directory = await anyio.to_thread.run_sync(self._jobs.create, job.record)
        await job.reporter.send(
            StatusKind.ACCEPTED, message=f"{request.action.value} of {request.revision} accepted"
        )
        job.record = job.record.running()
        await anyio.to_thread.run_sync(self._jobs.save, job.directory, job.record)
        jlog.info("job_started", argv=list(shown))
        await job.reporter.send(StatusKind.STARTED, message=" ".join(shown))
        result = await self._rebuild(job, argv)
        outcome = decide(
            result,
            action=request.action,
            revision=request.revision,
            timeout=self.settings.timeout,
        )
        (jlog.info if outcome.ok else jlog.warning)(
            "job_finished",
            status=outcome.kind.value,
            error=outcome.error,
            exit_code=result.exit_code,
            duration_s=round(result.duration_s, 3),
        )
        await self._finish(job, outcome, exit_code=result.exit_code, duration_s=result.duration_s)

    async def _rebuild(self, job: _Job, argv: list[str]) -> RebuildResult:
        """Run the rebuild while a companion task turns its output into progress messages."""

        def on_line(line: str) -> None:
            job.latest_line = line
            job.phase = phase_of(line, job.phase)
            job.new_output.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._heartbeat, job)
            result = await self._rebuilder.run(
                RebuildJob(
                    argv=argv,
                    timeout=self.settings.timeout,
                    log_path=job.directory / OUTPUT_LOG if job.directory is not None else None,
                    kill_grace=self.settings.kill_grace,
                ),
                on_line,
            )
            tasks.cancel_scope.cancel()
        return result

    async def _heartbeat(self, job: _Job) -> None:
        """Progress on new output (rate-limited), and at least every heartbeat interval."""
        heartbeat = self.settings.heartbeat_interval
        sent = time.monotonic()
        while True:
            with anyio.move_on_after(max(0.0, sent + heartbeat - time.monotonic())):
                await job.new_output.wait()
            job.new_output = anyio.Event()
            await job.reporter.send(
                StatusKind.PROGRESS,
                message=job.latest_line or "still running",
                phase=job.phase,
                duration_s=time.monotonic() - job.started,
            )
            sent = time.monotonic()
            await anyio.sleep(min(self.settings.progress_interval, heartbeat))

    async def _finish(
        self,
        job: _Job,
        outcome: Outcome,
        *,
        exit_code: int | None,
        duration_s: float | None = None,
    ) -> None:
        """Record the final status, then send it: a requester that heard it finds it on disk.

        The first outcome stands: a listener stopped while reporting a finished rebuild sends
        that result again instead of contradicting its own record with ``cancelled``.
        """
        if job.final is None:
            if duration_s is None:
                duration_s = time.monotonic() - job.started
            job.final = (outcome, duration_s)
            if job.record is not None:
                job.record = job.record.finished(
                    outcome, exit_code=exit_code, duration_s=duration_s, now=time.time()
                )
                await anyio.to_thread.run_sync(self._jobs.save, job.directory, job.record)
        outcome, duration_s = job.final
        await job.reporter.send(
            outcome.kind,
            error=outcome.error,
            message=outcome.message,
            duration_s=duration_s,
            phase=job.phase,
            log_tail=outcome.log_tail,
        )
