"""Wire models of the deploy protocol and their limits (pure: no I/O).

Requests are parsed strictly — a listener must never act on something it did not fully
understand — while statuses and discovery replies are read leniently (unknown fields ignored)
so that a newer listener can talk to an older deployer and the other way round.

A ``DeployRequest`` checks its fields whenever one is built, so building one is the single
validation on each side: the listener builds it from the wire (``parse_deploy_request``), the
deployer from its caller's arguments. Both sides encode with ``encode``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from fleet_core.errors import RequestRejected
from fleet_core.protocol.actions import (
    DEFAULT_ACTION,
    DEFAULT_REVISION,
    Action,
    validate_action,
    validate_revision,
)
from fleet_core.protocol.closures import CLOSURE_ACTIONS, validate_store_path
from fleet_core.protocol.facts import HostFacts
from fleet_core.protocol.signing import ReplayCache, Signature, verify_request
from fleet_core.protocol.subjects import RESPONSES_PREFIX, Tier, is_reply_subject

__all__ = [
    "FINAL_STATUSES",
    "MAX_MESSAGE_CHARS",
    "MAX_RECENT_JOBS",
    "MAX_REQUEST_BYTES",
    "MAX_STATUS_BYTES",
    "CheckStatus",
    "DeployRequest",
    "DiscoverRequest",
    "ErrorCode",
    "HostInfo",
    "InvalidRequest",
    "JobPhase",
    "JobSummary",
    "PerHostRequest",
    "Status",
    "StatusKind",
    "encode",
    "encode_status",
    "is_request_id",
    "parse_deploy_request",
    "parse_discover_request",
    "parse_host_info",
    "parse_status",
]

MAX_REQUEST_BYTES: Final = 64 * 1024
MAX_STATUS_BYTES: Final = 64 * 1024
MAX_MESSAGE_CHARS: Final = 2000
MAX_QUERY_HOSTS: Final = 5000  # hosts one job query may name (it must fit MAX_REQUEST_BYTES)
# Job summaries one discovery may ask each host for (``DiscoverRequest.recent_jobs``); a
# host keeps its newest 50 job directories by default, and 50 summaries without their log
# tails fit well within MAX_STATUS_BYTES.
MAX_RECENT_JOBS: Final = 50
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SIGNING_FIELDS = ("signer", "signed_at", "signature")
_MAX_SIGNING_CHARS = 128  # a public key is 56 characters, an ed25519 signature 86


class StatusKind(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    STARTED = "started"
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"


FINAL_STATUSES: Final = frozenset({StatusKind.REJECTED, StatusKind.COMPLETED, StatusKind.FAILED})


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    INVALID_ACTION = "invalid_action"
    INVALID_REVISION = "invalid_revision"
    ALREADY_RUNNING = "already_running"
    BUILD_FAILED = "build_failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    # A host with trusted deployer keys refuses a request that is not signed by one of them,
    # over exactly what arrived, recently and once (fleet_core.protocol.signing raises these codes).
    UNSIGNED_REQUEST = "unsigned_request"
    UNTRUSTED_SIGNER = "untrusted_signer"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED_REQUEST = "expired_request"
    REPLAYED_REQUEST = "replayed_request"
    # After a switch or test the host decided to go back (fleet_core.host.jobs.activation):
    # the previous system runs again; the message says why and which it is.
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"  # it tried, and that failed too: look at the host
    CHECK_FAILED = "check_failed"  # a health check failed, and rollback was off
    # Answers to a cancel request (Action.CANCEL): the job is past the point where a stop
    # is safe, or it is over.
    ALREADY_ACTIVATING = "already_activating"
    ALREADY_FINISHED = "already_finished"
    # The answer to a log request (Action.LOGS) for a job this host has no directory of:
    # it never ran here, or it is older than the jobs the host keeps.
    UNKNOWN_JOB = "unknown_job"
    # A closure deploy's store path (fleet_core.protocol.closures): another host's system, no
    # system at all, or one that no substituter the host trusts serves with a valid signature.
    WRONG_HOST = "wrong_host"
    NOT_A_SYSTEM = "not_a_system"
    CLOSURE_UNAVAILABLE = "closure_unavailable"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def is_request_id(value: object) -> bool:
    """Whether ``value`` can be a request id: one subject token, and safe in a file name."""
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


class _Request(_Wire):
    """A request leaves its null optional fields off the wire, as homelab-deploy's do."""

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        fields: dict[str, Any] = handler(self)
        return {name: value for name, value in fields.items() if value is not None}


class DeployRequest(_Request):
    """A validated deploy request: the listener acts only on one of these.

    Building one raises ``RequestRejected`` (with the wire error code) for a reply subject
    outside ``deploy.responses.``, a malformed id, an unknown action or an unsafe revision,
    checked in that order. A null id is left off the wire, as homelab-deploy sends none.

    ``signer``, ``signed_at`` and ``signature`` (``fleet_core.protocol.signing``) come together
    or not at all; homelab-deploy's listeners ignore them, as they ignore any unknown field.

    ``bind`` (``fleet_core.protocol.trust``): true asks the listener to publish every status to
    ``<reply_to>.<tier>.<hostname>``, a subject only it may publish to under the layout
    ``nats-config`` writes; homelab-deploy's listeners ignore it and use ``reply_to``.
    """

    action: Action = DEFAULT_ACTION
    revision: str = DEFAULT_REVISION
    reply_to: str
    id: str | None = None
    bind: bool | None = None
    # True: the host does not re-activate the previous system after a failed activation,
    # check or confirmation; it reports. Left off the wire unless set.
    no_rollback: bool | None = None
    # A closure deploy: the exact system to fetch and activate instead of evaluating the
    # flake (fleet_core.protocol.closures). Signed with the rest; left off the wire unless set.
    store_path: str | None = None
    # A log request's window (Action.LOGS, fleet_core.protocol.logs): the byte of the job's
    # output to start at, the most bytes and the most lines to send. Not signed; left off
    # the wire unless set, so other requests are as they were.
    offset: int | None = None
    size: int | None = None
    lines: int | None = None
    signer: str | None = None
    signed_at: float | None = None
    signature: str | None = None

    def signature_fields(self) -> Signature | None:
        """The request's signature as ``signing`` checks it; None if unsigned."""
        if self.signer is None or self.signed_at is None or self.signature is None:
            return None
        return Signature(self.signer, self.signed_at, self.signature)

    def verify(
        self,
        subject: str,
        *,
        trusted: Iterable[str],
        replays: ReplayCache,
        now: float,
        ttl: float,
    ) -> None:
        """Raise ``RequestRejected`` unless this request, heard on ``subject``, is signed by
        one of ``trusted`` over its own fields, recently, and seen for the first time
        (``signing.verify_request``)."""
        verify_request(
            self.signature_fields(),
            request_id=self.id,
            subject=subject,
            action=self.action.value,
            revision=self.revision,
            store_path=self.store_path,
            trusted=trusted,
            now=now,
            replays=replays,
            ttl=ttl,
        )

    def signed(self, signature: Signature) -> DeployRequest:
        """This request carrying ``signature`` (made over its id, subject, action, revision
        and store path)."""
        return self.model_copy(
            update={
                "signer": signature.signer,
                "signed_at": signature.signed_at,
                "signature": signature.signature,
            }
        )

    @model_validator(mode="before")
    @classmethod
    def _validate(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data  # pydantic's own error: this is not a request at all
        reply_to = data.get("reply_to")
        if not is_reply_subject(reply_to):
            raise RequestRejected(
                ErrorCode.INVALID_REQUEST,
                f"reply_to {str(reply_to)[:80]!r} does not begin with {RESPONSES_PREFIX}",
            )
        request_id = data.get("id")
        if request_id is not None and not is_request_id(request_id):
            raise RequestRejected(
                ErrorCode.INVALID_REQUEST, "id must be 1-64 letters, digits, '-' or '_'"
            )
        _check_bind(data)
        _check_window(data)
        _check_signing_fields(data)
        _check_store_path(data)
        return {
            **data,
            "action": validate_action(data.get("action", DEFAULT_ACTION.value)),
            "revision": validate_revision(data.get("revision", DEFAULT_REVISION)),
        }


def _check_bind(data: dict[str, Any]) -> None:
    """``bind`` is true, false or absent: never a string or number read as one."""
    if not isinstance(data.get("bind", False), bool | None):
        raise RequestRejected(ErrorCode.INVALID_REQUEST, "bind must be true or false")


def _check_store_path(data: dict[str, Any]) -> None:
    """A closure deploy's ``store_path``: absent, or one store path, with an action that
    fetches or activates a system (never ``check``, ``cancel`` or ``logs``)."""
    store_path = data.get("store_path")
    if store_path is None:
        return
    validate_store_path(store_path)
    action = data.get("action", DEFAULT_ACTION.value)
    if action not in CLOSURE_ACTIONS:
        raise RequestRejected(
            ErrorCode.INVALID_REQUEST,
            f"a store path can be deployed with {', '.join(sorted(CLOSURE_ACTIONS))}, not with "
            f"{str(action)[:40]!r}",
        )


def _check_window(data: dict[str, Any]) -> None:
    """A log request's ``offset``, ``size`` and ``lines``: absent, or whole numbers in range
    (never a bool, a float or a string read as one); an offset a file could have."""
    for name, low in (("offset", 0), ("size", 1), ("lines", 1)):
        value = data.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**53
        ):
            raise RequestRejected(
                ErrorCode.INVALID_REQUEST,
                f"{name} must be a whole number from {low} to 2^53, not {str(value)[:40]!r}",
            )


def _check_signing_fields(data: dict[str, Any]) -> None:
    """The signing fields are all there or all absent, and of the right shape."""
    given = [name for name in _SIGNING_FIELDS if data.get(name) is not None]
    if not given:
        return
    signer, signed_at, signature = (data.get(name) for name in _SIGNING_FIELDS)
    if (
        len(given) != len(_SIGNING_FIELDS)
        or not isinstance(signer, str)
        or not isinstance(signature, str)
        or len(signer) > _MAX_SIGNING_CHARS
        or len(signature) > _MAX_SIGNING_CHARS
        or isinstance(signed_at, bool)
        or not isinstance(signed_at, int | float)
        or not math.isfinite(signed_at)
    ):
        raise RequestRejected(
            ErrorCode.INVALID_REQUEST,
            "signer, signed_at and signature come together: a public key, a time in seconds "
            "and a signature",
        )


class CheckStatus(_Wire):
    """One health check's result, as a final status carries it after a switch or test."""

    name: str
    ok: bool
    duration_s: float | None = None
    output_tail: list[str] = Field(default_factory=list)


class Status(_Wire):
    """A status published by a listener to the request's ``reply_to``."""

    hostname: str
    status: StatusKind
    error: str | None = None
    message: str = ""
    request_id: str | None = None
    tier: str | None = None
    action: str | None = None
    revision: str | None = None
    timestamp: float | None = None
    duration_s: float | None = None
    phase: str | None = None
    log_tail: list[str] | None = None
    # The public key that signed the request this status answers, as the listener verified
    # it; null for an unsigned request or a signature that did not verify. A listener of
    # this release always sends the field, so a deployer can tell its own request's answers
    # from those to a request that someone else sent with its id (protocol.trust).
    signer: str | None = None
    # The health checks run after the activation (final statuses of a switch or test with
    # checks only), and the exact system that runs after a rollback.
    checks: list[CheckStatus] | None = None
    rolled_back_to: str | None = None

    @property
    def reports_signer(self) -> bool:
        """Whether the listener told who signed the request (one older than that cannot)."""
        return "signer" in self.model_fields_set

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class DiscoverRequest(_Request):
    """A discovery request; without a tier (left off the wire) every listener answers.

    With ``job`` it is a *job query*: a deployer that lost track of a deployment (its
    connection dropped, or a host fell silent) asks for what the hosts in ``hosts`` know of
    the job with that request id. It rides on ``deploy.discover`` because homelab-deploy's
    published permissions let every deployer publish there and every listener subscribe.
    Only the named hosts answer; a listener that predates job queries answers as to any
    discovery, without ``job``, which the deployer reads as "cannot tell". With ``bind`` a
    listener answers on ``<reply_to>.<tier>.<hostname>``, as it does a bound deploy request.

    With ``recent_jobs`` (1 to ``MAX_RECENT_JOBS``) each answering host adds summaries of
    its newest job records, newest first (``HostInfo.recent_jobs``): the history of a
    fleet without JetStream. A listener that predates it ignores the field.
    """

    reply_to: str
    tier: Tier | None = None
    job: str | None = None
    hosts: list[str] | None = None
    bind: bool | None = None
    recent_jobs: int | None = Field(default=None, ge=1, le=MAX_RECENT_JOBS)


class JobPhase(StrEnum):
    ACCEPTED = "accepted"  # the request is taken; nothing runs yet
    RUNNING = "running"  # the rebuild was started
    FINISHED = "finished"  # the final status is known
    UNKNOWN = "unknown"  # the host has no record of that request id


class JobSummary(_Wire):
    """What a host knows of one job: the answer to a job query.

    ``status``, ``error``, ``message`` and ``log_tail`` are those of the final status the
    host sent (or would have sent) once ``phase`` is ``finished``.
    """

    request_id: str
    phase: JobPhase
    status: StatusKind | None = None
    error: str | None = None
    message: str | None = None
    exit_code: int | None = None
    duration_s: float | None = None
    log_tail: list[str] | None = None
    # What the job was asked and when, from the record: a job query's answer and the
    # summaries of ``HostInfo.recent_jobs`` carry them; a listener of an earlier release
    # does not (None). ``signer`` is the key that signed the request, as verified on arrival.
    action: str | None = None
    revision: str | None = None
    store_path: str | None = None  # a closure deploy's system
    signer: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


class HostInfo(_Wire):
    """A listener's answer to discovery (and, with ``job``, to a job query)."""

    hostname: str
    tier: str
    role: str | None = None
    version: str = ""
    busy: bool = False
    deploy_subjects: list[str] = Field(default_factory=list)
    running_job: str | None = None  # the request id of the job in progress, if any
    job: JobSummary | None = None  # set only in the answer to a job query
    # What the host runs (fleet_core.protocol.actions.HostKind): nixos, darwin or home-manager. None
    # from a listener that predates host kinds, or homelab-deploy's (both are NixOS).
    kind: str | None = None
    # What the host runs, measured on the host (fleet_core.protocol.facts); None from a
    # listener that predates facts, or homelab-deploy's.
    facts: HostFacts | None = None
    # Set only when the discovery asked for ``recent_jobs``: the host's newest job records,
    # newest first, without log tails (a job query by id gives one's tail).
    recent_jobs: list[JobSummary] | None = None
    # True from a listener that takes closure deploys (``DeployRequest.store_path``). A
    # listener before them ignores the field and would evaluate the revision instead, so a
    # deployer sends a store path only to a host that says true here.
    closures: bool | None = None
    # The flake configuration the host builds (its listener's --configuration; the hostname
    # unless set): what a closure deploy asks the builder for. None from an older listener.
    configuration: str | None = None


class InvalidRequest(RequestRejected):
    """A request that cannot be served; ``reply_to`` is where to say so (None: only log it),
    bound to the listener's tier and hostname when the body asked for ``bind``."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        reply_to: str | None,
        bind: bool = False,
        signer: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(code, message)
        self.reply_to = reply_to
        self.bind = bind
        self.signer = signer  # the public key the body claims to be signed by, for the log
        self.request_id = request_id  # the body's id, when it is one: a refusal names it


def encode(model: BaseModel) -> bytes:
    """Serialize a wire model; a status's ``error`` and other fields stay even when null.

    Requests are the exception: their null optional fields (id, tier) are left off.
    """
    return model.model_dump_json(exclude_unset=False, exclude_none=False).encode()


class PerHostRequest:
    """One request encoded for many hosts that differ only in their store path and signature:
    a closure deploy sends each host its own (``fleet_core.protocol.closures``).

    The fields are dumped once, and each host's copy is a ``json.dumps`` of them with its
    own three or four: two ``model_copy`` and a ``model_dump_json`` per host cost a closure
    deploy of 1,000 hosts as much again as their signatures (``bench/closures.py``). Nothing
    is validated again: the request was, and the paths were as the deploy was planned. The
    bytes differ from ``encode`` of the same request only in the order of the fields.
    """

    __slots__ = ("_fields",)

    def __init__(self, request: DeployRequest) -> None:
        self._fields: dict[str, Any] = request.model_dump(mode="json")

    def encode(self, store_path: str, signature: Signature | None) -> bytes:
        fields = dict(self._fields)
        fields["store_path"] = store_path
        if signature is not None:
            fields["signer"] = signature.signer
            fields["signed_at"] = signature.signed_at
            fields["signature"] = signature.signature
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


def encode_status(status: Status, limit: int = MAX_STATUS_BYTES) -> bytes:
    """Serialize a status within ``limit`` bytes, dropping the oldest log lines if needed.

    The tail is bounded in characters where it is collected, but JSON turns a control
    character into six bytes: a deployer drops an oversize status, and a host whose final
    status is dropped ends ``lost`` instead of ``failed`` with its error.
    """
    data = encode(status)
    tail = status.log_tail or []
    while len(data) > limit and tail:
        tail = tail[max(1, len(tail) // 8) :]
        data = encode(status.model_copy(update={"log_tail": tail}))
    if len(data) > limit:  # only a message far over MAX_MESSAGE_CHARS could get here
        data = encode(status.model_copy(update={"message": status.message[:200]}))
    return data


def _load_object(data: bytes, limit: int) -> dict[str, Any] | str:
    """The JSON object in ``data``, or a sentence saying why there is none."""
    if len(data) > limit:
        return f"message of {len(data)} bytes is over the {limit}-byte limit"
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return "message is not valid JSON"
    except RecursionError:  # [[[[… nested deeper than the parser's stack, well under the limit
        return "message nests too deeply"
    if not isinstance(obj, dict):
        return f"message must be a JSON object, not {type(obj).__name__}"
    return obj


def parse_deploy_request(data: bytes, *, nats_reply: str | None = None) -> DeployRequest:
    """Parse and fully validate a deploy request, or raise ``InvalidRequest``.

    The reply subject is the body's ``reply_to`` (the protocol) or, failing that, the NATS
    reply subject; either must begin with ``deploy.responses.``. A body whose ``reply_to``
    points anywhere else gets no answer at all: a listener never publishes elsewhere.
    """
    fallback = nats_reply if is_reply_subject(nats_reply) else None
    obj = _load_object(data, MAX_REQUEST_BYTES)
    if isinstance(obj, str):
        raise InvalidRequest(ErrorCode.INVALID_REQUEST, obj, reply_to=fallback)
    if "reply_to" not in obj and fallback is None:
        raise InvalidRequest(ErrorCode.INVALID_REQUEST, "request has no reply_to", reply_to=None)
    reply = obj.get("reply_to", fallback)
    answer = reply if is_reply_subject(reply) else None  # a bad reply_to is never answered
    claimed = obj.get("signer")
    signer = claimed[:_MAX_SIGNING_CHARS] if isinstance(claimed, str) else None
    request_id = obj.get("id") if is_request_id(obj.get("id")) else None
    if request_id is not None and reply != RESPONSES_PREFIX + request_id:
        # The id names the reply subject: whoever signs the id signs where the answers go,
        # and no request borrows another's reply subject under an id of its own. Checked
        # here, on what arrives, not in the model: a job record of an earlier release loads.
        raise InvalidRequest(
            ErrorCode.INVALID_REQUEST,
            f"reply_to must be {RESPONSES_PREFIX}<id> for a request with an id",
            reply_to=None,  # it may be someone else's: never answered
            signer=signer,
            request_id=request_id,
        )
    # A refusal goes where the statuses would have gone: bound when asked, or when signed
    # (a signer's answers are always bound, whatever the unsigned bind field says).
    bind = obj.get("bind") is True or signer is not None
    try:
        return DeployRequest.model_validate({**obj, "reply_to": reply})
    except RequestRejected as exc:
        raise InvalidRequest(
            exc.code, str(exc), reply_to=answer, bind=bind, signer=signer, request_id=request_id
        ) from exc
    except ValidationError:  # the validator leaves pydantic nothing to refuse; kept as a net
        raise InvalidRequest(
            ErrorCode.INVALID_REQUEST,
            "request fields have the wrong types",
            reply_to=answer,
            bind=bind,
            signer=signer,
            request_id=request_id,
        ) from None


def parse_discover_request(data: bytes, *, nats_reply: str | None = None) -> DiscoverRequest:
    """Parse a discovery request; raise ``InvalidRequest`` (never answered) when unusable."""
    obj = _load_object(data, MAX_REQUEST_BYTES)
    if isinstance(obj, str):
        raise InvalidRequest(ErrorCode.INVALID_REQUEST, obj, reply_to=None)
    reply = obj.get("reply_to", nats_reply)
    if not is_reply_subject(reply):
        raise InvalidRequest(
            ErrorCode.INVALID_REQUEST,
            f"discovery reply_to must begin with {RESPONSES_PREFIX}",
            reply_to=None,
        )
    job, hosts, bind = obj.get("job"), obj.get("hosts"), obj.get("bind")
    recent = obj.get("recent_jobs")
    if recent is not None and (
        isinstance(recent, bool)
        or not isinstance(recent, int)
        or not 1 <= recent <= MAX_RECENT_JOBS
    ):
        raise InvalidRequest(
            ErrorCode.INVALID_REQUEST,
            f"recent_jobs must be a number from 1 to {MAX_RECENT_JOBS}",
            reply_to=None,
        )
    if job is not None and not is_request_id(job):
        raise InvalidRequest(ErrorCode.INVALID_REQUEST, "job must be a request id", reply_to=None)
    if not isinstance(bind, bool | None):
        raise InvalidRequest(ErrorCode.INVALID_REQUEST, "bind must be true or false", reply_to=None)
    if hosts is not None and not (
        isinstance(hosts, list)
        and len(hosts) <= MAX_QUERY_HOSTS
        and all(isinstance(h, str) for h in hosts)
    ):
        raise InvalidRequest(
            ErrorCode.INVALID_REQUEST,
            f"hosts must be a list of at most {MAX_QUERY_HOSTS} hostnames",
            reply_to=None,
        )
    try:
        return DiscoverRequest(
            reply_to=reply,
            tier=obj.get("tier"),
            job=job,
            hosts=hosts,
            bind=bind,
            recent_jobs=recent,
        )
    except ValidationError:
        raise InvalidRequest(
            ErrorCode.INVALID_REQUEST, "discovery tier must be 'test' or 'prod'", reply_to=None
        ) from None


# ``Status.model_validate_json`` without its wrapper's own few steps (once per status).
_validate_status_json: Final = Status.__pydantic_validator__.validate_json


def parse_status(data: bytes) -> Status | None:
    """A status from a listener, or None when it is not one (the deployer ignores it).

    The deployer parses one per host and step, ten thousand in a big deploy: pydantic's own
    JSON parser first (a third of the time), and the careful path for anything it refuses.
    """
    if len(data) <= MAX_STATUS_BYTES:
        try:
            status: Status = _validate_status_json(data)
        except ValidationError:
            pass  # not JSON, not an object, or not a status: the careful path says which
        else:
            return status
    obj = _load_object(data, MAX_STATUS_BYTES)
    if isinstance(obj, str):
        return None
    try:
        return Status.model_validate(obj)
    except ValidationError:
        return None


def parse_host_info(data: bytes) -> HostInfo | None:
    """A discovery reply, or None when it is not one."""
    obj = _load_object(data, MAX_STATUS_BYTES)
    if isinstance(obj, str):
        return None
    try:
        return HostInfo.model_validate(obj)
    except ValidationError:
        return None
