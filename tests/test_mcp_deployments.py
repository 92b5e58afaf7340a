"""The MCP server's deployment registry and its waiting, without NATS or MCP in the way."""

from __future__ import annotations

from typing import Any, cast

import anyio
import pytest

from fleet_core.deployer import Deployer
from fleet_core.rebuild import Action
from fleet_core.subjects import Target, Tier
from fleet_core.tracking import DeploymentResult, HostResult
from fleet_mcp.deployments import BATCH, Deployment, DeploymentRegistry
from fleet_mcp.models import MAX_TAIL_LINES, deployment_report

pytestmark = pytest.mark.anyio


def deployment() -> Deployment:
    return Deployment(Target.all(Tier.TEST), revision="master", action=Action.SWITCH, admin=False)


def host(name: str, status: str = "accepted", **fields: object) -> HostResult:
    final = status in ("completed", "failed", "rejected", "missing", "lost", "timeout")
    return HostResult.model_validate({"hostname": name, "status": status, "final": final, **fields})


def result(d: Deployment, hosts: list[HostResult], *, done: bool) -> DeploymentResult:
    counts: dict[str, int] = {}
    for h in hosts:
        counts[h.status] = counts.get(h.status, 0) + 1
    return DeploymentResult(
        deployment_id=d.id,
        subject=d.target.subject,
        tier="test",
        action="switch",
        revision="master",
        ok=done and all(h.status == "completed" for h in hosts),
        done=done,
        counts=counts,
        hosts=hosts,
        duration_s=0.5,
    )


def finish(d: Deployment, hosts: list[HostResult]) -> None:
    d.result = result(d, hosts, done=True)
    d.finished.set()


class TestFollow:
    async def test_each_change_of_a_small_deployment_gets_its_own_notification(self) -> None:
        """Changes that come one at a time are each followed by a notification naming them."""
        d = deployment()
        notes: list[str] = []
        send, heard = anyio.create_memory_object_stream[str](10)

        async def notify(message: str) -> None:
            notes.append(message)
            send.send_nowait(message)

        async def produce() -> None:
            for status in ("accepted", "started", "completed"):
                await heard.receive()  # the previous notification went out
                d.on_update(host("web1", status), result(d, [host("web1", status)], done=False))
            finish(d, [host("web1", "completed")])

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(produce)
                await d.follow(30, notify, heartbeat=30)
        assert notes[0].endswith("switch of master to deploy.test.all")
        send.close()
        heard.close()
        assert [n.split(": ", 1)[1] for n in notes[1:]] == [
            "web1 accepted",
            "web1 started",
            "web1 completed",
        ]

    async def test_a_burst_shares_notifications(self) -> None:
        """A hundred changes at once make one counting notification, not a hundred."""
        d = deployment()
        hosts = [host(f"h{i:03d}", "completed") for i in range(100)]
        for h in hosts:
            d.on_update(h, result(d, hosts, done=False))
        finish(d, hosts)
        notes: list[str] = []

        async def notify(message: str) -> None:
            notes.append(message)

        with anyio.fail_after(5):
            await d.follow(30, notify, heartbeat=30)
        assert len(notes) == 2
        assert "100 host changes (100 completed)" in notes[1]
        assert "100/100 hosts final" in notes[1]
        assert BATCH < 100

    async def test_heartbeat_while_nothing_changes_then_return_at_the_deadline(self) -> None:
        """With no change, notifications still come every heartbeat until wait runs out."""
        d = deployment()
        notes: list[str] = []

        async def notify(message: str) -> None:
            notes.append(message)

        with anyio.fail_after(5):
            await d.follow(0.5, notify, heartbeat=0.1)
        assert not d.done
        beats = [n for n in notes if "still running" in n and "no answer yet" in n]
        assert len(beats) >= 3, notes

    async def test_a_finished_deployment_returns_at_once(self) -> None:
        """Following a finished deployment replays its changes and returns without waiting."""
        d = deployment()
        d.on_update(host("web1", "completed"), result(d, [host("web1", "completed")], done=False))
        finish(d, [host("web1", "completed")])
        notes: list[str] = []

        async def notify(message: str) -> None:
            notes.append(message)

        with anyio.fail_after(1):
            await d.follow(300, notify, heartbeat=300)
        assert len(notes) == 2
        assert d.current().ok


class StubDeployer:
    """Stands in for ``Deployer.deploy``: finishes at once, or when ``release`` is set."""

    def __init__(self, *, hold: bool) -> None:
        self.release = anyio.Event()
        if not hold:
            self.release.set()

    async def deploy(self, target: Target, **options: Any) -> DeploymentResult:
        await self.release.wait()
        return DeploymentResult(
            deployment_id=options["deployment_id"],
            subject=target.subject,
            tier="test",
            action="switch",
            revision="master",
            ok=False,
            done=True,
            counts={},
            hosts=[],
            duration_s=0.0,
        )


class TestRegistry:
    async def test_keeps_running_deployments_and_drops_the_oldest_finished(self) -> None:
        """Past its size the registry forgets finished deployments, oldest first, not running."""
        held, quick = StubDeployer(hold=True), StubDeployer(hold=False)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                registry = DeploymentRegistry(tasks, keep=2)
                running = registry.start(deployment(), cast(Deployer, held), limit=60)
                old = registry.start(deployment(), cast(Deployer, quick), limit=60)
                await old.finished.wait()
                newer = registry.start(deployment(), cast(Deployer, quick), limit=60)
                assert registry.get(running.id) is running
                assert registry.get(old.id) is None
                assert registry.latest() is newer
                assert len(registry) == 2
                held.release.set()
        assert running.done
        assert running.result is not None


class TestReport:
    def test_running_report_says_how_to_keep_waiting(self) -> None:
        """A report of a running deployment names deployment_status and the id to pass."""
        d = deployment()
        report = deployment_report(d.current(), finished=False, test_only=True, wait_hint=45)
        assert report.state == "running"
        assert not report.ok
        assert report.next_step is not None
        assert f"deployment_id={d.id!r}" in report.next_step
        assert "wait_seconds up to 45" in report.next_step

    def test_failure_keeps_the_end_of_the_log(self) -> None:
        """A long log tail is cut to its last lines, where nix prints the cause."""
        d = deployment()
        tail = [f"line {i}" for i in range(500)] + ["error: undefined variable 'webroot'"]
        failed = host(
            "web2", "failed", error="build_failed", message="nixos-rebuild failed", log_tail=tail
        )
        report = deployment_report(
            result(d, [failed], done=True), finished=True, test_only=True, wait_hint=300
        )
        [web2] = report.hosts
        assert len(web2.log_tail) == MAX_TAIL_LINES
        assert web2.log_tail[-1] == "error: undefined variable 'webroot'"
        assert "web2 failed (build_failed: nixos-rebuild failed)" in report.summary
