"""Durable deploys: the deployer's report is the truth across NATS outages and silent hosts.

Real processes throughout: a real nats-server stopped and started again on the same port
with the same config, real listeners (in this process, or ``fleet-deploy listener`` when it
must be killed), the packaged stand-in rebuild held open with ``--sim-wait-for`` and released
while NATS is down, so that its final status is published into the outage.

Whether a status sent into an outage reaches the deployer depends on which side reconnects
first. ``GatedProxy`` takes the race out where a test needs the worst case: the deployer's
connection runs through it, and it refuses the deployer until the listener is back and has
flushed what it buffered — to nobody, for the deployer's subscription is not back yet. The
final status is then gone for good, and only the job query can recover it.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import pytest
from mcp.types import CallToolResult

from fleet_core.bus import Bus
from fleet_core.config.settings import DeployTiming
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.results import DeploymentResult, HostResult, Outage
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import parse_host_info, parse_status
from fleet_core.protocol.subjects import Target, Tier
from fleet_core.testing.embedded_server import EmbeddedNatsServer
from fleet_mcp.reports.deployment import DeploymentReport

from .conftest import FAST, Fleet, scripts_dir
from .support import session, settings_for

pytestmark = pytest.mark.anyio

LIMIT = 60.0  # no scenario here may take longer (seconds)
# A short silence limit, so that "lost" is decided in seconds; listeners in this process
# send a heartbeat well within it.
QUICK = DeployTiming(
    answer_within=5.0,
    silence_limit=1.5,
    discovery_first=0.5,
    discovery_quiet=0.2,
    discovery_cap=2.0,
)
HEARTBEAT = 0.3


# -- the pieces --------------------------------------------------------------------------------


class GatedProxy:
    """A TCP proxy in front of nats-server for one client, on a port of its own.

    ``close()`` hangs up on the client and stops listening, so its reconnects are refused
    (no half-made connection: nats-py leaks the writer of one that dies before INFO);
    ``open()`` listens again on the same port.
    """

    def __init__(self, upstream: str, tasks: anyio.abc.TaskGroup) -> None:
        self._upstream_port = int(upstream.rpartition(":")[2])
        self._tasks = tasks
        self._port = 0
        self._scope: anyio.CancelScope | None = None
        self._closed = anyio.Event()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self._port}"

    async def open(self) -> None:
        await self._tasks.start(self._serve)

    async def close(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        await self._closed.wait()

    async def _serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        self._closed = anyio.Event()
        try:
            with anyio.CancelScope() as self._scope:
                listener = await anyio.create_tcp_listener(
                    local_host="127.0.0.1", local_port=self._port
                )
                port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610
                self._port = port  # the same one on every open
                async with listener:
                    task_status.started()
                    await listener.serve(self._relay)
        finally:
            self._closed.set()

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self._upstream_port)
            except OSError:
                return  # nats-server is down: the client sees the connection end
            async with upstream, anyio.create_task_group() as pipes:

                async def pipe(src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream) -> None:
                    try:
                        async for chunk in src:
                            await dst.send(chunk)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass
                    pipes.cancel_scope.cancel()  # one side ended: end both

                pipes.start_soon(pipe, client, upstream)
                pipes.start_soon(pipe, upstream, client)


@dataclass
class Wire:
    """Watches this process's NATS connections: listeners' final statuses and reconnects."""

    finals: dict[str, anyio.Event] = field(default_factory=dict)  # hostname -> published
    answers: dict[str, list[str]] = field(default_factory=dict)  # hostname -> job phases told
    answered: dict[str, anyio.Event] = field(default_factory=dict)  # hostname -> told one
    back: dict[str, anyio.Event] = field(default_factory=dict)  # connection name -> back

    def final_published(self, host: str) -> anyio.Event:
        return self.finals.setdefault(host, anyio.Event())

    def reconnected(self, name: str) -> anyio.Event:
        return self.back.setdefault(name, anyio.Event())

    def answered_job_query(self, host: str) -> anyio.Event:
        return self.answered.setdefault(host, anyio.Event())


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    spy = Wire()
    connect, publish = Bus.connect, Bus.publish

    async def spy_connect(*args: Any, **kwargs: Any) -> Bus:
        bus = await connect(*args, **kwargs)
        name = str(kwargs.get("name"))
        bus.watch_connection(lambda up: spy.reconnected(name).set() if up else None)
        return bus

    async def spy_publish(bus: Bus, subject: str, payload: bytes, **kwargs: Any) -> None:
        await publish(bus, subject, payload, **kwargs)
        if not subject.startswith("deploy.responses."):
            return
        status = parse_status(payload)
        if status is not None and status.is_final:
            spy.final_published(status.hostname).set()  # handed to the connection
        info = parse_host_info(payload)
        if info is not None and info.job is not None:
            spy.answers.setdefault(info.hostname, []).append(info.job.phase.value)
            spy.answered_job_query(info.hostname).set()

    monkeypatch.setattr(Bus, "connect", spy_connect)
    monkeypatch.setattr(Bus, "publish", spy_publish)
    return spy


@contextmanager
def restartable(fleet: Fleet) -> Iterator[EmbeddedNatsServer]:
    """The fleet's nats-server's successor: same port, same config; stopped at the end."""
    port = int(fleet.url.rpartition(":")[2])
    config = fleet.server.config_path.read_text()
    again = EmbeddedNatsServer(fleet.root / "nats-again", config, port=port)
    try:
        yield again
    finally:
        again.stop()


async def start(server: EmbeddedNatsServer) -> None:
    await anyio.to_thread.run_sync(server.start)


@dataclass
class Watch:
    """What one deployment reported while it ran, as events to wait for."""

    running: dict[str, anyio.Event] = field(default_factory=dict)
    states: dict[str, list[str]] = field(default_factory=dict)
    outages: list[Outage] = field(default_factory=list)
    dropped: anyio.Event = field(default_factory=anyio.Event)
    back: anyio.Event = field(default_factory=anyio.Event)
    lost: anyio.Event = field(default_factory=anyio.Event)
    result: DeploymentResult | None = None

    def is_running(self, host: str) -> anyio.Event:
        return self.running.setdefault(host, anyio.Event())

    def on_update(self, host: HostResult, _: DeploymentResult) -> None:
        self.states.setdefault(host.hostname, []).append(host.status)
        if host.status in ("started", "progress"):
            self.is_running(host.hostname).set()
        if host.status == "lost":
            self.lost.set()

    def on_connection(self, outage: Outage, _: DeploymentResult) -> None:
        self.outages.append(outage)
        (self.dropped if outage.duration_s is None else self.back).set()


@asynccontextmanager
async def deploying(
    bus: Bus, target: Target, timing: DeployTiming = FAST, *, timeout: float = 45
) -> AsyncIterator[Watch]:
    """A deployment running in the background for the block; its result in ``watch.result``
    once the block has ended (the block waits for it)."""
    watch = Watch()

    async def run() -> None:
        watch.result = await Deployer(bus, timing=timing).deploy(
            target,
            revision="master",
            action=Action.SWITCH,
            timeout=timeout,
            on_update=watch.on_update,
            on_connection=watch.on_connection,
        )

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run)
        yield watch


def held(release: Path, *sim: str) -> list[str]:
    return ["--sim-wait-for", str(release), *sim]


# -- (a) a final status published into the outage ----------------------------------------------


class TestFinalStatusIntoAnOutage:
    @pytest.mark.parametrize(
        "case",
        [((), "completed", None), (("--sim-fail",), "failed", "build_failed")],
        ids=["completed", "failed"],
    )
    async def test_lost_for_good_and_recovered_by_a_job_query(
        self,
        fleet: Fleet,
        wire: Wire,
        tmp_path: Path,
        case: tuple[tuple[str, ...], str, str | None],
    ) -> None:
        """NATS restarts at the end of a rebuild; the final status goes out while it is down
        and is flushed to a server where nobody listens yet (the deployer comes back last).
        The deployer reports the true outcome, read from the host's job record."""
        sim, status, error = case
        release = tmp_path / "release"
        with anyio.fail_after(LIMIT), restartable(fleet) as again:
            async with (
                fleet.listeners("web1", sim={"web1": held(release, *sim)}),
                anyio.create_task_group() as background,
            ):
                proxy = GatedProxy(fleet.url, background)
                await proxy.open()
                seed = fleet.seed("deployer")
                async with (
                    await Bus.connect(proxy.url, seed, name="deployer") as bus,
                    deploying(bus, Target.host(Tier.TEST, "web1")) as watch,
                ):
                    await watch.is_running("web1").wait()
                    await proxy.close()  # the deployer stays away until the listener is back
                    await watch.dropped.wait()
                    fleet.server.stop()
                    release.touch()
                    await wire.final_published("web1").wait()  # into the outage
                    await start(again)
                    await wire.reconnected("listener web1").wait()  # and flushed to nobody
                    await proxy.open()
                background.cancel_scope.cancel()
        result = watch.result
        assert result is not None
        [host] = result.hosts
        assert (host.status, host.error, host.recovered) == (status, error, True)
        assert result.ok is (status == "completed")
        if status == "failed":
            assert "undefined variable 'webroot'" in host.message
            assert any("error: undefined variable 'webroot'" in line for line in host.log_tail)
        assert watch.states["web1"][-1] == status
        [outage] = result.outages
        assert outage.duration_s is not None and outage.duration_s > 0

    async def test_whichever_side_reconnects_first_the_report_is_the_truth(
        self, fleet: Fleet, wire: Wire, tmp_path: Path
    ) -> None:
        """A plain NATS restart near the end of two rebuilds (one failing): each host's
        report is its real outcome, whether its status arrived or was read back."""
        release = tmp_path / "release"
        sim = {"web1": held(release), "web2": held(release, "--sim-fail")}
        with anyio.fail_after(LIMIT), restartable(fleet) as again:
            async with (
                fleet.listeners("web1", "web2", sim=sim),
                await fleet.connect() as bus,
                deploying(bus, Target.role(Tier.TEST, "web")) as watch,
            ):
                await watch.is_running("web1").wait()
                await watch.is_running("web2").wait()
                fleet.server.stop()
                await watch.dropped.wait()
                release.touch()
                await wire.final_published("web1").wait()
                await wire.final_published("web2").wait()
                await start(again)
        result = watch.result
        assert result is not None
        assert {h.hostname: (h.status, h.error) for h in result.hosts} == {
            "web1": ("completed", None),
            "web2": ("failed", "build_failed"),
        }
        assert len(result.outages) == 1


# -- (b) the command line ----------------------------------------------------------------------


class Output:
    """A child's stdout and stderr as they come, with events for the lines awaited."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self._waiting: list[tuple[re.Pattern[str], anyio.Event]] = []

    async def read(self, stream: anyio.abc.ByteReceiveStream, into: bytearray) -> None:
        async for chunk in stream:
            into.extend(chunk)
            for pattern, seen in self._waiting:
                if pattern.search(self.text):
                    seen.set()

    @property
    def text(self) -> str:
        return self.out.decode() + self.err.decode()

    async def wait_for(self, pattern: str) -> None:
        seen = anyio.Event()
        self._waiting.append((re.compile(pattern, re.M), seen))
        if re.search(pattern, self.text, re.M):
            seen.set()
        await seen.wait()


class TestCommandLine:
    async def test_a_deploy_across_a_nats_restart_says_so_and_succeeds(
        self, fleet: Fleet, wire: Wire, tmp_path: Path
    ) -> None:
        """fleet-deploy deploy prints the outage as two live lines, with how long it lasted,
        reports the rebuild that finished meanwhile as completed, exits 0, and writes
        nothing on stderr."""
        release = tmp_path / "release"
        argv = [str(scripts_dir() / "fleet-deploy"), "deploy", "deploy.test.web1"]
        argv += ["--nats-url", fleet.url, "--nkey-file", str(fleet.keys["deployer"])]
        output = Output()
        with anyio.fail_after(LIMIT), restartable(fleet) as again:
            async with (
                fleet.listeners("web1", sim={"web1": held(release)}),
                await anyio.open_process(argv, env=fleet.cli_env()) as process,
                anyio.create_task_group() as readers,
            ):
                assert process.stdout is not None and process.stderr is not None
                readers.start_soon(output.read, process.stdout, output.out)
                readers.start_soon(output.read, process.stderr, output.err)
                await output.wait_for(r"^  web1 +started")
                fleet.server.stop()
                stopped = time.monotonic()
                await output.wait_for("^NATS connection lost — reconnecting$")
                release.touch()
                await wire.final_published("web1").wait()
                await start(again)
                down = time.monotonic() - stopped
                code = await process.wait()
        out, err = output.out.decode(), output.err.decode()
        assert code == 0, output.text
        assert err == ""
        reconnected = re.search(r"^reconnected after (\d+\.\d) s$", out, re.M)
        assert reconnected is not None, out
        # From the drop to the deployer's reconnect: the server's downtime, plus at most
        # one reconnect interval (2 s) of nats-py's and some slack for a busy machine.
        assert down - 0.5 <= float(reconnected.group(1)) <= down + 4.0, (down, out)
        lines = out.splitlines()
        lost_at = lines.index("NATS connection lost — reconnecting")
        assert lost_at < lines.index(reconnected.group(0))
        assert re.search(r"^  web1 +completed +switch of master done", out, re.M)
        assert out.rstrip().endswith("OK: 1 completed")

    @pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
    async def test_a_normal_deploy_prints_no_warning(self, fleet: Fleet, as_json: bool) -> None:
        """Without an outage nothing but the live lines is written: no warning, no log line
        (with --json the live lines are stderr's only content)."""
        async with fleet.listeners("web1", "web2"):
            proc = await fleet.cli("deploy", "deploy.test.all", *(["--json"] if as_json else []))
        out, err = proc.stdout.decode(), proc.stderr.decode()
        assert proc.returncode == 0, err
        live = err if as_json else out
        assert "NATS" not in out + err
        assert "warning" not in (out + err).lower()
        if as_json:
            assert all(
                re.match(r"  web[12] +(accepted|started|progress|completed)", line)
                for line in err.splitlines()
            ), err
        else:
            assert err == ""
        assert re.search(r"^  web1 +completed", live, re.M)


# -- (c) a host that really went silent --------------------------------------------------------


class TestSilentHosts:
    async def test_a_killed_listener_is_lost_a_quiet_one_is_not(
        self, fleet: Fleet, wire: Wire, tmp_path: Path
    ) -> None:
        """web1's listener is killed with SIGKILL mid-rebuild and stays dead: it ends lost,
        within seconds of its silence limit. web2, quiet for longer than the limit but
        alive, answers the job query that precedes "lost", and completes."""
        release = tmp_path / "release"
        quiet = {"web2": held(release)}
        argv = fleet.listener_argv("web1", sim=held(release))
        try:
            with anyio.fail_after(LIMIT):
                async with (
                    await anyio.open_process(argv, env=fleet.cli_env()) as web1,
                    # web2 says nothing while its rebuild waits: no output, no heartbeat.
                    fleet.listeners("web2", sim=quiet, heartbeat_interval=LIMIT),
                    await fleet.connect() as bus,
                ):
                    assert web1.stderr is not None
                    await read_until(web1.stderr, b'"event": "listening"')
                    async with deploying(bus, Target.role(Tier.TEST, "web"), QUICK) as watch:
                        await watch.is_running("web1").wait()
                        await watch.is_running("web2").wait()
                        web1.send_signal(signal.SIGKILL)
                        killed = time.monotonic()
                        await watch.lost.wait()
                        took = time.monotonic() - killed
                        await wire.answered_job_query("web2").wait()
                        release.touch()
                    await web1.wait()
        finally:
            release.touch()  # web1's orphaned rebuild may still wait for it
        result = watch.result
        assert result is not None
        hosts = {h.hostname: h for h in result.hosts}
        assert hosts["web1"].status == "lost"
        assert hosts["web1"].message == (
            "the host went silent for 1.5 s and did not answer a job query"
        )
        assert hosts["web2"].status == "completed" and not hosts["web2"].recovered
        assert "lost" not in watch.states["web2"]
        assert wire.answers["web2"][0] == "running"  # asked for its silence: alive
        # The silence limit, a job query's wait for an answer that never comes, and slack.
        assert took < QUICK.silence_limit + QUICK.discovery_first + 3.0, took
        assert result.outages == []


async def read_until(stream: anyio.abc.ByteReceiveStream, needle: bytes) -> bytes:
    seen = b""
    async for chunk in stream:
        seen += chunk
        if needle in seen:
            return seen
    raise AssertionError(f"{needle!r} never appeared in: {seen.decode()[-2000:]}")


# -- (d) an outage longer than the silence limit -----------------------------------------------


class TestLongOutage:
    async def test_an_outage_longer_than_the_silence_limit_loses_no_host(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """NATS stays down for twice the silence limit while two rebuilds run: the deployer
        does not count that as the hosts' silence, and both complete."""
        release = tmp_path / "release"
        sim = {"web1": held(release), "web2": held(release)}
        with anyio.fail_after(LIMIT), restartable(fleet) as again:
            async with (
                fleet.listeners("web1", "web2", sim=sim, heartbeat_interval=HEARTBEAT),
                await fleet.connect() as bus,
                deploying(bus, Target.role(Tier.TEST, "web"), QUICK) as watch,
            ):
                await watch.is_running("web1").wait()
                await watch.is_running("web2").wait()
                fleet.server.stop()
                await watch.dropped.wait()
                # The outage itself, not a wait for something: it must outlast the limit.
                await anyio.sleep(2 * QUICK.silence_limit)
                await start(again)
                await watch.back.wait()
                release.touch()
        result = watch.result
        assert result is not None
        assert result.ok, result
        assert all("lost" not in states for states in watch.states.values()), watch.states
        [outage] = result.outages
        assert outage.duration_s is not None and outage.duration_s > 2 * QUICK.silence_limit

    async def test_a_connection_given_up_ends_the_deployment_at_once(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """Once nats-py gives up reconnecting (the CLI's connection retries for about a
        minute; one attempt here) the deployment ends there and then: the running host is
        timeout with a message that blames NATS, not the host, and not at the deadline."""
        release = tmp_path / "release"
        try:
            with anyio.fail_after(LIMIT):
                async with (
                    fleet.listeners("web1", sim={"web1": held(release)}),
                    await fleet.connect() as bus,
                ):
                    # Bus.connect sets the CLI's 30 attempts; nats-py reads its option live.
                    bus._client.options["max_reconnect_attempts"] = 1
                    async with deploying(bus, Target.host(Tier.TEST, "web1")) as watch:
                        await watch.is_running("web1").wait()
                        fleet.server.stop()
                        stopped = time.monotonic()
                    took = time.monotonic() - stopped
        finally:
            release.touch()
        result = watch.result
        assert result is not None
        [host] = result.hosts
        assert host.status == "timeout"
        assert host.message.startswith("NATS was unreachable: the deployer gave up reconnecting")
        assert took < 15, took  # the deadline was 45 s away
        [outage] = result.outages
        assert outage.duration_s is None


# -- (e) the MCP server ------------------------------------------------------------------------


class TestMcpServer:
    async def test_a_deploy_across_a_nats_restart_reports_the_outage_and_the_outcome(
        self, fleet: Fleet, wire: Wire, tmp_path: Path
    ) -> None:
        """Through a real MCP session: the notes say the server lost NATS and the host may
        still be deploying, then that it is back, then the host's true outcome; the result
        is ok and its summary tells of the outage."""
        release = tmp_path / "release"
        running, dropped = anyio.Event(), anyio.Event()
        notes: list[str] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            notes.append(message or "")
            if re.search(r": web1 (started|progress)\b", message or ""):
                running.set()
            if "lost its NATS connection" in (message or ""):
                dropped.set()

        results: list[CallToolResult] = []
        with anyio.fail_after(LIMIT), restartable(fleet) as again:
            async with (
                fleet.listeners("web1", sim={"web1": held(release)}),
                session(settings_for(fleet), "auto") as s,
                anyio.create_task_group() as tasks,
            ):

                async def call() -> None:
                    arguments = {"hostname": "web1", "wait_seconds": 45}
                    results.append(
                        await s.client.call_tool("deploy", arguments, progress_callback=on_progress)
                    )

                tasks.start_soon(call)
                await running.wait()
                fleet.server.stop()
                await dropped.wait()
                release.touch()
                await wire.final_published("web1").wait()
                await start(again)
        [result] = results
        assert not result.is_error, result
        report = DeploymentReport.model_validate(result.structured_content)
        assert report.ok and report.state == "finished"
        assert [(h.hostname, h.status) for h in report.hosts] == [("web1", "completed")]
        assert "The MCP server lost its NATS connection at" in report.summary
        [outage] = report.outages
        assert outage.duration_s is not None
        prefix = f"deployment {report.deployment_id}: "
        lost = next(i for i, n in enumerate(notes) if "lost its NATS connection" in n)
        assert re.fullmatch(
            re.escape(prefix) + r"the MCP server lost its NATS connection at \d\d:\d\d:\d\d "
            r"UTC; the hosts may still be deploying — waiting for it to come back",
            notes[lost],
        ), notes
        back = next(i for i, n in enumerate(notes) if "NATS connection is back after" in n)
        done = next(i for i, n in enumerate(notes) if n.startswith(prefix + "web1 completed"))
        assert lost < back < done, notes

    async def test_a_call_that_ends_in_the_outage_is_recovered_by_deployment_status(
        self, fleet: Fleet, wire: Wire, tmp_path: Path
    ) -> None:
        """A client gives up on its call while the MCP server's NATS is down; the host
        finishes meanwhile. After the reconnect, deployment_status reports the true outcome
        (re-sent by the listener or read back from its job record, whichever comes first)
        and says the connection was lost."""
        release = tmp_path / "release"
        running, dropped = anyio.Event(), anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if re.search(r": web1 (started|progress)\b", message or ""):
                running.set()
            if "lost its NATS connection" in (message or ""):
                dropped.set()

        with anyio.fail_after(LIMIT), restartable(fleet) as again:
            async with (
                fleet.listeners("web1", sim={"web1": held(release)}),
                session(settings_for(fleet), "auto") as s,
            ):
                first = await s.client.call_tool("deploy", {"hostname": "web1", "wait_seconds": 0})
                pending = DeploymentReport.model_validate(first.structured_content)
                assert pending.state == "running"
                async with anyio.create_task_group() as tasks:

                    async def status_call() -> None:  # the client's call that times out
                        await s.client.call_tool(
                            "deployment_status", {}, progress_callback=on_progress
                        )

                    tasks.start_soon(status_call)
                    await running.wait()
                    fleet.server.stop()
                    await dropped.wait()
                    tasks.cancel_scope.cancel()
                release.touch()
                await wire.final_published("web1").wait()
                await start(again)
                result = await s.client.call_tool(
                    "deployment_status",
                    {"deployment_id": pending.deployment_id, "wait_seconds": 30},
                )
        assert not result.is_error, result
        report = DeploymentReport.model_validate(result.structured_content)
        assert report.state == "finished" and report.ok
        assert [(h.hostname, h.status) for h in report.hosts] == [("web1", "completed")]
        assert "The MCP server lost its NATS connection at" in report.summary
        [outage] = report.outages
        assert outage.duration_s is not None
