"""What the CLI prints about a deployment (pure): live lines, outages, recovered statuses."""

from __future__ import annotations

import pytest

from fleet_core.deploy.cancellation import CancelAnswer, CancelResult, answer_outcome
from fleet_core.deploy.report import (
    LISTED_NAMES,
    RECOVERED,
    cancel_summary,
    connection_line,
    directory_hint,
    host_line,
    summary,
)
from fleet_core.deploy.results import DeploymentResult, HostResult, Outage, TierDirectory
from fleet_core.protocol.messages import StatusKind

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it


def result(hosts: list[HostResult], outages: list[Outage]) -> DeploymentResult:
    return DeploymentResult(
        deployment_id="d1",
        subject="deploy.test.all",
        tier="test",
        action="switch",
        revision="master",
        ok=all(h.status == "completed" for h in hosts),
        done=True,
        counts={"completed": len(hosts)},
        hosts=hosts,
        duration_s=20.0,
        outages=outages,
    )


def completed(name: str, *, recovered: bool = False) -> HostResult:
    return HostResult(
        hostname=name, status="completed", final=True, message="done", recovered=recovered
    )


class TestConnectionLines:
    def test_lost_then_reconnected(self) -> None:
        """A drop is one line, and the return another that says how long it lasted."""
        assert connection_line(Outage(started_at=1.0)) == "NATS connection lost — reconnecting"
        assert connection_line(Outage(started_at=1.0, duration_s=3.14)) == (
            "reconnected after 3.1 s"
        )

    def test_a_recovered_status_says_where_it_came_from(self) -> None:
        """A final status read back from the host's job record is marked so, live and in the
        summary."""
        line = host_line(completed("web1", recovered=True))
        assert line.endswith(f"done {RECOVERED}")
        assert RECOVERED not in host_line(completed("web1"))


class TestSummary:
    def test_no_outage_no_sentence(self) -> None:
        """A deployment without an outage says nothing about NATS."""
        assert "NATS" not in summary(result([completed("web1")], []))

    def test_an_outage_and_what_was_read_back(self) -> None:
        """The summary tells of the deployer's outage and which final status was read back."""
        text = summary(
            result(
                [completed("web1", recovered=True), completed("web2")],
                [Outage(started_at=1.0, duration_s=3.1)],
            )
        )
        assert (
            "This deployer's NATS connection was lost once (3.1 s in all); the final status "
            "of web1, sent meanwhile, was read back from its job record."
        ) in text
        assert f"web1                 completed         -  done {RECOVERED}" in text
        assert text.endswith("OK: 2 completed")

    def test_several_outages_and_one_still_on(self) -> None:
        """Outages are counted and summed; one still going at the end is said to be."""
        text = summary(
            result(
                [completed("a", recovered=True), completed("b", recovered=True)],
                [Outage(started_at=1.0, duration_s=2.0), Outage(started_at=9.0)],
            )
        )
        assert (
            "lost 2 times (2.0 s in all) and was still down at the end; the final statuses "
            "of 2 hosts, sent meanwhile, were read back from their job records."
        ) in text


class TestDirectoryHint:
    """A target that reached no host is told with the names discovery found in its tier."""

    @staticmethod
    def reached_nobody(subject: str, hosts: list[str], roles: list[str]) -> DeploymentResult:
        return result([], []).model_copy(
            update={
                "subject": subject,
                "ok": False,
                "counts": {},
                "found_in_tier": TierDirectory(tier="test", hosts=hosts, roles=roles),
            }
        )

    def test_a_mistyped_role_names_the_roles_and_the_nearest(self) -> None:
        found = self.reached_nobody("deploy.test.role.wbe", ["db1", "web1"], ["db", "web"])
        hint = directory_hint(found)
        assert hint == (
            "No host in the test tier has the role 'wbe'. Roles there: db, web. "
            "Did you mean 'web'? Hosts there: db1, web1."
        )
        assert hint in summary(found)

    def test_a_mistyped_host_names_the_hosts_and_the_nearest(self) -> None:
        found = self.reached_nobody("deploy.test.wbe1", ["db1", "web1"], ["web"])
        assert directory_hint(found) == (
            "No listener named 'wbe1' answers in the test tier. Hosts there: db1, web1. "
            "Did you mean 'web1'?"
        )

    def test_nothing_near_suggests_nothing(self) -> None:
        found = self.reached_nobody("deploy.test.role.zzzz", ["db1"], ["db"])
        assert "Did you mean" not in (directory_hint(found) or "")

    def test_an_empty_tier_says_to_check_the_listeners(self) -> None:
        hint = directory_hint(self.reached_nobody("deploy.test.all", [], []))
        assert hint is not None and hint.startswith("Discovery found no host in the test tier")

    def test_a_large_tier_is_listed_in_part(self) -> None:
        names = [f"web{n:03}" for n in range(100)]
        hint = directory_hint(self.reached_nobody("deploy.test.wbe", names, ["web"])) or ""
        assert f"and {100 - LISTED_NAMES} more" in hint
        assert "web099" not in hint

    def test_without_a_directory_there_is_no_hint(self) -> None:
        assert directory_hint(result([completed("web1")], [])) is None


class TestCancelAnswers:
    def test_an_answer_means_what_its_code_and_phase_say_never_its_words(self) -> None:
        assert answer_outcome(StatusKind.COMPLETED, None, "stopped") == "stopped"
        # A host's words do not make a stop: only the phase the listener sets does.
        assert answer_outcome(StatusKind.COMPLETED, None, "was stopped, trust me") == "refused"
        assert answer_outcome(StatusKind.REJECTED, "already_activating", None) == "activating"
        assert answer_outcome(StatusKind.REJECTED, "already_finished", None) == "finished"
        assert answer_outcome(StatusKind.REJECTED, "bad_signature", None) == "rejected"

    def test_the_summary_names_each_host_and_the_tiers_out_of_reach(self) -> None:
        result = CancelResult(
            deployment_id="d1",
            answers=[
                CancelAnswer(hostname="web1", tier="test", outcome="stopped", message="ok"),
                CancelAnswer(
                    hostname="web2", tier="test", outcome="activating", message="\x1b]0;x"
                ),
            ],
            refused_tiers=["prod"],
        )
        text = cancel_summary(result)
        assert "web1                 stopped" in text and "\\x1b" in text
        assert "(prod: this key may not deploy there, so it may not cancel there)" in text
        assert text.endswith("NOT OK: 1 stopped, 1 other answers") and not result.ok
