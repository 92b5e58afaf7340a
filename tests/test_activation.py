"""The rollback decision and its steps, and the health checks as declared (pure): no
server, no process — ``fleet_core.host.jobs.activation``, ``outcome`` and the settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet_core.config.options import SYSTEM_RUNNING_CHECK
from fleet_core.config.resolve import listener_settings
from fleet_core.config.settings import ListenerSettings
from fleet_core.errors import UsageError
from fleet_core.host.jobs.activation import (
    STOPPED_REASON,
    SYSTEM_RUNNING,
    Guard,
    rollback_reason,
    rollback_steps,
)
from fleet_core.host.jobs.outcome import ActivationFacts, RebuildResult, decide
from fleet_core.host.jobs.resume import activation_facts
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import CheckStatus, ErrorCode, StatusKind

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

Systems = dict[str, str | None]
OLD: Systems = {"profile": "/nix/store/a-old", "current": "/nix/store/a-old"}
NEW: Systems = {"profile": "/nix/store/b-new", "current": "/nix/store/b-new"}


class TestTheDecision:
    def test_a_failed_rebuild_that_changed_nothing_is_not_rolled_back(self) -> None:
        assert rollback_reason("switch", rebuild_ok=False, before=OLD, after=OLD) is None

    def test_a_failed_rebuild_that_changed_a_link_failed_while_activating(self) -> None:
        half: Systems = {"profile": NEW["profile"], "current": OLD["current"]}
        assert rollback_reason("switch", rebuild_ok=False, before=OLD, after=half) == (
            "the activation failed"
        )

    def test_a_failed_check_and_a_missing_confirmation_go_back(self) -> None:
        assert rollback_reason(
            "test", rebuild_ok=True, before=OLD, after=NEW, failed_check="web"
        ) == ("the health check 'web' failed")
        said = rollback_reason(
            "switch", rebuild_ok=True, before=OLD, after=NEW, confirmed=False, confirm_timeout=120
        )
        assert said is not None and "did not confirm within 120 s" in said

    def test_boot_runs_nothing_new_so_nothing_is_checked(self) -> None:
        after: Systems = {"profile": NEW["profile"], "current": OLD["current"]}
        assert rollback_reason("boot", rebuild_ok=True, before=OLD, after=after) is None

    def test_a_confirmed_switch_stands(self) -> None:
        assert (
            rollback_reason("switch", rebuild_ok=True, before=OLD, after=NEW, confirmed=True)
            is None
        )

    def test_a_stop_before_checks_and_confirmation_is_said_as_a_stop(self) -> None:
        """Not a "failed" check nor a confirmation that "did not come": the runner was told
        to stop (a check it cut short fails, a wait it cut short answers no)."""
        assert (
            rollback_reason(
                "switch",
                rebuild_ok=True,
                before=OLD,
                after=NEW,
                failed_check="web",
                confirmed=False,
                stopped=True,
            )
            == STOPPED_REASON
        )
        assert rollback_reason("boot", rebuild_ok=True, before=OLD, after=NEW, stopped=True) is None


class TestTheSteps:
    guard = Guard(action="switch", profile="/p/system", current="/run/current-system")

    def test_switch_sets_the_exact_path_back_then_activates_it(self) -> None:
        assert rollback_steps(self.guard, OLD) == [
            ["nix-env", "--profile", "/p/system", "--set", "/nix/store/a-old"],
            ["/nix/store/a-old/bin/switch-to-configuration", "switch"],
        ]

    def test_a_pending_boot_entry_is_kept_as_it_was(self) -> None:
        before: Systems = {"profile": "/nix/store/c-pending", "current": "/nix/store/a-old"}
        assert rollback_steps(self.guard, before) == [
            ["nix-env", "--profile", "/p/system", "--set", "/nix/store/c-pending"],
            ["/nix/store/a-old/bin/switch-to-configuration", "test"],
            ["/nix/store/c-pending/bin/switch-to-configuration", "boot"],
        ]

    def test_test_never_touches_the_profile(self) -> None:
        guard = Guard(action="test", profile="/p/system", current="/run/current-system")
        assert rollback_steps(guard, OLD) == [
            ["/nix/store/a-old/bin/switch-to-configuration", "test"]
        ]

    def test_boot_goes_back_to_the_boot_entry(self) -> None:
        guard = Guard(action="boot", profile="/p/system", current="/run/current-system")
        assert rollback_steps(guard, OLD)[-1] == [
            "/nix/store/a-old/bin/switch-to-configuration",
            "boot",
        ]

    def test_nothing_recorded_is_nothing_to_go_back_to(self) -> None:
        assert rollback_steps(self.guard, {"profile": None, "current": None}) == (
            "no system profile was recorded before the rebuild"
        )


class TestTheOutcome:
    def result(self, facts: ActivationFacts) -> RebuildResult:
        return RebuildResult(0, False, ["switching"], 1.0, activation=facts)

    def test_rolled_back_names_the_exact_system_and_why(self) -> None:
        facts = ActivationFacts(previous="/nix/store/a-old", rollback_reason="x", rolled_back=True)
        outcome = decide(self.result(facts), action=Action.SWITCH, revision="m", timeout=60)
        assert (outcome.kind, outcome.error) == (StatusKind.FAILED, ErrorCode.ROLLED_BACK)
        assert outcome.message == "rolled back to /nix/store/a-old: x"
        assert outcome.rolled_back_to == "/nix/store/a-old"

    def test_a_rollback_that_failed_says_to_check_the_host(self) -> None:
        facts = ActivationFacts(previous="/nix/store/a", rollback_reason="x", rollback_error="e")
        outcome = decide(self.result(facts), action=Action.SWITCH, revision="m", timeout=60)
        assert outcome.error is ErrorCode.ROLLBACK_FAILED
        assert outcome.message.endswith("failed too (e): check the host")
        assert outcome.rolled_back_to is None

    def test_passing_checks_ride_on_the_completed_status(self) -> None:
        check = CheckStatus(name="web", ok=True, duration_s=0.1)
        facts = ActivationFacts(previous="/nix/store/a", checks=(check,))
        outcome = decide(self.result(facts), action=Action.SWITCH, revision="m", timeout=60)
        assert outcome.kind is StatusKind.COMPLETED and outcome.checks == (check,)

    def test_exit_json_is_read_field_by_field(self) -> None:
        facts = activation_facts(
            {
                "previous": {"profile": "/nix/store/p", "current": "/nix/store/c"},
                "checks": [{"name": "ok", "ok": True}, {"broken": 1}],
                "rollback_reason": "why",
                "rolled_back": True,
            }
        )
        assert facts is not None
        assert (facts.previous, facts.rolled_back, [c.name for c in facts.checks]) == (
            "/nix/store/c",
            True,
            ["ok"],
        )
        assert activation_facts("garbage") is None


class TestDeclaredChecks:
    def settings(self, tmp_path: Path, checks: object) -> ListenerSettings:
        path = tmp_path / "checks.json"
        path.write_text(json.dumps(checks))
        flags = {
            "hostname": "web1",
            "tier": "test",
            "nats_url": "nats://127.0.0.1:4222",
            "nkey_file": "/k",
            "flake_url": "git+https://example.org/f.git",
            "health_checks": str(path),
        }
        return listener_settings(flags, environ={}, systemd_booted=False, root=False)

    def test_the_built_in_names_agree(self) -> None:
        assert SYSTEM_RUNNING == SYSTEM_RUNNING_CHECK  # the runner reads what settings wrote

    def test_a_file_of_checks_becomes_settings(self, tmp_path: Path) -> None:
        settings = self.settings(
            tmp_path,
            [
                {"name": "web", "command": ["curl", "-f", "http://localhost"], "timeout": 5},
                {"name": "system", "builtin": "system-running", "ignore_units": ["x.service"]},
            ],
        )
        checks = settings.rollback.checks
        assert (checks[0].name, checks[0].argv, checks[0].timeout) == (
            "web",
            ("curl", "-f", "http://localhost"),
            5.0,
        )
        assert checks[1].builtin == "system-running" and checks[1].ignore_units == ("x.service",)

    @pytest.mark.parametrize(
        ("checks", "said"),
        [
            ({"name": "x"}, "must hold a JSON list"),
            ([{"command": ["true"]}], "needs a name"),
            ([{"name": "x", "command": "curl -f http://x"}], "an argv, never a shell"),
            ([{"name": "x", "command": ["true"], "timeout": 0}], "positive number"),
            ([{"name": "x", "builtin": "reboot"}], "builtin must be 'system-running'"),
            ([{"name": "x", "command": ["a"]}, {"name": "x", "command": ["b"]}], "same name"),
        ],
    )
    def test_mistakes_name_the_file_and_the_check(
        self, tmp_path: Path, checks: object, said: str
    ) -> None:
        with pytest.raises(UsageError, match=said) as caught:
            self.settings(tmp_path, checks)
        assert "--health-checks" in str(caught.value)
