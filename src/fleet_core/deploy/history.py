"""Deployment history: the JetStream streams that record it, and deployments read back (pure).

The record is the traffic that already flows, captured by one stream per tier:

    FLEET_HISTORY_TEST   deploy.test.>  and  deploy.responses.*.test.*
    FLEET_HISTORY_PROD   deploy.prod.>  and  deploy.responses.*.prod.*

that is every signed request of the tier and every host-bound answer of its listeners (a
status, a discovery answer, a job query's answer), each on a subject the server vouches
for (``fleet_core.protocol.trust``). Bare replies (``deploy.responses.<id>``) name no tier
and are not captured: under homelab-deploy's layout there is no history in JetStream, and
``history`` asks the hosts' job records instead (``fleet_core.deploy.history_commands``).

Streams are created with ``no_ack``: a stream that captures a subject would otherwise
answer a request published with a NATS reply (every deploy request is) with a PubAck on the
deployment's own reply subject. Either way the server's "no responders" status never comes
again for a captured subject, so a single-host deploy to a host that does not listen ends
``missing`` after the deployer's answer window instead of at once (docs/history.md).

``HistoryBook`` turns the recorded messages, oldest first, into ``DeploymentRecord``\\ s:
one per request id (a rollout's batches share their deployment's id), with who signed it
(the signature is verified here, and the key named when the caller knows it), its targets,
action and revision, each host's outcome from its final status (or from a job query's
answer when the final status was lost), and how long it took. Anything malformed or
contradicting its subject is counted in ``flagged`` and never believed; nothing here raises
on what came off the wire.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet_core.config.options import (
    DEFAULT_HISTORY_MAX_AGE,
    DEFAULT_HISTORY_MAX_BYTES,
    DEFAULT_HISTORY_MAX_MSGS,
    DEFAULT_HISTORY_REPLICAS,
)
from fleet_core.errors import RequestRejected, UsageError
from fleet_core.protocol.actions import Action, validate_revision
from fleet_core.protocol.closures import is_store_path
from fleet_core.protocol.messages import (
    HostInfo,
    JobPhase,
    JobSummary,
    Status,
    is_request_id,
    parse_deploy_request,
    parse_host_info,
    parse_status,
)
from fleet_core.protocol.signing import verified_signer
from fleet_core.protocol.subjects import RESPONSES_PREFIX, Tier, parse_target
from fleet_core.protocol.text import printable
from fleet_core.protocol.trust import shown

__all__ = [
    "MAX_FLAGGED",
    "DeploymentRecord",
    "HistoryBook",
    "HostOutcome",
    "Recorded",
    "Retention",
    "as_json",
    "deployment_of_request",
    "parse_timestamp",
    "reaches",
    "read_reply_subject",
    "records_from_jobs",
    "select",
    "stream_config",
    "stream_name",
    "stream_subjects",
]

# Retention (config.options), by whichever limit is reached first: the oldest go. A deploy
# of one host is about 6 messages of 0.3-2 KiB; a discovery of N hosts adds N answers of
# ~1 KiB each (they are captured too), so a fleet of 100 hosts discovered every minute
# writes ~150 MB a day: max_bytes, not max_age, is then the limit that bites.
MAX_FLAGGED: Final = 20  # flagged entries kept per deployment (the rest are counted)
_MAX_OTHER_IDS: Final = 100_000
_MAX_LOG_TAIL: Final = 50
_STREAM_PREFIX: Final = "FLEET_HISTORY_"
_PUBLIC_KEY: Final = re.compile(r"U[A-Z2-7]{55}")  # an NKey user's public key
# Every recorded message is a request or a status: at most 64 KiB of body, plus headers.
_MAX_MSG_SIZE: Final = 64 * 1024 + 4096
_DELIBERATE_ACTIONS: Final = frozenset(
    {"switch", "boot", "test", "dry-activate", "build", Action.CHECK.value}
)


def stream_name(tier: Tier) -> str:
    """The history stream of ``tier``: ``FLEET_HISTORY_TEST``, ``FLEET_HISTORY_PROD``."""
    return _STREAM_PREFIX + tier.value.upper()


def stream_subjects(tier: Tier) -> tuple[str, str]:
    """What the stream of ``tier`` captures: the tier's requests and its bound answers."""
    return (f"deploy.{tier.value}.>", f"{RESPONSES_PREFIX}*.{tier.value}.*")


@dataclass(frozen=True, slots=True)
class Retention:
    """How long and how much history a stream keeps, and on how many servers."""

    max_age: float = DEFAULT_HISTORY_MAX_AGE  # seconds
    max_msgs: int = DEFAULT_HISTORY_MAX_MSGS
    max_bytes: int = DEFAULT_HISTORY_MAX_BYTES
    replicas: int = DEFAULT_HISTORY_REPLICAS  # 3 on a cluster: survives the loss of a node


def stream_config(tier: Tier, retention: Retention) -> dict[str, Any]:
    """The JetStream stream configuration of ``tier``'s history, as the API takes it.

    ``no_ack``: no PubAck on a request's reply subject (see the module's docstring);
    ``allow_direct``: readers use direct gets, which need no consumer (and so no consumer
    permissions), and any replica may answer them; ``deny_delete``/``deny_purge``: a record
    is not edited through the API, it only ages out."""
    return {
        "name": stream_name(tier),
        "description": f"fleet-deploy history of the {tier.value} tier",
        "subjects": list(stream_subjects(tier)),
        "retention": "limits",
        "storage": "file",
        "discard": "old",
        "max_age": int(retention.max_age * 1e9),
        "max_msgs": retention.max_msgs,
        "max_bytes": retention.max_bytes,
        "max_msg_size": _MAX_MSG_SIZE,
        "num_replicas": retention.replicas,
        "no_ack": True,
        "allow_direct": True,
        "deny_delete": True,
        "deny_purge": True,
    }


def read_reply_subject(tier: Tier, token: str) -> str:
    """Where the server's answers to a history read of ``tier`` go.

    Never a subject the streams capture (reading would write history), and for prod never
    one the test key may subscribe to: ``deploy.responses.<token>.prod.history.read`` has
    six tokens, past what the prod stream captures (five), and the test key is denied
    ``deploy.responses.*.prod.>``. Test reads use the bare ``deploy.responses.<token>``,
    the only reply subject besides its tier's bound ones that the test key may read. (The
    layout ``nats-config`` writes lets only the admin key read the streams: JetStream
    answers on any reply subject a request names, so the test key gets no API subject.)"""
    if tier is Tier.TEST:
        return RESPONSES_PREFIX + token
    return f"{RESPONSES_PREFIX}{token}.{tier.value}.history.read"


def parse_timestamp(text: str | None) -> float | None:
    """JetStream's ``Nats-Time-Stamp`` (RFC 3339, nanoseconds, UTC) as seconds since the
    epoch; None when absent or not one."""
    if not text:
        return None
    head, dot, fraction = text.rstrip("Z").partition(".")
    digits = "".join(ch for ch in fraction if ch.isdigit())[:6]
    try:
        moment = datetime.fromisoformat(head + "+00:00")
    except ValueError:
        return None
    return moment.timestamp() + (int(digits.ljust(6, "0")) / 1e6 if dot and digits else 0.0)


@dataclass(frozen=True, slots=True)
class Recorded:
    """One message of a history stream: its sequence, original subject, time and body."""

    seq: int
    subject: str
    data: bytes
    time: float | None = None


class HostOutcome(BaseModel):
    """One host's part in a recorded deployment, from the last status it sent for it."""

    model_config = ConfigDict(frozen=True)

    hostname: str
    status: str = Field(description="its final status, or the last one when none was final")
    final: bool
    error: str | None = None
    message: str = ""
    duration_s: float | None = None
    at: float | None = Field(None, description="when the server recorded that status")
    log_tail: list[str] = Field(default_factory=list)
    source: Literal["status", "job_query"] = "status"
    store_path: str | None = Field(
        None, description="a closure deploy: the system it was sent (its recorded request's)"
    )


class DeploymentRecord(BaseModel):
    """A deployment as its tier's stream recorded it."""

    model_config = ConfigDict(frozen=True)

    id: str
    tier: str
    targets: list[str] = Field(description="the subjects its requests were published to")
    action: str | None = None
    revision: str | None = None
    signer: str | None = Field(None, description="the public key whose signature verified")
    signer_name: str | None = Field(None, description="the key's name, when it is known")
    signature: Literal["verified", "unsigned", "bad", "unknown"] = "unknown"
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    hosts: list[HostOutcome] = Field(default_factory=list)
    cancel_requested: bool = False
    request_recorded: bool = Field(
        True, description="false when its request aged out of the stream (or was never seen)"
    )
    flagged: list[str] = Field(default_factory=list)
    flagged_count: int = 0

    @property
    def counts(self) -> dict[str, int]:
        """Hosts by final status (``running`` for a host with no final status yet)."""
        found: dict[str, int] = {}
        for host in self.hosts:
            key = host.status if host.final else "running"
            found[key] = found.get(key, 0) + 1
        return found

    @property
    def ok(self) -> bool:
        return bool(self.hosts) and all(h.final and h.status == "completed" for h in self.hosts)


@dataclass(slots=True)
class _Deployment:
    id: str
    tier: str
    targets: list[str] = field(default_factory=list)
    action: str | None = None
    revision: str | None = None
    signer: str | None = None
    signature: Literal["verified", "unsigned", "bad", "unknown"] = "unknown"
    started_at: float | None = None
    finished_at: float | None = None
    first_seq: int = 0
    hosts: dict[str, HostOutcome] = field(default_factory=dict)
    answered: dict[str, HostOutcome] = field(default_factory=dict)  # from job queries
    systems: dict[str, str] = field(default_factory=dict)  # a closure deploy's, by host
    cancel_requested: bool = False
    request_recorded: bool = False
    flagged: list[str] = field(default_factory=list)
    flagged_count: int = 0

    def flag(self, reason: str) -> None:
        self.flagged_count += 1
        if len(self.flagged) < MAX_FLAGGED:
            self.flagged.append(reason)


class HistoryBook:
    """Recorded messages in, deployments out. Feed ``add`` in stream order (oldest first).

    Discovery answers, which are most of a stream's messages, are dropped as they come, so
    the book holds one entry per deployment, not the stream."""

    def __init__(self, *, names: Mapping[str, str] | None = None) -> None:
        self._names = dict(names or {})
        self._deployments: dict[str, _Deployment] = {}
        # Ids of requests that are no deployment (cancels, log requests): their answers, a
        # log's chunks among them, are not a deployment's statuses. Bounded: the oldest go.
        self._other_ids: dict[str, None] = {}
        self.messages = 0
        self.flagged = 0  # entries that could not be attributed to any deployment

    def add(self, entry: Recorded) -> None:
        self.messages += 1
        tokens = entry.subject.split(".")
        if entry.subject.startswith(RESPONSES_PREFIX) and len(tokens) == 5:
            self._answer(entry, reply_id=tokens[2], tier=tokens[3], hostname=tokens[4])
        elif len(tokens) >= 3 and tokens[0] == "deploy" and tokens[1] in ("test", "prod"):
            self._request(entry, tier=tokens[1])
        else:
            self.flagged += 1

    def extend(self, entries: Iterable[Recorded]) -> HistoryBook:
        for entry in entries:
            self.add(entry)
        return self

    def adopt(self, deployment_id: str, entries: Iterable[Recorded]) -> None:
        """One deployment read whole by its id from past the newest messages
        (``history_reader``): its requests and answers, in stream order. It takes the place
        of what the book held of it only when that lacked its request (aged out of the
        window the book was fed)."""
        whole = HistoryBook(names=self._names).extend(entries)
        self.messages += whole.messages
        self.flagged += whole.flagged
        found = whole._deployments.get(deployment_id)
        known = self._deployments.get(deployment_id)
        if found is not None and (known is None or not known.request_recorded):
            self._deployments[deployment_id] = found

    def _deployment(self, deployment_id: str, tier: str, seq: int) -> _Deployment:
        found = self._deployments.get(deployment_id)
        if found is None:
            found = _Deployment(id=deployment_id, tier=tier, first_seq=seq)
            self._deployments[deployment_id] = found
        return found

    def _request(self, entry: Recorded, *, tier: str) -> None:
        try:
            request = parse_deploy_request(entry.data)
        except RequestRejected:
            # Invalid, or an action this release does not know: counted, and its answers
            # (a listener's refusal, or whatever a newer one sends) kept out of the record.
            self.flagged += 1
            self._ignore_answers_to(entry.data)
            return
        reply_id = request.reply_to.removeprefix(RESPONSES_PREFIX).split(".")[0]
        deployment_id = request.id or reply_id
        if not is_request_id(deployment_id) or not _is_target(entry.subject):
            # An id or a target no deployer sends: either is shown as it is (a table, an MCP
            # sentence), so whoever published it could write there. Not believed.
            self.flagged += 1
            if is_request_id(deployment_id):
                self._other(deployment_id)
            return
        if request.action.value not in _DELIBERATE_ACTIONS:
            # Not a deployment (a cancel, a request for a job's log): its answers are not
            # statuses of one. A cancel's revision is the id of the deployment it stops.
            self._other(deployment_id)
            if request.action is Action.CANCEL:
                self._deployment(request.revision, tier, entry.seq).cancel_requested = True
            return
        record = self._deployment(deployment_id, tier, entry.seq)
        signer = verified_signer(
            request.signature_fields(),
            request_id=request.id,
            subject=entry.subject,
            action=request.action.value,
            revision=request.revision,
            store_path=request.store_path,
        )
        signature: Literal["verified", "unsigned", "bad"] = (
            "unsigned"
            if request.signature_fields() is None
            else "verified"
            if signer is not None
            else "bad"
        )
        if record.request_recorded and (
            record.action != request.action.value or record.revision != request.revision
        ):
            record.flag(
                f"a request on {shown(entry.subject, 128)} reuses this id for another action "
                "or revision: ignored"
            )
            return
        if record.request_recorded and signer != record.signer:
            record.flag(f"a request on {shown(entry.subject, 128)} is signed by another key")
            return
        if signature == "bad":
            record.flag(f"the signature of the request on {shown(entry.subject, 128)} is bad")
        record.request_recorded = True
        record.action = request.action.value
        record.revision = request.revision
        record.signer = signer if signer is not None else record.signer
        if record.signature in ("unknown", "unsigned"):
            record.signature = signature
        host = _host_of(entry.subject)
        if request.store_path is not None and host is not None and signature != "bad":
            record.systems[host] = request.store_path  # a closure deploy's: that host's own
        if entry.subject not in record.targets:
            record.targets.append(entry.subject)
        if record.started_at is None or (entry.time is not None and entry.time < record.started_at):
            record.started_at = entry.time

    def _other(self, request_id: str) -> None:
        self._other_ids[request_id] = None
        if len(self._other_ids) > _MAX_OTHER_IDS:
            del self._other_ids[next(iter(self._other_ids))]

    def _ignore_answers_to(self, data: bytes) -> None:
        try:
            body = json.loads(data)
        except ValueError:
            return
        reply_to = body.get("reply_to") if isinstance(body, dict) else None
        if isinstance(reply_to, str) and reply_to.startswith(RESPONSES_PREFIX):
            request_id = reply_to.removeprefix(RESPONSES_PREFIX).split(".")[0]
            if request_id and request_id not in self._deployments:
                self._other(request_id)

    def _answer(self, entry: Recorded, *, reply_id: str, tier: str, hostname: str) -> None:
        if not is_request_id(reply_id):
            # A listener may publish under any first token (its permission binds only its
            # tier and name): an id of escapes or instructions never becomes a deployment.
            self.flagged += 1
            return
        if reply_id in self._other_ids:
            return  # an answer to a cancel or a chunk of a log
        status = parse_status(entry.data)
        if status is None:
            self._job_answer(entry, tier=tier, hostname=hostname)
            return
        record = self._deployment(reply_id, tier, entry.seq)
        where = f"{tier}.{hostname}"
        if status.hostname != hostname or (status.tier is not None and status.tier != tier):
            record.flag(f"a status on {where}'s subject claims to be {shown(status.hostname)}")
            return
        if status.request_id is not None and status.request_id != reply_id:
            record.flag(f"a status of {hostname} names another request id")
            return
        known = record.hosts.get(hostname)
        if known is not None and known.final:
            return  # the first final status is the outcome; a later one is a duplicate
        record.hosts[hostname] = _outcome(status, entry.time)
        if status.is_final and entry.time is not None:
            record.finished_at = max(record.finished_at or entry.time, entry.time)
        if record.started_at is None:
            record.started_at = entry.time  # its request aged out: the first status will do

    def _job_answer(self, entry: Recorded, *, tier: str, hostname: str) -> None:
        """A job query's answer (a discovery answer carrying ``job``): the outcome of a host
        whose final status was lost. Plain discovery answers are dropped here."""
        if b'"job"' not in entry.data:
            return
        info = parse_host_info(entry.data)
        if info is None or info.job is None or info.hostname != hostname or info.tier != tier:
            return
        job = info.job
        if job.phase is not JobPhase.FINISHED or job.status is None:
            return
        record = self._deployments.get(job.request_id)
        if record is None:
            return
        record.answered[hostname] = HostOutcome(
            hostname=hostname,
            status=job.status.value,
            final=True,
            error=printable(job.error)[:200] if job.error is not None else None,
            message=printable(job.message or "")[:2000],
            duration_s=job.duration_s,
            at=entry.time,
            log_tail=[printable(line) for line in (job.log_tail or [])[-_MAX_LOG_TAIL:]],
            source="job_query",
        )

    def records(self) -> list[DeploymentRecord]:
        """Every deployment seen, newest first."""
        built = [self._record(d) for d in self._deployments.values() if _worth_showing(d)]
        return sorted(built, key=lambda r: (r.started_at or 0.0, r.id), reverse=True)

    def record(self, deployment_id: str) -> DeploymentRecord | None:
        found = self._deployments.get(deployment_id)
        return self._record(found) if found is not None and _worth_showing(found) else None

    def _record(self, found: _Deployment) -> DeploymentRecord:
        hosts = dict(found.hosts)
        for name, answered in found.answered.items():
            if name not in hosts or not hosts[name].final:
                hosts[name] = answered
        finished = found.finished_at
        for outcome in hosts.values():
            if outcome.final and outcome.at is not None:
                finished = max(finished or outcome.at, outcome.at)
        every_final = bool(hosts) and all(h.final for h in hosts.values())
        duration = (
            finished - found.started_at
            if every_final and finished is not None and found.started_at is not None
            else None
        )
        return DeploymentRecord(
            id=found.id,
            tier=found.tier,
            targets=list(found.targets),
            action=found.action,
            revision=found.revision,
            signer=found.signer,
            signer_name=self._names.get(found.signer) if found.signer else None,
            signature=found.signature,
            started_at=found.started_at,
            finished_at=finished if every_final else None,
            duration_s=round(duration, 3) if duration is not None else None,
            hosts=[_with_system(hosts[name], found.systems.get(name)) for name in sorted(hosts)],
            cancel_requested=found.cancel_requested,
            request_recorded=found.request_recorded,
            flagged=list(found.flagged),
            flagged_count=found.flagged_count,
        )


def _worth_showing(found: _Deployment) -> bool:
    """A deployment whose request or some status was recorded (not only a cancel of an id
    that is no longer in the stream)."""
    return found.request_recorded or bool(found.hosts)


def _outcome(status: Status, at: float | None) -> HostOutcome:
    return HostOutcome(
        hostname=status.hostname,
        status=status.status.value,
        final=status.is_final,
        error=printable(status.error)[:200] if status.error is not None else None,
        message=printable(status.message)[:2000],
        duration_s=status.duration_s,
        at=at if at is not None else status.timestamp,
        log_tail=[printable(line) for line in (status.log_tail or [])[-_MAX_LOG_TAIL:]]
        if status.is_final
        else [],
    )


def as_json(records: Iterable[DeploymentRecord]) -> list[dict[str, Any]]:
    """Records as plain JSON-ready objects (what ``--json`` prints), with their counts."""
    return [
        {**record.model_dump(mode="json"), "counts": record.counts, "ok": record.ok}
        for record in records
    ]


def deployment_of_request(data: bytes) -> str | None:
    """The deployment a recorded request starts: its id when it is a deployment's request
    (not a cancel's or a log's), else None. Only a pointer for the reader, which then reads
    that deployment whole; the book judges the request itself."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict) or body.get("action") not in _DELIBERATE_ACTIONS:
        return None
    value = body.get("id")
    return value if is_request_id(value) else None


def reaches(subject: str, hosts: Iterable[HostInfo]) -> bool:
    """Whether a request published on ``subject`` went to any of ``hosts``: the host's own
    subject, its tier's ``all``, or its role's (what a listener subscribes to by default)."""
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != "deploy":
        return False
    for host in hosts:
        if parts[1] != host.tier:
            continue
        if parts[2:] in (["all"], [host.hostname]):
            return True
        if host.role is not None and parts[2:] == ["role", host.role]:
            return True
    return False


def records_from_jobs(
    hosts: Iterable[HostInfo], *, names: Mapping[str, str] | None = None
) -> list[DeploymentRecord]:
    """Deployments pieced together from the hosts' own job records (discovery with
    ``recent_jobs``): the history of a fleet without JetStream. It knows no target (a host
    does not keep the subject it heard) and only the jobs each host still keeps."""
    known = dict(names or {})
    grouped: dict[str, list[tuple[HostInfo, JobSummary]]] = {}
    for info in hosts:
        for job in info.recent_jobs or []:
            if job.action is not None and job.action not in _DELIBERATE_ACTIONS:
                continue
            if not is_request_id(job.request_id):
                continue  # the host's word, shown as an id: only an id's characters
            grouped.setdefault(job.request_id, []).append((info, job))
    records: list[DeploymentRecord] = []
    for request_id, jobs in grouped.items():
        first = jobs[0][1]
        # Shown unfenced like a recorded request's: only what a request could have carried.
        signer = first.signer if first.signer and _PUBLIC_KEY.fullmatch(first.signer) else None
        started = [j.started_at for _, j in jobs if j.started_at is not None]
        finished = [j.finished_at for _, j in jobs if j.finished_at is not None]
        outcomes = [_job_outcome(info.hostname, job) for info, job in jobs]
        every_final = all(o.final for o in outcomes)
        start = min(started) if started else None
        end = max(finished) if finished and every_final else None
        records.append(
            DeploymentRecord(
                id=request_id,
                tier=str(jobs[0][0].tier),
                targets=[],
                action=first.action,
                revision=_revision(first.revision),
                signer=signer,
                signer_name=known.get(signer) if signer else None,
                signature="verified" if signer else "unknown",
                started_at=start,
                finished_at=end,
                duration_s=round(end - start, 3) if end is not None and start is not None else None,
                hosts=sorted(outcomes, key=lambda o: o.hostname),
            )
        )
    return sorted(records, key=lambda r: (r.started_at or 0.0, r.id), reverse=True)


def _is_target(subject: str) -> bool:
    try:
        parse_target(subject)
    except UsageError:
        return False
    return True


def _revision(value: str | None) -> str | None:
    """A host's record of a revision, if it is one a request could carry; else None."""
    try:
        return validate_revision(value) if value is not None else None
    except RequestRejected:
        return None


def _host_of(subject: str) -> str | None:
    """The host ``deploy.<tier>.<host>`` addresses; None for a group's subject."""
    tokens = subject.split(".")
    return tokens[2] if len(tokens) == 3 and tokens[2] != "all" else None


def _with_system(outcome: HostOutcome, store_path: str | None) -> HostOutcome:
    return outcome if store_path is None else outcome.model_copy(update={"store_path": store_path})


def _job_outcome(hostname: str, job: JobSummary) -> HostOutcome:
    final = job.phase is JobPhase.FINISHED and job.status is not None
    return HostOutcome(
        hostname=hostname,
        status=job.status.value if job.status is not None else job.phase.value,
        final=final,
        error=printable(job.error)[:200] if job.error is not None else None,
        message=printable(job.message or "")[:2000],
        duration_s=job.duration_s,
        at=job.finished_at,
        log_tail=[printable(line) for line in (job.log_tail or [])[-_MAX_LOG_TAIL:]],
        source="job_query",
        # The host's word, shown unfenced: only a store path, as a request could carry.
        store_path=job.store_path if is_store_path(job.store_path) else None,
    )


def select(
    records: Iterable[DeploymentRecord],
    *,
    target: str | None = None,
    host: str | None = None,
    limit: int | None = None,
) -> list[DeploymentRecord]:
    """The records of ``target`` (a deploy subject: a host's also takes in the group deploys
    that reached it) or of ``host``, newest first, at most ``limit``."""
    chosen: list[DeploymentRecord] = []
    parts = target.split(".") if target else []
    single = parts[2] if len(parts) == 3 and parts[2] != "all" else None
    for record in sorted(records, key=lambda r: (r.started_at or 0.0, r.id), reverse=True):
        reached = {h.hostname for h in record.hosts}
        if target is not None:
            in_tier = len(parts) > 1 and record.tier == parts[1]
            by_subject = target in record.targets
            by_host = single is not None and in_tier and single in reached
            unknown = not record.targets and in_tier and single is None  # job records
            if not (by_subject or by_host or unknown):
                continue
        if (
            host is not None
            and host not in reached
            and f"deploy.{record.tier}.{host}" not in (record.targets)
        ):
            continue
        chosen.append(record)
        if limit is not None and len(chosen) >= limit:
            break
    return chosen
