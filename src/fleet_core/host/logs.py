"""The host's side of whole logs on demand: one chunk of a job's ``output.log`` per request.

A log request (``Action.LOGS``, ``fleet_core.protocol.logs``) names a job by its request id
and a window of its output. The listener hands it here; this module checks it as any
request is checked — signed by a trusted key when the host has trusted keys, recent, seen
once — finds the job's directory among those the host keeps (``JobStore``), reads at most
``MAX_LOG_CHUNK_BYTES`` at the offset asked for (a seek and a bounded read, in a worker
thread: the event loop never waits on the disk) and answers with one chunk on the bound
reply subject. Memory stays flat whatever the log's size: nothing is read beyond one window.

It answers only on the host's own subjects (``deploy.<tier>.<hostname>``): a log request
on ``all`` or a role subject would have every host of the group answer one requester with
its own log of the same job; it is ignored and logged.

The ids of log requests are remembered apart from the deploy requests' (``ReplayCache`` of
their own, in memory only): reading a log in chunks sends a request per chunk, thousands for
a long log, which must neither push the ids of deploys out of the listener's bounded replay
memory nor rewrite its file on disk each time. A log request replayed after a restart would
only send the same chunk to the same reply subject again.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import structlog

from fleet_core.bus import Bus
from fleet_core.config.settings import ListenerSettings
from fleet_core.errors import FleetError, RequestRejected
from fleet_core.host.jobs.jobdir import OUTPUT_LOG
from fleet_core.host.jobs.store import JobStore
from fleet_core.host.status_reporter import StatusReporter
from fleet_core.protocol.logs import MAX_LOG_CHUNK_BYTES, MAX_LOG_LINES, encode_chunk, log_reply
from fleet_core.protocol.messages import (
    DeployRequest,
    ErrorCode,
    JobPhase,
    StatusKind,
    is_request_id,
)
from fleet_core.protocol.signing import ReplayCache, verified_signer
from fleet_core.protocol.subjects import expand_templates

__all__ = ["LOG_REPLAYS_KEPT", "LogRead", "LogServer", "read_log"]

log = structlog.get_logger("fleet.listener")

LOG_REPLAYS_KEPT = 4096  # log request ids remembered (one per chunk), the newest


@dataclass(frozen=True, slots=True)
class LogRead:
    """What one bounded read of a job's log found: the bytes at the offset asked for, how
    long the file was, and whether the job had ended before it was read (then the file is
    whole: the runner writes nothing after the job's record says finished)."""

    data: bytes
    size: int
    finished: bool
    status: str | None


def read_log(store: JobStore, job_id: str, *, offset: int, size: int, host: str) -> LogRead:
    """Read at most ``size`` bytes of job ``job_id``'s output at ``offset``. Blocking I/O.

    Raises ``RequestRejected``: ``unknown_job`` when the host keeps no directory of that job,
    ``invalid_request`` for an offset past the end of its log.
    """
    found = store.find(job_id)
    if found is None:
        raise RequestRejected(
            ErrorCode.UNKNOWN_JOB,
            f"{host} has no job {job_id}: it never ran here, or it is older than the "
            f"{store.keep} jobs this host keeps",
        )
    directory, record = found
    finished = record.phase is JobPhase.FINISHED  # judged before the read, never after
    status = record.status.value if record.status is not None else None
    try:
        fd = os.open(Path(directory, OUTPUT_LOG), os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:  # the runner has not started yet, or printed nothing
        fd = None
    except OSError as exc:
        raise RequestRejected(
            ErrorCode.INVALID_REQUEST,
            f"{host} cannot read the log of job {job_id}: {exc.strerror or exc}",
        ) from None
    try:
        length = os.fstat(fd).st_size if fd is not None else 0
        if offset > length:
            raise RequestRejected(
                ErrorCode.INVALID_REQUEST,
                f"offset {offset} is past the end of the log of job {job_id} on {host}, "
                f"which has {length} bytes",
            )
        wanted = min(size, length - offset)
        data = os.pread(fd, wanted, offset) if fd is not None and wanted else b""
    finally:
        if fd is not None:
            os.close(fd)
    return LogRead(data=data, size=length, finished=finished, status=status)


class LogServer:
    """Answers the log requests that reach one listener."""

    def __init__(self, settings: ListenerSettings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self._replays = ReplayCache(limit=LOG_REPLAYS_KEPT)
        # The host's own subjects: the expanded templates that name the host.
        self._own = expand_templates(
            [t for t in settings.deploy_subject_templates if "<hostname>" in t],
            hostname=settings.hostname,
            tier=settings.tier,
            role=settings.role,
        )
        self._log = log.bind(host=settings.hostname, tier=settings.tier.value)

    async def answer(self, bus: Bus, request: DeployRequest, subject: str) -> None:
        """Answer one verified-or-refused log request that arrived on ``subject``."""
        request_id = request.id or uuid.uuid4().hex
        job_id = request.revision
        if subject not in self._own:
            self._log.warning(
                "log_request_ignored",
                request_id=request_id,
                subject=subject,
                job=job_id,
                reason="a log request is answered on the host's own subject only",
            )
            return
        signer = verified_signer(
            request.signature_fields(),
            request_id=request.id,
            subject=subject,
            action=request.action.value,
            revision=job_id,
        )
        bound = bool(request.bind) or request.signature_fields() is not None
        reply_to = (  # bound: a subject of its own, which no history stream records
            log_reply(request.reply_to, self.settings.tier.value, self.settings.hostname)
            if bound
            else request.reply_to
        )
        offset = request.offset or 0
        size = min(request.size or MAX_LOG_CHUNK_BYTES, MAX_LOG_CHUNK_BYTES)
        lines = min(request.lines, MAX_LOG_LINES) if request.lines is not None else None
        try:
            self._verify(request, subject)
            read = await anyio.to_thread.run_sync(
                lambda: read_log(
                    self.store, job_id, offset=offset, size=size, host=self.settings.hostname
                )
            )
        except RequestRejected as exc:
            answered = signer is not None or not self.settings.trusted_deployer_keys
            self._log.info(
                "log_request_rejected",
                request_id=request_id,
                job=job_id,
                signer=signer,
                error=exc.code,
                offset=offset,
                answered=answered,
            )
            if answered:
                reporter = StatusReporter(
                    bus,
                    hostname=self.settings.hostname,
                    tier=self.settings.tier.value,
                    reply_to=reply_to,
                    request=request,
                    request_id=request_id,
                    signer=signer,
                )
                await reporter.send(StatusKind.REJECTED, error=exc.code, message=str(exc))
            return
        data, chunk = encode_chunk(
            hostname=self.settings.hostname,
            tier=self.settings.tier.value,
            request_id=request_id,
            deployment_id=job_id,
            offset=offset,
            data=read.data,
            size=read.size,
            finished=read.finished,
            status=read.status,
            lines=lines,
        )
        try:
            await bus.publish(reply_to, data)
        except FleetError as exc:  # the server is away: the requester asks again
            self._log.warning("log_chunk_not_sent", request_id=request_id, error=str(exc))
            return
        self._log.debug(
            "log_chunk_sent",
            request_id=request_id,
            job=job_id,
            signer=signer,
            offset=offset,
            sent=chunk.next_offset - offset,
            eof=chunk.eof,
        )

    def _verify(self, request: DeployRequest, subject: str) -> None:
        """As the listener verifies a deploy request, with this server's own replay memory;
        and the job it names must be a request id (never a path)."""
        if not is_request_id(request.revision):
            raise RequestRejected(ErrorCode.INVALID_REQUEST, "the job must be a request id")
        trusted = self.settings.trusted_deployer_keys
        if not trusted:
            return
        request.verify(
            subject,
            trusted=trusted,
            replays=self._replays,
            now=time.time(),
            ttl=self.settings.request_ttl,
        )
