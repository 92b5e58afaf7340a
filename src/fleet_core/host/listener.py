"""The host daemon: answer discovery, take one deploy at a time, stream its status.

A deploy request walks accepted → started → progress… → completed | failed, or is rejected
at once with an error code. The NATS callbacks only validate, reply and hand the job to a
task the listener owns; the rebuild itself never runs inside a callback, nor inside this
process: ``fleet_core.host.jobs.manager`` runs and follows it under the job runner, so a
listener that stops leaves it running and the next one reports it. Whatever arrives, the
callbacks catch it: bad input costs a log line, never the daemon.

Upgrades take effect: with ``--restart-if-changed PATH`` (the NixOS module passes the
listener's own unit file) the listener fingerprints those files when it starts and again
after each switch or test it ran; when they changed, it reports that job's final status and
then ``serve`` returns with ``restart_reason`` set, for the command to exit with
``RESTART_EXIT_CODE``, which the unit restarts (its ``restartIfChanged`` is false).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.to_thread
import structlog

from fleet_core import __version__
from fleet_core.bus import Bus, Message, Subscription
from fleet_core.config.options import RESTART_EXIT_STATUS
from fleet_core.config.settings import ListenerSettings
from fleet_core.errors import FleetError, PermissionDenied, RequestRejected
from fleet_core.host.facts import FactsReader
from fleet_core.host.jobs.guard import closure_refusal
from fleet_core.host.jobs.launch import Rebuilder, rebuilder_for
from fleet_core.host.jobs.manager import HostJobs, Job
from fleet_core.host.jobs.outcome import Outcome
from fleet_core.host.jobs.store import JobRecord
from fleet_core.host.logs import LogServer
from fleet_core.host.preflight import check_own_subjects
from fleet_core.host.replays import load_replays, save_replays
from fleet_core.host.status_reporter import StatusReporter
from fleet_core.protocol.actions import Action, HostKind, validate_action_for
from fleet_core.protocol.facts import clip
from fleet_core.protocol.messages import (
    MAX_STATUS_BYTES,
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
from fleet_core.protocol.signing import ReplayCache, verified_signer
from fleet_core.protocol.subjects import tier_discover_subject
from fleet_core.protocol.trust import bound_reply

if TYPE_CHECKING:
    from fleet_core.metrics import ListenerMetrics

__all__ = ["RESTART_EXIT_CODE", "Listener", "fingerprint"]

log = structlog.get_logger("fleet.listener")

CANCELLED_KEPT = 1024  # cancelled deployments a listener refuses, the newest

RESTART_EXIT_CODE = RESTART_EXIT_STATUS  # the NixOS unit lists it in RestartForceExitStatus
# Discovery messages that may wait for this listener; past that a flood is shed (dropped and
# counted in the log) instead of queueing ahead of real discoveries and job queries. Deploy
# requests arrive on subscriptions of their own and never wait behind discovery.
DISCOVERY_BACKLOG = 64
RECENT_MESSAGE_CHARS = 120  # of each recent job's message in a discovery answer
_ACTIVATING = frozenset({Action.SWITCH, Action.TEST})

Fingerprint = tuple[tuple[str, str, str | None], ...]


def fingerprint(paths: Sequence[Path]) -> Fingerprint:
    """Each path, where it resolves to, and a hash of its content (of a directory: of its
    entries and where they resolve to); None for a path that is not there. Blocking I/O."""
    found = []
    for path in paths:
        real = os.path.realpath(path)
        digest: str | None
        try:
            if os.path.isdir(real):
                entries = sorted(os.listdir(real))
                listing = "\n".join(f"{e} {os.path.realpath(Path(real, e))}" for e in entries)
                digest = hashlib.sha256(listing.encode()).hexdigest()
            else:
                digest = hashlib.sha256(Path(real).read_bytes()).hexdigest()
        except OSError:
            digest = None
        found.append((str(path), real, digest))
    return tuple(found)


class Listener:
    """Serves deploy requests for one host until its ``serve`` task is cancelled, or until
    an upgrade of its own unit asks for a restart (then ``restart_reason`` says why).

    ``rebuilder`` launches the job runner; by default as ``settings.rebuild_runner`` says.
    ``metrics`` (``--metrics-enabled``) counts every final status this listener sends and
    reads how many jobs are in progress.
    """

    def __init__(
        self,
        settings: ListenerSettings,
        rebuilder: Rebuilder | None = None,
        *,
        metrics: ListenerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = HostJobs(
            settings,
            rebuilder if rebuilder is not None else rebuilder_for(settings),
            reporter_for=self._reporter,
            on_finished=self._after_job,
        )
        self.restart_reason: str | None = None
        self._baseline: Fingerprint = ()
        self._restart: anyio.Event | None = None  # made in serve: an event needs a loop
        self._bus: Bus | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._replays = ReplayCache()  # signed request ids seen, until they would expire
        # Deployments cancelled here: a later request of one (the next batch of a rollout)
        # is refused. The newest CANCELLED_KEPT, in memory: a restart forgets them.
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._logs = LogServer(settings, self.jobs.store)  # log requests: read-only, apart
        self._log = log.bind(host=settings.hostname, tier=settings.tier.value)
        self._metrics = metrics
        self.facts = FactsReader(settings, self.jobs.store)  # what discovery says it runs
        if metrics is not None:
            metrics.count_in_progress(self._in_progress)

    def _rollback_mode(self) -> str:
        """What guards a switch here, for the log: on, off, or unsupported (a nix-darwin
        or Home Manager host has no system profile to go back to)."""
        if self.settings.host_kind is not HostKind.NIXOS:
            return "rollback_unsupported"
        return "on" if self.settings.rollback.enabled else "off"

    @property
    def discover_subjects(self) -> tuple[str, ...]:
        """Where discovery and job queries reach this host: its tier's own subject (the
        layout nats-config writes lets only that tier's deployers publish there) and the
        bare one (homelab-deploy's layout and deployers, and the admin)."""
        base = self.settings.discover_subject
        return (tier_discover_subject(self.settings.tier, base), base)

    @property
    def busy(self) -> bool:
        return bool(self.jobs.active)

    def _in_progress(self) -> int:
        """Jobs without a final outcome yet: one is decided before its status goes out, so a
        requester that heard it never sees it still in progress. Called from the metrics
        server's thread: it only reads a copy of the list."""
        return sum(1 for job in list(self.jobs.active) if job.final is None)

    async def serve(
        self, bus: Bus, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Resume unfinished jobs, subscribe, report ready through ``task_status``, and serve
        until cancelled (or until an upgrade asks for a restart: then it returns).

        Jobs left on disk are taken up before the first subscription, so a request can never
        start a rebuild beside one that is still running. On cancellation no new request is
        taken from that moment on (each is answered ``rejected/cancelled`` until the
        subscriptions are gone), and a running rebuild is left running: the next listener
        resumes it. Only ``stop_jobs`` stops rebuilds.
        """
        # Before any job is resumed or taken: a key refused its own subjects stops here.
        await check_own_subjects(bus, self.settings)
        self._bus = bus
        self._restart = restart = anyio.Event()
        subscriptions: list[Subscription] = []
        paths = self.settings.restart_if_changed
        self._baseline = await anyio.to_thread.run_sync(fingerprint, paths)
        remembered = await anyio.to_thread.run_sync(
            lambda: load_replays(self.settings.state_dir, self._replays, now=time.time())
        )
        # A layout allows one of the two discovery subjects (the bound one its tier's, the
        # homelab one the bare): the other's refusal is expected, told at debug level only.
        deaf: set[str] = set()

        def discovery_refused(denial: PermissionDenied) -> bool:
            if denial.subject in self.discover_subjects:
                deaf.add(denial.subject)
                return True
            return False

        stop_watching = bus.watch_denials(discovery_refused)
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                self.facts.attach(tasks)
                await self.jobs.resume(tasks)
                for subject in self.settings.subjects:
                    subscriptions.append(await bus.subscribe(subject, self._on_deploy))
                for subject in self.discover_subjects:
                    subscriptions.append(
                        await bus.subscribe(subject, self._on_discover, backlog=DISCOVERY_BACKLOG)
                    )
                await bus.flush()
                if deaf >= set(self.discover_subjects):
                    self._log.warning(
                        "discovery_refused",
                        subjects=sorted(deaf),
                        reason="the server lets this key hear no discovery subject: deploys "
                        "reach this host, but discovery and job queries do not (regenerate "
                        "the server's config with fleet-deploy nats-config)",
                    )
                self._log.info(
                    "listening",
                    subjects=list(self.settings.subjects),
                    discover=list(self.discover_subjects),
                    version=__version__,
                    rebuild_runner=self.settings.rebuild_runner,
                    host_kind=self.settings.host_kind.value,
                    configuration=self.settings.flake_configuration,
                    trusted_deployer_keys=list(self.settings.trusted_deployer_keys),
                    resumed=[job.request_id for job in self.jobs.active],
                    signed_requests_remembered=remembered,
                    rollback=self._rollback_mode(),
                    health_checks=[check.name for check in self.settings.rollback.checks],
                )
                task_status.started()
                try:
                    await restart.wait()
                finally:
                    # Before the job tasks are cancelled: from here on a request is refused.
                    self._tasks = None
                tasks.cancel_scope.cancel()
        finally:
            stop_watching()
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                for subscription in subscriptions:
                    await subscription.unsubscribe()
            self._tasks = None
            self._log.info("stopped", restart=self.restart_reason)

    async def stop_jobs(self) -> int:
        """Stop this host's running rebuilds and report them ``failed/cancelled``.

        For clean-ups that promise nothing outlives them (``fleet_core.testing``, the
        sandbox), after ``serve`` has ended and while its connection is still open.
        """
        return await self.jobs.stop_jobs()

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
        self,
        reply_to: str,
        request: DeployRequest | None = None,
        request_id: str | None = None,
        signer: str | None = None,
        *,
        bind: bool = False,
    ) -> StatusReporter:
        """A reporter to ``reply_to`` — bound to this host's tier and hostname when the
        request asked for ``bind`` or is signed (a resumed job's request still is), naming
        ``signer``, the key verified to have signed the request, in every status."""
        assert self._bus is not None
        signed = request is not None and request.signature_fields() is not None
        bound = bind or signed or bool(request and request.bind)
        return StatusReporter(
            self._bus,
            hostname=self.settings.hostname,
            tier=self.settings.tier.value,
            reply_to=self._reply_subject(reply_to, bound),
            request=request,
            request_id=request_id,
            signer=signer,
            on_final=self._metrics.final_status if self._metrics is not None else None,
        )

    def _reply_subject(self, reply_to: str, bind: bool | None) -> str:
        """Where this host answers ``reply_to``: ``<reply_to>.<tier>.<hostname>`` when bound."""
        if not bind:
            return reply_to
        return bound_reply(reply_to, self.settings.tier.value, self.settings.hostname)

    async def _handle_deploy(self, msg: Message) -> None:
        """Validate, verify and take one request, or refuse it.

        A refusal is its requester's, so it is sent only where the request shows it can be:

        - a request whose id this host already knows (a replay, or someone else's request
          sent with a known id) is never answered: the answer would land among the first
          request's statuses;
        - nor is one whose reply subject is not its id's;
        - on a host that requires signed requests, nor is one that cannot be verified
          (unsigned, a bad signature, malformed): nobody provably sent it. A request that a
          key truly signed is answered, naming that key (``untrusted_signer``, say).

        What is not answered is logged with the reason. Every status names the key verified
        to have signed the request (none: unsigned), so a deployer can tell the answers to
        its own request from those to another sent with its id.
        """
        try:
            request = parse_deploy_request(msg.data, nats_reply=msg.reply)
        except InvalidRequest as exc:
            self._log.warning(
                "request_rejected",
                request_id=exc.request_id,
                subject=msg.subject,
                signer=exc.signer,
                error=exc.code,
                reason=str(exc),
                reply_to=exc.reply_to,
                size=len(msg.data),
            )
            if (
                exc.reply_to is not None
                and not self.settings.trusted_deployer_keys  # nothing here can be verified
                and not await self._collides(exc.request_id)
            ):
                reporter = self._reporter(exc.reply_to, request_id=exc.request_id, bind=exc.bind)
                await reporter.send(StatusKind.REJECTED, error=exc.code, message=str(exc))
            return
        if await self._collides(request.id):
            self._log.warning(
                "request_ignored",
                request_id=request.id,
                subject=msg.subject,
                claimed_signer=request.signer,
                reason="this host already knows a request with that id: a replay, or another "
                "request sent with its id; the answer belongs to the first one",
            )
            return
        if request.action is Action.LOGS:  # reads a job's output, runs nothing: host.logs
            assert self._bus is not None
            await self._logs.answer(self._bus, request, msg.subject)
            return
        request_id = request.id or uuid.uuid4().hex
        signer = verified_signer(
            request.signature_fields(),
            request_id=request.id,
            subject=msg.subject,
            action=request.action.value,
            revision=request.revision,
            store_path=request.store_path,
        )
        reporter = self._reporter(request.reply_to, request, request_id, signer)
        try:
            # Every action is valid on the wire; this host's kind may lack one (a Home
            # Manager host has no boot): refused now, before anything is accepted.
            if request.action is not Action.CANCEL:
                validate_action_for(self.settings.host_kind, request.action)
            await self._verify(request, msg.subject)
            # A closure deploy of a path that is not this host's own system, by its name:
            # refused before anything is accepted, fetched or changed.
            refusal = closure_refusal(self.settings, request)
            if refusal is not None:
                raise refusal
        except RequestRejected as exc:
            answered = signer is not None or not self.settings.trusted_deployer_keys
            self._log.warning(
                "request_rejected",
                request_id=request_id,
                subject=msg.subject,
                signer=signer,
                claimed_signer=request.signer,
                error=exc.code,
                reason=str(exc),
                answered=answered,
            )
            if answered:
                await reporter.send(StatusKind.REJECTED, error=exc.code, message=str(exc))
            return
        if request.action is Action.CANCEL:
            await self._cancel(request, request_id, reporter)
        else:
            await self._take(request, request_id, reporter, subject=msg.subject)

    async def _take(
        self, request: DeployRequest, request_id: str, reporter: StatusReporter, *, subject: str
    ) -> None:
        """Make a verified request this host's job, or refuse it: its deployment was
        cancelled, the listener is stopping, or a job runs already."""
        signer = reporter.signer
        if request.id is not None and request.id in self._cancelled:
            self._log.info("request_rejected", request_id=request_id, error="cancelled")
            await reporter.send(
                StatusKind.REJECTED,
                error=ErrorCode.CANCELLED,
                message=f"deployment {request.id} was cancelled before it reached "
                f"{self.settings.hostname}",
            )
            return
        if self._tasks is None:
            self._log.info(
                "request_rejected", request_id=request_id, signer=signer, error="shutting_down"
            )
            await reporter.send(
                StatusKind.REJECTED,
                error=ErrorCode.CANCELLED,
                message=f"the listener on {self.settings.hostname} is shutting down: "
                "deploy again once it is back",
            )
            return
        if self.jobs.active:
            running = self.jobs.active[-1].request_id
            self._log.info(
                "request_rejected",
                request_id=request_id,
                signer=signer,
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
        job = self.jobs.take(request, request_id, reporter)
        self._log.info(
            "request_accepted",
            request_id=request_id,
            subject=subject,
            signer=signer,
            action=request.action.value,
            revision=request.revision,
        )
        self._tasks.start_soon(self.jobs.run, job)

    async def _cancel(
        self, request: DeployRequest, request_id: str, reporter: StatusReporter
    ) -> None:
        """A verified cancel request: stop its deployment's job here if it is still building,
        and refuse that deployment from now on; tell the canceller which it was.

        The deployment is the request's ``revision``, which its signature covers."""
        target = request.revision
        self._cancelled[target] = None
        while len(self._cancelled) > CANCELLED_KEPT:
            self._cancelled.popitem(last=False)
        job = next((j for j in self.jobs.active if j.request_id == target), None)
        log = self._log.bind(request_id=request_id, cancels=target)
        if job is None:
            record = await anyio.to_thread.run_sync(self.jobs.store.load, target)
            if record is not None:
                log.info("cancel_too_late", status=record.status)
                await reporter.send(
                    StatusKind.REJECTED,
                    error=ErrorCode.ALREADY_FINISHED,
                    message=f"deployment {target} already ended on {self.settings.hostname}",
                )
                return
            log.info("cancel_noted")
            await reporter.send(
                StatusKind.COMPLETED,
                message=f"deployment {target} had not reached {self.settings.hostname}: "
                "it is refused here from now on",
                phase="refused",
            )
            return
        why_not = await self.jobs.cancel(job, cancelled_by=reporter.signer)
        if why_not is not None:
            log.info("cancel_too_late", phase=job.phase)
            await reporter.send(
                StatusKind.REJECTED, error=ErrorCode.ALREADY_ACTIVATING, message=why_not
            )
            return
        log.info("job_cancelled")
        await reporter.send(
            StatusKind.COMPLETED,
            message=f"the rebuild of deployment {target} on {self.settings.hostname} was "
            "stopped: it ends failed/cancelled",
            phase="stopped",
        )

    async def _collides(self, request_id: str | None) -> bool:
        """Whether this host already knows a request with ``request_id``: a signed one it
        verified (remembered across restarts), or one it ran or runs (its job record)."""
        if request_id is None:
            return False
        if self._replays.knows(request_id, now=time.time()):
            return True
        if any(job.request_id == request_id for job in self.jobs.active):
            return True
        return await anyio.to_thread.run_sync(self.jobs.store.load, request_id) is not None

    async def _verify(self, request: DeployRequest, subject: str) -> None:
        """Raise ``RequestRejected`` unless this host may act on ``request``, which arrived
        on ``subject``: with trusted deployer keys, it must be signed by one of them for that
        very subject, recently, and be seen for the first time. What was verified is on disk
        before anything is answered, so that a restart cannot forget it (``host.replays``)."""
        trusted = self.settings.trusted_deployer_keys
        if not trusted:
            return
        now = time.time()
        request.verify(
            subject, trusted=trusted, replays=self._replays, now=now, ttl=self.settings.request_ttl
        )
        await anyio.to_thread.run_sync(
            lambda: save_replays(self.settings.state_dir, self._replays, now=now)
        )

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
        active = self.jobs.active[-1] if self.jobs.active else None
        running = active.request_id if active is not None else None
        info = HostInfo(
            hostname=self.settings.hostname,
            tier=self.settings.tier.value,
            role=self.settings.role,
            version=__version__,
            busy=self.busy,
            deploy_subjects=list(self.settings.subjects),
            kind=self.settings.host_kind.value,
            # It takes closure deploys (DeployRequest.store_path): NixOS systems only; a
            # nix-darwin or Home Manager listener refuses them, and says so here first.
            closures=self.settings.host_kind is HostKind.NIXOS,
            configuration=self.settings.flake_configuration,
            running_job=running,
            job=await self._job_summary(request.job) if request.job is not None else None,
            recent_jobs=(
                await self._recent_jobs(request.recent_jobs) if request.recent_jobs else None
            ),
            facts=await self.facts.read(active.record if active is not None else None),
        )
        data = encode(info)
        while len(data) > MAX_STATUS_BYTES and info.recent_jobs:  # escaped text can grow 6x
            info = info.model_copy(
                update={"recent_jobs": info.recent_jobs[: len(info.recent_jobs) // 2]}
            )
            data = encode(info)
        await self._bus.publish(self._reply_subject(request.reply_to, request.bind), data)

    async def _job_summary(self, request_id: str) -> JobSummary:
        """What this host knows of the job ``request_id``: its record, or ``unknown``."""
        followed = [j.record for j in self.jobs.active if j.request_id == request_id]
        record: JobRecord | None = followed[-1] if followed else None
        if record is None:
            record = await anyio.to_thread.run_sync(self.jobs.store.load, request_id)
        if record is None:
            return JobSummary(request_id=request_id, phase=JobPhase.UNKNOWN)
        return record.summary()

    async def _recent_jobs(self, count: int) -> list[JobSummary]:
        """The newest ``count`` job records as summaries, newest first, without log tails
        and with messages cut short: fifty of them must fit one discovery answer."""
        records = await anyio.to_thread.run_sync(self.jobs.store.recent, count)
        return [
            summary.model_copy(
                update={"log_tail": None, "message": clip(summary.message, RECENT_MESSAGE_CHARS)}
            )
            for summary in (record.summary() for record in records)
        ]

    # -- upgrades ----------------------------------------------------------------------------

    async def _after_job(self, job: Job, outcome: Outcome) -> None:
        """After a switch or test (whatever its outcome: activation may have begun), restart
        if the watched files changed — its final status has been sent already."""
        self.facts.jobs_changed()  # its record is final: discovery's last_job follows
        paths = self.settings.restart_if_changed
        if job.request.action not in _ACTIVATING or not paths or self.restart_reason:
            return
        now = await anyio.to_thread.run_sync(fingerprint, paths)
        changed = [
            path for (path, *new), (_, *old) in zip(now, self._baseline, strict=True) if new != old
        ]
        if not changed:
            return
        self.restart_reason = (
            f"{job.request.action.value} of {job.request.revision} changed {', '.join(changed)}"
        )
        self._log.warning(
            "restarting_after_upgrade",
            request_id=job.request_id,
            status=outcome.kind.value,
            changed=changed,
            exit_code=RESTART_EXIT_CODE,
        )
        self._tasks = None  # refuse requests from now on
        if self._restart is not None:
            self._restart.set()
