"""Deployment tracking and its completion rules, driven with explicit clocks (no server)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fleet_core.deploy.results import HostResult
from fleet_core.deploy.tracker import DeploymentTracker
from fleet_core.protocol.messages import JobSummary, Status

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it


def tracker(*hosts: str, timeout: float = 100) -> DeploymentTracker:
    return DeploymentTracker(
        hosts, started_at=0.0, timeout=timeout, answer_within=5.0, silence_limit=30.0
    )


def status(host: str, kind: str, **extra: object) -> Status:
    return Status.model_validate({"hostname": host, "status": kind, **extra})


def job(phase: str, **extra: object) -> JobSummary:
    return JobSummary.model_validate({"request_id": "d", "phase": phase, **extra})


def states(t: DeploymentTracker) -> dict[str, str]:
    return {h.hostname: h.status for h in t.hosts}


class TestCompletion:
    def test_done_only_when_every_host_is_final(self) -> None:
        """Intermediate statuses never finish a deployment; final ones do."""
        t = tracker("a", "b")
        for kind in ("accepted", "started", "progress"):
            t.observe(status("a", kind), 1)
            t.observe(status("b", kind), 1)
        assert not t.done
        t.observe(status("a", "completed"), 2)
        assert not t.done
        t.observe(status("b", "completed"), 3)
        assert t.done and t.ok

    def test_success_counts_only_final_statuses(self) -> None:
        """Many accepted/started messages do not spoil a success (homelab-deploy's bug)."""
        t = tracker("a")
        for kind in ("accepted", "started", "progress", "progress", "completed"):
            t.observe(status("a", kind), 1)
        assert t.ok

    @pytest.mark.parametrize("final", ["failed", "rejected"])
    def test_any_non_completed_final_is_not_ok(self, final: str) -> None:
        """A failed or rejected host makes the deployment not ok, but done."""
        t = tracker("a", "b")
        t.observe(status("a", "completed"), 1)
        t.observe(status("b", final, error="build_failed"), 1)
        assert t.done and not t.ok

    def test_late_messages_after_final_are_ignored(self) -> None:
        """A duplicate or late status for a finished host changes nothing."""
        t = tracker("a")
        t.observe(status("a", "failed", error="build_failed"), 1)
        assert t.observe(status("a", "completed"), 2) is None
        assert t.hosts[0].status == "failed"

    def test_unexpected_host_is_added(self) -> None:
        """A host that answers without being expected is tracked and must finish too."""
        t = tracker("a")
        t.observe(status("a", "completed"), 1)
        t.observe(status("z", "accepted"), 1)
        assert not t.done
        assert [h.expected for h in t.hosts] == [True, False]
        t.observe(status("z", "completed"), 2)
        assert t.done and t.ok


class TestDeadlines:
    def test_silent_expected_host_is_missing(self) -> None:
        """An expected host that never answers is missing once the answer window closes."""
        t = tracker("a", "b")
        t.observe(status("a", "accepted"), 1)
        assert t.next_check() == 5.0
        assert t.expire(4.9) == []
        changed = t.expire(5.0)
        assert [(h.hostname, h.status) for h in changed] == [("b", "missing")]

    def test_host_that_goes_quiet_is_lost_when_it_does_not_answer_a_job_query(self) -> None:
        """A host silent for the silence limit after answering is asked, then lost."""
        t = tracker("a")
        t.observe(status("a", "started"), 2)
        assert t.next_check() == 32.0
        assert t.due_queries(31.9) == []
        assert t.expire(32.0) == []
        assert t.due_queries(32.0) == ["a"]
        [lost] = t.take_job_answers({}, 33.0)
        assert (lost.status, lost.recovered) == ("lost", False)
        assert lost.message == "the host went silent for 30 s and did not answer a job query"
        assert t.done and not t.ok

    def test_progress_keeps_a_host_alive(self) -> None:
        """Each message moves the silence deadline."""
        t = tracker("a")
        t.observe(status("a", "started"), 2)
        t.observe(status("a", "progress"), 20)
        assert t.expire(32.0) == []
        assert t.next_check() == 50.0

    def test_timeout_finishes_everything(self) -> None:
        """At the deployment's deadline every unfinished host ends timeout."""
        t = tracker("a", "b", timeout=10)
        t.observe(status("a", "completed"), 1)
        t.observe(status("b", "progress"), 9)
        assert [(h.hostname, h.status) for h in t.expire(10)] == [("b", "timeout")]
        assert t.done and not t.ok

    def test_nobody_listens(self) -> None:
        """The server's no-responders status makes every silent host missing at once."""
        t = tracker("a")
        assert [h.status for h in t.nobody_listens(0.01)] == ["missing"]
        assert t.done

    def test_no_expected_hosts_waits_for_the_answer_window(self) -> None:
        """With nobody expected, the tracker waits the answer window for volunteers."""
        t = tracker()
        assert not t.done
        t.expire(5.0)
        assert t.done and not t.ok

    def test_result_snapshot(self) -> None:
        """The result carries counts per state and each host's details."""
        t = tracker("a", "b")
        t.observe(status("a", "completed", duration_s=1.5), 1)
        t.observe(status("b", "failed", error="build_failed", log_tail=["x", "error: y"]), 2)
        result = t.result(
            deployment_id="d",
            subject="deploy.test.all",
            tier="test",
            action="switch",
            revision="main",
            now=2.5,
        )
        assert result.counts == {"completed": 1, "failed": 1}
        assert result.hosts[1].log_tail == ("x", "error: y")
        assert (result.ok, result.done, result.duration_s) == (False, True, 2.5)


class TestJobQueries:
    def test_a_silent_host_still_running_is_not_lost(self) -> None:
        """A silent host that answers running keeps its state, and its silence clock restarts."""
        t = tracker("a")
        t.observe(status("a", "started"), 2)
        t.expire(32.0)
        assert t.due_queries(32.0) == ["a"]
        assert t.take_job_answers({"a": job("running")}, 33.0) == []
        assert states(t) == {"a": "started"}
        assert t.next_check() == 63.0
        assert t.due_queries(40.0) == []

    @pytest.mark.parametrize(
        ("record", "expected"),
        [
            (job("finished", status="completed", message="done", duration_s=14.5), "completed"),
            (
                job("finished", status="failed", error="build_failed", log_tail=["error: x"]),
                "failed",
            ),
        ],
    )
    def test_a_finished_record_ends_the_host_as_if_its_status_had_come(
        self, record: JobSummary, expected: str
    ) -> None:
        """A silent host whose record is finished ends with that record, marked recovered."""
        t = tracker("a")
        t.observe(status("a", "started", phase="building"), 2)
        t.expire(32.0)
        t.due_queries(32.0)
        [host] = t.take_job_answers({"a": record}, 33.0)
        assert (host.status, host.final, host.recovered) == (expected, True, True)
        assert (host.error, host.duration_s) == (record.error, record.duration_s)
        assert host.log_tail == tuple(record.log_tail or ())
        assert host.phase == "building"
        assert t.done and t.ok is (expected == "completed")

    def test_no_record_or_an_old_listener_means_lost(self) -> None:
        """A silent host that has no record of the job, or cannot tell, is lost, saying why."""
        t = tracker("a", "b")
        t.observe(status("a", "started"), 2)
        t.observe(status("b", "started"), 2)
        t.expire(32.0)
        assert t.due_queries(32.0) == ["a", "b"]
        changed = t.take_job_answers({"a": job("unknown"), "b": None}, 33.0)
        assert [(h.hostname, h.status) for h in changed] == [("a", "lost"), ("b", "lost")]
        assert "no record of this deployment" in changed[0].message
        assert "too old to answer a job query" in changed[1].message

    def test_a_status_while_the_query_is_out_settles_the_host(self) -> None:
        """A host whose own status arrives while it is asked is not lost for not answering."""
        t = tracker("a")
        t.observe(status("a", "started"), 2)
        t.expire(32.0)
        t.due_queries(32.0)
        t.observe(status("a", "progress"), 32.5)
        assert t.take_job_answers({}, 33.0) == []
        assert states(t) == {"a": "progress"}
        t.observe(status("a", "completed"), 34.0)
        assert t.take_job_answers({}, 34.0) == []
        assert t.done and t.ok

    def test_one_query_at_a_time(self) -> None:
        """Hosts that fall silent while a query is out are asked in the next one."""
        t = tracker("a", "b")
        t.observe(status("a", "started"), 2)
        t.observe(status("b", "started"), 3)
        t.expire(32.0)
        assert t.due_queries(32.0) == ["a"]
        t.expire(33.0)
        assert t.due_queries(33.0) == []
        assert t.next_check() == 100.0  # nothing to wake for: the answers will come
        t.take_job_answers({"a": job("running")}, 33.5)
        assert t.due_queries(33.5) == ["b"]


class TestOutages:
    def test_the_hosts_clocks_stand_still_while_nats_is_down(self) -> None:
        """An outage is not silence: neither silence nor the answer window runs during it."""
        t = tracker("a", "b")
        t.observe(status("a", "started"), 2)
        outage = t.connection_lost(4.0, at=1_700_000_000.0)
        assert outage is not None and outage.duration_s is None
        assert t.next_check() == 100.0  # only the deadline while down
        assert t.expire(60.0) == []
        assert t.due_queries(60.0) == []
        back = t.connection_back(64.0)
        assert back is not None and back.duration_s == 60.0
        # b's answer window (5 s) had 1 s left at the drop; a's silence (30 s) had 28 s.
        assert t.due_queries(64.0) == ["a", "b"]  # every open host is asked at once
        t.take_job_answers({"a": job("running"), "b": job("unknown")}, 64.5)
        assert t.next_check() == 65.0
        assert [(h.hostname, h.status) for h in t.expire(65.0)] == [("b", "missing")]
        assert t.expire(94.0) == []
        assert t.expire(94.5) == []
        assert t.due_queries(94.5) == ["a"]

    def test_a_final_status_lost_in_the_outage_is_recovered_after_it(self) -> None:
        """After a reconnect every open host is asked, and a finished record settles it."""
        t = tracker("a")
        t.observe(status("a", "progress"), 10)
        t.connection_lost(12.0, at=0.0)
        t.connection_back(15.0)
        assert t.due_queries(15.0) == ["a"]
        [host] = t.take_job_answers({"a": job("finished", status="completed")}, 15.2)
        assert (host.status, host.recovered) == ("completed", True)
        assert t.done and t.ok
        result = t.result(
            deployment_id="d", subject="s", tier="test", action="switch", revision="m", now=16
        )
        assert [(o.started_at, o.duration_s) for o in result.outages] == [(0.0, 3.0)]

    def test_hosts_not_heard_since_the_reconnect_are_asked_again(self) -> None:
        """A host that reconnects after the deployer is asked again in later rounds, and is
        not lost meanwhile, even if its silence limit had passed."""
        t = tracker("a", "b")
        t.observe(status("a", "started"), 2)
        t.observe(status("b", "started"), 2)
        t.expire(32.0)
        assert t.due_queries(32.0) == ["a", "b"]
        t.connection_lost(32.2, at=0.0)
        assert t.take_job_answers({}, 32.5) == []  # void: the connection dropped meanwhile
        t.connection_back(40.0)
        assert t.due_queries(40.0) == ["a", "b"]
        assert t.take_job_answers({"a": job("running")}, 41.0) == []
        assert t.due_queries(41.5) == []
        assert t.next_check() == 42.0  # the next round, 1 s after the last answers
        assert t.due_queries(42.0) == ["b"]
        assert t.take_job_answers({}, 43.0) == []
        assert t.due_queries(45.0) == ["b"]
        assert t.take_job_answers({}, 46.0) == []
        assert t.due_queries(50.0) == ["b"]  # the last round: now silence counts again
        [lost] = t.take_job_answers({}, 51.0)
        assert (lost.hostname, lost.status) == ("b", "lost")
        assert states(t) == {"a": "started", "b": "lost"}

    def test_a_pending_host_that_runs_the_job_is_no_longer_pending(self) -> None:
        """A host whose statuses were all lost but that runs the job is started, not missing."""
        t = tracker("a")
        t.connection_lost(1.0, at=0.0)
        t.connection_back(9.0)
        assert t.due_queries(9.0) == ["a"]
        t.expire(9.5)  # the answer window does not close on a host being asked
        [host] = t.take_job_answers({"a": job("running")}, 9.6)
        assert (host.status, host.final) == ("started", False)
        assert t.expire(30.0) == []

    def test_deadline_during_an_outage_blames_nats(self) -> None:
        """Hosts still open when the deadline passes during an outage end timeout, and the
        message says NATS was unreachable, not that the host went silent."""
        t = tracker("a", "b", timeout=50)
        t.observe(status("a", "completed"), 3)
        t.observe(status("b", "started"), 3)
        t.connection_lost(10.0, at=0.0)
        [host] = t.expire(50.0)
        assert (host.hostname, host.status) == ("b", "timeout")
        assert host.message.startswith("NATS was unreachable when the deployment's deadline")
        assert "down for 40.0 s" in host.message and "silent" not in host.message
        assert t.done and not t.ok

    def test_a_long_outage_makes_no_host_lost_or_missing(self) -> None:
        """An outage far longer than the silence limit and the answer window ends no host."""
        t = tracker("a", "b", timeout=1000)
        t.observe(status("a", "progress"), 1)
        t.connection_lost(2.0, at=0.0)
        assert t.expire(500.0) == []
        t.connection_back(500.0)
        assert t.expire(500.0) == []
        assert t.due_queries(500.0) == ["a", "b"]
        assert t.take_job_answers({"a": job("running"), "b": job("accepted")}, 500.5) == [
            t.hosts[1]
        ]
        assert states(t) == {"a": "progress", "b": "accepted"}

    def test_a_connection_given_up_ends_every_open_host_blaming_nats(self) -> None:
        """When the deployer's connection is closed for good, nothing more can be heard:
        open hosts end timeout at once, with a message about NATS, not about them."""
        t = tracker("a", "b")
        t.observe(status("a", "completed"), 1)
        t.observe(status("b", "started"), 1)
        t.connection_lost(2.0, at=0.0)
        [host] = t.connection_gone(62.0)
        assert (host.hostname, host.status) == ("b", "timeout")
        assert host.message.startswith("NATS was unreachable: the deployer gave up reconnecting")
        assert "after 60 s" in host.message
        assert t.done and not t.ok

    def test_drop_and_return_are_idempotent(self) -> None:
        """A second drop or return without the other in between changes nothing."""
        t = tracker("a")
        assert t.connection_back(1.0) is None
        assert t.connection_lost(2.0, at=0.0) is not None
        assert t.connection_lost(3.0, at=1.0) is None
        assert t.connection_back(4.0) is not None
        assert t.connection_back(5.0) is None


def test_nobody_expected_and_a_short_timeout_does_not_spin() -> None:
    """With no host expected, a deadline before the answer window still ends the deployment."""
    t = DeploymentTracker([], started_at=0.0, timeout=1.0, answer_within=5.0, silence_limit=35.0)
    t.expire(1.0)
    assert t.done


class TestObservedHosts:
    """``observe`` builds each host's new state without validating the status's fields a
    second time (``bench/scale.py``: at ten thousand hosts it was the tracker's largest cost).
    What it builds must be what validating would have built."""

    STATUSES = (
        {"hostname": "a", "status": "accepted"},
        {"hostname": "a", "status": "started", "phase": "build", "message": "building"},
        {"hostname": "a", "status": "progress", "duration_s": 3},
        {
            "hostname": "a",
            "status": "failed",
            "error": "activation_failed",
            "message": "switch failed",
            "duration_s": 12.5,
            "log_tail": ["line 1", "line 2"],
            "checks": [{"name": "web", "ok": False, "duration_s": 1, "output_tail": ["503"]}],
            "rolled_back_to": "/nix/store/abc-nixos-system",
        },
        {"hostname": "a", "status": "completed", "log_tail": []},
    )

    @pytest.mark.parametrize("fields", STATUSES, ids=lambda f: str(f["status"]))
    @pytest.mark.parametrize("batch", [None, 2])
    def test_each_host_state_is_the_validated_model(
        self, fields: dict[str, object], batch: int | None
    ) -> None:
        """Fields, their order, the fields set, equality, repr and JSON all match
        ``HostResult(...)`` built from the same values, for a host of a batch or none."""
        batches = {"a": batch} if batch is not None else None
        t = DeploymentTracker(
            ["a"],
            started_at=0.0,
            timeout=100,
            answer_within=5.0,
            silence_limit=30.0,
            batches=batches,
        )
        if batch is not None:
            t.start_batch(["a"], 0.0)
        before = t.hosts[0]
        s = Status.model_validate(fields)
        got = t.observe(s, 1.0)
        want = HostResult(
            hostname="a",
            status=s.status.value,
            final=s.is_final,
            expected=True,
            error=s.error,
            message=s.message,
            phase=s.phase or before.phase,
            duration_s=s.duration_s,
            log_tail=s.log_tail or [],
            batch=batch,
            checks=s.checks,
            rolled_back_to=s.rolled_back_to,
            store_path=before.store_path,
        )
        assert got is not None
        assert got == want
        assert repr(got) == repr(want)
        assert list(got.model_dump()) == list(want.model_dump())
        assert got.model_dump() == want.model_dump()
        assert got.model_dump_json() == want.model_dump_json()
        assert got.model_fields_set == want.model_fields_set
        assert got.model_copy(update={"status": "lost"}).status == "lost"
        assert isinstance(got.log_tail, tuple)  # as validation makes it, not the status's list
        # Every observed result shares one fields set: a copy with an update gets its own,
        # and a frozen result refuses assignment, so the shared one never changes.
        names = set(got.model_fields_set)
        copied = got.model_copy(update={"recovered": True})
        assert "recovered" in copied.model_fields_set
        assert got.model_fields_set == names and "recovered" not in names
        with pytest.raises(ValidationError):
            got.phase = "x"  # type: ignore[misc]
        assert got.model_fields_set == names

    def test_host_result_has_nothing_that_validation_would_run(self) -> None:
        """No validator, serializer or private attribute that building without validation
        would skip: adding one to ``HostResult`` must change how ``observe`` builds it."""
        decorators = HostResult.__pydantic_decorators__
        assert not decorators.validators
        assert not decorators.field_validators
        assert not decorators.model_validators
        assert not decorators.root_validators
        assert not HostResult.__private_attributes__
        assert HostResult.model_config.get("extra") in (None, "ignore")


class TestUnsuccessful:
    def test_counts_the_hosts_final_in_another_state_than_completed(self) -> None:
        """Completed hosts do not count, failed, missing and timeout ones do; it only grows."""
        t = tracker("a", "b", "c", "d", timeout=50)
        assert t.unsuccessful == 0
        t.observe(status("a", "completed"), 1)
        t.observe(status("b", "failed", error="build_failed"), 1)
        assert t.unsuccessful == 1
        t.observe(status("c", "started"), 2)
        t.expire(5.0)  # d never answered: missing
        assert t.unsuccessful == 2
        t.expire(50.0)  # c runs past the deadline: timeout
        assert t.unsuccessful == 3
        assert {h.hostname: h.status for h in t.hosts} == {
            "a": "completed",
            "b": "failed",
            "c": "timeout",
            "d": "missing",
        }
