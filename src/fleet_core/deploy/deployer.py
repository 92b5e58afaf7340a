"""Publishing a deploy and gathering every host's answer — the engine under the CLI and MCP.

One deployment: subscribe to a fresh ``deploy.responses.<id>``; for a group target, first
discover which hosts should answer; publish; flush (so a permission violation surfaces now,
not as a silent timeout); then feed every status into a ``DeploymentTracker`` until each
host is final. It returns the moment that happens, never waiting out a timeout it need not.

Core NATS is at-most-once, so the deployment also follows its own connection: a drop and a
reconnect go to the tracker (and to ``on_connection``), and the job queries the tracker
asks for — after a reconnect, and before a silent host is called lost — run as tasks of the
deployment whose answers come back through the same event stream as the statuses. The
decisions are all the tracker's; this module only does the I/O.

Every request asks for bound replies (``fleet_core.protocol.trust``): the deployer subscribes to
``<reply>.<tier>.*`` for the tier it expects and to the bare ``<reply>`` (homelab-deploy's
listeners answer there), reads the sender from the subject, and drops — logging it and
listing it as ``flagged`` in the result — what contradicts its subject, carries another
request id, or comes on the bare subject for a host or tier it cannot believe. A discovery
tolerates the server refusing it a tier's replies (the test key may not read prod's): that
tier's hosts are simply not found, and the deployer does not ask again.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from fleet_core.bus import CLOSE_DEADLINE, Bus, Message, Subscription
from fleet_core.config.settings import DeployTiming
from fleet_core.deploy.tracker import (
    DeploymentResult,
    DeploymentTracker,
    HostResult,
    Outage,
    TierDirectory,
)
from fleet_core.errors import (
    FleetError,
    PermissionDenied,
    RequestRejected,
    UsageError,
    only_fleet_error,
)
from fleet_core.keys import Seed
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import (
    DeployRequest,
    DiscoverRequest,
    ErrorCode,
    HostInfo,
    JobPhase,
    JobSummary,
    encode,
    parse_host_info,
    parse_status,
)
from fleet_core.protocol.refusals import Refusal, explain_refusals
from fleet_core.protocol.signing import sign_request
from fleet_core.protocol.subjects import (
    DISCOVER_SUBJECT,
    RESPONSES_PREFIX,
    Target,
    Tier,
    is_token,
    tier_discover_subject,
)
from fleet_core.protocol.trust import (
    Flagged,
    bound_replies,
    judge_answer,
    judge_status,
    reply_origin,
    shown,
)

__all__ = ["Deployer", "OnConnection", "OnUpdate", "new_deployment_id"]

log = structlog.get_logger("fleet.deployer")

OnUpdate = Callable[[HostResult, DeploymentResult], None]
# The deployer's connection dropped (``outage.duration_s`` is None) or came back.
OnConnection = Callable[[Outage, DeploymentResult], None]


@dataclass(frozen=True, slots=True)
class _Connection:
    connected: bool
    gone: bool = False  # closed for good: nats-py ran out of reconnect attempts


@dataclass(frozen=True, slots=True)
class _JobAnswers:
    answers: dict[str, JobSummary | None]
    bare: frozenset[str] = frozenset()  # hosts whose answer came on the bare reply subject
    flagged: tuple[Flagged, ...] = ()
    reply: str = ""  # the job query's reply subject


@dataclass
class _Answers:
    """What a discovery or job query gathered, and on which subjects."""

    reply: str = ""
    hosts: dict[str, HostInfo] = field(default_factory=dict)
    bound: set[str] = field(default_factory=set)  # answered on their own bound subject
    flagged: list[Flagged] = field(default_factory=list)

    @property
    def bare(self) -> frozenset[str]:
        return frozenset(self.hosts.keys() - self.bound)


_Event = Message | PermissionDenied | _Connection | _JobAnswers


def new_deployment_id() -> str:
    return uuid.uuid4().hex


class Deployer:
    """Deploys and discovers over one ``Bus``; safe to use for several deployments at once.

    With a ``signer`` (the deployer's own NKey seed) every deploy request is signed, as
    listeners with trusted deployer keys require (``fleet_core.protocol.signing``); without one,
    requests go unsigned.
    """

    def __init__(
        self, bus: Bus, *, timing: DeployTiming | None = None, signer: Seed | None = None
    ) -> None:
        self._bus = bus
        self.timing = timing or DeployTiming()
        self._signer = signer
        # Tiers whose replies the server refused this key (the test key, prod's): discovery
        # does not ask for them again. A restart picks up a change of permissions.
        self._unreadable: set[Tier] = set()

    @property
    def bus(self) -> Bus:
        """The connection this deployer talks over; a ``BuildClient`` may share it."""
        return self._bus

    @property
    def unreadable_tiers(self) -> frozenset[Tier]:
        """The tiers whose replies the server has refused this key (their hosts are never
        discovered): the test key's prod, under the layout nats-config writes."""
        return frozenset(self._unreadable)

    async def discover(self, tier: Tier | None = None) -> list[HostInfo]:
        """Ask every listener (of ``tier``) to answer; the window closes once replies stop.

        Hosts of a tier whose replies this key may not read are not found: no error."""
        found = await self._discover(tier)
        return sorted(found.hosts.values(), key=lambda h: (h.tier, h.hostname))

    async def _discover(self, tier: Tier | None) -> _Answers:
        reply = RESPONSES_PREFIX + uuid.uuid4().hex
        return await self._ask(DiscoverRequest(reply_to=reply, tier=tier, bind=True))

    async def query_job(
        self, request_id: str, *, hosts: Iterable[str], tier: Tier | None = None
    ) -> dict[str, HostInfo]:
        """Ask ``hosts`` what they know of the job ``request_id`` (a job query).

        Returns the answers by hostname as soon as every host named has answered, else when
        the discovery window closes. An answer whose ``job`` is None came from a listener
        that does not know job queries: it is alive, but cannot tell.
        """
        found = await self._query_job(request_id, hosts=hosts, tier=tier)
        return dict(found.hosts)

    async def _query_job(
        self, request_id: str, *, hosts: Iterable[str], tier: Tier | None
    ) -> _Answers:
        names = sorted(set(hosts))
        if not names:
            return _Answers()
        reply = RESPONSES_PREFIX + uuid.uuid4().hex
        request = DiscoverRequest(reply_to=reply, tier=tier, job=request_id, hosts=names, bind=True)
        return await self._ask(request, until=set(names))

    async def _ask(self, request: DiscoverRequest, *, until: set[str] | None = None) -> _Answers:
        """Publish a discovery request and gather the answers of its tier (of the hosts it
        names, for a job query), on the bound subject of each tier it may read and the bare one.

        The window closes once replies stop coming (``discovery_quiet`` after the last, or
        ``discovery_first`` when none comes), at ``discovery_cap``, or as soon as every host
        in ``until`` has answered.
        """
        timing = self.timing
        reply = request.reply_to
        tiers = [request.tier] if request.tier is not None else list(Tier)
        readable = {t: bound_replies(reply, t) for t in tiers if t not in self._unreadable}
        # Each tier's own discovery subject, and the bare one for homelab-deploy's layout and
        # its listeners; a key need be allowed only one of them (test: deploy.discover.test).
        asked = (*(tier_discover_subject(t) for t in readable), DISCOVER_SUBJECT)
        found = _Answers(reply)
        inbox = _Inbox(
            self._bus,
            (reply, *readable.values()),
            watched=(reply,),
            optional=(*readable.values(), *asked),
        )
        async with inbox as events:
            payload = encode(request)
            for subject in asked:
                await self._bus.publish(subject, payload, reply=reply)
            await self._bus.flush()  # a refused subscription or publish is reported by now
            events.raise_denied()  # the bare replies, which every deployer key may read
            for tier, subject in readable.items():
                if subject in events.refused:
                    self._unreadable.add(tier)
                    log.info("tier_unreadable", tier=tier.value, key_may_not_read=subject)
            if all(subject in events.refused for subject in readable.values()):
                return found  # no tier asked for is one this key may read: no such hosts
            # The server answers "no responders" once for each subject it took that nobody
            # listens to; only when every one of them said so is nobody listening at all.
            silent = len([subject for subject in asked if subject not in events.refused])
            if not silent:
                raise PermissionDenied(
                    f"the NATS server refused this key permission to publish discovery on "
                    f"{' or '.join(asked)}: use a deployer key (a listener's may not ask)",
                    subject=DISCOVER_SUBJECT,
                )
            with anyio.move_on_after(timing.discovery_cap):
                wait = timing.discovery_first
                while until is None or not until <= found.hosts.keys():
                    with anyio.move_on_after(wait) as window:
                        event = await events.receive()
                    if window.cancelled_caught:
                        break
                    if isinstance(event, PermissionDenied):
                        raise event
                    if not isinstance(event, Message):
                        continue  # only a deployment posts events of its own
                    if event.no_responders:
                        silent -= 1
                        if silent <= 0:
                            break
                        continue
                    _take_answer(found, request, event)
                    wait = timing.discovery_quiet
        return found

    async def deploy(
        self,
        target: Target,
        *,
        revision: str,
        action: Action,
        timeout: float,
        expect: Iterable[str] = (),
        deployment_id: str | None = None,
        on_update: OnUpdate | None = None,
        on_connection: OnConnection | None = None,
    ) -> DeploymentResult:
        """Deploy ``revision`` to ``target`` and return once every host is final.

        ``expect`` names hosts that must answer even if discovery does not find them (an
        offline host then ends ``missing``). ``on_update`` hears every host change,
        ``on_connection`` every drop and return of this deployer's own NATS connection.
        Raises ``UsageError`` for a bad revision, action or deployment id (building the
        request is their one check) and ``PermissionDenied`` when the server refuses this key
        the subject.
        """
        deployment_id = deployment_id or new_deployment_id()
        reply = RESPONSES_PREFIX + deployment_id
        try:
            request = DeployRequest(
                action=action, revision=revision, reply_to=reply, id=deployment_id, bind=True
            )
        except RequestRejected as exc:
            if exc.code == ErrorCode.INVALID_REQUEST:  # here only the id can make the reply bad
                raise UsageError(
                    f"deployment id {deployment_id!r} must be 1-64 letters, digits, '-' or '_'"
                ) from None
            raise UsageError(str(exc)) from None
        bound = log.bind(
            deployment_id=deployment_id,
            subject=target.subject,
            action=action.value,
            revision=revision,
        )
        tier_replies = bound_replies(reply, target.tier)
        inbox = _Inbox(
            self._bus,
            (reply, tier_replies),
            watched=(target.subject, reply, tier_replies),
        )
        async with inbox as events:
            expected = set(expect)
            found = _Answers()
            matched: set[str] = set()
            if target.is_group:
                found = await self._discover(target.tier)
                matched = {h.hostname for h in found.hosts.values() if _listens_to(h, target)}
                expected |= matched
            elif target.name is not None:
                expected.add(target.name)
            tracker = DeploymentTracker(
                expected,
                started_at=time.monotonic(),
                timeout=timeout,
                answer_within=self.timing.answer_within,
                silence_limit=self.timing.silence_limit,
            )
            tracker.heard_bound(found.bound)
            for flagged in found.flagged:
                tracker.flag(flagged)
            gathering = _Gathering(
                tracker,
                reply=reply,
                deployment_id=deployment_id,
                target=target,
                action=action,
                revision=revision,
                log=bound,
                on_update=on_update,
                on_connection=on_connection,
                signer=self._signer.public_key if self._signer is not None else None,
            )
            bound.info("deploy_publish", expected=sorted(expected), signer=gathering.signer)
            stop_watching = self._bus.watch_connection(
                lambda connected: events.post(_Connection(connected, gone=self._bus.is_closed))
            )
            try:
                # Signed last, after discovery: its lifetime starts as it goes out.
                payload = encode(self._sign(request, target.subject))
                await self._bus.publish(target.subject, payload, reply=reply)
                await self._bus.flush()
                events.raise_denied()
                await self._gather(gathering, events)
            finally:
                stop_watching()
            result = gathering.snapshot(time.monotonic())
        if _reached_nobody(result, target, matched):
            directory = await self._directory(target.tier, found if target.is_group else None)
            result = result.model_copy(update={"found_in_tier": directory})
        bound.info(
            "deploy_done",
            ok=result.ok,
            counts=result.counts,
            server_verified=result.server_verified,
            flagged=result.flagged_count,
        )
        return result

    async def _directory(self, tier: Tier, found: _Answers | None) -> TierDirectory | None:
        """Who answers in ``tier``: from the deployment's own discovery when it had one, else
        from a new one. None when this key may not ask (the result stands without it)."""
        if found is None:
            try:
                found = await self._discover(tier)
            except FleetError as exc:
                log.info("directory_unavailable", tier=tier.value, error=str(exc))
                return None
        hosts = [h for h in found.hosts.values() if h.tier == tier.value]
        # A name that is no subject token cannot be what a target meant: it is left out.
        return TierDirectory(
            tier=tier.value,
            hosts=sorted(h.hostname for h in hosts if is_token(h.hostname)),
            roles=sorted({h.role for h in hosts if h.role is not None and is_token(h.role)}),
        )

    def _sign(self, request: DeployRequest, subject: str) -> DeployRequest:
        """``request`` signed for ``subject`` now, when this deployer has a signer."""
        if self._signer is None:
            return request
        assert request.id is not None  # deploy always gives its request an id
        signature = sign_request(
            self._signer.reveal(),
            request_id=request.id,
            subject=subject,
            action=request.action.value,
            revision=request.revision,
            now=time.time(),
        )
        return request.signed(signature)

    async def _gather(self, gathering: _Gathering, events: _Inbox) -> None:
        """Feed the tracker until every host is final, sending the job queries it asks for.

        Raises ``PermissionDenied`` as itself, not wrapped by the queries' task group.
        """
        try:
            await self._gather_with_queries(gathering, events)
        except BaseExceptionGroup as group:
            raise only_fleet_error(group) from None

    async def _gather_with_queries(self, gathering: _Gathering, events: _Inbox) -> None:
        tracker = gathering.tracker
        async with anyio.create_task_group() as queries:
            while not tracker.done:
                changed: list[HostResult] = []
                with anyio.move_on_after(max(0.0, tracker.next_check() - time.monotonic())):
                    batch = [await events.receive()]
                    # Take everything that is already here before reporting once.
                    with contextlib.suppress(anyio.WouldBlock):
                        while True:
                            batch.append(events.receive_nowait())
                    now = time.monotonic()
                    for event in batch:
                        changed += gathering.take(event, now)
                now = time.monotonic()
                changed += tracker.expire(now)
                ask = tracker.due_queries(now)
                if ask:
                    gathering.log.info("job_query", hosts=len(ask))
                    queries.start_soon(self._ask_for_jobs, events, gathering, ask)
                gathering.report(changed, now)
            queries.cancel_scope.cancel()  # a query still out has nothing left to say

    async def _ask_for_jobs(self, events: _Inbox, gathering: _Gathering, hosts: list[str]) -> None:
        """Send the job query the tracker asked for; its answers, even none, come back as
        one event (a query that could not be sent has no answers)."""
        request_id = gathering.deployment_id
        try:
            found = await self._query_job(request_id, hosts=hosts, tier=gathering.target.tier)
        except FleetError as exc:
            gathering.log.info("job_query_failed", error=str(exc))
            found = _Answers()
        answers = {name: _job_of(info, request_id) for name, info in found.hosts.items()}
        events.post(
            _JobAnswers(answers, bare=found.bare, flagged=tuple(found.flagged), reply=found.reply)
        )


class _Gathering:
    """One deployment's tracker and its caller's callbacks: what each event does to them."""

    def __init__(
        self,
        tracker: DeploymentTracker,
        *,
        reply: str,
        deployment_id: str,
        target: Target,
        action: Action,
        revision: str,
        log: Any,
        on_update: OnUpdate | None,
        on_connection: OnConnection | None,
        signer: str | None = None,
    ) -> None:
        self.tracker = tracker
        self.signer = signer  # the public key the request is signed with, if it is
        self.reply = reply
        self.deployment_id = deployment_id
        self.target = target
        self.log = log
        self._action = action
        self._revision = revision
        self._on_update = on_update
        self._on_connection = on_connection

    def snapshot(self, now: float) -> DeploymentResult:
        return self.tracker.result(
            deployment_id=self.deployment_id,
            subject=self.target.subject,
            tier=self.target.tier.value,
            action=self._action.value,
            revision=self._revision,
            now=now,
        )

    def report(self, changed: list[HostResult], now: float) -> None:
        if self._on_update is None or not changed:
            return
        current = self.snapshot(now)
        for host in changed:
            self._on_update(host, current)

    def take(self, event: _Event, now: float) -> list[HostResult]:
        """One event into the tracker; returns the hosts that changed."""
        if isinstance(event, PermissionDenied):
            raise event
        if isinstance(event, _Connection):
            return self._connection(event, now)
        if isinstance(event, _JobAnswers):
            answers, bare = self._believed(event)
            changed = self.tracker.take_job_answers(answers, now, bare=bare)
            for host in changed:
                self.log.info(
                    "job_query_settled",
                    host=host.hostname,
                    status=host.status,
                    recovered=host.recovered,
                )
            return changed
        if event.no_responders:
            return self.tracker.nobody_listens(now)
        origin = reply_origin(self.reply, event.subject)
        status = parse_status(event.data)
        if status is None or origin is None:
            self.log.warning("status_ignored", subject=shown(event.subject), size=len(event.data))
            return []
        tracker = self.tracker
        reason = judge_status(
            status,
            origin,
            deployment_id=self.deployment_id,
            tier=self.target.tier.value,
            expected=tracker.expects(status.hostname),
            group=self.target.is_group,
            speaks_bound=tracker.speaks_bound(status.hostname),
            signer=self.signer,
        )
        if reason is not None:
            self.flag(Flagged.of(event.subject, status.hostname, status.status.value, reason))
            return []
        updated = tracker.observe(status, now, bound=origin.bound)
        return [updated] if updated is not None else []

    def flag(self, flagged: Flagged) -> None:
        """Drop what is not believed: a warning, and a line in the result."""
        self.log.warning(
            "reply_flagged",
            reply_subject=flagged.subject,
            claimed_host=flagged.hostname,
            claim=flagged.claim,
            reason=flagged.reason,
        )
        self.tracker.flag(flagged)

    def _believed(self, event: _JobAnswers) -> tuple[dict[str, JobSummary | None], Collection[str]]:
        """A job query's answers less those on the bare subject for a host known to answer
        bound; its flagged answers go to the result."""
        answers = dict(event.answers)
        for flagged in event.flagged:
            self.flag(flagged)
        for name in sorted(event.bare & answers.keys()):
            if self.tracker.speaks_bound(name):
                del answers[name]
                self.flag(
                    Flagged.of(
                        event.reply,
                        name,
                        "job answer",
                        f"it came on the bare reply subject, but {name} answers on its own "
                        "reply subject (any listener key may publish to the bare one)",
                    )
                )
        return answers, event.bare

    def _connection(self, event: _Connection, now: float) -> list[HostResult]:
        if event.gone:
            self.log.warning("deploy_connection_gone")
            return self.tracker.connection_gone(now)
        if event.connected:
            outage = self.tracker.connection_back(now)
        else:
            outage = self.tracker.connection_lost(now, at=time.time())
        if outage is None:
            return []
        if event.connected:
            self.log.info("deploy_connection_back", outage_s=outage.duration_s)
        else:
            self.log.info("deploy_connection_lost")
        if self._on_connection is not None:
            self._on_connection(outage, self.snapshot(now))
        return []


def _job_of(info: HostInfo, request_id: str) -> JobSummary | None:
    """What a job query's answer says of the job; None when the listener cannot tell."""
    if info.job is not None:
        return info.job if info.job.request_id == request_id else None
    if info.running_job == request_id:  # knows running_job but not job: still, it runs
        return JobSummary(request_id=request_id, phase=JobPhase.RUNNING)
    return None


def _take_answer(found: _Answers, request: DiscoverRequest, event: Message) -> None:
    """One answer to a discovery or job query into ``found``, unless it is not believed: an
    answer on a bound subject must name that subject's host and tier, and one on the bare
    subject for a host that answered bound is dropped."""
    info = parse_host_info(event.data)
    origin = reply_origin(request.reply_to, event.subject)
    if info is None or origin is None:
        return
    reason = judge_answer(info, origin)
    if reason is None and request.tier is not None and info.tier != request.tier.value:
        return  # not asked for: an answer of a listener that ignores the tier
    if reason is None and request.hosts is not None and info.hostname not in request.hosts:
        return
    if reason is None and not origin.bound and info.hostname in found.bound:
        reason = (
            f"it came on the bare reply subject, but {info.hostname} answered on its own "
            "reply subject (any listener key may publish to the bare one)"
        )
    if reason is not None:
        claim = "job answer" if request.job is not None else "discovery"
        flagged = Flagged.of(event.subject, info.hostname, claim, reason)
        log.warning(
            "reply_flagged",
            reply_subject=flagged.subject,
            claimed_host=flagged.hostname,
            claim=claim,
            reason=reason,
        )
        found.flagged.append(flagged)
        return
    if origin.bound:
        found.bound.add(info.hostname)
    found.hosts[info.hostname] = info


def _reached_nobody(result: DeploymentResult, target: Target, matched: set[str]) -> bool:
    """Whether the target named no host that listens: a group that discovery matched to
    none, or a single host the server said nobody is subscribed for."""
    if target.is_group:
        return not matched
    return all(h.status == "missing" for h in result.hosts)


def _listens_to(host: HostInfo, target: Target) -> bool:
    """Whether a discovered host subscribes to the target (by its own list, else by shape)."""
    if host.deploy_subjects:
        return target.subject in host.deploy_subjects
    if target.kind == "all":
        return True
    return target.kind == "role" and host.role == target.name


class _Inbox:
    """Reply subscriptions plus permission denials, as one event stream; ``post`` adds events
    of the deployer's own (connection changes, job answers).

    ``subjects[0]`` is the request's bare reply subject, which every deployer key may read.
    A denial on a ``watched`` subject is an event, and kept for ``raise_denied``. A denial of
    an ``optional`` subscription (a tier's replies, in discovery) is expected: it is only
    noted in ``refused``, and the bus logs it at debug level.
    """

    def __init__(
        self,
        bus: Bus,
        subjects: tuple[str, ...],
        *,
        watched: tuple[str, ...],
        optional: Iterable[str] = (),
    ) -> None:
        self._bus = bus
        self._subjects = subjects
        self._watched = watched
        self._optional = frozenset(optional)
        self._denials: list[PermissionDenied] = []
        self._subscriptions: list[Subscription] = []
        self.refused: set[str] = set()

    async def receive(self) -> _Event:
        return await self._receive.receive()

    def receive_nowait(self) -> _Event:
        return self._receive.receive_nowait()

    def post(self, event: _Event) -> None:
        with contextlib.suppress(anyio.ClosedResourceError):  # the deployment is over
            self._send.send_nowait(event)

    def raise_denied(self) -> None:
        """Raise the server's refusals so far, if any, as one error that says what this key
        is and what it may do (a test key deploying prod is refused the publish, and the
        prod replies before it)."""
        if self._denials:
            raise self._explained()

    def _explained(self) -> PermissionDenied:
        first = self._denials[0]
        refusals = [Refusal(d.operation or "publish", d.subject or "?") for d in self._denials]
        key = self._bus.public_key or ""
        explained = explain_refusals(refusals, key=key, reply=self._subjects[0])
        return PermissionDenied(
            str(explained), subject=first.subject, operation=first.operation, fix=explained.fix
        )

    async def __aenter__(self) -> _Inbox:
        send: MemoryObjectSendStream[_Event]
        send, self._receive = anyio.create_memory_object_stream[_Event](math.inf)

        async def deliver(msg: Message) -> None:
            # A late reply after the inbox closed is no one's news; nats-py must not see an error.
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                send.send_nowait(msg)

        def denied(exc: PermissionDenied) -> bool:
            if exc.subject in self._optional:
                self.refused.add(exc.subject)
                return True
            if exc.subject in self._watched:
                self._denials.append(exc)
                send.send_nowait(self._explained())
                return True  # raised to the caller, who says it better than a log line
            return False

        self._send = send
        self._stop_watching = self._bus.watch_denials(denied)
        try:
            for subject in self._subjects:
                self._subscriptions.append(await self._bus.subscribe(subject, deliver))
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _close(self) -> None:
        self._stop_watching()
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_DEADLINE):
            for subscription in self._subscriptions:
                await subscription.unsubscribe()
        self._send.close()
        self._receive.close()
