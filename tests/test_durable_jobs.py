"""Durable deploys: the true outcome survives listener restarts, crashes and kills, with real
processes — the installed ``fleet-deploy listener`` as a subprocess (restarted with the same
state directory, as systemd's Restart=always would), its job runner, and the simulated
rebuild held open with ``--sim-wait-for`` until the test releases it.

Every wait is for an event with a deadline: a status reaching the deployer, a log line of the
listener, a pidfd turning readable (``process_gone``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.host.jobs import jobdir
from fleet_core.host.jobs.follow import stop_runner
from fleet_core.host.jobs.jobdir import EXIT_FILE, RECORD_FILE, RUNNER_FILE, read_runner
from fleet_core.host.jobs.store import JobPhase, JobRecord, JobStore
from fleet_core.host.listener import RESTART_EXIT_CODE, Listener, fingerprint
from fleet_core.protocol.messages import DeployRequest
from fleet_core.protocol.subjects import Tier

from .conftest import FAST, Fleet
from .support import Daemon, process_gone, replies_on, running_daemon

pytestmark = pytest.mark.anyio

HOST = "web1"
DATA = Path(__file__).parent / "data"

RecordProperty = Callable[[str, object], None]  # pytest's record_property fixture


class Deployment:
    """One deploy to web1 through the core deployer, run in a task; every update timestamped."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.updates: list[tuple[float, HostResult]] = []
        self.result: DeploymentResult | None = None
        self._changed = anyio.Event()

    def _on_update(self, host: HostResult, _: DeploymentResult) -> None:
        self.updates.append((time.time(), host))
        self._changed.set()
        self._changed = anyio.Event()

    async def run(self) -> None:
        self.result = await self.fleet.deploy(f"deploy.test.{HOST}", on_update=self._on_update)
        self._changed.set()

    async def wait_for(self, status: str, limit: float = 20, *, since: int = 0) -> None:
        """Until an update with ``status`` arrives (after the first ``since`` updates)."""
        with anyio.fail_after(limit):
            while not any(h.status == status for _, h in self.updates[since:]):
                await self._changed.wait()

    async def finished(self, limit: float = 30) -> HostResult:
        with anyio.fail_after(limit):
            while self.result is None:
                await self._changed.wait()
        (host,) = self.result.hosts
        return host

    @property
    def final_at(self) -> float:
        return next(at for at, host in self.updates if host.final)


@pytest.fixture
async def state(fleet: Fleet) -> AsyncIterator[Path]:
    """web1's state directory; at the end, any job runner a failed test left is stopped."""
    directory = fleet.root / "state" / HOST
    yield directory
    # A passing test leaves nothing; a failing one must not leave a held rebuild behind.
    for job_dir, _ in JobStore(directory).unfinished():
        await stop_runner(job_dir, 1.0)


@asynccontextmanager
async def listening(
    fleet: Fleet,
    state: Path,
    sim: tuple[str, ...],
    *extra: str,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Daemon]:
    """The real daemon, started and listening; killed at the end if it still runs."""
    argv = fleet.listener_argv(HOST, "--rebuild-runner", "session", *extra, sim=sim, state=state)
    async with running_daemon(argv, env or fleet.cli_env()) as daemon:
        await daemon.wait_for('"event": "listening"')
        yield daemon


async def killed_mid_rebuild(
    fleet: Fleet,
    state: Path,
    sim: tuple[str, ...],
    deployment: Deployment,
    tasks: anyio.abc.TaskGroup,
) -> None:
    """Start ``deployment`` (in ``tasks``) against a listener that is killed (SIGKILL) once
    the rebuild is under way: the rebuild runs on, and no listener serves the host."""
    async with listening(fleet, state, sim) as first:
        tasks.start_soon(deployment.run)
        await deployment.wait_for("progress")
        first.process.kill()
        await first.exit_code()


def the_job(state: Path) -> Path:
    (job,) = (state / "jobs").iterdir()
    return job


async def gone(pid: int, limit: float = 10) -> bool:
    return await anyio.to_thread.run_sync(process_gone, pid, limit)


def rebuild_pids(fleet: Fleet) -> list[int]:
    return [json.loads(line)["pid"] for line in fleet.record.read_text().splitlines()]


def finished_at(state: Path) -> float:
    """When the job runner saw the rebuild end (its exit.json): the true end."""
    value: float = json.loads((the_job(state) / EXIT_FILE).read_text())["finished_at"]
    return value


class TestListenerRestarts:
    async def test_kill_9_mid_rebuild_then_restart_reports_the_truth(
        self, fleet: Fleet, state: Path, tmp_path: Path, record_property: RecordProperty
    ) -> None:
        """SIGKILL to the listener mid-rebuild: the rebuild runs on, the restarted listener
        re-attaches (busy, already_running to a new request, job query says running) and the
        original deployer gets the true final status. Exactly one rebuild ran."""
        release = tmp_path / "release"
        sim = ("--sim-wait-for", str(release))
        deployment = Deployment(fleet)
        async with anyio.create_task_group() as tasks:
            async with listening(fleet, state, sim) as first:
                tasks.start_soon(deployment.run)
                await deployment.wait_for("progress")
                first.process.kill()
                assert await first.exit_code() == -signal.SIGKILL
            (rebuild,) = rebuild_pids(fleet)
            assert not await gone(rebuild, 0), "the rebuild died with the listener"
            heard_before = len(deployment.updates)
            async with listening(fleet, state, sim) as second:
                await deployment.wait_for("progress", since=heard_before)  # the heartbeat
                resumed = second.event("job_resumed")
                assert (resumed["action"], resumed["request_id"]) == (
                    "follow",
                    deployment_id(state),
                )
                refused = await fleet.deploy(f"deploy.test.{HOST}")
                async with await fleet.connect() as bus:
                    deployer = Deployer(bus, timing=FAST)
                    (info,) = await deployer.discover(Tier.TEST)
                    query = await deployer.query_job(deployment_id(state), hosts=[HOST])
                release.touch()
                host = await deployment.finished()
        assert (refused.hosts[0].status, refused.hosts[0].error) == ("rejected", "already_running")
        assert info.busy and info.running_job == deployment_id(state)
        job = query[HOST].job
        assert job is not None and job.phase == JobPhase.RUNNING
        assert (host.status, host.error) == ("completed", None), host
        assert host.message.startswith("switch of master done")
        assert len(fleet.runs()) == 1
        record_property("latency_s", round(deployment.final_at - finished_at(state), 3))

    async def test_sigterm_mid_switch_leaves_the_switch_running(
        self, fleet: Fleet, state: Path, tmp_path: Path, record_property: RecordProperty
    ) -> None:
        """SIGTERM (systemctl restart) mid-switch: the listener exits 0 at once and logs the job
        left running; the switch is not aborted, and the restarted listener reports completed."""
        release = tmp_path / "release"
        sim = ("--sim-wait-for", str(release))
        deployment = Deployment(fleet)
        async with anyio.create_task_group() as tasks:
            async with listening(fleet, state, sim) as first:
                tasks.start_soon(deployment.run)
                await deployment.wait_for("progress")
                first.process.terminate()
                assert await first.exit_code() == 0
                left = first.event("job_left_running")
            (rebuild,) = rebuild_pids(fleet)
            assert not await gone(rebuild, 0), "stopping the listener stopped the rebuild"
            async with listening(fleet, state, sim):
                release.touch()
                host = await deployment.finished()
        assert left["request_id"] == deployment_id(state) and left["pid"]
        assert (host.status, host.error) == ("completed", None), host
        exit_file = json.loads((the_job(state) / EXIT_FILE).read_text())
        assert (exit_file["exit_code"], exit_file["cancelled"]) == (0, False)
        assert len(fleet.runs()) == 1
        record_property("latency_s", round(deployment.final_at - finished_at(state), 3))

    async def test_a_rebuild_that_ended_while_no_listener_ran_is_reported_at_start(
        self, fleet: Fleet, state: Path, tmp_path: Path, record_property: RecordProperty
    ) -> None:
        """The rebuild ends while no listener runs: the next listener reports the final status
        at once, from exit.json, to the original requester."""
        release = tmp_path / "release"
        sim = ("--sim-wait-for", str(release))
        deployment = Deployment(fleet)
        async with anyio.create_task_group() as tasks:
            await killed_mid_rebuild(fleet, state, sim, deployment, tasks)
            runner = read_runner(the_job(state))
            assert runner is not None
            release.touch()
            assert await gone(runner.runner), "the job runner did not end"
            assert (the_job(state) / EXIT_FILE).exists()
            started = time.time()
            async with listening(fleet, state, sim) as second:
                host = await deployment.finished()
                assert second.event("job_resumed")["action"] == "report"
        assert (host.status, host.error) == ("completed", None), host
        assert len(fleet.runs()) == 1
        record_property("start_to_final_s", round(deployment.final_at - started, 3))

    async def test_a_job_recorded_by_the_previous_release_still_names_its_signer(
        self, fleet: Fleet, state: Path, tmp_path: Path
    ) -> None:
        """A job record of the release before keeps no signer: the listener that resumes it
        finds the signer from the request's own signature, so its final status still names
        the requester's key and counts (the deployer counts only statuses of its own key)."""
        release = tmp_path / "release"
        sim = ("--sim-wait-for", str(release))
        deployment = Deployment(fleet)
        async with anyio.create_task_group() as tasks:
            await killed_mid_rebuild(fleet, state, sim, deployment, tasks)
            record_file = the_job(state) / RECORD_FILE
            record = json.loads(record_file.read_text())
            assert record.pop("signer") == fleet.seed("deployer").public_key
            record_file.write_text(json.dumps(record))  # as the release before wrote it
            release.touch()
            async with listening(fleet, state, sim):
                host = await deployment.finished()
        assert (host.status, host.error) == ("completed", None), host
        assert deployment.result is not None and deployment.result.flagged_count == 0

    async def test_a_job_runner_killed_without_a_result_fails_clearly(
        self, fleet: Fleet, state: Path, tmp_path: Path, record_property: RecordProperty
    ) -> None:
        """SIGKILL to the job runner: no exit.json; the listener notices at once, stops what is
        left of the rebuild and reports failed/cancelled saying the outcome is unknown."""
        sim = ("--sim-wait-for", str(tmp_path / "never"))
        deployment = Deployment(fleet)
        async with anyio.create_task_group() as tasks, listening(fleet, state, sim):
            tasks.start_soon(deployment.run)
            await deployment.wait_for("progress")
            runner = read_runner(the_job(state))
            assert runner is not None and runner.rebuild is not None
            runner_pid, rebuild_pid = runner.runner, runner.rebuild
            killed = time.time()
            os.kill(runner_pid, signal.SIGKILL)
            host = await deployment.finished()
        record_property("kill_to_final_s", round(deployment.final_at - killed, 3))
        assert (host.status, host.error) == ("failed", "cancelled"), host
        assert f"job runner (pid {runner_pid}) ended without recording" in host.message
        assert await gone(rebuild_pid), "the orphaned rebuild was left running"
        assert not (the_job(state) / EXIT_FILE).exists()
        record = JobStore(state).latest()
        assert record is not None and (record.phase, record.error) == (
            JobPhase.FINISHED,
            "cancelled",
        )


class TestUpgrades:
    async def test_a_switch_that_changes_the_unit_reports_then_exits_75(
        self, fleet: Fleet, state: Path, tmp_path: Path
    ) -> None:
        """A switch whose activation rewrites a --restart-if-changed file: completed reaches
        the deployer first, then the listener exits 75, saying why."""
        unit = tmp_path / "fleet-deploy-listener.service"
        unit.write_text("[Service]\nExecStart=old\n")
        sim = ("--sim-activate-writes", str(unit))
        async with listening(fleet, state, sim, "--restart-if-changed", str(unit)) as daemon:
            result = await fleet.deploy(f"deploy.test.{HOST}")
            assert await daemon.exit_code() == RESTART_EXIT_CODE
        assert result.ok, result
        names = [e["event"] for e in daemon.events()]
        assert names.index("job_finished") < names.index("restarting_after_upgrade")
        assert daemon.event("restarting_after_upgrade")["changed"] == [str(unit)]

    async def test_a_switch_that_changes_nothing_keeps_serving(
        self, fleet: Fleet, state: Path, tmp_path: Path
    ) -> None:
        """A switch that leaves the watched files alone: the listener serves the next deploy."""
        unit = tmp_path / "fleet-deploy-listener.service"
        unit.write_text("[Service]\nExecStart=same\n")
        elsewhere = tmp_path / "other.service"
        sim = ("--sim-activate-writes", str(elsewhere))
        async with listening(fleet, state, sim, "--restart-if-changed", str(unit)) as daemon:
            first = await fleet.deploy(f"deploy.test.{HOST}")
            second = await fleet.deploy(f"deploy.test.{HOST}")
            assert daemon.process.returncode is None
        assert first.ok and second.ok
        assert elsewhere.read_text().count("activated") == 2
        assert "restarting_after_upgrade" not in daemon.log.decode()

    def test_a_fingerprint_sees_a_re_pointed_link_and_new_content(self, tmp_path: Path) -> None:
        """A switch re-points /etc/systemd/system's links into the store: a link to a new
        target is a change even with equal content, and so is new content or a new file."""
        old, new = tmp_path / "old.service", tmp_path / "new.service"
        old.write_text("[Service]\n")
        new.write_text("[Service]\n")
        unit, missing = tmp_path / "unit", tmp_path / "missing"
        unit.symlink_to(old)
        before = fingerprint([unit, missing])
        assert fingerprint([unit, missing]) == before
        unit.unlink()
        unit.symlink_to(new)
        assert fingerprint([unit, missing]) != before
        relinked = fingerprint([unit, missing])
        new.write_text("[Service]\nExecStart=x\n")
        assert fingerprint([unit, missing]) != relinked
        missing.write_text("")
        assert fingerprint([unit, missing])[1][2] is not None


class TestSystemdMode:
    async def test_a_transient_unit_survives_the_listener(
        self, fleet: Fleet, state: Path, tmp_path: Path
    ) -> None:
        """--rebuild-runner systemd starts the job as a transient unit through systemd-run (the
        packaged stand-in, found on PATH); the job survives a SIGKILL of the listener and the
        restarted one reports completed. The record names the unit."""
        calls = tmp_path / "systemd-run.jsonl"
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        stand_in = bin_dir / "systemd-run"
        stand_in.write_text(
            f"#!/bin/sh\nexec {sys.executable} -m fleet_core.testing.simulated_systemd_run "
            f'--sim-record {calls} "$@"\n'
        )
        stand_in.chmod(0o755)
        env = fleet.cli_env(PATH=f"{bin_dir}:{os.environ['PATH']}", GIT_SSH_COMMAND="ssh -x")
        release = tmp_path / "release"
        sim = ("--sim-wait-for", str(release))
        systemd = ("--rebuild-runner", "systemd")
        deployment = Deployment(fleet)
        async with anyio.create_task_group() as tasks:
            async with listening(fleet, state, sim, *systemd, env=env) as first:
                tasks.start_soon(deployment.run)
                await deployment.wait_for("progress")
                first.process.kill()
                await first.exit_code()
            async with listening(fleet, state, sim, *systemd, env=env):
                release.touch()
                host = await deployment.finished()
        assert (host.status, host.error) == ("completed", None), host
        (call,) = [json.loads(line) for line in calls.read_text().splitlines()]
        request_id = deployment_id(state)
        assert call["unit"] == f"fleet-deploy-job-{request_id}.service"
        assert call["collect"] and call["quiet"]
        # The rebuild's 600 s, then the guard's: 120 s to confirm and 3 rollback steps of
        # 600 s at most; then 2 x 5 s of grace and 30 s: the runner's deadlines come first.
        assert call["properties"] == ["RuntimeMaxSec=2560"]
        assert {"PATH", "GIT_SSH_COMMAND"} <= set(call["setenv"])
        record = JobStore(state).load(request_id)
        assert record is not None and record.unit == f"fleet-deploy-job-{request_id}"
        assert len(fleet.runs()) == 1


class TestInProcess:
    async def test_stopping_leaves_the_job_running(self, fleet: Fleet, tmp_path: Path) -> None:
        """A listener stopped mid-rebuild leaves it running and tells nobody; a new listener
        on the same state dir resumes it, and the requester hears completed."""
        release = tmp_path / "release"
        settings = fleet.settings(HOST, "--sim-wait-for", str(release))
        deployment = Deployment(fleet)
        host_bus = await fleet.connect(HOST)
        try:
            async with anyio.create_task_group() as outer:
                async with anyio.create_task_group() as hosting:
                    await hosting.start(Listener(settings).serve, host_bus)
                    outer.start_soon(deployment.run)
                    await deployment.wait_for("progress")
                    hosting.cancel_scope.cancel()
                (rebuild,) = rebuild_pids(fleet)
                assert not await gone(rebuild, 0)
                assert not any(h.final for _, h in deployment.updates)
                async with fleet.local.listeners([settings]) as running:
                    assert running[HOST].busy
                    release.touch()
                    host = await deployment.finished()
        finally:
            await host_bus.close()
        assert (host.status, host.error) == ("completed", None), host
        assert len(fleet.runs()) == 1

    async def test_an_upgraded_listener_follows_the_previous_releases_runner(
        self, fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A listener upgraded while a job of the previous release runs (its job runner at
        fleet_core/job_runner.py, before the packages) recognises that runner as alive,
        stays busy, and reports the true outcome to the original requester."""
        previous = tmp_path / "release-0.1.0" / "fleet_core" / "job_runner.py"
        previous.parent.mkdir(parents=True)
        previous.write_bytes((DATA / "job_runner-0.1.0.py.txt").read_bytes())
        release = tmp_path / "release"
        settings = fleet.settings(HOST, "--sim-wait-for", str(release))
        deployment = Deployment(fleet)
        host_bus = await fleet.connect(HOST)
        try:
            async with anyio.create_task_group() as outer:
                with monkeypatch.context() as old_release:
                    old_release.setattr(jobdir, "RUNNER_PROGRAM", previous)
                    async with anyio.create_task_group() as hosting:
                        await hosting.start(Listener(settings).serve, host_bus)
                        outer.start_soon(deployment.run)
                        await deployment.wait_for("progress")
                        hosting.cancel_scope.cancel()
                runner = read_runner(the_job(settings.state_dir))
                assert runner is not None
                cmdline = (await anyio.Path(f"/proc/{runner.runner}/cmdline").read_bytes()).split(
                    b"\0"
                )
                assert str(previous).encode() in cmdline, "the previous release's runner runs"
                async with fleet.local.listeners([settings]) as running:
                    assert running[HOST].busy
                    release.touch()
                    host = await deployment.finished()
        finally:
            await host_bus.close()
        assert (host.status, host.error) == ("completed", None), host
        assert host.message.startswith("switch of master done")
        assert len(fleet.runs()) == 1

    async def test_the_fleets_clean_up_stops_what_listeners_left(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """local_fleet's listeners promise nothing outlives them: at the block's end a held
        rebuild is stopped and its requester told failed/cancelled."""
        deployment = Deployment(fleet)
        async with anyio.create_task_group() as tasks:
            async with fleet.listeners(HOST, sim={HOST: ["--sim-wait-for", str(tmp_path / "x")]}):
                tasks.start_soon(deployment.run)
                await deployment.wait_for("progress")
            host = await deployment.finished()
        (rebuild,) = rebuild_pids(fleet)
        assert await gone(rebuild, 5)
        assert (host.status, host.error) == ("failed", "cancelled"), host
        assert "told to stop" in host.message

    async def test_jobs_found_unfinished_without_a_runner_are_reported_at_start(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """At start, a job whose runner is gone without exit.json, and an older listener's
        job no runner ever reported for, are each reported failed/cancelled to their own
        requester; then the host takes requests."""
        store = JobStore(fleet.root / "state" / HOST)
        gone_pid = os.getpid()  # alive, but not a job runner: as a reused pid would be
        replies = {name: f"deploy.responses.{name}" for name in ("vanished", "older")}
        for name, reply in replies.items():
            request = DeployRequest(revision="main", reply_to=reply, id=name, bind=True)
            record = JobRecord(
                request_id=name,
                request=request,
                argv=("nixos-rebuild",),
                started_at=time.time() - 3600,
            ).running()
            directory = store.create(record)
            assert directory is not None
            if name == "vanished":
                (directory / RUNNER_FILE).write_text(json.dumps({"pid": gone_pid}))
        async with (
            await fleet.connect() as bus,
            replies_on(bus, "deploy.responses.*.test.*") as heard,  # bound to each host
            fleet.local.listeners([fleet.settings(HOST)]) as running,
        ):
            await heard.wait_for(lambda s: len([x for x in s if x.is_final]) == 2)
            assert not running[HOST].busy
        finals = {s.request_id: s for s in heard.final()}
        assert {(s.status, s.error) for s in finals.values()} == {("failed", "cancelled")}
        assert f"job runner (pid {gone_pid}) ended without recording" in finals["vanished"].message
        assert "no job runner ever started" in finals["older"].message
        records = [store.load(name) for name in replies]
        assert [r.phase if r else None for r in records] == [JobPhase.FINISHED] * 2


def deployment_id(state: Path) -> str:
    """The request id of the one job in ``state``."""
    return the_job(state).name.partition("-")[2]
