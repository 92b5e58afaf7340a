"""The history streams over the wire: create them, and read their newest messages (I/O).

JetStream's API is plain request/reply on ``$JS.API.…``, spoken here over ``Bus`` so that
every answer comes to a reply subject this module chooses: ``read_reply_subject`` keeps the
answers of a prod read away from the test key and out of the streams themselves. Reading
uses *direct gets in batches* (``$JS.API.DIRECT.GET.<stream>`` with ``{"seq", "batch"}``):
no consumer is created, so a reader needs no permission beyond that one subject and its
stream's ``STREAM.INFO`` (docs/history.md), and any replica of a clustered stream answers.

Every wait has a deadline; a read is bounded by ``scan`` messages, the newest of the stream,
and each message goes into a ``HistoryBook`` as it arrives, so memory holds deployments,
never the stream. Errors become ``HistoryUnavailable`` (no JetStream, no stream, no answer)
or ``PermissionDenied`` (this key may not read that tier).

Beside the tiers' streams, ``FLEET_BUILDS`` keeps the builders' statuses
(``build.responses.*``, which only a builder may publish), so that a closure deploy can
deploy a build a previous command ran (``--from-build``): ``read_build`` reads one build's
statuses by its id. Its reads are answered on ``deploy.responses.<token>.builds.read``,
which no stream captures and only the admin key reads. (Wherever a function here takes a
``tier``, None means the builds stream.)
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import structlog

from fleet_core.bus import Bus, Message
from fleet_core.config.settings import DeployTiming
from fleet_core.deploy.fleet_status import DEPLOY_ACTIONS, in_target
from fleet_core.deploy.history import (
    DeploymentRecord,
    HistoryBook,
    Recorded,
    Retention,
    deployment_of_request,
    parse_timestamp,
    reaches,
    read_reply_subject,
    records_from_jobs,
    stream_config,
    stream_name,
)
from fleet_core.errors import (
    FleetError,
    HistoryUnavailable,
    PermissionDenied,
    RequestRejected,
    UsageError,
)
from fleet_core.keys import load_seed
from fleet_core.protocol.messages import (
    MAX_RECENT_JOBS,
    HostInfo,
    JobPhase,
    is_request_id,
    parse_deploy_request,
)
from fleet_core.protocol.subjects import RESPONSES_PREFIX, Target, Tier

__all__ = [
    "BATCH",
    "BUILDS_STREAM",
    "DEFAULT_SCAN",
    "HistoryView",
    "LastDeploy",
    "StreamState",
    "builds_stream_config",
    "key_names",
    "last_deploy",
    "load_history",
    "read_build",
    "read_history",
    "recorded_reference",
    "setup_history",
    "stream_state",
]

log = structlog.get_logger("fleet.history")

API: Final = "$JS.API."
BATCH: Final = 256  # messages one direct get returns; each at most a request or a status
DEFAULT_SCAN: Final = 20_000  # newest messages read per tier and call
API_TIMEOUT: Final = 5.0  # seconds one API answer (or one batch's next message) may take
_STREAM_NOT_FOUND: Final = 10059
_SEED_SUFFIX: Final = ".seed"
_MAX_SEEDS: Final = 200  # seed files beside the key that name signers

StreamState = dict[str, Any]  # JetStream's state: messages, bytes, first_seq, last_seq, …
BUILDS_STREAM: Final = "FLEET_BUILDS"
BUILDS_SUBJECT: Final = "build.responses.*"  # a build's statuses: only a builder publishes
MAX_BUILD_STATUSES: Final = 100_000  # statuses one build read takes at most


def builds_stream_config(retention: Retention) -> dict[str, Any]:
    """The builds stream: the tiers' configuration (``no_ack``, direct gets, no deletes)
    over the builders' statuses."""
    config = stream_config(Tier.TEST, retention)
    return {
        **config,
        "name": BUILDS_STREAM,
        "description": "fleet-deploy builds: every builder's statuses",
        "subjects": [BUILDS_SUBJECT],
    }


def _stream(tier: Tier | None) -> str:
    return BUILDS_STREAM if tier is None else stream_name(tier)


def _reply(tier: Tier | None, token: str) -> str:
    """Where a read's answers go: a tier's (``read_reply_subject``), or the builds stream's,
    ``deploy.responses.<token>.builds.read``: no stream captures it (a tier's takes
    ``deploy.responses.*.<tier>.*`` only) and only the admin key may read it."""
    if tier is None:
        return f"{RESPONSES_PREFIX}{token}.builds.read"
    return read_reply_subject(tier, token)


async def _exchange(
    bus: Bus,
    subject: str,
    payload: dict[str, Any],
    tier: Tier | None,
    *,
    until_end: bool = False,
    timeout: float = API_TIMEOUT,
) -> list[Message]:
    """Publish ``payload`` to ``subject`` and gather the answers on a fresh reply subject:
    the first one, or with ``until_end`` every one up to a status line (a batch's end).

    A refusal of the publish or of the reply's subscription is a ``PermissionDenied``."""
    reply = _reply(tier, uuid.uuid4().hex)
    send, receive = anyio.create_memory_object_stream[Message | PermissionDenied](math.inf)

    def denied(denial: PermissionDenied) -> bool:
        if denial.subject is not None and denial.subject.lower() in (
            subject.lower(),
            reply.lower(),
        ):
            send.send_nowait(denial)
            return True
        return False

    async def deliver(message: Message) -> None:
        send.send_nowait(message)

    stop_watching = bus.watch_denials(denied)
    answers: list[Message] = []
    try:
        subscription = await bus.subscribe(reply, deliver)
        try:
            await bus.publish(subject, json.dumps(payload).encode(), reply=reply)
            await bus.flush()
            with anyio.fail_after(timeout):
                async for event in receive:
                    if isinstance(event, PermissionDenied):
                        # The client library lowercases the server's error: name the
                        # subject as it was used, "$JS.API.…", not "$js.api.…".
                        refused = next(
                            (
                                s
                                for s in (subject, reply)
                                if s.lower() == (event.subject or "").lower()
                            ),
                            event.subject,
                        )
                        what = "builds" if tier is None else f"{tier.value} history"
                        raise PermissionDenied(
                            f"this key may not use the {what}: the NATS server "
                            f"refused it {event.operation or 'access'} on {refused}",
                            subject=refused,
                            operation=event.operation,
                            fix="use a key of that tier (the admin key reads every tier and "
                            "alone sets the streams up)",
                        )
                    answers.append(event)
                    if not until_end or "Status" in event.headers or event.no_responders:
                        break
        finally:
            await subscription.unsubscribe()
    except TimeoutError:
        raise HistoryUnavailable(
            f"the NATS server did not answer {subject} within {timeout:g} s",
            reason="no_answer",
        ) from None
    finally:
        stop_watching()
        send.close()
        receive.close()
    if answers and answers[0].no_responders:
        raise HistoryUnavailable(
            "the NATS server has no JetStream: the history is not recorded",
            reason="no_jetstream",
        )
    return answers


def _api_answer(messages: list[Message]) -> dict[str, Any]:
    try:
        answer = json.loads(messages[0].data)
    except (ValueError, IndexError):
        raise HistoryUnavailable("JetStream's answer was not JSON", reason="bad_answer") from None
    if not isinstance(answer, dict):
        raise HistoryUnavailable("JetStream's answer was not an object", reason="bad_answer")
    return answer


def _error_code(answer: dict[str, Any]) -> int | None:
    error = answer.get("error")
    return int(error.get("err_code", 0)) if isinstance(error, dict) else None


async def stream_state(bus: Bus, tier: Tier | None) -> StreamState:
    """The state of ``tier``'s history stream (counts and sequences)."""
    name = _stream(tier)
    answer = _api_answer(await _exchange(bus, f"{API}STREAM.INFO.{name}", {}, tier))
    if _error_code(answer) == _STREAM_NOT_FOUND:
        what = "builds" if tier is None else f"{tier.value} history"
        raise HistoryUnavailable(
            f"the {what} stream {name} does not exist",
            reason="no_stream",
            fix="create it once with the admin key: fleet-deploy history --setup",
        )
    state = answer.get("state")
    if _error_code(answer) is not None or not isinstance(state, dict):
        raise HistoryUnavailable(
            f"JetStream could not tell the state of {name}: {_error_text(answer)}",
            reason="bad_answer",
        )
    return state


def _error_text(answer: dict[str, Any]) -> str:
    error = answer.get("error")
    if isinstance(error, dict):
        return str(error.get("description", "unknown error"))[:200]
    return "no state in the answer"


async def _fetch(
    bus: Bus, tier: Tier | None, start: int, *, until: int, only: str | None = None, stop: int = 0
) -> list[Recorded]:
    """The stream's messages from sequence ``start`` to ``until``, in order — with ``only``,
    those on subjects matching it (the server skips the rest, which costs it a look at
    each, and this client nothing); at most ``stop`` of them when ``stop`` is set."""
    name = _stream(tier)
    found: list[Recorded] = []
    while start <= until and (not stop or len(found) < stop):
        query: dict[str, Any] = {"seq": start, "batch": BATCH}
        if only is not None:
            query["next_by_subj"] = only
        else:
            query["batch"] = min(BATCH, until - start + 1)
        batch = await _exchange(bus, f"{API}DIRECT.GET.{name}", query, tier, until_end=True)
        got = 0
        for message in batch:
            sequence = message.headers.get("Nats-Sequence")
            if sequence is None:
                continue  # the batch's end (204), or nothing at or after start (404)
            entry = Recorded(
                seq=int(sequence),
                subject=message.headers.get("Nats-Subject", ""),
                data=message.data,
                time=parse_timestamp(message.headers.get("Nats-Time-Stamp")),
            )
            start = entry.seq + 1
            if entry.seq > until:
                return found
            found.append(entry)
            got += 1
        if not got:
            break  # nothing more that matches (or what was left aged out while we read)
    return found


async def read_history(
    bus: Bus,
    tier: Tier,
    book: HistoryBook,
    *,
    scan: int = DEFAULT_SCAN,
    want: int = 0,
    find: str | None = None,
) -> int:
    """Feed the newest ``scan`` messages of ``tier``'s stream into ``book``, oldest first;
    returns how many were read.

    A stream also holds every discovery answer, so ``scan`` messages may span few
    deployments. With ``want``, when the window holds fewer deployments than that, the read
    goes on back in time through the *requests* alone (the server filters them out of
    everything else) and reads each older deployment's answers by its id; with ``find``,
    a deployment the window does not hold is looked up by its id in the whole stream. Both
    go into ``book`` as whole deployments (``HistoryBook.adopt``)."""
    state = await stream_state(bus, tier)
    last = int(state.get("last_seq", 0))
    oldest = max(int(state.get("first_seq", 0)), 1)
    first = max(oldest, last - scan + 1)
    entries = await _fetch(bus, tier, first, until=last) if last >= first else []
    book.extend(entries)
    read = len(entries)
    if first > oldest and find is not None and book.record(find) is None:
        read += await _adopt(bus, tier, book, find, oldest=oldest, last=last)
    if first > oldest and want and len(book.records()) < want:
        read += await _read_back(bus, tier, book, want, oldest=oldest, before=first, last=last)
    log.debug("history_read", tier=tier.value, messages=read, first=first, last=last)
    return read


_LOOKBACK: Final = 20_000  # sequences before a deployment's first answer where its request is


async def _adopt(
    bus: Bus, tier: Tier, book: HistoryBook, deployment_id: str, *, oldest: int, last: int
) -> int:
    """Read one deployment whole by its id: its answers, then its requests just before and
    among them; into ``book``. Returns how many messages were read."""
    if not is_request_id(deployment_id):
        return 0
    answers = await _fetch(
        bus, tier, oldest, until=last, only=f"{RESPONSES_PREFIX}{deployment_id}.{tier.value}.*"
    )
    if not answers:
        return 0
    requests = await _fetch(
        bus,
        tier,
        max(oldest, answers[0].seq - _LOOKBACK),
        until=answers[-1].seq,
        only=f"deploy.{tier.value}.>",
    )
    mine = [entry for entry in requests if deployment_of_request(entry.data) == deployment_id]
    book.adopt(deployment_id, sorted(mine + answers, key=lambda entry: entry.seq))
    return len(answers) + len(requests)


async def _read_back(
    bus: Bus, tier: Tier, book: HistoryBook, want: int, *, oldest: int, before: int, last: int
) -> int:
    """Go back from sequence ``before`` through the requests alone, window after doubling
    window, until ``book`` holds ``want`` deployments or the stream's start; then read each
    deployment found there whole. Returns how many messages were read."""
    read = 0
    found: dict[str, None] = {}
    size = BATCH * 4
    while before > oldest and len(book.records()) + len(found) < want:
        start = max(oldest, before - size)
        requests = await _fetch(bus, tier, start, until=before - 1, only=f"deploy.{tier.value}.>")
        read += len(requests)
        older: dict[str, None] = {}
        for entry in requests:
            request_id = deployment_of_request(entry.data)
            if request_id is not None and book.record(request_id) is None:
                older[request_id] = None
        # Newest first: the deployments nearest the window are the ones to show.
        for request_id in reversed(older):
            found.setdefault(request_id, None)
        before, size = start, size * 2
    for deployment_id in list(found)[: max(0, want - len(book.records()))]:
        read += await _adopt(bus, tier, book, deployment_id, oldest=oldest, last=last)
    return read


@dataclass(frozen=True, slots=True)
class LastDeploy:
    """The newest deploy the history recorded to some hosts: its revision, id and time."""

    revision: str
    deployment_id: str
    at: float | None


async def last_deploy(
    bus: Bus, tier: Tier, hosts: list[HostInfo], *, actions: frozenset[str]
) -> LastDeploy | None:
    """The newest recorded request of one of ``actions`` that went to any of ``hosts``
    (``history.reaches``), read back through the requests alone, newest window first; None
    when there is none. What a deployer signed and sent, not what a host says it ran.

    Raises ``HistoryUnavailable`` or ``PermissionDenied`` when the stream cannot be read."""
    state = await stream_state(bus, tier)
    oldest = max(int(state.get("first_seq", 0)), 1)
    before = int(state.get("last_seq", 0)) + 1
    size = BATCH * 4
    while before > oldest:
        start = max(oldest, before - size)
        requests = await _fetch(bus, tier, start, until=before - 1, only=f"deploy.{tier.value}.>")
        for entry in reversed(requests):
            if not reaches(entry.subject, hosts):
                continue
            try:
                request = parse_deploy_request(entry.data)
            except RequestRejected:
                continue  # the stream keeps what it got; a bad request deployed nothing
            if request.action.value in actions and request.id is not None:
                return LastDeploy(request.revision, request.id, entry.time)
        before, size = start, size * 2
    return None


async def recorded_reference(
    bus: Bus, found: list[HostInfo], target: Target | None
) -> LastDeploy | None:
    """The newest recorded deploy (switch, boot or test) to ``target``'s hosts among
    ``found``, across their tiers, where this key may read the history (the admin's key);
    None where it may not or nothing is recorded: the hosts' own last jobs decide then
    (``fleet_status``)."""
    chosen = [host for host in found if in_target(host, target)]
    newest: LastDeploy | None = None
    for tier in Tier:
        hosts = [host for host in chosen if host.tier == tier.value]
        if not hosts:
            continue
        try:
            last = await last_deploy(bus, tier, hosts, actions=DEPLOY_ACTIONS)
        except (HistoryUnavailable, PermissionDenied):
            continue
        if last is not None and (newest is None or (last.at or 0.0) > (newest.at or 0.0)):
            newest = last
    return newest


async def read_build(bus: Bus, build_id: str) -> list[bytes]:
    """Every status of the build ``build_id`` the builds stream holds, oldest first (the
    server picks them out by subject, ``build.responses.<id>``).

    Raises ``HistoryUnavailable`` (no JetStream, no builds stream, no answer) or
    ``PermissionDenied`` (a key without JetStream: only the admin's has it)."""
    if not is_request_id(build_id):
        raise UsageError(
            f"{build_id[:80]!r} is not a build id: ids are 1-64 letters, digits, '-' or '_', "
            "as build prints them"
        )
    state = await stream_state(bus, None)
    oldest = max(int(state.get("first_seq", 0)), 1)
    last = int(state.get("last_seq", 0))
    subject = BUILDS_SUBJECT.replace("*", build_id)
    found = await _fetch(bus, None, oldest, until=last, only=subject, stop=MAX_BUILD_STATUSES)
    log.debug("build_read", build_id=build_id, statuses=len(found))
    return [entry.data for entry in found if entry.subject == subject]


async def setup_history(
    bus: Bus, tiers: Iterable[Tier], retention: Retention, *, builds: bool = True
) -> dict[str, Literal["created", "updated"]]:
    """Create each tier's stream, and (``builds``) the builds stream, or bring an existing
    one to ``retention``; idempotent.

    JetStream refuses some changes to an existing stream (its storage type, for one); the
    error then says so, and nothing was changed."""
    done: dict[str, Literal["created", "updated"]] = {}
    streams: list[tuple[Tier | None, dict[str, Any]]] = [
        (tier, stream_config(tier, retention)) for tier in tiers
    ]
    if builds:
        streams.append((None, builds_stream_config(retention)))
    for tier, config in streams:
        name = _stream(tier)
        try:
            info = _api_answer(await _exchange(bus, f"{API}STREAM.INFO.{name}", {}, tier))
            outcome: Literal["created", "updated"] = (
                "created" if _error_code(info) == _STREAM_NOT_FOUND else "updated"
            )
            verb = "CREATE" if outcome == "created" else "UPDATE"
            exchanged = await _exchange(bus, f"{API}STREAM.{verb}.{name}", config, tier)
        except PermissionDenied as exc:  # any key but the admin's: it alone has JetStream
            raise PermissionDenied(
                f"this key may not set up the history streams: the NATS server refused it "
                f"{exc.operation or 'access'} on {exc.subject}. Run 'fleet-deploy history "
                "--setup' with the admin key (--nkey-file or FLEET_DEPLOY_NKEY_FILE)",
                subject=exc.subject,
                operation=exc.operation,
                fix="run --setup with the admin key: only it may create or change the streams",
            ) from exc
        answer = _api_answer(exchanged)
        if _error_code(answer) is not None:
            raise HistoryUnavailable(
                f"JetStream refused the stream {name}: {_error_text(answer)}. Check that "
                "JetStream is enabled, and that --replicas is at most the number of servers "
                "in the cluster (1 without one)",
                reason="setup_refused",
                fix="check that JetStream is enabled, and on a cluster that --replicas is at "
                "most the number of servers",
            )
        done[name] = outcome
        log.info("history_stream_ready", stream=name, outcome=outcome)
    return done


@dataclass(frozen=True, slots=True)
class HistoryView:
    """What a history read found: the deployments, and where they came from.

    ``source`` per tier: ``jetstream``, or ``job_records`` when the tier's stream could not
    be read (``fallback_reasons`` says why: no JetStream, no stream, no answer). Tiers this
    key may not read are in ``unreadable`` — not an error: the test key reads test only."""

    records: list[DeploymentRecord]
    sources: dict[str, Literal["jetstream", "job_records"]] = field(default_factory=dict)
    fallback_reasons: dict[str, str] = field(default_factory=dict)
    unreadable: tuple[str, ...] = ()

    @property
    def from_job_records(self) -> bool:
        return "job_records" in self.sources.values()

    def notes(self) -> list[str]:
        """What a person should know about where this came from (one line each)."""
        lines = [
            f"{tier} tier: no JetStream history ({reason}); these are the hosts' own job "
            "records, asked through discovery: only hosts that answer now, only the jobs each "
            "still keeps, and no targets"
            for tier, reason in self.fallback_reasons.items()
        ]
        lines += [f"{tier} tier: this key may not read its history" for tier in self.unreadable]
        return lines


async def load_history(
    bus: Bus,
    tiers: Iterable[Tier],
    *,
    names: Mapping[str, str] | None = None,
    timing: DeployTiming | None = None,
    scan: int = DEFAULT_SCAN,
    want: int = 0,
    find: str | None = None,
) -> HistoryView:
    """Every deployment of ``tiers`` this key may read, newest first: from each tier's
    stream, or, where there is none, from the hosts' job records (``fallback``).

    ``want`` and ``find`` reach past the newest ``scan`` messages (``read_history``)."""
    records: list[DeploymentRecord] = []
    sources: dict[str, Literal["jetstream", "job_records"]] = {}
    reasons: dict[str, str] = {}
    unreadable: list[str] = []
    for tier in tiers:
        book = HistoryBook(names=names)
        try:
            await read_history(bus, tier, book, scan=scan, want=want, find=find)
        except (PermissionDenied, HistoryUnavailable) as exc:
            # Refused JetStream: a key of homelab-deploy's layout (which grants none), or
            # one that may not read this tier at all; the hosts' answer tells which.
            found = await _job_records(bus, tier, names=names, timing=timing, want=want, find=find)
            if found is None:
                unreadable.append(tier.value)
                continue
            reasons[tier.value] = (
                str(exc)
                if isinstance(exc, HistoryUnavailable)
                else "this key may not use JetStream"
            )
            records += found
            sources[tier.value] = "job_records"
            continue
        records += book.records()
        sources[tier.value] = "jetstream"
    records.sort(key=lambda r: (r.started_at or 0.0, r.id), reverse=True)
    return HistoryView(records, sources, reasons, tuple(unreadable))


async def _job_records(
    bus: Bus,
    tier: Tier,
    *,
    names: Mapping[str, str] | None,
    timing: DeployTiming | None,
    want: int = 0,
    find: str | None = None,
) -> list[DeploymentRecord] | None:
    """The tier's deployments from its hosts' job records; None when this key may not hear
    the tier's hosts at all.

    Each answer weighs up to 64 KiB with fifty jobs in it, so a host is asked for no more
    jobs than ``want`` deployments need; and one deployment (``find``) is asked for by its
    id, a job query every host of the tier answers with that job alone, log tail and all."""
    from fleet_core.deploy.deployer import Deployer  # the fallback only

    deployer = Deployer(bus, timing=timing or DeployTiming())
    recent = min(want, MAX_RECENT_JOBS) if want else MAX_RECENT_JOBS
    try:
        hosts = await deployer.discover(tier, recent_jobs=None if find else recent)
        if tier in deployer.unreadable_tiers:
            return None
        if find is not None:
            if not is_request_id(find):
                return []
            names_in_tier = [h.hostname for h in hosts if h.tier == tier.value]
            answers = await deployer.query_job(find, hosts=names_in_tier, tier=tier)
            hosts = [
                info.model_copy(update={"recent_jobs": [info.job]})
                for info in answers.values()
                if info.job is not None and info.job.phase is not JobPhase.UNKNOWN
            ]
    except PermissionDenied:
        return None
    return records_from_jobs(hosts, names=names)


def key_names(inventory: Path | None, seeds: Iterable[Path] = ()) -> dict[str, str]:
    """Public key -> name: each seed file's own (its file name without ``.seed``), the
    other ``*.seed`` files beside it, and an inventory's deployers and hosts. Unreadable
    files are skipped: naming is a courtesy, never a reason to fail."""
    from fleet_core.setup.nats_config import parse_inventory

    names: dict[str, str] = {}
    for seed_path in seeds:
        candidates = [seed_path, *sorted(seed_path.parent.glob("*" + _SEED_SUFFIX))[:_MAX_SEEDS]]
        for path in candidates:
            try:
                public = load_seed(path).public_key
            except FleetError:
                continue
            names.setdefault(public, path.name.removesuffix(_SEED_SUFFIX))
    if inventory is not None:
        try:
            parsed = parse_inventory(inventory.read_text(encoding="utf-8"), source=str(inventory))
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read inventory {inventory}: {exc}") from exc
        for deployer in parsed.deployers:
            names[deployer.nkey] = deployer.name
        for host in parsed.hosts:
            names.setdefault(host.nkey, host.name)
    return names
