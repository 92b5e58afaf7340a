"""Deployment tracking and its completion rules, driven with explicit clocks (no server)."""

from __future__ import annotations

import pytest

from fleet_core.messages import Status
from fleet_core.tracking import DeploymentTracker


def tracker(*hosts: str, timeout: float = 100) -> DeploymentTracker:
    return DeploymentTracker(
        hosts, started_at=0.0, timeout=timeout, answer_within=5.0, silence_limit=30.0
    )


def status(host: str, kind: str, **extra: object) -> Status:
    return Status.model_validate({"hostname": host, "status": kind, **extra})


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

    def test_host_that_goes_quiet_is_lost(self) -> None:
        """A host silent for the silence limit after answering is lost."""
        t = tracker("a")
        t.observe(status("a", "started"), 2)
        assert t.next_check() == 32.0
        assert [h.status for h in t.expire(32.0)] == ["lost"]
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
        assert result.hosts[1].log_tail == ["x", "error: y"]
        assert (result.ok, result.done, result.duration_s) == (False, True, 2.5)


def test_nobody_expected_and_a_short_timeout_does_not_spin() -> None:
    """With no host expected, a deadline before the answer window still ends the deployment."""
    t = DeploymentTracker([], started_at=0.0, timeout=1.0, answer_within=5.0, silence_limit=35.0)
    t.expire(1.0)
    assert t.done
