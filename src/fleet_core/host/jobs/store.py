"""The jobs room: one directory per deploy job on the host, with a typed record of it.

    <state-dir>/jobs/<stamp>-<request-id>/
        job.json      the JobRecord, replaced atomically at every phase change (the listener)
        runner.json   the job runner's pid, then the rebuild's           (the job runner)
        argv.json     the rebuild's argv, 0600, until the runner reads it (the listener)
        closure.json  a closure deploy's plan: what to do once fetched    (the listener)
        output.log    everything the rebuild printed, bounded, redacted   (the job runner)
        exit.json     how the rebuild ended, written once at its end      (the job runner)

The record is what survives the listener: a later listener (or a deployer asking by request
id) reads it to learn whether a job was accepted, is running, or how it ended; a later
listener resumes a job whose record is not finished (``unfinished``). So it is
written whole or not at all — a temporary file in the same directory, fsynced, then renamed
over the old one — and reading it never raises: a record that cannot be read is no record.

Only the newest ``keep`` jobs are kept. A state directory that cannot be written costs the
records and logs, never the deploy.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict

from fleet_core.errors import RequestRejected
from fleet_core.host.jobs.jobdir import (
    RECORD_FILE,
    fsync_directory,
    write_atomically,
)
from fleet_core.host.jobs.outcome import Outcome
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import (
    DeployRequest,
    JobPhase,
    JobSummary,
    StatusKind,
    is_request_id,
)

__all__ = ["JobPhase", "JobRecord", "JobStore"]

log = structlog.get_logger("fleet.jobs")


class JobRecord(BaseModel):
    """Everything known about one job; each phase change is a new record, never an edit.

    ``argv`` is redacted: the record may be shown to anyone who can read the state dir.
    ``pid`` is the job runner's (None until known: a transient unit's runner reports its own
    in ``runner.json``), ``unit`` the transient systemd unit's name (None in session mode).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    request_id: str
    request: DeployRequest
    argv: tuple[str, ...]
    phase: JobPhase = JobPhase.ACCEPTED
    pid: int | None = None
    unit: str | None = None
    exit_code: int | None = None
    status: StatusKind | None = None
    error: str | None = None
    message: str | None = None
    started_at: float  # wall clock, seconds since the epoch
    finished_at: float | None = None
    duration_s: float | None = None
    log_tail: tuple[str, ...] | None = None  # a failure's last output lines, redacted
    # The key that signed the request, as verified when it arrived (None: unsigned); a
    # resumed job's statuses name it, as the first listener's did.
    signer: str | None = None

    def running(self, *, pid: int | None = None, unit: str | None = None) -> JobRecord:
        """This job once its rebuild has been started."""
        return self.model_copy(update={"phase": JobPhase.RUNNING, "pid": pid, "unit": unit})

    def summary(self) -> JobSummary:
        """The record as a job query's answer; a failure's tail comes along."""
        return JobSummary(
            request_id=self.request_id,
            phase=self.phase,
            status=self.status,
            error=self.error,
            message=self.message,
            exit_code=self.exit_code,
            duration_s=self.duration_s,
            log_tail=list(self.log_tail) if self.log_tail is not None else None,
            action=self.request.action.value,
            revision=self.request.revision,
            store_path=self.request.store_path,
            signer=self.signer,
            started_at=self.started_at,
            finished_at=self.finished_at,
        )

    def finished(
        self, outcome: Outcome, *, exit_code: int | None, duration_s: float, now: float
    ) -> JobRecord:
        """This job with its final status; ``now`` is the wall-clock time it ended."""
        return self.model_copy(
            update={
                "phase": JobPhase.FINISHED,
                "status": outcome.kind,
                "error": outcome.error,
                "message": outcome.message,
                "exit_code": exit_code,
                "finished_at": now,
                "duration_s": round(duration_s, 3),
                "log_tail": outcome.log_tail,
            }
        )


@dataclass(frozen=True)
class JobStore:
    """The job directories under ``<root>/jobs``; methods do blocking file I/O."""

    root: Path
    keep: int = 50

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    def create(self, record: JobRecord) -> Path | None:
        """Make the job's directory and write its first record; None if the disk refuses."""
        try:
            self.jobs.mkdir(parents=True, exist_ok=True, mode=0o750)
            directory = self.jobs / f"{_stamp(record.started_at)}-{record.request_id}"
            directory.mkdir(mode=0o750)
            fsync_directory(self.jobs)
            write_atomically(directory / RECORD_FILE, _dump(record))
        except OSError as exc:
            log.warning("state_dir_unwritable", state_dir=str(self.root), error=str(exc))
            return None
        self._prune()
        return directory

    def save(self, directory: Path | None, record: JobRecord) -> None:
        """Replace the job's record (nothing to do when its directory could not be made)."""
        if directory is None:
            return
        try:
            write_atomically(directory / RECORD_FILE, _dump(record))
        except OSError as exc:
            log.warning("state_dir_unwritable", state_dir=str(self.root), error=str(exc))

    def load(self, request_id: str) -> JobRecord | None:
        """The newest record of the job with ``request_id``, or None (never raises)."""
        if not is_request_id(request_id):  # it may come from the network: never a path
            return None
        for directory in reversed(self._directories()):
            if directory.name.partition("-")[2] == request_id:
                return self._read(directory)
        return None

    def find(self, request_id: str) -> tuple[Path, JobRecord] | None:
        """The newest job with ``request_id``: its directory and record (a log request reads
        the directory's ``output.log``); None as for ``load``."""
        if not is_request_id(request_id):  # it may come from the network: never a path
            return None
        for directory in reversed(self._directories()):
            if directory.name.partition("-")[2] == request_id:
                record = self._read(directory)
                return (directory, record) if record is not None else None
        return None

    def unfinished(self) -> list[tuple[Path, JobRecord]]:
        """Every job whose record is not finished, with its directory, oldest first."""
        found = []
        for directory in self._directories():
            record = self._read(directory)
            if record is not None and record.phase is not JobPhase.FINISHED:
                found.append((directory, record))
        return found

    def latest(self) -> JobRecord | None:
        """The newest job's record; None when there is none or it cannot be read."""
        directories = self._directories()
        return self._read(directories[-1]) if directories else None

    def latest_deploy(self) -> JobRecord | None:
        """The newest readable record of a deploy: a health check (``check``) rebuilds
        nothing, so it must not hide the switch before it from ``status`` (discovery's
        ``last_job``). At most ``keep`` records are read, and only after a job ended."""
        for directory in reversed(self._directories()):
            record = self._read(directory)
            if record is not None and record.request.action is not Action.CHECK:
                return record
        return None

    def recent(self, count: int) -> list[JobRecord]:
        """The newest ``count`` readable records, newest first (discovery's ``recent_jobs``)."""
        found: list[JobRecord] = []
        for directory in reversed(self._directories()):
            if len(found) >= count:
                break
            record = self._read(directory)
            if record is not None:
                found.append(record)
        return found

    def _directories(self) -> list[Path]:
        """Job directories, oldest first (their names begin with a sortable UTC stamp)."""
        try:
            return sorted(p for p in self.jobs.iterdir() if p.is_dir())
        except OSError:
            return []

    def _read(self, directory: Path) -> JobRecord | None:
        path = directory / RECORD_FILE
        try:
            record = JobRecord.model_validate_json(path.read_bytes())
        except (OSError, ValueError, RequestRejected) as exc:  # ValueError: JSON or pydantic
            log.warning("job_record_unreadable", path=str(path), error=str(exc)[:200])
            return None
        if directory.name.partition("-")[2] != record.request_id:
            log.warning("job_record_unreadable", path=str(path), error="request id mismatch")
            return None
        return record

    def _prune(self) -> None:
        entries = self._directories()
        for old in entries[: max(0, len(entries) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)


def _stamp(when: float) -> str:
    """A UTC stamp with microseconds, so directories sort by age even within one second."""
    seconds = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when))
    return f"{seconds}.{int(when % 1 * 1_000_000):06d}Z"


def _dump(record: JobRecord) -> bytes:
    return (record.model_dump_json(indent=2) + "\n").encode()
