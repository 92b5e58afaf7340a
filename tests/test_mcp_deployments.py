"""The MCP server's deployment registry, its waiting and its NATS links, without MCP.

The link tests use real connections to the ``fleet`` fixture's nats-server and restart it on
the same port, so nats-py drops and reconnects them exactly as in production.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from fleet_core.bus import Bus
from fleet_core.deployer import Deployer
from fleet_core.embedded_server import EmbeddedNatsServer
from fleet_core.rebuild import Action
from fleet_core.subjects import Target, Tier
from fleet_core.tracking import DeploymentResult, HostResult
from fleet_mcp.deployments import BATCH, Deployment, DeploymentRegistry, Lease, NatsLink
from fleet_mcp.models import MAX_TAIL_LINES, deployment_report

from .conftest import FAST, Fleet

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


def lease(stub: object) -> Lease:
    return Lease(cast(Deployer, stub))


class TestRegistry:
    async def test_keeps_running_deployments_and_drops_the_oldest_finished(self) -> None:
        """Past its size the registry forgets finished deployments, oldest first, not running."""
        held, quick = StubDeployer(hold=True), StubDeployer(hold=False)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                registry = DeploymentRegistry(tasks, keep=2)
                running = registry.start(deployment(), lease(held), limit=60)
                old = registry.start(deployment(), lease(quick), limit=60)
                await old.finished.wait()
                newer = registry.start(deployment(), lease(quick), limit=60)
                assert registry.get(running.id) is running
                assert registry.get(old.id) is None
                assert registry.latest() is newer
                assert len(registry) == 2
                held.release.set()
        assert running.done
        assert running.result is not None

    async def test_a_deployment_releases_its_lease_once_finished(self) -> None:
        """A deployment gives its connection back once, when it ends, after waking waiters."""
        held = StubDeployer(hold=True)
        d = deployment()
        done_at_release: list[bool] = []

        async def release() -> None:
            done_at_release.append(d.done)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                DeploymentRegistry(tasks).start(d, Lease(cast(Deployer, held), release), limit=60)
                await anyio.wait_all_tasks_blocked()
                assert done_at_release == []
                held.release.set()
        assert done_at_release == [True]


class ScriptedDeployer:
    """Reports ``before``, waits for ``go``, reports ``after`` and returns the final states."""

    def __init__(self, d: Deployment, before: list[HostResult], after: list[HostResult]) -> None:
        self.d, self.before, self.after = d, before, after
        self.reported = anyio.Event()  # ``before`` has been reported
        self.go = anyio.Event()

    async def deploy(self, target: Target, **options: Any) -> DeploymentResult:
        on_update = options["on_update"]
        latest: dict[str, HostResult] = {}
        for change in self.before:
            latest[change.hostname] = change
            on_update(change, result(self.d, list(latest.values()), done=False))
        self.reported.set()
        await self.go.wait()
        for change in self.after:  # all at once: no waiter runs before the deployment ends
            latest[change.hostname] = change
            on_update(change, result(self.d, list(latest.values()), done=False))
        return result(self.d, list(latest.values()), done=True)


def progress(name: str, n: int) -> HostResult:
    return host(name, "progress", message=f"building: line {n} " + "x" * 1000)


class TestCompaction:
    async def test_the_log_is_bounded_by_the_hosts_and_replays_their_final_states(self) -> None:
        """Progress replaces progress while running; a finished deployment keeps one change per
        host, and a later deployment_status replays each host's final state and result."""
        names = ["web1", "web2", "web3"]
        before = [host(n, s) for s in ("accepted", "started") for n in names]
        before += [progress(n, i) for i in range(500) for n in names]
        failed = host("web3", "failed", error="build_failed", message="nixos-rebuild failed")
        after = [host("web1", "completed"), host("web2", "completed"), failed]
        d = deployment()
        scripted = ScriptedDeployer(d, before, after)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                DeploymentRegistry(tasks).start(d, lease(scripted), limit=60)
                await scripted.reported.wait()
                # accepted, started and the latest progress of each host, of 1,506 changes
                assert [(u.hostname, u.status) for u in d.updates] == [
                    (n, s) for s in ("accepted", "started", "progress") for n in names
                ]
                assert [u for u in d.updates if u.status == "progress"] == [
                    progress(n, 499) for n in names
                ]
                scripted.go.set()
            assert d.updates == after

            notes: list[str] = []

            async def notify(message: str) -> None:
                notes.append(message)

            await d.follow(300, notify, heartbeat=300)  # what deployment_status does
        assert [n.split(": ", 1)[1] for n in notes[1:]] == [
            "web1 completed",
            "web2 completed",
            "web3 failed — build_failed: nixos-rebuild failed",
        ]
        report = deployment_report(d.current(), finished=d.done, test_only=True, wait_hint=300)
        assert report.state != "running"
        assert not report.ok
        assert [(h.hostname, h.status) for h in report.hosts] == [
            ("web1", "completed"),
            ("web2", "completed"),
            ("web3", "failed"),
        ]

    async def test_a_waiter_caught_mid_way_by_compaction_reports_the_final_states(self) -> None:
        """A waiter that reported changes the compaction then drops ends with each host's final
        state, neither hanging nor repeating what it reported."""
        before = [host("web1", "accepted"), host("web2", "accepted")]
        after = [host("web1", "started"), host("web2", "started")]
        after += [progress(n, i) for i in range(20) for n in ("web1", "web2")]
        after += [host("web1", "completed"), host("web2", "completed")]
        d = deployment()
        scripted = ScriptedDeployer(d, before, after)
        notes: list[str] = []
        caught_up = anyio.Event()

        async def notify(message: str) -> None:
            notes.append(message)
            if message.endswith("web2 accepted"):
                caught_up.set()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                DeploymentRegistry(tasks).start(d, lease(scripted), limit=60)
                tasks.start_soon(functools.partial(d.follow, 300, notify, heartbeat=300))
                await caught_up.wait()
                await anyio.wait_all_tasks_blocked()  # the waiter sleeps until the next change
                scripted.go.set()
        assert d.done
        assert len(d.updates) == 2
        assert [n.split(": ", 1)[1] for n in notes[1:]] == [
            "web1 accepted",
            "web2 accepted",
            "web1 completed",
            "web2 completed",
        ]


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


LINK_NAME = "fleet-mcp test"


@dataclass
class BusSpy:
    """Every connection of the test's ``NatsLink`` opened and closed, in order."""

    opened: list[Bus] = field(default_factory=list)
    closed: list[Bus] = field(default_factory=list)


@pytest.fixture
def buses(monkeypatch: pytest.MonkeyPatch) -> BusSpy:
    spy = BusSpy()
    connect, close = Bus.connect, Bus.close

    async def spy_connect(*args: Any, **kwargs: Any) -> Bus:
        bus = await connect(*args, **kwargs)
        if kwargs.get("name") == LINK_NAME:  # not the listeners' connections
            spy.opened.append(bus)
        return bus

    async def spy_close(bus: Bus) -> None:
        if bus in spy.opened:
            spy.closed.append(bus)
        await close(bus)

    monkeypatch.setattr(Bus, "connect", spy_connect)
    monkeypatch.setattr(Bus, "close", spy_close)
    return spy


def watch(bus: Bus) -> tuple[anyio.Event, anyio.Event]:
    """Events set when ``bus`` reports its connection dropped and back."""
    dropped, back = anyio.Event(), anyio.Event()
    bus.watch_connection(lambda connected: (back if connected else dropped).set())
    return dropped, back


def stop_for_restart(fleet: Fleet) -> EmbeddedNatsServer:
    """Stop the fleet's nats-server; returns an unstarted one with its port and config."""
    port = int(fleet.url.rpartition(":")[2])
    config = fleet.server.config_path.read_text()
    fleet.server.stop()
    return EmbeddedNatsServer(fleet.root / "nats-again", config, port=port)


def link(fleet: Fleet) -> NatsLink:
    return NatsLink(fleet.url, fleet.seed("deployer"), name=LINK_NAME, timing=FAST)


class TestDroppedConnections:
    async def test_closed_once_the_last_deployment_on_it_ends(
        self, fleet: Fleet, buses: BusSpy, tmp_path: Path
    ) -> None:
        """A dropped connection stays open for the deployment running on it, which completes
        after nats-py reconnects it, and is closed when that deployment ends."""
        release = tmp_path / "release-web1"
        nats = link(fleet)
        started = anyio.Event()

        async def notify(message: str) -> None:
            if message.endswith("web1 started") or "web1 progress" in message:
                started.set()

        sim = {"web1": ["--sim-wait-for", str(release)]}
        again: EmbeddedNatsServer | None = None
        try:
            with anyio.fail_after(30):
                async with fleet.listeners("web1", sim=sim):
                    async with anyio.create_task_group() as tasks:
                        d = Deployment(
                            Target.host(Tier.TEST, "web1"),
                            revision="master",
                            action=Action.SWITCH,
                            admin=False,
                        )
                        DeploymentRegistry(tasks).start(d, await nats.lease(), limit=30)
                        tasks.start_soon(functools.partial(d.follow, 30, notify, heartbeat=30))
                        await started.wait()
                        [old] = buses.opened
                        dropped, back = watch(old)
                        again = stop_for_restart(fleet)
                        await dropped.wait()
                        again.start()
                        fresh = await nats.lease()  # the old one is down: a new connection
                        [_, new] = buses.opened
                        assert buses.closed == []
                        await back.wait()  # nats-py brought the old one back: two live ones
                        assert old.is_connected
                        assert not d.done
                        assert buses.closed == []  # the deployment still runs on it
                        release.touch()
                    # the deployment's task has ended, releasing its lease
                    assert buses.closed == [old]
                    assert not old.is_connected
                    assert d.result is not None
                    assert d.result.ok, d.result
                    await fresh.release()
                    assert new.is_connected
                    assert buses.closed == [old]  # the current connection stays
                    await nats.close()
                    assert buses.closed == [old, new]
        finally:
            if again is not None:
                again.stop()

    async def test_closed_at_once_when_nothing_uses_it(self, fleet: Fleet, buses: BusSpy) -> None:
        """A dropped connection no lease holds is closed as soon as the link replaces it."""
        nats = link(fleet)
        listing = await nats.lease()  # say, a list_hosts call, which has ended
        await listing.release()
        [old] = buses.opened
        dropped, _ = watch(old)
        again = stop_for_restart(fleet)
        try:
            with anyio.fail_after(15):
                await dropped.wait()
                again.start()
                fresh = await nats.lease()
                [_, new] = buses.opened
                assert buses.closed == [old]
                assert new.is_connected
                await fresh.release()
                await nats.close()
            assert buses.closed == [old, new]
        finally:
            again.stop()
