"""Automatic rollback, decided by the job runner on the host: real listeners and job runners,
a real nats-server, and the simulated system profile (``fleet_core.testing.simulated_system``)
whose links a switch, a check, a cut network and a rollback really change."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import pytest

from fleet_core.config.settings import HealthCheckSpec, RollbackSettings
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.host.jobs.activation import SYSTEM_RUNNING, read_phase
from fleet_core.host.jobs.jobdir import EXIT_FILE, read_runner
from fleet_core.protocol.actions import Action, HostKind
from fleet_core.testing import host_link
from fleet_core.testing.simulated_system import (
    boot_default,
    current,
    current_system_path,
    generations,
    init_root,
    profile,
    profile_path,
    simulated_nix_env_command,
    simulated_systemctl_command,
)
from fleet_mcp.reports.deployment import DeploymentReport

from .conftest import Fleet
from .support import (
    Daemon,
    process_gone,
    result_text,
    running_daemon,
    session,
    settings_for,
    text_of,
    wait_for_file,
)

pytestmark = pytest.mark.anyio

PASS = HealthCheckSpec(name="web-answers", argv=(sys.executable, "-c", "print('200 OK')"))
FAIL = HealthCheckSpec(
    name="web-answers",
    argv=(sys.executable, "-c", "import sys; print('connection refused'); sys.exit(1)"),
)
RUNNING = HealthCheckSpec(name="system", builtin=SYSTEM_RUNNING, timeout=20)


@dataclass
class Host:
    """web1, with a root of its own: its system profile, current system and boot entry."""

    root: Path
    initial: Path

    def links(self) -> tuple[Path | None, Path | None, Path | None]:
        return profile(self.root), current(self.root), boot_default(self.root)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    root = tmp_path / "web1-root"
    return Host(root, init_root(root, "web1"))


def guarded(host: Host, *checks: HealthCheckSpec, **overrides: object) -> RollbackSettings:
    fields: dict[str, object] = {
        "system_profile": profile_path(host.root),
        "current_system": current_system_path(host.root),
        "nix_env": simulated_nix_env_command(),
        "systemctl": simulated_systemctl_command(host.root),
        "checks": checks,
        "confirm_timeout": 10.0,
    }
    return RollbackSettings(**(fields | overrides))  # type: ignore[arg-type]


@asynccontextmanager
async def web1(
    fleet: Fleet, host: Host, rollback: RollbackSettings, *sim: str, url: str | None = None
) -> AsyncIterator[None]:
    """web1's listener on its simulated root; ``url`` is its path to NATS, if not direct."""
    overrides: dict[str, object] = {"rollback": rollback}
    if url is not None:
        overrides["nats_urls"] = (url,)
    async with fleet.listeners(
        "web1", sim={"web1": ["--sim-root", str(host.root), *sim]}, **overrides
    ):
        yield


async def deploy(fleet: Fleet, action: Action = Action.SWITCH) -> HostResult:
    result: DeploymentResult = await fleet.deploy("deploy.test.web1", action=action)
    [web1_result] = result.hosts
    return web1_result


class TestTheNewSystemStands:
    async def test_a_switch_whose_checks_pass_and_that_reaches_nats_completes(
        self, fleet: Fleet, host: Host
    ) -> None:
        async with web1(fleet, host, guarded(host, PASS, RUNNING)):
            result = await deploy(fleet)
        assert (result.status, result.error) == ("completed", None), result.message
        new_profile, new_current, new_boot = host.links()
        assert new_current is not None and new_current != host.initial
        assert new_profile == new_current == new_boot
        assert [number for number, _ in generations(host.root)] == [1, 2]

    async def test_boot_changes_what_boots_only_and_checks_nothing(
        self, fleet: Fleet, host: Host
    ) -> None:
        async with web1(fleet, host, guarded(host, FAIL)):  # a check that would fail: unrun
            result = await deploy(fleet, Action.BOOT)
        assert result.status == "completed", result.message
        new_profile, new_current, new_boot = host.links()
        assert new_current == host.initial
        assert new_profile == new_boot != host.initial


class TestRollback:
    async def test_a_failed_activation_is_rolled_back(self, fleet: Fleet, host: Host) -> None:
        async with web1(fleet, host, guarded(host, PASS), "--sim-fail-activation"):
            result = await deploy(fleet)
        assert (result.status, result.error) == ("failed", "rolled_back")
        assert result.message == f"rolled back to {host.initial}: the activation failed"
        assert host.links() == (host.initial, host.initial, host.initial)
        # Set back by path, as a new generation: never "the previous one" by number.
        assert [path for _, path in generations(host.root)][-1] == host.initial

    async def test_a_failed_check_is_rolled_back(self, fleet: Fleet, host: Host) -> None:
        async with web1(fleet, host, guarded(host, PASS, FAIL.__class__("db", FAIL.argv))):
            result = await deploy(fleet)
        assert (result.status, result.error) == ("failed", "rolled_back")
        assert result.message == f"rolled back to {host.initial}: the health check 'db' failed"
        assert host.links() == (host.initial, host.initial, host.initial)

    async def test_a_degraded_system_fails_the_built_in_check(
        self, fleet: Fleet, host: Host
    ) -> None:
        async with web1(fleet, host, guarded(host, RUNNING), "--sim-degraded", "nginx.service"):
            result = await deploy(fleet)
        assert (result.status, result.error) == ("failed", "rolled_back")
        assert "the health check 'system' failed" in result.message
        assert current(host.root) == host.initial

    async def test_ignored_units_do_not_fail_the_built_in_check(
        self, fleet: Fleet, host: Host
    ) -> None:
        ignoring = HealthCheckSpec(
            name="system", builtin=SYSTEM_RUNNING, ignore_units=("nginx.service",)
        )
        async with web1(fleet, host, guarded(host, ignoring), "--sim-degraded", "nginx.service"):
            result = await deploy(fleet)
        assert result.status == "completed", result.message
        assert current(host.root) != host.initial

    async def test_a_test_action_goes_back_without_touching_the_profile(
        self, fleet: Fleet, host: Host
    ) -> None:
        async with web1(fleet, host, guarded(host, FAIL)):
            result = await deploy(fleet, Action.TEST)
        assert (result.status, result.error) == ("failed", "rolled_back")
        assert host.links() == (host.initial, host.initial, host.initial)
        assert len(generations(host.root)) == 1

    async def test_lost_connectivity_is_rolled_back_by_the_runner(
        self, fleet: Fleet, host: Host
    ) -> None:
        """The new system cuts web1's network: its listener cannot confirm, so the runner
        goes back by itself after the confirm timeout, the network returns with the old
        system, and the listener reports the rollback."""
        port = int(fleet.url.rpartition(":")[2])
        async with host_link(host.root, "127.0.0.1", port) as link:
            rollback = guarded(host, PASS, confirm_timeout=3.0)
            async with web1(
                fleet, host, rollback, "--sim-cut-network", url=f"nats://127.0.0.1:{link}"
            ):
                result = await deploy(fleet)
            assert link.cuts >= 1
        assert (result.status, result.error) == ("failed", "rolled_back"), result.message
        assert "did not confirm within 3 s that it reached NATS" in result.message
        assert host.links() == (host.initial, host.initial, host.initial)


class TestRollbackOff:
    async def test_per_deploy_a_failed_check_is_reported_and_the_new_system_stays(
        self, fleet: Fleet, host: Host
    ) -> None:
        async with web1(fleet, host, guarded(host, FAIL, enabled=False)):
            result = await deploy(fleet)
        assert (result.status, result.error) == ("failed", "check_failed")
        assert "not rolled back" in result.message
        assert current(host.root) != host.initial


# -- kill -9 at every phase ------------------------------------------------------------------


@dataclass
class Phases:
    """A real listener process on web1's simulated root, whose health check waits at a gate
    (a file the test creates), so the job can be held in ``checking``."""

    fleet: Fleet
    host: Host
    state: Path
    gate: Path
    checks: Path
    nix_env: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        nix_env = self.nix_env or simulated_nix_env_command()
        return self.fleet.listener_argv(
            "web1",
            "--rebuild-runner", "session",
            "--system-profile", str(profile_path(self.host.root)),
            "--current-system", str(current_system_path(self.host.root)),
            "--nix-env-command", shlex.join(nix_env),
            "--systemctl-command", shlex.join(simulated_systemctl_command(self.host.root)),
            "--health-checks", str(self.checks),
            "--confirm-timeout", "3",
            sim=("--sim-root", str(self.host.root)),
            state=self.state,
        )  # fmt: skip

    @asynccontextmanager
    async def listener(self) -> AsyncIterator[Daemon]:
        async with running_daemon(self.argv(), self.fleet.cli_env()) as daemon:
            await daemon.wait_for('"event": "listening"')
            yield daemon

    def job(self) -> Path:
        (job,) = (self.state / "jobs").iterdir()
        return job

    async def phase(self, name: str, limit: float = 20) -> None:
        """Until the runner says it is in phase ``name`` (a file: polled, with a deadline)."""
        await wait_for_file(self.state / "jobs", limit)
        with anyio.fail_after(limit):
            # The runner's phase file offers no event to wait on: polled, with a deadline.
            while (await anyio.to_thread.run_sync(self._phase)) != name:  # noqa: ASYNC110
                await anyio.sleep(0.02)

    def _phase(self) -> str | None:
        jobs = list((self.state / "jobs").iterdir())
        return read_phase(jobs[0]) if jobs else None

    def runner_pid(self) -> int:
        pids = read_runner(self.job())
        assert pids is not None
        return pids.runner

    def open_gate(self) -> None:
        self.gate.write_text("open")


@pytest.fixture
def phases(fleet: Fleet, host: Host, tmp_path: Path) -> Phases:
    gate = tmp_path / "gate"
    waits = (
        "import pathlib, sys, time\nwhile not pathlib.Path(sys.argv[1]).exists(): time.sleep(0.02)"
    )
    checks = tmp_path / "checks.json"
    checks.write_text(
        json.dumps([{"name": "gate", "command": [sys.executable, "-c", waits, str(gate)]}])
    )
    return Phases(fleet, host, fleet.root / "state" / "web1", gate, checks)


def processes_naming(path: Path) -> list[int]:
    """The live processes whose command line names ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


async def started_naming(path: Path, limit: float = 10) -> list[int]:
    """The processes naming ``path``, once there is one: /proc offers no event to wait on,
    so it is looked at again, within a deadline."""
    with anyio.fail_after(limit):
        while not (found := processes_naming(path)):  # noqa: ASYNC110 - no event to wait on
            await anyio.sleep(0.02)
    return found


def complete_system(path: Path | None) -> bool:
    return path is not None and (path / "bin" / "switch-to-configuration").is_file()


@dataclass
class Deploying:
    """A deploy to web1 running in a task: ``result`` waits for its host result."""

    done: anyio.Event
    host: HostResult | None = None

    async def result(self, limit: float = 30) -> HostResult:
        with anyio.fail_after(limit):
            await self.done.wait()
        assert self.host is not None
        return self.host


async def deploying(fleet: Fleet, tasks: anyio.abc.TaskGroup) -> Deploying:
    started = Deploying(anyio.Event())

    async def run() -> None:
        started.host = await deploy(fleet)
        started.done.set()

    tasks.start_soon(run)
    return started


class TestKilled:
    async def test_a_listener_killed_while_checking_is_replaced_and_confirms(
        self, phases: Phases
    ) -> None:
        """The switch restarted the listener, as it can: the new one re-attaches to the job
        and confirms from the new system, which stands."""
        async with anyio.create_task_group() as tasks:
            async with phases.listener() as first:
                done = await deploying(phases.fleet, tasks)
                await phases.phase("checking")
                first.process.kill()
                await first.exit_code()
            phases.open_gate()
            async with phases.listener() as second:
                await second.wait_for('"event": "activation_confirmed"')
                result = await done.result()
        assert (result.status, result.error) == ("completed", None), result.message
        new = current(phases.host.root)
        assert new != phases.host.initial and complete_system(new)

    async def test_with_no_listener_to_confirm_the_runner_rolls_back_alone(
        self, phases: Phases
    ) -> None:
        async with anyio.create_task_group() as tasks:
            async with phases.listener() as first:
                done = await deploying(phases.fleet, tasks)
                await phases.phase("checking")
                first.process.kill()
                await first.exit_code()
            phases.open_gate()  # checks pass, and nobody is there to confirm
            await wait_for_file(phases.job() / EXIT_FILE, limit=20)
            assert phases.host.links() == (phases.host.initial,) * 3
            async with phases.listener():  # reports what the runner did, late
                result = await done.result()
        assert (result.status, result.error) == ("failed", "rolled_back"), result.message
        assert "did not confirm within 3 s" in result.message

    async def test_a_runner_killed_while_checking_leaves_the_new_system_whole(
        self, phases: Phases
    ) -> None:
        async with anyio.create_task_group() as tasks, phases.listener():
            done = await deploying(phases.fleet, tasks)
            await phases.phase("checking")
            checking = await started_naming(phases.gate)  # the runner spawns it just after
            os.kill(phases.runner_pid(), signal.SIGKILL)
            result = await done.result()
        assert (result.status, result.error) == ("failed", "cancelled"), result.message
        new = current(phases.host.root)
        assert new != phases.host.initial and complete_system(new)
        assert profile(phases.host.root) == new
        # The check the runner was running died with it: nothing is left waiting.
        for pid in checking:
            assert await anyio.to_thread.run_sync(process_gone, pid, 10)

    async def test_a_runner_killed_while_rolling_back_leaves_a_whole_system(
        self, phases: Phases, tmp_path: Path
    ) -> None:
        """Killed between setting the profile back and activating: one system or the other
        runs, each complete; never a half of one."""
        held = tmp_path / "nix-env-held"
        release = tmp_path / "nix-env-go"
        waits = (
            "import os, pathlib, sys, time\n"
            "pathlib.Path(sys.argv[1]).write_text('held')\n"
            "while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.02)\n"
            "os.execv(sys.executable, [sys.executable, *sys.argv[3:]])"
        )
        phases.nix_env = (
            sys.executable, "-c", waits, str(held), str(release),
            *simulated_nix_env_command()[1:],
        )  # fmt: skip
        fail = [{"name": "db", "command": list(FAIL.argv)}]
        phases.checks.write_text(json.dumps(fail))
        async with anyio.create_task_group() as tasks, phases.listener():
            done = await deploying(phases.fleet, tasks)
            await phases.phase("rolling_back")
            await wait_for_file(held)
            os.kill(phases.runner_pid(), signal.SIGKILL)
            release.write_text("go")
            result = await done.result()
        assert result.status == "failed"
        running = current(phases.host.root)
        assert running in {phases.host.initial, profile(phases.host.root)}
        assert complete_system(running) and complete_system(profile(phases.host.root))

    async def test_no_rollback_from_the_command_line_and_the_checks_in_its_summary(
        self, fleet: Fleet, host: Host
    ) -> None:
        """``deploy --no-rollback``: the host reports the failed check and keeps the new
        system; the summary lists each host's checks."""
        async with web1(fleet, host, guarded(host, PASS, FAIL.__class__("db", FAIL.argv))):
            proc = await fleet.cli("deploy", "deploy.test.web1", "--no-rollback")
            # Another revision (the same one again would change nothing, so check nothing).
            as_json = await fleet.cli("deploy", "deploy.test.web1", "--branch", "v2", "--json")
        out = proc.stdout.decode()
        assert proc.returncode == 1
        assert "check_failed: the health check 'db' failed; not rolled back" in out
        checks = r"--- health checks of web1 ---\n  web-answers +ok .*\n  db +FAILED .* refused"
        assert re.search(checks, out), out
        assert current(host.root) != host.initial  # kept: rollback was off for this deploy
        [web1_result] = json.loads(as_json.stdout)["hosts"]
        assert web1_result["error"] == "rolled_back"
        assert [(c["name"], c["ok"]) for c in web1_result["checks"]] == [
            ("web-answers", True),
            ("db", False),
        ]
        assert web1_result["rolled_back_to"] is not None


class TestMcp:
    async def test_a_rollback_is_named_and_its_checks_are_host_output(
        self, fleet: Fleet, host: Host
    ) -> None:
        async with (
            web1(fleet, host, guarded(host, FAIL)),
            session(settings_for(fleet), "auto") as s,
        ):
            result = await s.call("deploy", hostname="web1")
        report = DeploymentReport.model_validate(result.structured_content)
        [web1_report] = report.hosts
        assert (web1_report.status, web1_report.error) == ("failed", "rolled_back")
        assert "web1 failed (rolled_back" in report.summary
        assert "went back to the system it ran before by itself" in report.summary
        assert web1_report.checks is not None and not web1_report.checks[0].ok
        # The check's name and output came from the host: fenced, never in the prose.
        parts = result_text(text_of(result))
        assert "connection refused" not in "\n".join(parts.prose)
        assert any('"checks"' in line and "connection refused" in line for line in parts.fenced)


class TestCheckOnDemand:
    async def test_check_runs_the_checks_on_the_running_system_and_changes_nothing(
        self, fleet: Fleet, host: Host
    ) -> None:
        """``fleet-deploy check``: no rebuild, the checks on what runs, their results."""
        async with web1(fleet, host, guarded(host, PASS, RUNNING)):
            proc = await fleet.cli("check", "deploy.test.web1")
        out = proc.stdout.decode()
        assert proc.returncode == 0, out + proc.stderr.decode()
        assert out.startswith("checking the health of deploy.test.web1\n")
        assert "health checks of deploy.test.web1" in out
        assert "2 health checks passed" in out
        assert re.search(r"--- health checks of web1 ---\n  web-answers +ok .*\n  system +ok", out)
        assert fleet.runs() == []  # nixos-rebuild never ran
        assert host.links() == (host.initial,) * 3

    async def test_a_failing_check_fails_the_command_and_nothing_is_rolled_back(
        self, fleet: Fleet, host: Host
    ) -> None:
        async with web1(fleet, host, guarded(host, FAIL), "--sim-degraded", "x.service"):
            proc = await fleet.cli("check", "deploy.test.all", "--json")
        assert proc.returncode == 1
        [web1_result] = json.loads(proc.stdout)["hosts"]
        assert (web1_result["status"], web1_result["error"]) == ("failed", "check_failed")
        assert web1_result["message"] == "the health check 'web-answers' failed"
        assert web1_result["checks"][0]["output_tail"] == ["connection refused"]
        assert host.links() == (host.initial,) * 3

    async def test_a_home_manager_host_refuses_a_check(self, fleet: Fleet) -> None:
        async with fleet.listeners(
            "web1", host_kind=HostKind.HOME_MANAGER, configuration="me@web1"
        ):
            result = await deploy(fleet, Action.CHECK)
        assert (result.status, result.error) == ("rejected", "invalid_action")
        assert "check is not an action for a home-manager host" in result.message

    async def test_a_home_manager_listener_says_it_cannot_roll_back(self, fleet: Fleet) -> None:
        argv = fleet.listener_argv(
            "web1", "--host-kind", "home-manager", "--configuration", "me@web1",
            "--rebuild-runner", "session",
        )  # fmt: skip
        async with running_daemon(argv, fleet.cli_env()) as daemon:
            await daemon.wait_for('"event": "listening"')
            listening = daemon.event("listening")
        assert listening["rollback"] == "rollback_unsupported"
        async with running_daemon(fleet.listener_argv("web1"), fleet.cli_env()) as nixos:
            await nixos.wait_for('"event": "listening"')
            assert nixos.event("listening")["rollback"] == "on"
