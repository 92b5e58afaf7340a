"""A rollout's plan, budget and tracking, driven with explicit clocks (no server): the order,
the batches, when the budget is spent, what the deployer's own outage does and does not
count, and how the flags become a rollout."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import pytest
from structlog.testing import capture_logs

from fleet_core.bus import Bus, Message
from fleet_core.config.resolve import deploy_settings
from fleet_core.config.settings import DeployTiming, RolloutSettings
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.report import rollout_line, summary
from fleet_core.deploy.results import DeploymentResult, HostResult, RolloutStep
from fleet_core.deploy.rollout import MAX_NAMED, budget_stop, failed_hosts, ordered, plan_rollout
from fleet_core.deploy.tracker import DeploymentTracker
from fleet_core.errors import UsageError
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import JobSummary, Status
from fleet_core.protocol.subjects import Target, Tier

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

HOSTS = ["web3", "db1", "web10", "web1", "web2"]


def batches(
    settings: RolloutSettings, hosts: list[str] = HOSTS, seed: int | None = None
) -> list[tuple[int, list[str]]]:
    plan = plan_rollout(hosts, settings, seed=seed)
    return [(b.number, list(b.hosts)) for b in plan.batches]


def status(host: str, kind: str, **extra: object) -> Status:
    return Status.model_validate({"hostname": host, "status": kind, **extra})


def tracker_for(settings: RolloutSettings, hosts: list[str] = HOSTS) -> DeploymentTracker:
    plan = plan_rollout(hosts, settings)
    return DeploymentTracker(
        (),
        started_at=0.0,
        timeout=100,
        answer_within=5.0,
        silence_limit=30.0,
        batches=plan.batch_of(),
    )


def host(name: str, state: str, batch: int) -> HostResult:
    return HostResult(hostname=name, status=state, final=state != "started", batch=batch)


class TestPlan:
    def test_by_name_canary_first_then_batches(self) -> None:
        """Names in order (as strings: web10 before web2), the canary batch 0, then 1, 2…"""
        assert batches(RolloutSettings(canary=1, batch=2)) == [
            (0, ["db1"]),
            (1, ["web1", "web10"]),
            (2, ["web2", "web3"]),
        ]

    def test_without_a_canary_batches_count_from_one(self) -> None:
        """No canary: the first batch is batch 1, and a last short batch holds the rest."""
        assert batches(RolloutSettings(batch=2)) == [
            (1, ["db1", "web1"]),
            (2, ["web10", "web2"]),
            (3, ["web3"]),
        ]

    def test_a_canary_alone_then_all_the_rest(self) -> None:
        """Without a batch size the rest is one batch."""
        assert batches(RolloutSettings(canary=2)) == [
            (0, ["db1", "web1"]),
            (1, ["web10", "web2", "web3"]),
        ]

    def test_a_canary_larger_than_the_fleet(self) -> None:
        """A canary of more hosts than there are is every host, and nothing after it."""
        assert batches(RolloutSettings(canary=9, batch=1)) == [(0, sorted(HOSTS))]

    @pytest.mark.parametrize(
        ("percent", "size"),
        [(1, 1), (20, 1), (21, 2), (40, 2), (50, 3), (100, 5)],
    )
    def test_a_percentage_is_of_all_the_hosts_rounded_up(self, percent: int, size: int) -> None:
        """N% of five hosts, rounded up, at least one — the canary counted among them."""
        plan = plan_rollout(HOSTS, RolloutSettings(canary=1, batch=percent, batch_percent=True))
        assert [len(b.hosts) for b in plan.batches[1:-1]] == [size] * (len(plan.batches) - 2)
        assert 1 <= len(plan.batches[-1].hosts) <= size

    def test_a_shuffle_is_told_again_by_its_seed(self) -> None:
        """The order of a shuffle is random.Random(seed).shuffle of the sorted names: the
        seed in the result explains the run."""
        names = sorted(HOSTS)
        random.Random(42).shuffle(names)  # noqa: S311 - an order, not a secret
        assert ordered(HOSTS, 42) == names
        plan = plan_rollout(HOSTS, RolloutSettings(batch=1, shuffle=True), seed=42)
        assert [b.hosts[0] for b in plan.batches] == names and plan.seed == 42
        assert plan_rollout(HOSTS, RolloutSettings(batch=1), seed=42).seed is None

    def test_no_host_no_batch(self) -> None:
        """Discovery found nobody: the plan is empty (the deployer reports that nobody was
        reached, and publishes nothing)."""
        assert batches(RolloutSettings(canary=1, batch=1), hosts=[]) == []


class TestBudget:
    def test_within_the_budget_the_rollout_goes_on(self) -> None:
        """Failures up to max_failures, counted over every batch so far, stop nothing."""
        plan = plan_rollout(HOSTS, RolloutSettings(batch=1, max_failures=1))
        hosts = [host("db1", "failed", 1), host("web1", "completed", 2)]
        assert budget_stop(plan, hosts) is None

    @pytest.mark.parametrize("state", ["failed", "rejected", "missing", "lost", "timeout"])
    def test_any_final_state_but_completed_counts(self, state: str) -> None:
        """failed, rejected, missing, lost and timeout all spend the budget."""
        plan = plan_rollout(HOSTS, RolloutSettings(canary=1))
        stop = budget_stop(plan, [host("db1", state, 0)])
        assert stop is not None
        assert stop.reason == "the failure budget (0) was spent by db1 in the canary batch"
        assert stop.failed == ("db1",)

    def test_the_reason_names_each_batch_and_at_most_five_hosts(self) -> None:
        """Many failures: grouped by batch, five names, then a count."""
        plan = plan_rollout([f"h{i}" for i in range(10)], RolloutSettings(batch=4))
        hosts = [host(f"h{i}", "failed", 1 + i // 4) for i in range(8)]
        stop = budget_stop(plan, hosts)
        assert stop is not None
        assert stop.reason == (
            "the failure budget (0) was spent by h0, h1, h2 and h3 in batch 1; h4 and 3 more in "
            "batch 2"
        )

    def test_skipped_and_queued_hosts_do_not_count(self) -> None:
        """A host never tried is no failure."""
        hosts = [host("db1", "completed", 0), host("web1", "skipped", 1)]
        hosts.append(HostResult(hostname="web2", status="queued", batch=2))
        assert failed_hosts(hosts) == []

    def test_an_outcome_the_outage_hid_spends_nothing_but_stops(self) -> None:
        """A host that ended timeout while the deployer's NATS was down is no failure — the
        budget holds — yet the rollout stops rather than go on blind."""
        plan = plan_rollout(HOSTS, RolloutSettings(canary=1, max_failures=3))
        hosts = [host("db1", "timeout", 0)]
        assert failed_hosts(hosts, unknown={"db1"}) == []
        stop = budget_stop(plan, hosts, unknown={"db1"})
        assert stop is not None and stop.failed == ()
        assert stop.reason.startswith(
            "this deployer's NATS connection was down at the end of the canary batch, so the "
            "outcome of db1 is unknown"
        )
        assert "spends no failure budget" in stop.reason


class TestTracking:
    def test_queued_hosts_are_in_no_clock_until_their_batch(self) -> None:
        """A host of a later batch is neither missing nor timed out for the time the earlier
        batches took: its answer window and deadline start when its batch goes out."""
        t = tracker_for(RolloutSettings(canary=1), hosts=["a", "b"])
        assert [h.status for h in t.hosts] == ["queued", "queued"] and t.batch_over
        t.start_batch(["a"], 1.0)
        assert not t.batch_over
        t.observe(status("a", "completed"), 90.0)
        assert t.expire(150.0) == [] and t.batch_over and not t.done
        t.start_batch(["b"], 150.0)
        assert t.expire(154.0) == []  # 4 s into b's answer window, 154 s into the rollout
        assert [(h.hostname, h.status) for h in t.expire(155.0)] == [("b", "missing")]
        assert t.done and not t.ok

    def test_the_deadline_is_per_batch(self) -> None:
        """timeout=100 bounds each batch from its publish."""
        t = tracker_for(RolloutSettings(canary=1), hosts=["a", "b"])
        t.start_batch(["a"], 0.0)
        t.observe(status("a", "started"), 1.0)
        t.observe(status("a", "completed"), 99.0)
        t.start_batch(["b"], 99.0)
        t.observe(status("b", "started"), 100.0)
        assert t.expire(198.0) == []
        assert [(h.hostname, h.status) for h in t.expire(199.0)] == [("b", "timeout")]

    def test_skip_ends_the_queued_hosts(self) -> None:
        """The rollout stops: every queued host ends skipped, counted, and the deployment is
        done and not ok."""
        t = tracker_for(RolloutSettings(canary=1), hosts=["a", "b", "c"])
        t.start_batch(["a"], 0.0)
        t.observe(status("a", "failed", error="build_failed"), 1.0)
        skipped = t.skip("not deployed")
        assert [(h.hostname, h.status, h.batch, h.final) for h in skipped] == [
            ("b", "skipped", 1, True),
            ("c", "skipped", 1, True),
        ]
        result = t.result(
            deployment_id="d", subject="s", tier="test", action="switch", revision="m", now=2
        )
        assert result.done and not result.ok
        assert result.counts == {"failed": 1, "skipped": 2}

    def test_a_status_from_a_queued_host_changes_nothing(self) -> None:
        """No request went to a queued host: the tracker does not take its status (the
        deployer flags it)."""
        t = tracker_for(RolloutSettings(canary=1), hosts=["a", "b"])
        t.start_batch(["a"], 0.0)
        assert t.is_queued("b")
        assert t.observe(status("b", "completed"), 1.0) is None
        assert {h.hostname: h.status for h in t.hosts}["b"] == "queued"

    def test_nobody_listening_counts_per_host(self) -> None:
        """One "no responders" per host subject nobody listens to: once there are as many as
        unheard hosts of the batch, those are missing — not before."""
        t = tracker_for(RolloutSettings(batch=3), hosts=["a", "b", "c"])
        t.start_batch(["a", "b", "c"], 0.0)
        assert t.no_responder(0.1) == []
        t.observe(status("a", "accepted"), 0.2)
        assert t.expire(0.2) == []
        t.observe(status("b", "accepted"), 0.3)
        assert [(h.hostname, h.status) for h in t.expire(0.3)] == [("c", "missing")]

    def test_the_connection_given_up_times_out_the_batch_not_the_queue(self) -> None:
        """The deployer's connection is gone for good: the open batch's hosts end timeout
        (their outcome unknown, not a failure of theirs); the queued ones stay for the
        rollout to skip."""
        t = tracker_for(RolloutSettings(canary=1), hosts=["a", "b"])
        t.start_batch(["a"], 0.0)
        t.observe(status("a", "started"), 1.0)
        t.connection_lost(2.0, at=1000.0)
        assert [(h.hostname, h.status) for h in t.connection_gone(60.0)] == [("a", "timeout")]
        assert t.gone and t.unknown_outcomes == {"a"} and t.is_queued("b")

    def test_a_status_recovered_after_a_reconnect_is_the_real_outcome(self) -> None:
        """A final status lost in the outage and read from the job record counts as what it
        was: completed spends nothing."""
        t = tracker_for(RolloutSettings(canary=1), hosts=["a", "b"])
        t.start_batch(["a"], 0.0)
        t.observe(status("a", "started"), 1.0)
        t.connection_lost(2.0, at=1000.0)
        t.connection_back(5.0)
        assert t.due_queries(5.0) == ["a"]
        job = JobSummary.model_validate(
            {"request_id": "d", "phase": "finished", "status": "completed"}
        )
        [recovered] = t.take_job_answers({"a": job}, 5.5)
        assert (recovered.status, recovered.recovered, recovered.batch) == ("completed", True, 0)
        assert t.batch_over and failed_hosts(t.hosts, t.unknown_outcomes) == []

    def test_a_batch_waiting_for_the_connection_waits_at_most_a_batch_timeout(self) -> None:
        """Between batches with NATS down the rollout holds; after timeout it gives up."""
        t = tracker_for(RolloutSettings(canary=1), hosts=["a", "b"])
        t.start_batch(["a"], 0.0)
        t.observe(status("a", "completed"), 1.0)
        assert t.next_check() == float("inf")  # between batches: no clock runs
        t.connection_lost(2.0, at=1000.0)
        assert t.hold(2.0) is None and t.next_check() == 102.0
        assert t.hold(101.0) is None
        assert t.hold(102.0) == 100.0


class TestFlags:
    FLAGS: ClassVar[dict[str, object]] = {
        "nats_url": "nats://127.0.0.1:4222",
        "nkey_file": "/k.seed",
        "branch": None,
    }

    def settings(self, target: str, **flags: object) -> RolloutSettings | None:
        return deploy_settings({**self.FLAGS, "target": target, **flags}, environ={}).rollout

    def test_no_flag_no_rollout(self) -> None:
        """Without the flags, or with only --canary 0, a deploy is one publish, as ever."""
        assert self.settings("deploy.test.all") is None
        assert self.settings("deploy.test.all", canary="0") is None
        assert self.settings("deploy.test.web1", canary="0") is None

    def test_the_flags_become_a_rollout(self) -> None:
        """N and N% are told apart; the budget defaults to 0."""
        assert self.settings("deploy.test.all", canary="1", batch="2") == RolloutSettings(
            canary=1, batch=2
        )
        rollout = self.settings("deploy.test.role.web", batch="25%", max_failures="2")
        assert rollout == RolloutSettings(batch=25, batch_percent=True, max_failures=2)
        assert rollout is not None and rollout.batch_text == "25%"

    @pytest.mark.parametrize(
        ("target", "flags", "message"),
        [
            ("deploy.test.web1", {"canary": "1"}, "deploy.test.web1 is one host"),
            ("deploy.test.web1", {"batch": "2"}, "deploy.test.web1 is one host"),
            ("deploy.test.all", {"batch": "0"}, "--batch must be at least 1 host, not 0"),
            ("deploy.test.all", {"batch": "0%"}, "--batch must be at least 1 host, not 0%"),
            ("deploy.test.all", {"batch": "150%"}, "--batch 150% is more than all the hosts"),
            ("deploy.test.all", {"batch": "-1"}, "a number of hosts (N) or a percentage"),
            ("deploy.test.all", {"batch": "2.5"}, "a number of hosts (N) or a percentage"),
            ("deploy.test.all", {"canary": "-1"}, "--canary must be 0 or more hosts, not -1"),
            ("deploy.test.all", {"canary": "x"}, "--canary must be a whole number, not 'x'"),
            ("deploy.test.all", {"max_failures": "1"}, "give --canary K or --batch N"),
            ("deploy.test.all", {"shuffle": True}, "give --canary K or --batch N"),
            (
                "deploy.test.all",
                {"batch": "1", "max_failures": "-1"},
                "--max-failures must be 0 or more hosts, not -1",
            ),
        ],
    )
    def test_usage_errors(self, target: str, flags: dict[str, object], message: str) -> None:
        """What cannot be a rollout is a usage error that names the flag and what to give."""
        with pytest.raises(UsageError) as caught:
            self.settings(target, **flags)
        assert message in str(caught.value)


class TestReport:
    def test_live_lines(self) -> None:
        """A line per batch that goes out, and one for the stop naming the skipped hosts."""
        t = tracker_for(RolloutSettings(canary=1, batch=2))
        plan = plan_rollout(HOSTS, RolloutSettings(canary=1, batch=2))
        rollout = plan.result(0, [], None)
        assert rollout_line(RolloutStep(kind="batch", batch=0, hosts=["db1"]), rollout) == (
            "canary: db1"
        )
        step = RolloutStep(kind="batch", batch=2, hosts=["web2", "web3"])
        assert rollout_line(step, rollout) == "batch 2/2: web2, web3"
        stopped = plan.result(0, ["db1"], budget_stop(plan, [host("db1", "failed", 0)]))
        step = RolloutStep(kind="stopped", batch=0, hosts=["web1", "web10", "web2", "web3"])
        assert rollout_line(step, stopped) == (
            "no further batch: the failure budget (0) was spent by db1 in the canary batch. "
            "Skipped (4): web1, web10, web2, web3"
        )
        assert t.batch_over

    def test_the_summary_shows_batches_and_counts_the_skipped(self) -> None:
        """A BATCH column in deploy order, the rollout's paragraph, skipped in the verdict."""
        settings = RolloutSettings(canary=1, batch=2)
        plan = plan_rollout(["a", "b", "c"], settings)
        t = tracker_for(settings, hosts=["a", "b", "c"])
        t.start_batch(["a"], 0.0)
        t.observe(status("a", "failed", error="build_failed", message="boom"), 1.0)
        stop = budget_stop(plan, t.hosts)
        assert stop is not None
        t.skip(f"not deployed: no further batch started, as {stop.reason}")
        result = t.result(
            deployment_id="d",
            subject="deploy.test.all",
            tier="test",
            action="switch",
            revision="master",
            now=2.0,
            rollout=plan.result(0, ["a"], stop),
        )
        text = summary(result)
        assert "  HOST                 BATCH  STATUS         TIME  MESSAGE" in text
        assert "  a                    canary failed            -  build_failed: boom" in text
        assert (
            "Rollout (canary 1, batches of 2, failure budget 0, by name): 1 of 2 batches "
            "started; no further batch, as the failure budget (0) was spent by a in the canary "
            "batch. Skipped, never sent a request (2): b, c."
        ) in text
        assert text.endswith("NOT OK: 1 failed, 2 skipped")


class FleetWithoutServer:
    """A stand-in for the deployer's ``Bus``: ``hosts`` of the test tier that answer at once,
    as listeners do (discovery on ``deploy.discover.test``, accepted/started/completed — or
    failed, for ``failing`` — on each host's bound reply subject), delivered straight to the
    deployer's subscriptions: a deploy to thousands of hosts in a pure test."""

    is_connected = True
    is_closed = False
    public_key = None

    def __init__(self, hosts: list[str], failing: frozenset[str] = frozenset()) -> None:
        self.hosts = hosts
        self.failing = failing
        self.handlers: dict[str, Handler] = {}  # subject (a trailing * is a wildcard) → handler

    async def subscribe(self, subject: str, handler: Handler) -> _Unsubscribe:
        self.handlers[subject] = handler
        return _Unsubscribe(lambda: self.handlers.pop(subject, None))

    def watch_denials(self, watcher: object) -> Callable[[], None]:
        return lambda: None

    def watch_connection(self, watcher: object) -> Callable[[], None]:
        return lambda: None

    async def flush(self) -> None:
        pass

    async def publish(self, subject: str, payload: bytes, *, reply: str | None = None) -> None:
        request = json.loads(payload)
        bound = f"{request['reply_to']}.test."
        if subject == "deploy.discover.test":
            for host in self.hosts:
                info = {"hostname": host, "tier": "test", "deploy_subjects": []}
                await self._send(bound + host, info)
        elif subject == "deploy.test.all" or subject.startswith("deploy.test."):
            targets = self.hosts if subject == "deploy.test.all" else [subject.split(".")[2]]
            for host in targets:
                last = "failed" if host in self.failing else "completed"
                for kind in ("accepted", "started", last):
                    body = {"hostname": host, "status": kind, "request_id": request["id"]}
                    await self._send(bound + host, {**body, "tier": "test"})

    async def _send(self, subject: str, body: Mapping[str, object]) -> None:
        message = Message(subject=subject, data=json.dumps(body).encode(), reply=None)
        for pattern, handler in list(self.handlers.items()):
            prefix = pattern.removesuffix("*")
            if subject == pattern or (pattern.endswith(".*") and subject.startswith(prefix)):
                await handler(message)


@dataclass
class _Unsubscribe:
    undo: Callable[[], object]

    async def unsubscribe(self) -> None:
        self.undo()


Handler = Callable[[Message], Awaitable[None]]
MANY = [f"h{i:04d}" for i in range(2000)]
QUICK = DeployTiming(
    answer_within=5.0,
    silence_limit=30.0,
    discovery_first=0.5,
    discovery_quiet=0.05,
    discovery_cap=5.0,
)
MAX_LINE = 4096  # bytes of one JSON log line


def _deployer(stand_in: FleetWithoutServer) -> Deployer:
    return Deployer(cast(Bus, stand_in), timing=QUICK)


def _check_lines(captured: Sequence[Mapping[str, Any]]) -> None:
    """Every log line is short and names at most a handful of the hosts."""
    assert captured
    for event in captured:
        line = json.dumps(event, default=str)
        assert len(line.encode()) < MAX_LINE, line[:300]
        named = set(re.findall(r"\bh\d{4}\b", line))
        assert len(named) <= MAX_NAMED, f"{event['event']} names {len(named)} hosts"


class TestAtScale:
    """A deploy to two thousand hosts through the real deployer and a bus without a server:
    every log line counts the fleet and names a few of its hosts, never all of them."""

    @pytest.mark.anyio
    async def test_a_one_shot_deploy_logs_counts_not_the_fleet(self) -> None:
        """Discovery finds 2,000 hosts, all complete; no line lists them."""
        with capture_logs() as captured:
            result = await _deployer(FleetWithoutServer(MANY)).deploy(
                Target.all(Tier.TEST), revision="master", action=Action.SWITCH, timeout=30
            )
        assert result.ok and len(result.hosts) == len(MANY)
        _check_lines(captured)
        publish = next(e for e in captured if e["event"] == "deploy_publish")
        assert publish["expected"] == len(MANY) and publish["hosts"] == MANY[:MAX_NAMED]

    @pytest.mark.anyio
    async def test_a_rollout_logs_counts_not_the_fleet(self) -> None:
        """Ten batches of 10 % go out, each logged with its size and first few hosts."""
        with capture_logs() as captured:
            result = await _deployer(FleetWithoutServer(MANY)).deploy(
                Target.all(Tier.TEST),
                revision="master",
                action=Action.SWITCH,
                timeout=30,
                rollout=RolloutSettings(batch=10, batch_percent=True),
            )
        assert result.ok and result.rollout is not None and result.rollout.batches == 10
        _check_lines(captured)
        assert [e["hosts"] for e in captured if e["event"] == "rollout_batch"] == [200] * 10

    @pytest.mark.anyio
    async def test_a_failing_rollout_stops_naming_a_few_and_counting_the_rest(self) -> None:
        """A whole batch fails: the stop names five of its hosts and counts the skipped; each
        update's result lists the failed hosts as they are at that moment."""
        failing = frozenset(MANY[200:400])  # batch 2
        seen: list[tuple[list[str], list[str]]] = []

        def on_update(host: HostResult, result: DeploymentResult) -> None:
            assert result.rollout is not None
            # What the rollout's result says failed, and what the hosts say, at this moment.
            seen.append(
                (result.rollout.failed, [h.hostname for h in failed_hosts(result.hosts)][:50])
            )

        with capture_logs() as captured:
            result = await _deployer(FleetWithoutServer(MANY, failing)).deploy(
                Target.all(Tier.TEST),
                revision="master",
                action=Action.SWITCH,
                timeout=30,
                rollout=RolloutSettings(batch=10, batch_percent=True, max_failures=3),
                on_update=on_update,
            )
        assert result.rollout is not None and result.rollout.failed_count == 200
        assert result.counts == {"completed": 200, "failed": 200, "skipped": 1600}
        assert seen and all(told == actual for told, actual in seen)
        assert seen[-1][0] == sorted(failing)[:50]
        _check_lines(captured)
        stopped = next(e for e in captured if e["event"] == "rollout_stopped")
        assert stopped["skipped"] == 1600
        assert "and 195 more" in str(stopped["reason"])
