"""Cancelling a deployment through the real CLI, against real listeners and job runners and
a real nats-server: a job still building stops, one activating does not, a host the
deployment has not reached refuses it later, and a key cancels only where it may deploy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.abc
import pytest

from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import parse_target
from fleet_mcp.reports.cancel import CancelReport

from .conftest import FAST, Fleet
from .support import session, settings_for, text_of, wait_for_file

pytestmark = pytest.mark.anyio


class Deploying:
    """A deploy in a task: its id known at once, its updates and result as they come."""

    def __init__(self, fleet: Fleet, subject: str, **rollout: object) -> None:
        self.fleet = fleet
        self.subject = subject
        self.deployment_id = f"cancel-me-{id(self)}"
        self.rollout = rollout
        self.updates: list[HostResult] = []
        self.result: DeploymentResult | None = None
        self.done = anyio.Event()
        self._changed = anyio.Event()

    def _on_update(self, host: HostResult, _: DeploymentResult) -> None:
        self.updates.append(host)
        self._changed.set()
        self._changed = anyio.Event()

    async def run(self) -> None:
        from fleet_core.config.settings import RolloutSettings
        from fleet_core.deploy.deployer import Deployer

        rollout = RolloutSettings(**self.rollout) if self.rollout else None  # type: ignore[arg-type]
        async with await self.fleet.connect("deployer") as bus:
            self.result = await Deployer(
                bus, timing=FAST, signer=self.fleet.seed("deployer")
            ).deploy(
                parse_target(self.subject),
                revision="master",
                action=Action.SWITCH,
                timeout=30,
                deployment_id=self.deployment_id,
                on_update=self._on_update,
                rollout=rollout,
            )
        self.done.set()

    async def wait_for(self, host: str, status: str, limit: float = 20) -> None:
        with anyio.fail_after(limit):
            while not any(u.hostname == host and u.status == status for u in self.updates):
                await self._changed.wait()

    async def finished(self, limit: float = 30) -> dict[str, HostResult]:
        with anyio.fail_after(limit):
            await self.done.wait()
        assert self.result is not None
        return {h.hostname: h for h in self.result.hosts}


async def cancel(
    fleet: Fleet, *args: str, who: str = "deployer"
) -> subprocess.CompletedProcess[bytes]:
    return await fleet.cli(
        "cancel", *args, "--nats-url", fleet.url, "--nkey-file", str(fleet.keys[who])
    )


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """A file whose creation lets the held rebuilds go on (``--sim-wait-for``)."""
    return tmp_path / "gate"


class TestCancel:
    async def test_a_job_still_building_is_stopped(self, fleet: Fleet, gate: Path) -> None:
        deploying = Deploying(fleet, "deploy.test.web1")
        async with (
            fleet.listeners("web1", sim={"web1": ["--sim-wait-for", str(gate)]}),
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(deploying.run)
            await deploying.wait_for("web1", "progress")
            proc = await cancel(fleet, deploying.deployment_id, "--json")
            hosts = await deploying.finished()
        answered = json.loads(proc.stdout)
        assert proc.returncode == 0, proc.stderr.decode()
        assert [(a["hostname"], a["outcome"]) for a in answered["answers"]] == [("web1", "stopped")]
        assert answered["refused_tiers"] == ["prod"]  # the test key may not deploy there
        web1 = hosts["web1"]
        assert (web1.status, web1.error) == ("failed", "cancelled")
        signer = fleet.seed("deployer").public_key
        assert web1.message.startswith(f"cancelled (a cancel request signed by {signer})")

    async def test_a_job_activating_is_not_interrupted(
        self, fleet: Fleet, gate: Path, tmp_path: Path
    ) -> None:
        """Held in its health checks, the job is past the point of a safe stop."""
        from fleet_core.config.settings import HealthCheckSpec, RollbackSettings
        from fleet_core.testing.simulated_system import (
            current_system_path,
            init_root,
            profile_path,
        )

        root = tmp_path / "root"
        init_root(root, "web1")
        waits = (
            "import pathlib, sys, time\n"
            "while not pathlib.Path(sys.argv[1]).exists(): time.sleep(0.02)"
        )
        rollback = RollbackSettings(
            system_profile=profile_path(root),
            current_system=current_system_path(root),
            checks=(HealthCheckSpec(name="gate", argv=(sys.executable, "-c", waits, str(gate))),),
        )
        deploying = Deploying(fleet, "deploy.test.web1")
        async with (
            fleet.listeners("web1", sim={"web1": ["--sim-root", str(root)]}, rollback=rollback),
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(deploying.run)
            await deploying.wait_for("web1", "progress")
            jobs = fleet.root / "state" / "web1" / "jobs"
            await wait_for_file(jobs)
            (job,) = list(jobs.iterdir())
            await wait_for_file(job / "phase.json")
            proc = await cancel(fleet, deploying.deployment_id, "--tier", "test")
            await anyio.Path(gate).write_text("open")
            hosts = await deploying.finished()
        out = proc.stdout.decode()
        assert proc.returncode == 1
        assert "web1" in out and "activating" in out and "not interrupted" in out
        assert hosts["web1"].status == "completed"

    async def test_hosts_not_reached_refuse_the_deployment_and_a_rollout_stops(
        self, fleet: Fleet, gate: Path
    ) -> None:
        """Canary web1 is stopped; web2 and web3 heard the cancel: however generous the
        failure budget, no later batch runs, and no rebuild of theirs is ever invoked."""
        deploying = Deploying(fleet, "deploy.test.role.web", canary=1, batch=1, max_failures=5)
        sim = {"web1": ["--sim-wait-for", str(gate)]}
        async with (
            fleet.listeners("web1", "web2", "web3", sim=sim),
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(deploying.run)
            await deploying.wait_for("web1", "progress")
            proc = await cancel(fleet, deploying.deployment_id, "--tier", "test", "--json")
            hosts = await deploying.finished()
        answers = {a["hostname"]: a["outcome"] for a in json.loads(proc.stdout)["answers"]}
        assert answers == {"web1": "stopped", "web2": "refused", "web3": "refused"}
        assert (hosts["web1"].status, hosts["web1"].error) == ("failed", "cancelled")
        assert (hosts["web2"].status, hosts["web3"].status) == ("skipped", "skipped")
        assert fleet.hosts_run() == ["web1"]
        assert deploying.result is not None and deploying.result.rollout is not None
        assert deploying.result.rollout.stopped is not None
        assert deploying.result.rollout.stopped.startswith("the deployment was cancelled")


class TestWhoMayCancel:
    async def test_the_test_key_may_not_cancel_in_prod(self, fleet: Fleet) -> None:
        proc = await cancel(fleet, "some-deployment", "--tier", "prod", "--json")
        error = json.loads(proc.stdout)["error"]
        assert proc.returncode == 2
        assert error["code"] == "permission_denied"
        assert "test-tier deployer key" in error["message"]

    async def test_a_listener_key_may_not_cancel_at_all(self, fleet: Fleet) -> None:
        async with fleet.listeners("web1"):
            proc = await cancel(fleet, "some-deployment", who="web1")
        assert proc.returncode == 2
        assert "this is no deployer key" in proc.stderr.decode()

    async def test_a_bad_deployment_id_is_a_usage_error(self, fleet: Fleet) -> None:
        proc = await cancel(fleet, "not an id")
        assert proc.returncode == 2
        assert "is not a deployment id" in proc.stderr.decode()


class TestMcp:
    async def test_cancel_deployment_stops_what_a_deploy_call_started(
        self, fleet: Fleet, gate: Path
    ) -> None:
        async with (
            fleet.listeners("web1", sim={"web1": ["--sim-wait-for", str(gate)]}),
            session(settings_for(fleet), "auto") as s,
        ):
            started = await s.deploy(hostname="web1", wait_seconds=0)
            with anyio.fail_after(20):
                while not any("web1 progress" in m or "web1 started" in m for m in s.messages()):
                    started = await s.deploy(
                        "deployment_status", deployment_id=started.deployment_id, wait_seconds=0.5
                    )
            result = await s.call("cancel_deployment", deployment_id=started.deployment_id)
            assert not result.is_error, text_of(result)
            report = CancelReport.model_validate(result.structured_content)
            final = await s.deploy("deployment_status", deployment_id=started.deployment_id)
        assert report.summary == f"Cancel of deployment {started.deployment_id}: stopped: web1."
        assert [(a.hostname, a.outcome) for a in report.answers] == [("web1", "stopped")]
        assert report.refused_tiers == []  # the test key's server cancels in the test tier only
        [web1] = final.hosts
        assert (web1.status, web1.error) == ("failed", "cancelled")
