"""The host daemon: answer discovery, take one deploy at a time, stream its status.

A deploy request walks accepted → started → progress… → completed | failed, or is rejected
at once with an error code. The NATS callbacks only validate, reply and hand the job to a
task the listener owns; the rebuild itself never runs inside a callback. Whatever arrives,
the callbacks catch it: bad input costs a log line, never the daemon.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import structlog

from fleet_core import __version__
from fleet_core.bus import Bus, Message, Subscription
from fleet_core.errors import FleetError
from fleet_core.messages import (
    MAX_MESSAGE_CHARS,
    DeployRequest,
    ErrorCode,
    HostInfo,
    InvalidRequest,
    Status,
    StatusKind,
    encode,
    encode_status,
    parse_deploy_request,
    parse_discover_request,
)
from fleet_core.rebuild import build_argv, redact
from fleet_core.rebuild_output import failure_summary, phase_of, success_summary
from fleet_core.runner import JobStore, Rebuilder, RebuildJob, RebuildResult
from fleet_core.settings import ListenerSettings

__all__ = ["Listener"]

log = structlog.get_logger("fleet.listener")


@dataclass
class _Job:
    request: DeployRequest
    request_id: str
    started: float = field(default_factory=time.monotonic)
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
                await self._publish(
                    exc.reply_to, StatusKind.REJECTED, error=exc.code, message=str(exc)
                )
            return
        request_id = request.id or uuid.uuid4().hex
        if self._tasks is None:
            self._log.info("request_rejected", request_id=request_id, error="shutting_down")
            await self._publish(
                request.reply_to,
                StatusKind.REJECTED,
                request=request,
                request_id=request_id,
                error=ErrorCode.CANCELLED,
                message=f"the listener on {self.settings.hostname} is shutting down: "
                "deploy again once it is back",
            )
            return
        if self._job is not None:
            self._log.info(
                "request_rejected",
                request_id=request_id,
                error=ErrorCode.ALREADY_RUNNING.value,
                running=self._job.request_id,
            )
            await self._publish(
                request.reply_to,
                StatusKind.REJECTED,
                request=request,
                request_id=request_id,
                error=ErrorCode.ALREADY_RUNNING,
                message=f"{self.settings.hostname} is already running deploy "
                f"{self._job.request_id}: wait for it to finish",
            )
            return
        # Taken before the first await, so a second request can never slip in beside it.
        job = _Job(request=request, request_id=request_id)
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
        assert self._bus is not None
        info = HostInfo(
            hostname=self.settings.hostname,
            tier=self.settings.tier.value,
            role=self.settings.role,
            version=__version__,
            busy=self.busy,
            deploy_subjects=list(self.settings.subjects),
        )
        await self._bus.publish(request.reply_to, encode(info))

    async def _run_job(self, job: _Job) -> None:
        """The job task's edge: whatever happens, the requester hears a final status."""
        request = job.request
        jlog = self._log.bind(
            request_id=job.request_id, action=request.action.value, revision=request.revision
        )
        try:
            await self._execute(job, jlog)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._publish(
                    request.reply_to,
                    StatusKind.FAILED,
                    request=request,
                    request_id=job.request_id,
                    error=ErrorCode.CANCELLED,
                    message=f"the listener on {self.settings.hostname} stopped during the rebuild",
                    duration_s=time.monotonic() - job.started,
                )
            jlog.warning("job_cancelled")
            raise
        except Exception:  # a bug must not leave the requester waiting or the host stuck busy
            jlog.exception("job_crashed")
            await self._publish(
                request.reply_to,
                StatusKind.FAILED,
                request=request,
                request_id=job.request_id,
                error=ErrorCode.BUILD_FAILED,
                message=f"internal error in the listener on {self.settings.hostname}: see its log",
            )
        finally:
            self._job = None

    async def _execute(self, job: _Job, jlog: Any) -> None:
        request = job.request
        await self._publish(
            request.reply_to,
            StatusKind.ACCEPTED,
            request=request,
            request_id=job.request_id,
            message=f"{request.action.value} of {request.revision} accepted",
        )
        argv = build_argv(
            self.settings.rebuild_command,
            request.action,
            flake_url=self.settings.flake_url,
            revision=request.revision,
            hostname=self.settings.hostname,
        )
        shown = [redact(arg) for arg in argv]
        directory = self._jobs.new_job(
            job.request_id, {**request.model_dump(mode="json"), "argv": shown}
        )
        jlog.info("job_started", argv=shown)
        await self._publish(
            request.reply_to,
            StatusKind.STARTED,
            request=request,
            request_id=job.request_id,
            message=" ".join(shown),
        )
        result = await self._rebuild(job, argv, directory)
        await self._report(job, result, directory, jlog)

    async def _rebuild(self, job: _Job, argv: list[str], directory: Any) -> RebuildResult:
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
                    log_path=directory / "output.log" if directory is not None else None,
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
            await self._publish(
                job.request.reply_to,
                StatusKind.PROGRESS,
                request=job.request,
                request_id=job.request_id,
                message=job.latest_line or "still running",
                phase=job.phase,
                duration_s=time.monotonic() - job.started,
            )
            sent = time.monotonic()
            await anyio.sleep(min(self.settings.progress_interval, heartbeat))

    async def _report(self, job: _Job, result: RebuildResult, directory: Any, jlog: Any) -> None:
        request = job.request
        if result.ok:
            kind, error = StatusKind.COMPLETED, None
            message = success_summary(result.tail, request.action.value, request.revision)
        elif result.timed_out:
            kind, error = StatusKind.FAILED, ErrorCode.TIMEOUT
            message = (
                f"nixos-rebuild ran longer than {self.settings.timeout:g} s and was stopped "
                "with its whole process group"
            )
        else:
            kind, error = StatusKind.FAILED, ErrorCode.BUILD_FAILED
            message = result.start_error or failure_summary(result.tail, result.exit_code)
        self._jobs.finish(
            directory,
            {
                "status": kind.value,
                "error": error,
                "message": message,
                "exit_code": result.exit_code,
                "duration_s": round(result.duration_s, 3),
            },
        )
        (jlog.info if result.ok else jlog.warning)(
            "job_finished",
            status=kind.value,
            error=error,
            exit_code=result.exit_code,
            duration_s=round(result.duration_s, 3),
        )
        await self._publish(
            request.reply_to,
            kind,
            request=request,
            request_id=job.request_id,
            error=error,
            message=message,
            duration_s=result.duration_s,
            phase=job.phase,
            log_tail=None if result.ok else result.tail,
        )

    async def _publish(
        self,
        reply_to: str,
        kind: StatusKind,
        *,
        request: DeployRequest | None = None,
        request_id: str | None = None,
        error: str | None = None,
        message: str = "",
        duration_s: float | None = None,
        phase: str | None = None,
        log_tail: list[str] | None = None,
    ) -> None:
        assert self._bus is not None
        status = Status(
            hostname=self.settings.hostname,
            status=kind,
            error=error,
            message=redact(message[:MAX_MESSAGE_CHARS]),
            request_id=request_id,
            tier=self.settings.tier.value,
            action=request.action.value if request else None,
            revision=request.revision if request else None,
            timestamp=time.time(),
            duration_s=round(duration_s, 3) if duration_s is not None else None,
            phase=phase,
            log_tail=[redact(line) for line in log_tail] if log_tail is not None else None,
        )
        try:
            await self._bus.publish(reply_to, encode_status(status))
        except FleetError as exc:  # the server is away: the job goes on, the status is lost
            self._log.warning("status_not_sent", status=kind.value, error=str(exc))
