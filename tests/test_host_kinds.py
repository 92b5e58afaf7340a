"""Non-NixOS hosts: a listener with --host-kind darwin or home-manager runs darwin-rebuild or
home-manager, rejects the actions those lack when the request arrives, and — for Home Manager
under ``systemd --user`` — starts its rebuilds in the user's own service manager.

The pure part (argv per kind and action, the checks, the settings) needs no server; the rest
runs real listeners against the real nats-server, with the packaged stand-ins for
home-manager, darwin-rebuild and systemd-run as real subprocesses, recording their argv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleet_core import processes
from fleet_core.config.resolve import choose_rebuild_runner, in_user_manager, listener_settings
from fleet_core.config.settings import ListenerSettings
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.report import hosts_table
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.errors import RequestRejected, UsageError
from fleet_core.host.jobs import jobdir
from fleet_core.host.jobs.follow import follow, runner_alive, stop_runner
from fleet_core.host.jobs.jobdir import OUTPUT_LOG, RUNNER_FILE
from fleet_core.host.jobs.launch import ProcessRebuilder, RebuildJob, rebuilder_for
from fleet_core.host.jobs.outcome import RebuildResult, decide
from fleet_core.host.jobs.rebuild import build_argv
from fleet_core.host.jobs.rebuild_output import phase_of
from fleet_core.host.jobs.resume import is_job_runner_command
from fleet_core.protocol.actions import (
    REBUILD_ACTIONS,
    Action,
    HostKind,
    actions_for,
    rebuild_program,
    validate_action_for,
    validate_configuration,
)
from fleet_core.protocol.messages import HostInfo, encode, parse_host_info
from fleet_core.testing import (
    FLAKE_URL,
    simulated_darwin_rebuild_command,
    simulated_home_manager_command,
    simulated_systemd_run_command,
)

from .conftest import Fleet
from .support import Daemon, wait_for_file

pytestmark = pytest.mark.anyio

URL = "git+https://g/r.git"
LISTENER = {
    "hostname": "web1",
    "tier": "test",
    "nats_url": "nats://n:4222",
    "nkey_file": "/k",
    "flake_url": URL,
}
HM = HostKind.HOME_MANAGER
DARWIN = HostKind.DARWIN
NIXOS = HostKind.NIXOS


def argv_for(kind: HostKind, action: Action, name: str = "alice@mac1") -> list[str]:
    return build_argv(
        (rebuild_program(kind),),
        action,
        flake_url=URL,
        revision="main",
        configuration=name,
        kind=kind,
    )


# -- the argv, pure --------------------------------------------------------------------------

# Each action a kind runs, and the arguments that run it before --flake.
RUNS: list[tuple[HostKind, Action, list[str]]] = [
    *((NIXOS, action, ["nixos-rebuild", action.value]) for action in REBUILD_ACTIONS),
    (DARWIN, Action.SWITCH, ["darwin-rebuild", "switch"]),
    (DARWIN, Action.BUILD, ["darwin-rebuild", "build"]),
    (DARWIN, Action.DRY_ACTIVATE, ["darwin-rebuild", "check"]),
    (HM, Action.SWITCH, ["home-manager", "switch"]),
    (HM, Action.BUILD, ["home-manager", "build"]),
    (HM, Action.DRY_ACTIVATE, ["home-manager", "switch", "--dry-run"]),
]
# What darwin-rebuild and Home Manager do not have.
NOT_RUN = [(kind, action) for kind in (DARWIN, HM) for action in (Action.BOOT, Action.TEST)]


class TestArgv:
    @pytest.mark.parametrize(("kind", "action", "verb"), RUNS, ids=str)
    def test_each_kind_runs_its_program_with_its_verb(
        self, kind: HostKind, action: Action, verb: list[str]
    ) -> None:
        """The program and verb follow the kind; the flake reference and --refresh do not
        (darwin's name has no @: darwin-rebuild does not quote it)."""
        name = "mac1" if kind is DARWIN else "alice@mac1"
        assert argv_for(kind, action, name) == [
            *verb,
            "--flake",
            f"{URL}?ref=main#{name}",
            "--refresh",
        ]

    def test_nixos_is_the_default_and_unchanged(self) -> None:
        """Without a kind, build_argv builds nixos-rebuild's argv, every rebuild action
        included; a NixOS host also runs check and cancel, which rebuild nothing."""
        for action in REBUILD_ACTIONS:
            argv = build_argv(
                ("nixos-rebuild",), action, flake_url=URL, revision="main", configuration="web1"
            )
            reference = f"{URL}?ref=main#web1"
            assert argv == ["nixos-rebuild", action.value, "--flake", reference, "--refresh"]
        assert actions_for(NIXOS) == (*REBUILD_ACTIONS, Action.CHECK)
        for action in (Action.CHECK, Action.CANCEL):
            with pytest.raises(RequestRejected, match="runs no rebuild"):
                build_argv(
                    ("nixos-rebuild",), action, flake_url=URL, revision="m", configuration="w"
                )

    @pytest.mark.parametrize(("kind", "action"), NOT_RUN, ids=str)
    def test_an_action_the_kind_lacks_is_invalid_action(
        self, kind: HostKind, action: Action
    ) -> None:
        """boot and test are rejected for darwin and home-manager, with a message that names
        the actions this host runs; build_argv refuses them the same way."""
        with pytest.raises(RequestRejected) as caught:
            validate_action_for(kind, action)
        assert caught.value.code == "invalid_action"
        message = str(caught.value)
        assert f"{action.value} is not an action for a {kind.value} host" in message
        assert "runs only switch, dry-activate, build" in message
        assert f"({rebuild_program(kind)} has no {action.value})" in message
        assert actions_for(kind) == (Action.SWITCH, Action.DRY_ACTIVATE, Action.BUILD)
        with pytest.raises(RequestRejected, match="is not an action for"):
            argv_for(kind, action)

    @pytest.mark.parametrize(
        "name", ["web1", "alice@mac1", "mac1.local", "user_1@host-2", "A" * 63, "7"]
    )
    def test_configuration_names_that_are_accepted(self, name: str) -> None:
        """A host name, or Home Manager's user@host, is a configuration name."""
        assert validate_configuration(name) == name
        assert argv_for(HM, Action.SWITCH, name)[3].endswith(f"#{name}")

    @pytest.mark.parametrize(
        "name",
        [
            "",
            "-rf",
            "--option",
            "a#b",
            "a?ref=x",
            "a&rev=0",
            "a b",
            "a\nb",
            "$(id)",
            "`id`",
            "a/b",
            '"a"',
            "a;b",
            ".hidden",
            "@mac1",
            "alice@mäc",
            "A" * 64,
        ],
        ids=repr,
    )
    def test_hostile_configuration_names_are_refused(self, name: str) -> None:
        """Nothing that could end the fragment, quote it or become an argument is a
        configuration name: not from the flag, not in the settings, not in an argv."""
        with pytest.raises(UsageError, match="invalid configuration name"):
            validate_configuration(name)
        with pytest.raises(UsageError, match="invalid configuration name"):
            argv_for(HM, Action.SWITCH, name)
        with pytest.raises(UsageError, match=r"^--configuration: invalid configuration name"):
            listener_settings({**LISTENER, "configuration": name}, environ={})
        variable = {"FLEET_DEPLOY_CONFIGURATION": name}
        if name.strip():  # a blank variable counts as unset
            with pytest.raises(UsageError, match=r"^FLEET_DEPLOY_CONFIGURATION: invalid"):
                listener_settings(LISTENER, environ=variable)


# -- the settings, pure ----------------------------------------------------------------------


class TestSettings:
    @pytest.mark.parametrize(
        ("kind", "program"),
        [
            ("nixos", "nixos-rebuild"),
            ("darwin", "darwin-rebuild"),
            ("home-manager", "home-manager"),
        ],
    )
    def test_the_rebuild_command_follows_the_kind(self, kind: str, program: str) -> None:
        """Without --rebuild-command the program is the kind's; given, it wins whatever the
        kind (sudo -n darwin-rebuild, say)."""
        settings = listener_settings({**LISTENER, "host_kind": kind}, environ={})
        assert settings.host_kind == HostKind(kind)
        assert settings.rebuild_command == (program,)
        given = {**LISTENER, "host_kind": kind, "rebuild_command": f"sudo -n {program}"}
        assert listener_settings(given, environ={}).rebuild_command == ("sudo", "-n", program)

    def test_defaults_are_nixos_and_the_hostname(self) -> None:
        """No kind is NixOS with nixos-rebuild; no configuration builds #<hostname>."""
        settings = listener_settings(LISTENER, environ={})
        assert (settings.host_kind, settings.configuration) == (NIXOS, None)
        assert settings.flake_configuration == "web1"
        assert settings.rebuild_command == ("nixos-rebuild",)

    def test_flags_and_variables(self) -> None:
        """--host-kind and --configuration, or their variables; a flag beats a variable."""
        env = {"FLEET_DEPLOY_HOST_KIND": "home-manager", "FLEET_DEPLOY_CONFIGURATION": "bob@mac2"}
        from_env = listener_settings(LISTENER, environ=env)
        assert (from_env.host_kind, from_env.flake_configuration) == (HM, "bob@mac2")
        assert from_env.rebuild_command == ("home-manager",)
        flags = {**LISTENER, "host_kind": "darwin", "configuration": "mac1"}
        from_flags = listener_settings(flags, environ=env)
        assert (from_flags.host_kind, from_flags.flake_configuration) == (DARWIN, "mac1")
        assert from_flags.rebuild_command == ("darwin-rebuild",)

    def test_an_unknown_kind_names_its_source(self) -> None:
        """A kind that is not one of the three is a usage error naming the variable."""
        with pytest.raises(UsageError, match=r"^FLEET_DEPLOY_HOST_KIND 'windows' is not one of"):
            listener_settings(LISTENER, environ={"FLEET_DEPLOY_HOST_KIND": "windows"})

    def test_the_settings_object_checks_the_configuration(self) -> None:
        """ListenerSettings built directly (tests, the sandbox) refuses a hostile name too."""
        with pytest.raises(UsageError, match="invalid configuration name"):
            ListenerSettings(
                hostname="web1",
                tier=listener_settings(LISTENER, environ={}).tier,
                nats_urls=("nats://n:4222",),
                nkey_file=Path("/k"),
                flake_url=URL,
                configuration="--impure",
            )


class TestRunnerChoice:
    @pytest.mark.parametrize(
        ("kind", "invocation_id", "booted", "root", "expected"),
        [
            (HM, "abc", True, False, "systemd"),  # a systemd --user service: its own manager
            (HM, "abc", True, True, "systemd"),  # root's, in the system manager
            (HM, None, True, False, "session"),  # not run by a service manager (launchd)
            (HM, "abc", False, False, "session"),  # no systemd as PID 1
            (NIXOS, "abc", True, False, "session"),  # nixos-rebuild needs root
            (DARWIN, "abc", True, False, "session"),
            (DARWIN, None, False, False, "session"),  # macOS: launchd
            (NIXOS, "abc", True, True, "systemd"),  # the NixOS module's case, unchanged
        ],
    )
    def test_auto(
        self,
        kind: HostKind,
        invocation_id: str | None,
        booted: bool,
        root: bool,
        expected: str,
    ) -> None:
        """auto picks systemd for Home Manager under systemd --user as for a root service,
        and the user's manager (--user) only when the listener is not root."""
        runner = choose_rebuild_runner(
            "auto", invocation_id=invocation_id, systemd_booted=booted, root=root, host_kind=kind
        )
        assert runner == expected
        assert in_user_manager(runner, root=root, host_kind=kind) is (
            expected == "systemd" and not root
        )

    def test_listener_settings_of_a_user_service(self) -> None:
        """From flags and environment: a home-manager listener started by systemd --user
        (INVOCATION_ID set) that is not root runs rebuilds through systemd-run --user; the
        same listener started by hand, or a NixOS one, runs them in a session."""
        flags = {**LISTENER, "host_kind": "home-manager"}
        unit = {"INVOCATION_ID": "0123"}
        settings = listener_settings(flags, environ=unit, systemd_booted=True, root=False)
        assert (settings.rebuild_runner, settings.systemd_user) == ("systemd", True)
        by_hand = listener_settings(flags, environ={}, systemd_booted=True, root=False)
        assert (by_hand.rebuild_runner, by_hand.systemd_user) == ("session", False)
        nixos = listener_settings(LISTENER, environ=unit, systemd_booted=True, root=True)
        assert (nixos.rebuild_runner, nixos.systemd_user) == ("systemd", False)

    async def test_a_user_service_starts_its_unit_with_systemd_run_user(
        self, tmp_path: Path
    ) -> None:
        """The rebuilder of such a listener calls systemd-run --user (the stand-in, which
        records it) and the job runs to its end in that unit."""
        record = tmp_path / "systemd-run.jsonl"
        settings = listener_settings(
            {**LISTENER, "host_kind": "home-manager", "state_dir": str(tmp_path)},
            environ={"INVOCATION_ID": "0123", "PATH": "/usr/bin:/bin"},
            systemd_booted=True,
            root=False,
        )
        settings = replace(
            settings, systemd_run=simulated_systemd_run_command("--sim-record", str(record))
        )
        job = tmp_path / "job"
        job.mkdir()
        argv = [*simulated_home_manager_command(), "switch", "--flake", f"{URL}?ref=m#a@b"]
        launched = await rebuilder_for(settings).start(RebuildJob("j1", argv, job, timeout=60))
        assert (launched.pid, launched.unit) == (None, "fleet-deploy-job-j1")
        lines: list[str] = []
        result = await follow(job, lines.append, pid=None, started_at=time.time())
        assert result.ok
        assert "Starting Home Manager activation" in lines
        (call,) = [json.loads(line) for line in record.read_text().splitlines()]
        assert (call["user"], call["same_dir"]) == (True, True)
        assert call["unit"] == "fleet-deploy-job-j1.service"
        assert "PATH" in call["setenv"]


# -- macOS has no /proc: the job is followed all the same ------------------------------------


class TestWithoutProc:
    """Where /proc is missing (macOS, under launchd) the listener still tells its job runner
    from any other process, follows it to its end and stops it: ps and signal 0 stand in.
    Taken on Linux by pointing the module's /proc elsewhere; ps and the processes are real."""

    def test_a_ps_command_line_names_the_runner(self) -> None:
        """The runner of that directory, not another directory's, nor another program."""
        job = "/Users/alice/.local/state/fleet-deploy/jobs/20260101-j1"
        runner = (
            f"/nix/store/x-python3/bin/python3 -I /s/fleet_core/host/jobs/job_runner.py {job} --t 5"
        )
        assert is_job_runner_command(runner, job)
        assert not is_job_runner_command(runner, job[:-1])
        assert not is_job_runner_command(f"/bin/cat {job}", job)
        assert not is_job_runner_command("", job)

    async def test_a_job_is_followed_and_stopped(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A held rebuild's runner is alive by ps (and no other process is taken for it);
        follow sees it through to completed, not lost; a second held one is stopped and
        its process group found gone."""
        monkeypatch.setattr(processes, "PROC", tmp_path / "no-proc")
        release = tmp_path / "release"
        argv = [
            *simulated_home_manager_command("--sim-wait-for", str(release)),
            *("switch", "--flake", f"{URL}?ref=m#alice@mac1", "--refresh"),
        ]
        job = tmp_path / "job"
        job.mkdir()
        launched = await ProcessRebuilder().start(RebuildJob("j1", argv, job, timeout=60))
        assert launched.pid is not None
        await wait_for_file(job / RUNNER_FILE)
        assert runner_alive(launched.pid, job)
        assert not runner_alive(launched.pid, tmp_path / "other")
        assert not runner_alive(os.getpid(), job)

        def on_line(line: str) -> None:
            if line.startswith("building the system configuration"):
                release.touch()  # held until follow has watched it run

        result = await follow(job, on_line, pid=launched.pid, started_at=time.time())
        assert result.ok, result
        assert not runner_alive(launched.pid, job)

        held = tmp_path / "held"
        held.mkdir()
        argv = [
            *simulated_home_manager_command("--sim-wait-for", str(tmp_path / "never")),
            *argv[-4:],
        ]
        second = await ProcessRebuilder().start(RebuildJob("j2", argv, held, timeout=60))
        await wait_for_file(held / OUTPUT_LOG)
        await wait_for_file(held / RUNNER_FILE)
        assert second.pid is not None and runner_alive(second.pid, held)
        assert await stop_runner(held, 1.0)
        stopped = await follow(held, lambda _: None, pid=second.pid, started_at=time.time())
        assert stopped.cancelled, stopped
        rebuild = jobdir.read_runner(held)
        assert rebuild is not None and rebuild.rebuild is not None
        assert not processes.group_exists(rebuild.rebuild)


# -- the stand-ins are as strict as the programs ----------------------------------------------


def stand_in(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*simulated_home_manager_command()[:3], *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


REF = f"{URL}?ref=main#alice@mac1"


class TestStandIns:
    @pytest.mark.parametrize(
        ("program", "verb", "says"),
        [
            ("home-manager", ["switch"], "Creating home file links in /home/alice"),
            ("home-manager", ["switch", "--dry-run"], "This is a dry run"),
            ("home-manager", ["switch", "-n"], "Would create home file links"),
            ("home-manager", ["build"], "-home-manager-generation"),
            ("darwin-rebuild", ["switch"], "setting up /run/current-system..."),
            ("darwin-rebuild", ["build"], "building the system configuration..."),
            ("darwin-rebuild", ["check"], "checking the activation of"),
        ],
    )
    def test_what_each_program_takes(self, program: str, verb: list[str], says: str) -> None:
        """Each verb the program has runs and prints that program's own output."""
        done = stand_in("--sim-program", program, *verb, "--flake", REF, "--refresh")
        assert done.returncode == 0, done.stderr
        assert says in done.stdout
        if program == "home-manager" and verb == ["switch"]:
            assert "Starting Home Manager activation" in done.stdout
        if "--dry-run" in verb or "-n" in verb:
            assert "Creating profile generation" not in done.stdout

    @pytest.mark.parametrize(
        ("program", "args"),
        [
            ("home-manager", ["boot", "--flake", REF]),
            ("home-manager", ["test", "--flake", REF]),
            ("home-manager", ["dry-activate", "--flake", REF]),
            ("home-manager", ["build", "--dry-run", "--flake", REF]),
            ("home-manager", ["switch"]),
            ("home-manager", ["switch", "--flake", REF, "--rollback"]),
            ("darwin-rebuild", ["boot", "--flake", REF]),
            ("darwin-rebuild", ["test", "--flake", REF]),
            ("darwin-rebuild", ["dry-activate", "--flake", REF]),
            ("darwin-rebuild", ["switch", "--dry-run", "--flake", REF]),
            ("darwin-rebuild", ["switch"]),
            ("nixos-rebuild", ["check", "--flake", REF]),
        ],
    )
    def test_what_each_program_refuses(self, program: str, args: list[str]) -> None:
        """A verb or flag the program does not have is a usage error, as it would be."""
        done = stand_in("--sim-program", program, *args)
        assert done.returncode == 2, done.stdout
        assert "error:" in done.stderr

    def test_the_phases_of_their_output(self) -> None:
        """Home Manager's and darwin-rebuild's activation lines are the activating phase."""
        assert phase_of("Starting Home Manager activation", "building") == "activating"
        assert phase_of("setting up /run/current-system...", "building") == "activating"
        assert phase_of("setting up launchd services...", "building") == "activating"
        assert phase_of("Activating linkGeneration", "activating") == "activating"

    def test_a_failure_names_the_program_that_ran(self) -> None:
        """A failed or overrun home-manager is not called nixos-rebuild."""
        tail = ["error: undefined variable 'pkgs'"]
        failed = RebuildResult(1, False, tail, 1.0)
        outcome = decide(
            failed, action=Action.SWITCH, revision="m", timeout=60, program="home-manager"
        )
        assert outcome.message == "home-manager failed (exit 1): undefined variable 'pkgs'"
        late = RebuildResult(None, True, [], 60.0)
        outcome = decide(late, action=Action.SWITCH, revision="m", timeout=60, program="x-rebuild")
        assert outcome.message.startswith("x-rebuild ran longer than 60 s")


class TestHostsTable:
    def test_discovery_carries_the_kind_and_older_answers_still_parse(self) -> None:
        """kind rides in the discovery answer; one without it (an older listener,
        homelab-deploy's) parses as before, with no kind."""
        answer = HostInfo(hostname="mac1", tier="test", kind="home-manager")
        assert parse_host_info(encode(answer)) == answer
        old = parse_host_info(b'{"hostname": "web1", "tier": "test", "busy": false}')
        assert old is not None and old.kind is None

    def test_a_kind_column_only_for_a_mixed_fleet(self) -> None:
        """An all-NixOS fleet's table is as before (a listener that does not say is NixOS);
        with a Home Manager host, KIND shows each host's."""
        web1 = HostInfo(hostname="web1", tier="test", kind="nixos")
        old = HostInfo(hostname="db1", tier="test")
        mac1 = HostInfo(hostname="mac1", tier="test", kind="home-manager")
        plain = hosts_table([web1, old]).splitlines()
        assert plain[0].split() == ["HOST", "TIER", "ROLE", "STATE", "VERSION"]
        mixed = [line.split() for line in hosts_table([web1, old, mac1]).splitlines()]
        assert mixed[0] == ["HOST", "TIER", "ROLE", "KIND", "STATE", "VERSION"]
        assert [row[3] for row in mixed[1:]] == ["nixos", "nixos", "home-manager"]


# -- end to end, over the real nats-server ----------------------------------------------------


class Recorded:
    """The calls a stand-in recorded (--sim-record), as the program's own argv."""

    def __init__(self, path: Path, command: tuple[str, ...]) -> None:
        self.path = path
        self.prefix = list(command[3:])  # after python -m module: the --sim-* options

    def calls(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        calls = []
        for line in self.path.read_text().splitlines():
            call = json.loads(line)
            assert call["argv"][: len(self.prefix)] == self.prefix
            calls.append([call["program"], *call["argv"][len(self.prefix) :]])
        return calls


async def deploy(fleet: Fleet, action: Action) -> tuple[HostResult, list[str]]:
    """Deploy ``action`` to web1; its final result and every status it went through."""
    seen: list[str] = []

    def on_update(host: HostResult, _: DeploymentResult) -> None:
        seen.append(host.status)

    result = await fleet.deploy("deploy.test.web1", action=action, on_update=on_update)
    (host,) = result.hosts
    return host, seen


def kind_settings(
    fleet: Fleet, kind: HostKind, command: tuple[str, ...], **extra: Any
) -> ListenerSettings:
    return fleet.local.listener_settings(
        "web1", host_kind=kind, rebuild_command=command, progress_interval=0.05, **extra
    )


class TestEndToEnd:
    async def test_a_home_manager_host(self, fleet: Fleet, tmp_path: Path) -> None:
        """--host-kind home-manager --configuration alice@mac1: switch, build and
        dry-activate run home-manager's verbs on #alice@mac1; boot and test are rejected on
        arrival (never accepted) and run nothing; discovery says the kind."""
        command = simulated_home_manager_command("--sim-record", str(tmp_path / "hm.jsonl"))
        recorded = Recorded(tmp_path / "hm.jsonl", command)
        settings = kind_settings(fleet, HM, command, configuration="alice@mac1")
        reference = f"{FLAKE_URL}?ref=master#alice@mac1"
        async with fleet.local.listeners([settings]):
            host, seen = await deploy(fleet, Action.SWITCH)
            assert (host.status, host.error) == ("completed", None), host
            assert recorded.calls() == [
                ["home-manager", "switch", "--flake", reference, "--refresh"]
            ]
            assert "accepted" in seen
            host, _ = await deploy(fleet, Action.DRY_ACTIVATE)
            assert host.status == "completed", host
            host, _ = await deploy(fleet, Action.BUILD)
            assert host.status == "completed", host
            assert recorded.calls()[1:] == [
                ["home-manager", "switch", "--dry-run", "--flake", reference, "--refresh"],
                ["home-manager", "build", "--flake", reference, "--refresh"],
            ]
            for action in (Action.BOOT, Action.TEST):
                host, seen = await deploy(fleet, action)
                assert (host.status, host.error) == ("rejected", "invalid_action"), host
                assert seen == ["rejected"]
                assert host.message == (
                    f"{action.value} is not an action for a home-manager host, which runs only "
                    f"switch, dry-activate, build (home-manager has no {action.value}): deploy "
                    "it with one of those"
                )
            assert len(recorded.calls()) == 3
            async with await fleet.connect("admin") as bus:
                (found,) = await Deployer(bus).discover()
            assert (found.hostname, found.kind) == ("web1", "home-manager")
            assert found.closures is False  # a closure deploy activates a NixOS system

    async def test_a_darwin_host(self, fleet: Fleet, tmp_path: Path) -> None:
        """--host-kind darwin builds #<hostname> unless told: switch runs darwin-rebuild
        switch, dry-activate its check; test and boot are rejected and run nothing."""
        command = simulated_darwin_rebuild_command("--sim-record", str(tmp_path / "d.jsonl"))
        recorded = Recorded(tmp_path / "d.jsonl", command)
        reference = f"{FLAKE_URL}?ref=master#web1"
        async with fleet.local.listeners([kind_settings(fleet, DARWIN, command)]):
            host, _ = await deploy(fleet, Action.SWITCH)
            assert (host.status, host.error) == ("completed", None), host
            host, _ = await deploy(fleet, Action.DRY_ACTIVATE)
            assert host.status == "completed", host
            for action in (Action.TEST, Action.BOOT):
                host, seen = await deploy(fleet, action)
                assert (host.status, host.error) == ("rejected", "invalid_action"), host
                assert seen == ["rejected"]
        assert recorded.calls() == [
            ["darwin-rebuild", "switch", "--flake", reference, "--refresh"],
            ["darwin-rebuild", "check", "--flake", reference, "--refresh"],
        ]

    async def test_a_failed_home_manager_switch_says_home_manager(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """A failing home-manager is reported as home-manager's failure, with nix's error."""
        command = simulated_home_manager_command("--sim-fail")
        async with fleet.local.listeners([kind_settings(fleet, HM, command)]):
            host, _ = await deploy(fleet, Action.SWITCH)
        assert (host.status, host.error) == ("failed", "build_failed"), host
        assert host.message == "home-manager failed (exit 1): undefined variable 'webroot'"

    async def test_a_user_service_s_rebuild_runs_in_a_user_unit(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """A Home Manager listener as systemd --user runs it starts each rebuild with
        systemd-run --user (the stand-in), and the deploy completes through that unit."""
        calls = tmp_path / "systemd-run.jsonl"
        command = simulated_home_manager_command()
        settings = kind_settings(
            fleet,
            HM,
            command,
            rebuild_runner="systemd",
            systemd_user=True,
            systemd_run=simulated_systemd_run_command("--sim-record", str(calls)),
            configuration="alice@mac1",
        )
        async with fleet.local.listeners([settings]):
            host, _ = await deploy(fleet, Action.SWITCH)
        assert (host.status, host.error) == ("completed", None), host
        (call,) = [json.loads(line) for line in calls.read_text().splitlines()]
        assert (call["user"], call["same_dir"]) == (True, True)
        assert call["unit"].startswith("fleet-deploy-job-")

    async def test_the_installed_listener_takes_the_flags(self, fleet: Fleet) -> None:
        """The real `fleet-deploy listener --host-kind home-manager --configuration
        alice@mac1`: `fleet-deploy hosts` shows its kind, a switch deploys #alice@mac1 with
        home-manager, a boot is rejected (exit 1)."""
        argv = fleet.listener_argv(
            "web1",
            *("--host-kind", "home-manager", "--configuration", "alice@mac1"),
            *("--rebuild-runner", "session"),
            sim=("--sim-program", "home-manager"),
        )
        process = await anyio.open_process(argv, env=fleet.cli_env())
        daemon = Daemon(process)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(daemon.drain)
                await daemon.wait_for('"event": "listening"')
                listening = daemon.event("listening")
                assert (listening["host_kind"], listening["configuration"]) == (
                    "home-manager",
                    "alice@mac1",
                )
                hosts = await fleet.cli("hosts", "--tier", "test")
                assert hosts.returncode == 0, hosts.stderr
                header, row = hosts.stdout.decode().splitlines()
                assert header.split() == ["HOST", "TIER", "ROLE", "KIND", "STATE", "VERSION"]
                assert row.split()[:4] == ["web1", "test", "web", "home-manager"]
                done = await fleet.cli("deploy", "deploy.test.web1")
                assert done.returncode == 0, done.stdout + done.stderr
                refused = await fleet.cli("deploy", "deploy.test.web1", "--action", "boot")
                assert refused.returncode == 1
                assert b"invalid_action" in refused.stdout
                process.terminate()
                await daemon.exit_code()
                tasks.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.kill()
        assert fleet.runs() == [
            ["switch", "--flake", f"{FLAKE_URL}?ref=master#alice@mac1", "--refresh"]
        ]


def test_without_proc_a_reused_group_id_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where ps stands in for /proc, a group whose leader started after the job's rebuild
    (a pid reused after a reboot) is not ours: it is never signalled."""
    monkeypatch.setattr(processes, "PROC", tmp_path / "no-proc")
    with subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    ) as leader:
        try:
            now = time.time()
            assert processes.group_exists(leader.pid, since=now)
            assert processes.group_exists(leader.pid)  # no record of when: as before
            assert not processes.group_exists(leader.pid, since=now - 3600)
        finally:
            leader.kill()
            leader.wait()
    assert not processes.group_exists(leader.pid, since=now)


@pytest.mark.parametrize("name", ["mac1.local", "alice@mac1"])
def test_darwin_takes_only_names_darwin_rebuild_does_not_misread(name: str) -> None:
    """darwin-rebuild puts the name into darwinConfigurations.<name> unquoted: a dot would
    pick another attribute and an @ would not parse, so both are refused for darwin only."""
    with pytest.raises(UsageError, match="darwin-rebuild does not quote it"):
        validate_configuration(name, HostKind.DARWIN)
    with pytest.raises(UsageError, match="darwin-rebuild does not quote it"):
        build_argv(
            ("darwin-rebuild",),
            Action.SWITCH,
            flake_url=URL,
            revision="main",
            configuration=name,
            kind=HostKind.DARWIN,
        )
    assert validate_configuration(name, HostKind.HOME_MANAGER) == name
    assert validate_configuration(name) == name
