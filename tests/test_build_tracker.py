"""The build tracker with explicit clocks: statuses into the result, and when a build is
``no_builder`` or ``lost`` (no server, no sleeps)."""

from __future__ import annotations

from typing import Any

import pytest

from fleet_core.build.protocol import BuildResult, BuildStatus, HostBuildState
from fleet_core.build.tracker import BuildTracker
from fleet_core.protocol.messages import StatusKind

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

COMMIT = "a" * 40
ANSWER_WITHIN = 5.0
SILENCE_LIMIT = 3.0
TIMEOUT = 60.0
T0 = 100.0  # the tracker's start: monotonic clocks do not start at zero


def _status(kind: StatusKind, host: str | None = None, **fields: object) -> BuildStatus:
    return BuildStatus.model_validate(
        {"builder": "b1", "repo": "nixos", "status": kind, "host": host, "request_id": "r1"}
        | fields
    )


def _tracker(published: float = T0, **timing: Any) -> BuildTracker:
    """A tracker of build r1 (build.nixos.all at main), started at T0 and published at
    ``published``."""
    result = BuildResult(build_id="r1", target="build.nixos.all", repo="nixos", revision="main")
    clocks: dict[str, Any] = {
        "timeout": TIMEOUT,
        "answer_within": ANSWER_WITHIN,
        "silence_limit": SILENCE_LIMIT,
    } | timing
    tracker = BuildTracker(result, started_at=T0, **clocks)
    tracker.published(published)
    return tracker


def _accepted(tracker: BuildTracker, now: float, heartbeat_s: float | None = None) -> None:
    """The builder takes the build at ``now`` and starts host a."""
    assert tracker.feed(_status(StatusKind.ACCEPTED, heartbeat_s=heartbeat_s), now)
    assert tracker.feed(_status(StatusKind.STARTED, hosts=["a"], commit=COMMIT), now)
    assert tracker.feed(_status(StatusKind.STARTED, "a", phase="building"), now)


class TestStatuses:
    def test_a_build_walks_to_completed(self) -> None:
        """Accepted, started, each host's end, then the whole build's: failed, with counts."""
        tracker = _tracker()
        result = tracker.result
        tracker.feed(_status(StatusKind.ACCEPTED), T0)
        tracker.feed(_status(StatusKind.STARTED, hosts=["a", "b"], commit=COMMIT), T0)
        assert [(h.host, h.state) for h in result.hosts] == [
            ("a", HostBuildState.WAITING),
            ("b", HostBuildState.WAITING),
        ]
        tracker.feed(_status(StatusKind.STARTED, "a", phase="building"), T0)
        assert result.hosts[0].state is HostBuildState.BUILDING
        tracker.feed(
            _status(StatusKind.COMPLETED, "a", store_path="/nix/store/x", duration_s=2), T0
        )
        tracker.feed(_status(StatusKind.FAILED, "b", error="build_failed", log_tail=["e"]), T0)
        assert not result.done
        tracker.feed(_status(StatusKind.FAILED, error="build_failed", message="1 of 2"), T0)
        assert result.done and not result.ok
        assert result.commit == COMMIT
        assert result.counts() == {"built": 1, "failed": 1}
        assert result.hosts[0].store_path == "/nix/store/x"
        assert result.hosts[1].log_tail == ["e"]

    def test_once_accepted_no_refusal_and_no_id_less_status_counts(self) -> None:
        """Once a builder took it, refusals and id-less statuses (anyone's to send) are ignored."""
        tracker = _tracker()
        tracker.feed(_status(StatusKind.ACCEPTED, heartbeat_s=10), T0)
        assert tracker.heartbeat_s == 10
        assert not tracker.feed(_status(StatusKind.REJECTED, error="already_running"), T0)
        assert not tracker.feed(_status(StatusKind.REJECTED, request_id=None), T0)
        assert not tracker.feed(_status(StatusKind.FAILED, request_id=None), T0)
        assert not tracker.done

    def test_before_acceptance_an_id_less_refusal_counts(self) -> None:
        """A refusal of a request too malformed to have an id ends the build rejected."""
        tracker = _tracker()
        status = _status(StatusKind.REJECTED, request_id=None, error="invalid_request")
        assert tracker.feed(status, T0)
        assert (tracker.result.status, tracker.result.error) == ("rejected", "invalid_request")

    def test_a_completed_build_counts_a_host_whose_status_was_lost_as_built(self) -> None:
        """The whole build's completed makes a host still waiting built, saying so."""
        tracker = _tracker()
        tracker.feed(_status(StatusKind.STARTED, hosts=["a", "b"]), T0)
        tracker.feed(_status(StatusKind.COMPLETED, "a", store_path="/nix/store/x"), T0)
        tracker.feed(_status(StatusKind.COMPLETED, message="built 2 hosts"), T0)
        assert tracker.result.ok
        assert tracker.result.counts() == {"built": 2}
        assert "its own status was lost" in tracker.result.hosts[1].message

    def test_skipped_names_are_failed_hosts(self) -> None:
        """A configuration name no installable can hold is a failed host, invalid_name."""
        tracker = _tracker()
        tracker.feed(_status(StatusKind.STARTED, hosts=["a"], skipped=["x@y"]), T0)
        tracker.feed(_status(StatusKind.COMPLETED, "a", store_path="/nix/store/x"), T0)
        tracker.feed(_status(StatusKind.FAILED, error="invalid_name", skipped=["x@y"]), T0)
        assert tracker.result.counts() == {"built": 1, "failed": 1}
        assert tracker.result.hosts[1].error == "invalid_name"

    def test_statuses_for_another_repository_or_revision_are_ignored(self) -> None:
        """Another repository's or revision's statuses under this build's id never count."""
        tracker = _tracker()
        other = _status(StatusKind.STARTED, hosts=["x"]).model_copy(update={"repo": "home"})
        assert not tracker.feed(other, T0)
        moved = _status(StatusKind.COMPLETED).model_copy(update={"revision": "evil"})
        assert not tracker.feed(moved, T0)
        assert tracker.feed(_status(StatusKind.STARTED, hosts=["a"], revision="main"), T0)
        assert [h.host for h in tracker.result.hosts] == ["a"]

    def test_the_heartbeat_is_read_from_any_status(self) -> None:
        """A heartbeat interval in any status is the one waited for from then on."""
        tracker = _tracker()
        tracker.feed(_status(StatusKind.PROGRESS, "a", heartbeat_s=30), T0)
        assert tracker.heartbeat_s == 30

    def test_statuses_of_others_are_ignored(self) -> None:
        """Another request's statuses, and a second builder's, do not count."""
        tracker = _tracker()
        assert tracker.feed(_status(StatusKind.ACCEPTED), T0)
        assert not tracker.feed(_status(StatusKind.COMPLETED, request_id="other"), T0)
        second = _status(StatusKind.COMPLETED).model_copy(update={"builder": "b2"})
        assert not tracker.feed(second, T0)  # a second builder with the same repo
        assert tracker.result.builder == "b1"
        assert not tracker.done

    def test_a_final_host_stays_final(self) -> None:
        """A built host stays built whatever comes for it later."""
        tracker = _tracker()
        tracker.feed(_status(StatusKind.COMPLETED, "a", store_path="/nix/store/x"), T0)
        assert not tracker.feed(_status(StatusKind.FAILED, "a", error="cancelled"), T0)
        assert tracker.result.hosts[0].state is HostBuildState.BUILT

    def test_the_end_of_a_build_loses_unfinished_hosts(self) -> None:
        """A failed build ends its unfinished hosts lost, with the build's error."""
        tracker = _tracker()
        tracker.feed(_status(StatusKind.STARTED, hosts=["a", "b"]), T0)
        tracker.feed(_status(StatusKind.STARTED, "a"), T0)
        tracker.feed(_status(StatusKind.FAILED, error="cancelled", message="stopped"), T0)
        assert [h.state for h in tracker.result.hosts] == [HostBuildState.LOST] * 2
        assert [h.error for h in tracker.result.hosts] == ["cancelled", "cancelled"]

    def test_a_counted_status_dates_the_elapsed_time(self) -> None:
        """elapsed_s is the counted status's time since the start, not the publish's."""
        tracker = _tracker(published=T0 + 0.5)
        assert tracker.feed(_status(StatusKind.ACCEPTED), T0 + 2.25)
        assert tracker.result.elapsed_s == 2.25
        assert not tracker.feed(_status(StatusKind.ACCEPTED, request_id="other"), T0 + 9)
        assert tracker.result.elapsed_s == 2.25
        assert tracker.result_at(T0 + 10).elapsed_s == 10


class TestNoBuilder:
    def test_nobody_listening_is_no_builder_at_once(self) -> None:
        """The server's no-responders answer ends the build no_builder, naming subject and repo."""
        tracker = _tracker()
        tracker.nobody_listens()
        assert (tracker.result.status, tracker.result.error) == ("no_builder", "no_builder")
        assert tracker.result.message == (
            "no builder answered on build.nixos.all: is `fleet-deploy builder` running with "
            "--repo nixos=<flake>, and may it subscribe there?"
        )

    def test_no_answer_within_answer_within_is_no_builder(self) -> None:
        """Nothing for answer_within after the publish: no_builder, saying how long it waited."""
        tracker = _tracker(published=T0 + 1)
        assert tracker.next_check() == T0 + 1 + ANSWER_WITHIN
        tracker.expire(T0 + 1 + ANSWER_WITHIN - 0.01)
        assert not tracker.done
        tracker.expire(T0 + 1 + ANSWER_WITHIN)
        assert tracker.result.status == "no_builder"
        assert "no builder answered on build.nixos.all within 5 s:" in tracker.result.message

    def test_a_status_that_does_not_count_is_no_answer(self) -> None:
        """Another request's status does not stop the answer window."""
        tracker = _tracker()
        assert not tracker.feed(_status(StatusKind.ACCEPTED, request_id="other"), T0 + 4)
        tracker.expire(T0 + ANSWER_WITHIN)
        assert tracker.result.status == "no_builder"


class TestSilence:
    def test_a_silent_builder_is_lost_at_the_silence_limit(self) -> None:
        """silence_limit after its last status the builder is lost, named, and its hosts too."""
        tracker = _tracker()
        _accepted(tracker, T0 + 1)
        assert tracker.next_check() == T0 + 1 + SILENCE_LIMIT
        tracker.expire(T0 + 1 + SILENCE_LIMIT - 0.01)
        assert not tracker.done
        tracker.expire(T0 + 1 + SILENCE_LIMIT)
        result = tracker.result
        assert (result.status, result.error) == ("lost", "lost")
        assert result.message == (
            "builder b1 fell silent for 3 s: it may have stopped; ask again (nix keeps what it "
            "built)"
        )
        assert (result.hosts[0].state, result.hosts[0].error) == (HostBuildState.LOST, "lost")

    def test_statuses_keep_a_build_alive_past_the_silence_limit(self) -> None:
        """Progress every 2 s keeps the build alive for 20 s with a 3 s silence limit."""
        tracker = _tracker()
        _accepted(tracker, T0)
        for second in range(2, 21, 2):
            tracker.expire(T0 + second)
            assert tracker.feed(_status(StatusKind.PROGRESS, "a", message=f"{second}"), T0 + second)
        tracker.expire(T0 + 22.9)
        assert not tracker.done

    def test_the_announced_heartbeat_lengthens_the_silence_allowed(self) -> None:
        """A builder beating every 10 s is lost after 3.5 beats (35 s), not at silence_limit."""
        tracker = _tracker()
        _accepted(tracker, T0, heartbeat_s=10)
        tracker.expire(T0 + 34.9)
        assert not tracker.done
        tracker.expire(T0 + 35)
        assert tracker.result.status == "lost"
        assert "builder b1 fell silent for 35 s:" in tracker.result.message

    def test_a_short_heartbeat_never_shortens_the_silence_limit(self) -> None:
        """Beats every 0.1 s still allow silence_limit (3 s), not 0.35 s."""
        tracker = _tracker()
        _accepted(tracker, T0, heartbeat_s=0.1)
        tracker.expire(T0 + 2.9)
        assert not tracker.done
        tracker.expire(T0 + 3)
        assert tracker.result.status == "lost"

    def test_a_status_that_does_not_count_does_not_restart_the_clock(self) -> None:
        """A refusal after acceptance (anyone's to provoke) is not a sign of life."""
        tracker = _tracker()
        _accepted(tracker, T0)
        assert not tracker.feed(_status(StatusKind.REJECTED, error="already_running"), T0 + 2)
        tracker.expire(T0 + SILENCE_LIMIT)
        assert tracker.result.status == "lost"

    def test_once_over_nothing_changes_it(self) -> None:
        """A lost build stays lost: no later verdict or status rewrites it."""
        tracker = _tracker()
        _accepted(tracker, T0)
        tracker.expire(T0 + SILENCE_LIMIT)
        message = tracker.result.message
        tracker.nobody_listens()
        tracker.connection_gone()
        tracker.expire(T0 + TIMEOUT)
        assert not tracker.feed(_status(StatusKind.COMPLETED), T0 + TIMEOUT)
        assert (tracker.result.status, tracker.result.message) == ("lost", message)


class TestOutages:
    def test_an_outage_longer_than_the_silence_limit_is_not_silence(self) -> None:
        """The clock stands still while the client is down; it runs again from the return."""
        tracker = _tracker()
        _accepted(tracker, T0)
        tracker.connection_lost(T0 + 1)
        assert tracker.next_check() == T0 + TIMEOUT  # only the deadline bounds an outage
        tracker.expire(T0 + 1 + 4 * SILENCE_LIMIT)
        assert not tracker.done
        tracker.connection_back(T0 + 20)
        tracker.expire(T0 + 20 + SILENCE_LIMIT - 0.01)
        assert not tracker.done
        assert tracker.feed(_status(StatusKind.COMPLETED, "a", store_path="/nix/store/x"), T0 + 21)
        assert tracker.feed(_status(StatusKind.COMPLETED), T0 + 21)
        assert tracker.result.ok

    def test_silence_after_an_outage_is_lost_with_the_outage_told(self) -> None:
        """Lost after an outage, the message says how long the client was down and why."""
        tracker = _tracker()
        _accepted(tracker, T0)
        tracker.connection_lost(T0 + 1)
        tracker.connection_back(T0 + 8.5)
        tracker.expire(T0 + 8.5 + SILENCE_LIMIT)
        assert tracker.result.message == (
            "builder b1 fell silent for 3 s (this deployer's connection was down for 7.5 s, "
            "and what the builder sent meanwhile is lost): it may have stopped; ask again (nix "
            "keeps what it built)"
        )

    def test_outages_add_up(self) -> None:
        """Two outages are told as their sum, and a second drop while down changes nothing."""
        tracker = _tracker()
        _accepted(tracker, T0)
        tracker.connection_lost(T0 + 1)
        tracker.connection_lost(T0 + 2)  # still the first outage
        tracker.connection_back(T0 + 3)
        tracker.connection_back(T0 + 4)  # not down: nothing to end
        tracker.connection_lost(T0 + 5)
        tracker.connection_back(T0 + 6.5)
        tracker.expire(T0 + 6.5 + SILENCE_LIMIT)
        assert "connection was down for 3.5 s" in tracker.result.message

    def test_an_outage_before_the_first_status_is_not_taken_for_no_builder(self) -> None:
        """The accepted may be lost in the outage: after it the answer window is a builder's
        silence, and the heartbeat the builder then names is the one waited for."""
        tracker = _tracker(answer_within=0.25, silence_limit=1.0)
        tracker.connection_lost(T0 + 0.125)
        tracker.connection_back(T0 + 0.25)
        assert tracker.next_check() == T0 + 1.25  # a builder's silence, not answer_within
        tracker.expire(T0 + 0.75)
        assert not tracker.done
        status = _status(StatusKind.STARTED, hosts=["a"], heartbeat_s=0.5)
        assert tracker.feed(status, T0 + 0.75)
        tracker.expire(T0 + 0.75 + 1.5)  # 3 heartbeats: within 3.5 of them, past silence_limit
        assert not tracker.done
        built = _status(StatusKind.COMPLETED, "a", store_path="/nix/store/x")
        assert tracker.feed(built, T0 + 2.25)
        assert tracker.feed(_status(StatusKind.COMPLETED, hosts=["a"]), T0 + 2.25)
        assert tracker.result.ok, tracker.result

    def test_an_outage_then_silence_is_lost_not_no_builder(self) -> None:
        """No builder heard and an outage meanwhile: lost (its answer may be gone), told so."""
        tracker = _tracker(answer_within=0.25, silence_limit=0.5)
        tracker.connection_lost(T0 + 0.125)
        tracker.connection_back(T0 + 0.25)
        tracker.expire(T0 + 0.74)
        assert not tracker.done
        tracker.expire(T0 + 0.75)
        assert (tracker.result.status, tracker.result.error) == ("lost", "lost")
        assert tracker.result.message.startswith(
            "the build fell silent for 0.5 s (this deployer's connection was down for 0.1 s"
        )

    def test_a_connection_closed_for_good_loses_the_build(self) -> None:
        """Reconnecting given up: the build is lost, and the message blames the connection."""
        tracker = _tracker()
        _accepted(tracker, T0)
        tracker.connection_lost(T0 + 1)
        tracker.connection_gone()
        assert tracker.result.status == "lost"
        assert tracker.result.message == "this deployer's NATS connection closed for good"


class TestDeadline:
    def test_the_deadline_ends_a_busy_build_lost(self) -> None:
        """A build still sending statuses at its timeout ends lost, naming its builder."""
        tracker = _tracker(published=T0 + 1)
        _accepted(tracker, T0 + 1)
        assert tracker.feed(_status(StatusKind.PROGRESS, "a"), T0 + TIMEOUT)
        tracker.expire(T0 + 1 + TIMEOUT - 0.01)
        assert not tracker.done
        tracker.expire(T0 + 1 + TIMEOUT)
        assert tracker.result.status == "lost"
        assert tracker.result.message == (
            "the build did not finish within 60 s; builder b1 may still be at it"
        )

    def test_the_deadline_runs_on_through_an_outage(self) -> None:
        """An outage stops the silence clock, not the deadline; without a builder it says '?'."""
        tracker = _tracker(timeout=10.0)
        tracker.connection_lost(T0 + 1)
        assert tracker.next_check() == T0 + 10
        tracker.expire(T0 + 10)
        assert tracker.result.message == (
            "the build did not finish within 10 s; builder ? may still be at it"
        )
