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

A group target given a ``RolloutSettings`` (``--canary``, ``--batch``) is a *rollout*: after
discovery, ``fleet_core.deploy.rollout`` cuts the hosts into batches, and each batch is one
request per host on ``deploy.<tier>.<host>`` — all with the deployment's one id and reply
subject (an id names its reply subject; listeners remember ids per host, so sharing one
across hosts is no replay), each signed for its own subject. The next batch goes out only
once every host of the one before is final and the rollout's budget holds, and never while
the deployer's own connection is down (the rollout waits for it, at most a batch's
``timeout``). Without one, a deployment is the single publish to the target's subject it
always was. Log lines name counts and a few hosts, never a whole fleet.

A *closure deploy* (``closures``: the systems a build made, ``fleet_core.deploy.closures``)
also goes to each host by name: the target's hosts are discovered (a single host's too, to
learn that its listener takes one), the hosts whose build failed or whose listener cannot
take one end before anything is sent, and each other host gets its own request on
``deploy.<tier>.<host>`` carrying its store path, signed for that subject — all at once, or
batch by batch in a rollout, whose budget counts the failed builds before its first batch.

Discovery, job queries, the gathering and a rollout's batches share one event stream
(``Inbox``) and one loop, which this module runs; what each event does to the deployment's
tracker, and a rollout's place, are ``fleet_core.deploy.gathering``'s; every decision in them
is a pure module's (the tracker's, the rollout's).

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
import secrets
import time
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from fleet_core.bus import Bus
from fleet_core.config.settings import DeployTiming, RolloutSettings
from fleet_core.deploy.answers import Answers, gather_answers, job_of
from fleet_core.deploy.closures import ClosurePlan, Closures, Ended, plan_closures
from fleet_core.deploy.gathering import (
    Gathering,
    OnConnection,
    OnRollout,
    OnUpdate,
    RunningRollout,
)
from fleet_core.deploy.inbox import ConnectionChange, Inbox, JobAnswers
from fleet_core.deploy.results import DeploymentResult, HostResult, RolloutStep, TierDirectory
from fleet_core.deploy.rollout import (
    MAX_NAMED,
    Plan,
    Stop,
    budget_stop,
    held_too_long,
    plan_rollout,
)
from fleet_core.deploy.tracker import DeploymentTracker
from fleet_core.errors import (
    ConnectionFailed,
    FleetError,
    PermissionDenied,
    RequestRejected,
    UsageError,
    only_fleet_error,
)
from fleet_core.keys import Seed
from fleet_core.protocol.actions import Action
from fleet_core.protocol.closures import CLOSURE_ACTIONS
from fleet_core.protocol.messages import (
    DeployRequest,
    DiscoverRequest,
    ErrorCode,
    HostInfo,
    PerHostRequest,
    encode,
)
from fleet_core.protocol.signing import RequestSigner
from fleet_core.protocol.subjects import (
    DISCOVER_SUBJECT,
    RESPONSES_PREFIX,
    Target,
    Tier,
    is_token,
    tier_discover_subject,
)
from fleet_core.protocol.trust import (
    bound_replies,
)

__all__ = [
    "Deployer",
    "OnConnection",
    "OnRollout",
    "OnUpdate",
    "listens_to",
    "new_deployment_id",
]

log = structlog.get_logger("fleet.deployer")


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
        # Decoded once: a rollout signs a request per host (``RequestSigner`` says why).
        self._signing = RequestSigner(signer.reveal()) if signer is not None else None
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

    async def discover(
        self,
        tier: Tier | None = None,
        *,
        recent_jobs: int | None = None,
        hosts: Collection[str] | None = None,
    ) -> list[HostInfo]:
        """Ask every listener (of ``tier``) to answer; the window closes once replies stop.

        Hosts of a tier whose replies this key may not read are not found: no error. With
        ``recent_jobs`` (1 to ``MAX_RECENT_JOBS``) each host adds its newest job records.
        With ``hosts``, only those answer, and the window closes once they all have: the
        dashboard's one host, whose recent jobs would weigh a whole fleet's answers."""
        if hosts is None:
            found = await self._discover(tier, recent_jobs=recent_jobs)
        else:
            names = sorted(set(hosts))
            reply = RESPONSES_PREFIX + uuid.uuid4().hex
            request = DiscoverRequest(
                reply_to=reply, tier=tier, bind=True, recent_jobs=recent_jobs, hosts=names
            )
            found = await self._ask(request, until=set(names))
        return sorted(found.hosts.values(), key=lambda h: (h.tier, h.hostname))

    async def _discover(self, tier: Tier | None, *, recent_jobs: int | None = None) -> Answers:
        reply = RESPONSES_PREFIX + uuid.uuid4().hex
        request = DiscoverRequest(reply_to=reply, tier=tier, bind=True, recent_jobs=recent_jobs)
        return await self._ask(request)

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
    ) -> Answers:
        names = sorted(set(hosts))
        if not names:
            return Answers()
        reply = RESPONSES_PREFIX + uuid.uuid4().hex
        request = DiscoverRequest(reply_to=reply, tier=tier, job=request_id, hosts=names, bind=True)
        return await self._ask(request, until=set(names))

    async def _ask(self, request: DiscoverRequest, *, until: set[str] | None = None) -> Answers:
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
        found = Answers(reply)
        inbox = Inbox(
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
                await gather_answers(
                    events, found, request, until=until, silent=silent, timing=timing
                )
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
        rollout: RolloutSettings | None = None,
        on_rollout: OnRollout | None = None,
        no_rollback: bool = False,
        closures: Closures | None = None,
    ) -> DeploymentResult:
        """Deploy ``revision`` to ``target`` and return once every host is final.

        ``closures`` makes it a closure deploy (``fleet_core.deploy.closures``): the target's
        hosts are discovered (a single host too), and each that may take one is sent its own
        store path on ``deploy.<tier>.<host>``, signed for that subject; the others end
        before anything is sent. The request's revision is then the build's commit.

        ``no_rollback`` asks the hosts to report a failed activation, health check or
        confirmation without re-activating their previous system.

        ``expect`` names hosts that must answer even if discovery does not find them (an
        offline host then ends ``missing``). ``on_update`` hears every host change,
        ``on_connection`` every drop and return of this deployer's own NATS connection.
        ``rollout`` deploys a group target batch by batch (``timeout`` then bounds each
        batch), and ``on_rollout`` hears each batch go out and the rollout stop.
        Raises ``UsageError`` for a bad revision, action or deployment id (building the
        request is their one check) or a rollout of a single host, and ``PermissionDenied``
        when the server refuses this key the subject.
        """
        if rollout is not None and not target.is_group:
            raise UsageError(
                f"a rollout (canary, batches) deploys a group in steps: {target.subject} is "
                "one host"
            )
        if closures is not None:
            if action.value not in CLOSURE_ACTIONS:
                raise UsageError(
                    f"a closure deploy can {', '.join(sorted(CLOSURE_ACTIONS))} a system, not "
                    f"{action.value}"
                )
            revision = closures.commit or revision
        deployment_id = deployment_id or new_deployment_id()
        request = _deploy_request(
            deployment_id, action=action, revision=revision, no_rollback=no_rollback
        )
        reply = request.reply_to
        bound = log.bind(
            deployment_id=deployment_id,
            subject=target.subject,
            action=action.value,
            revision=revision,
        )
        tier_replies = bound_replies(reply, target.tier)
        inbox = Inbox(
            self._bus,
            (reply, tier_replies),
            watched=(target.subject, reply, tier_replies),
        )
        async with inbox as events:
            setup = await self._setup(
                target, expect, closures, rollout, events, log=bound, replies=tier_replies
            )
            expected, found, matched = setup.expected, setup.found, setup.matched
            chosen, plan = setup.chosen, setup.plan
            tracker = DeploymentTracker(
                expected,
                started_at=time.monotonic(),
                timeout=timeout,
                answer_within=self.timing.answer_within,
                silence_limit=self.timing.silence_limit,
                batches=plan.batch_of() if plan is not None else None,
                paths=chosen.send if chosen is not None else None,
            )
            unsent = _end_unsent(tracker, chosen.ended) if chosen is not None else []
            tracker.heard_bound(found.bound)
            for flagged in found.flagged:
                tracker.flag(flagged)
            if matched:
                # The answers matter again only to name the tier's hosts to a target that
                # reached none: ten thousand of them need not live through the gathering.
                found = Answers()
            gathering = Gathering(
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
                rollout=RunningRollout(plan, request, on_rollout, chosen)
                if plan is not None
                else None,
                closures=closures,
                resend_after=self.timing.resend_after,
            )
            bound.info(
                "deploy_publish",
                expected=len(expected),
                hosts=sorted(expected)[:MAX_NAMED],
                signer=gathering.signer,
                closures=len(chosen.send) if chosen is not None else None,
                unsent=len(unsent) if chosen is not None else None,
            )
            gathering.report(unsent, time.monotonic())
            stop_watching = self._bus.watch_connection(
                lambda connected: events.post(ConnectionChange(connected, gone=self._bus.is_closed))
            )
            try:
                await self._send_and_gather(gathering, events, request, setup)
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

    async def _setup(
        self,
        target: Target,
        expect: Iterable[str],
        closures: Closures | None,
        rollout: RolloutSettings | None,
        events: Inbox,
        *,
        log: Any,
        replies: str,
    ) -> _Setup:
        """Which hosts the deployment expects (discovered for a group or a closure deploy),
        and, when it is one, its closure plan and its rollout's batches."""
        expected = set(expect)
        found = Answers()
        matched: set[str] = set()
        if target.is_group or closures is not None:
            found = await self._discover(target.tier)
        if target.is_group:
            matched = {h.hostname for h in found.hosts.values() if listens_to(h, target)}
            expected |= matched
        elif target.name is not None:
            expected.add(target.name)
        chosen = None
        if closures is not None:
            if target.tier in self._unreadable:
                self._refused_rollout(target, replies, events)
            chosen = self._plan_closures(expected, closures, found, target.tier)
        plan = None
        if rollout is not None:
            sendable = expected if chosen is None else set(chosen.send)
            failed_first = chosen.failed_first if chosen is not None else ()
            plan = self._plan(rollout, sendable, found, target.tier, log, failed_first=failed_first)
            expected = set(plan.batch_of()) | (expected - sendable)
        return _Setup(expected, found, matched, chosen, plan)

    async def _send_and_gather(
        self, gathering: Gathering, events: Inbox, request: DeployRequest, setup: _Setup
    ) -> None:
        """Publish as the deployment is shaped (one request to the target's subject, one
        per host of a closure deploy, or a rollout's batches in their turn) and gather."""
        target, chosen, plan = gathering.target, setup.chosen, setup.plan
        if plan is None and chosen is not None:
            await self._publish_closures(gathering, events, request, chosen.send)
        elif plan is None:
            # Signed last, after discovery: its lifetime starts as it goes out.
            payload = encode(self._sign(request, target.subject))
            await self._bus.publish(target.subject, payload, reply=gathering.reply)
            await self._bus.flush()
            events.raise_denied()
        elif not plan.batches:
            self._refused_rollout(target, bound_replies(gathering.reply, target.tier), events)
            return
        # A rollout's batches are published by the gathering, each in its turn.
        await self._gather(gathering, events)

    async def _directory(self, tier: Tier, found: Answers | None) -> TierDirectory | None:
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

    def _plan(
        self,
        rollout: RolloutSettings,
        hosts: Collection[str],
        found: Answers,
        tier: Tier,
        log: Any,
        *,
        failed_first: Collection[str] = (),
    ) -> Plan:
        """The rollout's batches over ``hosts``; a shuffle without a seed gets one drawn.

        A rollout sends each host its request on ``deploy.<tier>.<host>``: a discovered host
        that says it does not listen there (its listener's ``--deploy-subject``) cannot be
        reached so, and is a ``UsageError`` before anything is sent."""
        addressable = {name for name in hosts if is_token(name)}
        if len(addressable) < len(hosts):  # no subject can name it: it cannot be deployed
            log.warning("rollout_unaddressable_hosts", count=len(hosts) - len(addressable))
        _refuse_deaf(
            addressable,
            found,
            tier,
            "a rollout",
            "deploy them without --canary and --batch",
        )
        seed = rollout.seed
        if rollout.shuffle and seed is None:
            seed = secrets.randbits(32)
        plan = plan_rollout(addressable, rollout, seed=seed, failed_first=failed_first)
        log.info(
            "rollout_planned",
            hosts=len(addressable),
            batches=len(plan.batches),
            canary=rollout.canary,
            batch_size=rollout.batch_text,
            max_failures=rollout.max_failures,
            seed=plan.seed,
        )
        return plan

    def _plan_closures(
        self, hosts: Collection[str], closures: Closures, found: Answers, tier: Tier
    ) -> ClosurePlan:
        """Which of ``hosts`` a closure deploy sends its system, and how the rest end
        (``closures.plan_closures``): a host that does not listen on its own subject, which
        a closure deploy addresses, ends failed alone, sent nothing."""
        return plan_closures(
            (name for name in hosts if is_token(name)), closures, found.hosts, tier=tier.value
        )

    async def _publish_closures(
        self,
        gathering: Gathering,
        events: Inbox,
        request: DeployRequest,
        paths: Mapping[str, str],
    ) -> None:
        """A closure deploy at once: one request per host, on its own subject, carrying its
        own store path and signed for that subject; then flush, so that a refusal is known
        before the wait. One copy of the request per host, and no validation again: the
        paths were checked as ``Closures`` were made (``PerHostRequest``)."""
        prefix = f"deploy.{gathering.target.tier.value}."
        subjects = {host: prefix + host for host in paths}
        events.watch(subjects.values())
        publish, reply, signing = self._bus.publish, gathering.reply, self._signing
        template = PerHostRequest(request)
        assert request.id is not None  # deploy always gives its request an id
        sent: dict[str, tuple[str, bytes]] = {}
        gathering.sent_round(sent)
        for host, subject in subjects.items():
            path = paths[host]
            signature = None
            if signing is not None:
                signature = signing.sign(
                    request_id=request.id,
                    subject=subject,
                    action=request.action.value,
                    revision=request.revision,
                    now=time.time(),
                    store_path=path,
                )
            payload = template.encode(path, signature)
            sent[host] = (subject, payload)
            await publish(subject, payload, reply=reply)
        await self._bus.flush()
        events.raise_denied()

    def _refused_rollout(self, target: Target, replies: str, events: Inbox) -> None:
        """A rollout (or a closure deploy) that found no host to deploy: if it is because
        the server refused this key its tier's answers, say that (the test key's prod, under
        the layout nats-config writes — a single publish would have been refused, and said
        so)."""
        if target.tier is Tier.PROD and Tier.PROD in self._unreadable:
            key = self._bus.public_key or "this key"
            fix = "Production needs the admin key (--nkey-file or FLEET_DEPLOY_NKEY_FILE)"
            raise PermissionDenied(
                f"the NATS server refused key {key} permission to read the answers of prod "
                "hosts, so a rollout or a closure deploy (each addresses its hosts by name) "
                "can neither find nor follow one: under the permissions nats-config writes "
                "it is a test-tier deployer key (like the one an AI assistant gets), which "
                f"may deploy to deploy.test.> only. {fix}",
                subject=replies,
                operation="subscribe",
                fix=fix,
            )
        events.raise_denied()

    async def _roll_on(self, gathering: Gathering, events: Inbox) -> list[HostResult]:
        """A rollout's next step, once the hosts of its open batch are all final: stop (the
        budget is spent, or an outcome is unknown), wait for the connection, or publish the
        next batch. Returns the hosts that changed (those skipped)."""
        tracker, rollout = gathering.tracker, gathering.rollout
        if rollout is None or rollout.over or not tracker.batch_over or tracker.done:
            return []
        now = time.monotonic()
        stop = None
        if rollout.current is not None or rollout.plan.failed_first:
            # A batch ran, or builds failed before the first: may the next one start?
            unknown = tracker.unknown_outcomes
            stop = budget_stop(rollout.plan, tracker.hosts, unknown=unknown, gone=tracker.gone)
        if stop is None and not (tracker.connected and self._bus.is_connected):
            waited = tracker.hold(now)
            if waited is None:
                return []  # paused: the connection's return wakes the gathering
            stop = held_too_long(rollout.plan, rollout.plan.batches[rollout.next].number, waited)
        if stop is not None:
            return self._stop_rollout(gathering, stop, now)
        await self._publish_batch(gathering, events)
        return []

    def _stop_rollout(self, gathering: Gathering, stop: Stop, now: float) -> list[HostResult]:
        rollout = gathering.rollout
        assert rollout is not None
        rollout.stop = stop
        message = f"not deployed: no further batch started, as {stop.reason}"
        skipped = gathering.tracker.skip(message)
        gathering.log.warning(
            "rollout_stopped",
            reason=stop.reason,
            skipped=len(skipped),
            after_batch=rollout.current,
        )
        names = [host.hostname for host in skipped]
        step = RolloutStep(kind="stopped", batch=rollout.current or 0, hosts=names)
        rollout.step(step, gathering, now)
        return skipped

    async def _publish_batch(self, gathering: Gathering, events: Inbox) -> None:
        """Publish the rollout's next batch: one request per host, each signed for its own
        subject as it goes out; then flush, so that a refusal is known before the wait."""
        rollout = gathering.rollout
        assert rollout is not None
        batch = rollout.plan.batches[rollout.next]
        tier = gathering.target.tier
        subjects = [Target.host(tier, host).subject for host in batch.hosts]
        events.watch(subjects)
        gathering.tracker.start_batch(batch.hosts, time.monotonic())
        rollout.started(batch.number)
        sent: dict[str, tuple[str, bytes]] = {}
        gathering.sent_round(sent)
        for host, subject in zip(batch.hosts, subjects, strict=True):
            payload = encode(self._sign(rollout.request_for(host), subject))
            sent[host] = (subject, payload)
            await self._bus.publish(subject, payload, reply=gathering.reply)
        try:
            await self._bus.flush()
        except ConnectionFailed as exc:
            # Dropped as the batch went out: nats-py sends what it holds once it is back, and
            # the job queries after the reconnect tell who got the request.
            gathering.log.info("rollout_flush_failed", error=str(exc))
        events.raise_denied()
        gathering.log.info(
            "rollout_batch",
            batch=batch.number,
            hosts=len(batch.hosts),
            first=list(batch.hosts[:MAX_NAMED]),
        )
        step = RolloutStep(kind="batch", batch=batch.number, hosts=list(batch.hosts))
        rollout.step(step, gathering, time.monotonic())

    def _sign(self, request: DeployRequest, subject: str) -> DeployRequest:
        """``request`` signed for ``subject`` now, when this deployer has a signer."""
        if self._signing is None:
            return request
        assert request.id is not None  # deploy always gives its request an id
        signature = self._signing.sign(
            request_id=request.id,
            subject=subject,
            action=request.action.value,
            revision=request.revision,
            now=time.time(),
            store_path=request.store_path,
        )
        return request.signed(signature)

    async def _gather(self, gathering: Gathering, events: Inbox) -> None:
        """Feed the tracker until every host is final, sending the job queries it asks for.

        Raises ``PermissionDenied`` as itself, not wrapped by the queries' task group.
        """
        try:
            await self._gather_with_queries(gathering, events)
        except BaseExceptionGroup as group:
            raise only_fleet_error(group) from None

    async def _gather_with_queries(self, gathering: Gathering, events: Inbox) -> None:
        tracker = gathering.tracker
        async with anyio.create_task_group() as queries:
            while True:
                if gathering.rollout is not None:
                    gathering.report(await self._roll_on(gathering, events), time.monotonic())
                if tracker.done:
                    break
                changed: list[HostResult] = []
                wake = tracker.next_check()
                if gathering.resend_at is not None:
                    wake = min(wake, gathering.resend_at)
                with anyio.move_on_after(max(0.0, wake - time.monotonic())):
                    batch = [await events.receive()]
                    # Take everything that is already here before reporting once.
                    with contextlib.suppress(anyio.WouldBlock):
                        while True:
                            batch.append(events.receive_nowait())
                    now = time.monotonic()
                    if tracker.connection_down and self._bus.is_connected:
                        # A status can come in before the connection's own "back" event:
                        # the outage ends first, as it did (the event then changes nothing).
                        changed += gathering.take(ConnectionChange(connected=True), now)
                    for event in batch:
                        changed += gathering.take(event, now)
                now = time.monotonic()
                if gathering.resend_at is not None and now >= gathering.resend_at:
                    await self._resend(gathering)
                changed += tracker.expire(now)
                ask = tracker.due_queries(now)
                if ask:
                    gathering.log.info("job_query", hosts=len(ask))
                    queries.start_soon(self._ask_for_jobs, events, gathering, ask)
                gathering.report(changed, now)
            queries.cancel_scope.cancel()  # a query still out has nothing left to say

    async def _resend(self, gathering: Gathering) -> None:
        """Send the round's unheard hosts their requests once more (the very bytes: a host
        that has the request ignores an id it knows), after the server said nobody listened
        to one of them: a listener may have been resubscribing after a NATS restart."""
        unheard = [host for host in gathering.tracker.unheard() if host in gathering.sent]
        gathering.resent()
        gathering.log.info("no_responders_resent", hosts=len(unheard), first=unheard[:MAX_NAMED])
        for host in unheard:
            subject, payload = gathering.sent[host]
            await self._bus.publish(subject, payload, reply=gathering.reply)
        with contextlib.suppress(ConnectionFailed):  # sent once it is back, as a batch is
            await self._bus.flush()

    async def _ask_for_jobs(self, events: Inbox, gathering: Gathering, hosts: list[str]) -> None:
        """Send the job query the tracker asked for; its answers, even none, come back as
        one event (a query that could not be sent has no answers)."""
        request_id = gathering.deployment_id
        try:
            found = await self._query_job(request_id, hosts=hosts, tier=gathering.target.tier)
        except FleetError as exc:
            gathering.log.info("job_query_failed", error=str(exc))
            found = Answers()
        answers = {name: job_of(info, request_id) for name, info in found.hosts.items()}
        events.post(
            JobAnswers(answers, bare=found.bare, flagged=tuple(found.flagged), reply=found.reply)
        )


@dataclass(frozen=True, slots=True)
class _Setup:
    """What a deployment found before it sends: the hosts it expects, the discovery's
    answers, the group's own hosts, a closure deploy's plan and a rollout's batches."""

    expected: set[str]
    found: Answers
    matched: set[str]
    chosen: ClosurePlan | None
    plan: Plan | None


def _deploy_request(
    deployment_id: str, *, action: Action, revision: str, no_rollback: bool = False
) -> DeployRequest:
    """The deployment's request (unsigned), answered on ``deploy.responses.<id>``; a bad
    revision, action or id is a ``UsageError``."""
    try:
        return DeployRequest(
            action=action,
            revision=revision,
            reply_to=RESPONSES_PREFIX + deployment_id,
            id=deployment_id,
            bind=True,
            no_rollback=True if no_rollback else None,  # off the wire unless asked for
        )
    except RequestRejected as exc:
        if exc.code == ErrorCode.INVALID_REQUEST:  # here only the id can make the reply bad
            raise UsageError(
                f"deployment id {deployment_id!r} must be 1-64 letters, digits, '-' or '_'"
            ) from None
        raise UsageError(str(exc)) from None


def _end_unsent(tracker: DeploymentTracker, ended: Iterable[Ended]) -> list[HostResult]:
    """A closure deploy's hosts that end before anything is sent, ended in the tracker."""
    changed: list[HostResult] = []
    for end in ended:
        changed += tracker.end_unsent(end.host, end.status, error=end.error, message=end.message)
    return changed


def _refuse_deaf(hosts: Iterable[str], found: Answers, tier: Tier, what: str, instead: str) -> None:
    """A ``UsageError`` when a discovered host of ``hosts`` says it does not listen on
    ``deploy.<tier>.<host>`` (its listener's --deploy-subject), where ``what`` sends it its
    request; ``instead`` says what to do."""
    deaf = sorted(
        name
        for name in hosts
        if (info := found.hosts.get(name)) is not None
        and info.deploy_subjects
        and f"deploy.{tier.value}.{name}" not in info.deploy_subjects
    )
    if deaf:
        raise UsageError(
            f"{what} sends each host its request on deploy.{tier.value}.<host>, and "
            f"{', '.join(deaf[:MAX_NAMED])}{' and more' if len(deaf) > MAX_NAMED else ''} "
            f"do not listen there (their listeners' --deploy-subject): {instead}"
        )


def _reached_nobody(result: DeploymentResult, target: Target, matched: set[str]) -> bool:
    """Whether the target named no host that listens: a group that discovery matched to
    none, or a single host the server said nobody is subscribed for."""
    if target.is_group:
        return not matched
    return all(h.status == "missing" for h in result.hosts)


def listens_to(host: HostInfo, target: Target) -> bool:
    """Whether a discovered host subscribes to the target (by its own list, else by shape)."""
    if host.deploy_subjects:
        return target.subject in host.deploy_subjects
    if target.kind == "all":
        return True
    return target.kind == "role" and host.role == target.name
