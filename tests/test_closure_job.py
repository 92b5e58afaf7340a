"""A closure deploy's job on the host (pure): the listener's refusal and plan, the runner's
steps and its check of what was fetched, and which final status each ending becomes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fleet_core.config.settings import ListenerSettings, RollbackSettings
from fleet_core.errors import UsageError
from fleet_core.host.jobs import closure
from fleet_core.host.jobs.closure import Plan, activation_steps, read_plan, system_check, write_plan
from fleet_core.host.jobs.guard import closure_fetch_argv, closure_plan, closure_refusal
from fleet_core.host.jobs.jobdir import write_json_atomically
from fleet_core.host.jobs.outcome import (
    CLOSURE_CHECK,
    CLOSURE_FETCH,
    ActivationFacts,
    ClosureFacts,
    RebuildResult,
    decide,
)
from fleet_core.host.jobs.resume import closure_facts, result_from_exit
from fleet_core.protocol.actions import Action, HostKind
from fleet_core.protocol.messages import DeployRequest, ErrorCode, StatusKind
from fleet_core.protocol.subjects import Tier

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

HASH = "0123456789abcdfghijklmnpqrsvwxyz"
WEB1 = f"/nix/store/{HASH}-nixos-system-web1-24.11.20241122.5e4fbfb"
WEB2 = f"/nix/store/{HASH}-nixos-system-web2-24.11.20241122.5e4fbfb"
HELLO = f"/nix/store/{HASH}-hello-2.12.1"
REPLY = "deploy.responses.abc"
NOT_FOUND = f"error: path '{WEB1}' is required, but there is no substituter that can build it"


def settings(**overrides: object) -> ListenerSettings:
    base = ListenerSettings(
        hostname="web1",
        tier=Tier.TEST,
        nats_urls=("nats://127.0.0.1:4222",),
        nkey_file=Path("/run/web1.seed"),
        flake_url="git+https://example.invalid/fleet.git",
        rollback=RollbackSettings(system_profile=Path("/srv/web1/nix/var/nix/profiles/system")),
        store_dir=Path("/srv/web1/nix/store"),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def closure_request(store_path: str | None = WEB1, action: str = "switch") -> DeployRequest:
    return DeployRequest(reply_to=REPLY, action=action, revision="a" * 40, store_path=store_path)


class TestTheRefusalBeforeAccepting:
    def test_a_hosts_own_system_is_taken(self) -> None:
        assert closure_refusal(settings(), closure_request()) is None

    def test_a_request_without_a_store_path_is_no_closure_deploy(self) -> None:
        assert closure_refusal(settings(), closure_request(None)) is None
        assert closure_plan(settings(), closure_request(None)) is None

    def test_another_hosts_system_is_wrong_host(self) -> None:
        refusal = closure_refusal(settings(), closure_request(WEB2))
        assert refusal is not None and refusal.code == ErrorCode.WRONG_HOST

    def test_a_path_that_is_no_system_is_not_a_system(self) -> None:
        refusal = closure_refusal(settings(), closure_request(HELLO))
        assert refusal is not None and refusal.code == ErrorCode.NOT_A_SYSTEM

    def test_the_configuration_name_is_the_hosts_too(self) -> None:
        """A host deployed as the flake's web2 configuration takes web2's system."""
        assert closure_refusal(settings(configuration="web2"), closure_request(WEB2)) is None

    @pytest.mark.parametrize("kind", [HostKind.DARWIN, HostKind.HOME_MANAGER])
    def test_a_host_that_is_no_nixos_refuses_it_as_invalid_action(self, kind: HostKind) -> None:
        refusal = closure_refusal(settings(host_kind=kind), closure_request())
        assert refusal is not None and refusal.code == ErrorCode.INVALID_ACTION
        assert "NixOS system" in str(refusal) and kind.value in str(refusal)


class TestThePlan:
    def test_the_path_is_where_this_hosts_store_lies(self) -> None:
        plan = closure_plan(settings(), closure_request(action="boot"))
        assert plan == Plan(
            store_path=WEB1,
            action="boot",
            path=f"/srv/web1/nix/store/{HASH}-nixos-system-web1-24.11.20241122.5e4fbfb",
            profile="/srv/web1/nix/var/nix/profiles/system",
            nix_env=("nix-env",),
        )

    def test_the_fetch_checks_signatures(self) -> None:
        """nix-store --realise, from the host's own substituters: no option that would
        weaken its checks is ever added."""
        argv = closure_fetch_argv(settings(), WEB1)
        assert argv == ["nix-store", "--realise", WEB1]
        assert not any("check-sigs" in arg or "substituters" in arg for arg in argv)

    def test_it_goes_through_the_job_directory(self, tmp_path: Path) -> None:
        plan = closure_plan(settings(), closure_request())
        assert plan is not None
        write_plan(tmp_path, plan, write_json_atomically)
        assert read_plan(tmp_path) == plan

    def test_no_plan_is_a_rebuild_and_a_damaged_one_is_said(self, tmp_path: Path) -> None:
        assert read_plan(tmp_path) is None
        (tmp_path / closure.PLAN_FILE).write_text("{not json")
        assert isinstance(read_plan(tmp_path), str)
        (tmp_path / closure.PLAN_FILE).write_text(json.dumps({"store_path": WEB1}))
        assert "not what a listener writes" in str(read_plan(tmp_path))
        whole = {"store_path": WEB1, "action": "check", "path": "/x", "profile": "/p"}
        (tmp_path / closure.PLAN_FILE).write_text(json.dumps(whole))
        assert "no action a closure deploy takes" in str(read_plan(tmp_path))

    def test_a_store_dir_is_absolute_and_a_fetch_names_a_program(self) -> None:
        with pytest.raises(UsageError, match="--store-dir"):
            settings(store_dir=Path("nix/store"))
        with pytest.raises(UsageError, match="--nix-store-command"):
            settings(nix_store_command=())


class TestTheSteps:
    PLAN = Plan(WEB1, "switch", "/srv/web1/nix/store/x-nixos-system-web1-1", "/srv/profile")

    def test_switch_and_boot_set_the_profile_to_the_exact_path_then_activate(self) -> None:
        for action in ("switch", "boot"):
            steps = activation_steps(replace(self.PLAN, action=action))
            assert steps == [
                (
                    closure.SET_PROFILE,
                    ["nix-env", "--profile", "/srv/profile", "--set", self.PLAN.path],
                ),
                (closure.ACTIVATE, [f"{self.PLAN.path}/bin/switch-to-configuration", action]),
            ]

    @pytest.mark.parametrize("action", ["test", "dry-activate"])
    def test_test_and_dry_activate_leave_the_profile_alone(self, action: str) -> None:
        steps = activation_steps(replace(self.PLAN, action=action))
        assert steps == [
            (closure.ACTIVATE, [f"{self.PLAN.path}/bin/switch-to-configuration", action])
        ]

    def test_build_activates_nothing(self) -> None:
        assert activation_steps(replace(self.PLAN, action="build")) == []

    def test_the_step_names_are_the_outcomes(self) -> None:
        """The runner (stdlib only) and the judge name the steps alike."""
        assert (closure.FETCH, closure.CHECK) == (CLOSURE_FETCH, CLOSURE_CHECK)


class TestTheCheckAfterTheFetch:
    def system(self, root: Path, *, script: bool = True, version: bool = True) -> Path:
        top = root / f"{HASH}-nixos-system-web1-1"
        (top / "bin").mkdir(parents=True)
        if script:
            (top / "bin" / "switch-to-configuration").write_text("#!/bin/sh\n")
            (top / "bin" / "switch-to-configuration").chmod(0o755)
        if version:
            (top / "nixos-version").write_text("24.11")
        return top

    def test_a_system_passes(self, tmp_path: Path) -> None:
        assert system_check(str(self.system(tmp_path))) is None

    def test_a_path_without_switch_to_configuration_is_no_system(self, tmp_path: Path) -> None:
        why = system_check(str(self.system(tmp_path, script=False)))
        assert why is not None and "bin/switch-to-configuration" in why

    def test_a_path_without_nixos_version_is_no_system(self, tmp_path: Path) -> None:
        why = system_check(str(self.system(tmp_path, version=False)))
        assert why is not None and "nixos-version" in why and "switch-to" not in why

    def test_a_script_that_cannot_run_is_no_system(self, tmp_path: Path) -> None:
        top = self.system(tmp_path)
        (top / "bin" / "switch-to-configuration").chmod(0o644)
        assert "not executable" in str(system_check(str(top)))

    def test_a_file_is_no_system(self, tmp_path: Path) -> None:
        (tmp_path / "f").write_text("x")
        assert "not a directory" in str(system_check(str(tmp_path / "f")))


def judge(result: RebuildResult, action: Action = Action.SWITCH) -> tuple[object, ...]:
    outcome = decide(result, action=action, revision="a" * 40, timeout=60)
    return outcome.kind, outcome.error, outcome.message


def closure_result(
    failed: str | None = None,
    *,
    steps: tuple[str, ...] = (),
    error: str | None = None,
    **rest: object,
) -> RebuildResult:
    fields: dict[str, object] = {
        "exit_code": 0 if failed is None else 1,
        "timed_out": False,
        "tail": [],
        "duration_s": 1.0,
        "closure": ClosureFacts(WEB1, failed, error, steps),
    }
    return RebuildResult(**(fields | rest))  # type: ignore[arg-type]


class TestTheOutcome:
    @pytest.mark.parametrize(
        ("action", "message"),
        [
            (Action.SWITCH, f"switch of {WEB1} done"),
            (Action.BOOT, f"boot of {WEB1} done"),
            (Action.DRY_ACTIVATE, f"dry-activate of {WEB1} done: nothing was changed"),
            (Action.BUILD, f"fetched {WEB1}: a NixOS system, signed by a key this host trusts"),
        ],
    )
    def test_a_closure_deploy_that_worked_names_the_path(
        self, action: Action, message: str
    ) -> None:
        assert judge(closure_result(), action) == (StatusKind.COMPLETED, None, message)

    def test_a_failed_fetch_is_closure_unavailable_with_nixs_words(self) -> None:
        result = closure_result(CLOSURE_FETCH, steps=("fetch",), tail=[NOT_FOUND])
        kind, error, message = judge(result)
        assert (kind, error) == (StatusKind.FAILED, ErrorCode.CLOSURE_UNAVAILABLE)
        assert "there is no substituter that can build it" in str(message)
        assert str(message).endswith("Nothing was changed")

    def test_a_fetch_that_could_not_start_is_closure_unavailable(self) -> None:
        result = closure_result(
            CLOSURE_FETCH, exit_code=None, start_error="cannot start 'nix-store': No such file"
        )
        assert judge(result)[1] == ErrorCode.CLOSURE_UNAVAILABLE
        assert "cannot start 'nix-store'" in str(judge(result)[2])

    def test_a_failed_check_is_not_a_system_and_nothing_was_activated(self) -> None:
        result = closure_result(CLOSURE_CHECK, error=f"{WEB1} is not a NixOS system: it holds no x")
        kind, error, message = judge(result)
        assert (kind, error) == (StatusKind.FAILED, ErrorCode.NOT_A_SYSTEM)
        assert message == f"{WEB1} is not a NixOS system: it holds no x; nothing was activated"

    def test_a_cancel_during_the_fetch_is_cancelled_not_unavailable(self) -> None:
        result = closure_result(CLOSURE_FETCH, exit_code=-15, cancelled=True)
        kind, error, message = judge(result)
        assert (kind, error) == (StatusKind.FAILED, ErrorCode.CANCELLED)
        assert "stopped before it activated anything" in str(message)

    def test_the_deadline_is_a_timeout_naming_the_step(self) -> None:
        result = closure_result(CLOSURE_FETCH, steps=("fetch",), exit_code=-15, timed_out=True)
        kind, error, message = judge(result)
        assert (kind, error) == (StatusKind.FAILED, ErrorCode.TIMEOUT)
        assert "ran longer than 60 s" in str(message) and "(in its fetch step)" in str(message)

    def test_a_failed_activation_that_went_back_is_rolled_back(self) -> None:
        went_back = ActivationFacts(
            previous="/srv/web1/nix/store/old",
            rollback_reason="the activation failed",
            rolled_back=True,
        )
        result = closure_result("activate", activation=went_back)
        assert judge(result)[:2] == (StatusKind.FAILED, ErrorCode.ROLLED_BACK)

    def test_a_failed_dry_activation_says_which_program_failed(self) -> None:
        result = closure_result("activate", tail=["error: something broke"])
        kind, error, message = judge(result, Action.DRY_ACTIVATE)
        assert (kind, error) == (StatusKind.FAILED, ErrorCode.BUILD_FAILED)
        assert message == "switch-to-configuration failed (exit 1): something broke"


class TestExitJson:
    def test_the_closure_report_is_read_back(self) -> None:
        data = json.dumps(
            {
                "exit_code": 1,
                "closure": {"store_path": WEB1, "steps": ["fetch"], "failed_step": "fetch"},
            }
        ).encode()
        result = result_from_exit(data, [NOT_FOUND])
        assert result.closure == ClosureFacts(WEB1, "fetch", None, ("fetch",))
        assert judge(result)[1] == ErrorCode.CLOSURE_UNAVAILABLE

    @pytest.mark.parametrize("value", [None, [], {"steps": []}, {"store_path": 3}])
    def test_no_or_a_malformed_report_is_a_rebuild(self, value: object) -> None:
        assert closure_facts(value) is None

    def test_malformed_details_are_dropped_one_by_one(self) -> None:
        facts = closure_facts({"store_path": WEB1, "failed_step": 1, "steps": ["fetch", 2]})
        assert facts == ClosureFacts(WEB1, None, None, ("fetch",))
