"""The builder against a real nats-server, with the packaged nix stand-in.

Each test runs a real ``Builder`` (or the installed ``fleet-deploy builder`` as a process)
with the builder key and permissions ``nats-config`` writes, and asks for builds through the
core ``BuildClient`` or the installed ``fleet-deploy build``; what the report says is checked
against what the stand-in recorded and what reached the cache.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from fleet_core.build.builder import AsyncLinesIterator, run_nix
from fleet_core.build.client import BuildClient
from fleet_core.build.protocol import (
    BuildResult,
    BuildStatus,
    HostBuildState,
    parse_build_status,
    parse_build_target,
)
from fleet_core.bus import Bus, Message
from fleet_core.errors import PermissionDenied
from fleet_core.protocol.subjects import Tier
from fleet_core.testing import FLAKE_URL, FleetHost, local_fleet
from fleet_core.testing.embedded_server import EmbeddedNatsServer
from tests.conftest import DEPLOYERS, scripts_dir

from .support import CONFIGURATIONS, TIMING, Builds, commit_of

pytestmark = pytest.mark.anyio


@pytest.fixture
async def builds(tmp_path: Path) -> AsyncIterator[Builds]:
    hosts = [FleetHost("web1", Tier.TEST, "web"), FleetHost("pweb1", Tier.PROD, "web")]
    async with local_fleet(
        hosts, DEPLOYERS, builders={"builder": ["nixos"]}, root=tmp_path
    ) as local:
        yield Builds(local=local, root=tmp_path)


async def test_a_build_of_all_builds_every_configuration_at_one_commit(builds: Builds) -> None:
    """Fetched once with --refresh, then listed and built at the pinned commit; every closure
    reaches the cache, and the report names the commit and each store path."""
    async with builds.builder():
        result = await builds.build()
    commit = commit_of("master")
    assert result.status == "completed", result
    assert result.ok
    assert result.commit == commit
    assert result.builder == "builder"
    assert [h.host for h in result.hosts] == list(CONFIGURATIONS)
    assert all(h.state is HostBuildState.BUILT for h in result.hosts)
    pinned = f"{FLAKE_URL}?rev={commit}"
    runs = builds.runs()
    assert runs[0] == ["flake", "metadata", "--json", "--refresh", f"{FLAKE_URL}?ref=master"]
    assert runs[1] == [
        "eval",
        "--json",
        f"{pinned}#nixosConfigurations",
        "--apply",
        "builtins.attrNames",
    ]
    built = [r for r in runs if r[0] == "build"]
    assert [r[-1] for r in built] == [
        f"{pinned}#nixosConfigurations.{h}.config.system.build.toplevel" for h in CONFIGURATIONS
    ]
    paths = {h.store_path for h in result.hosts}
    assert all(p and p.startswith("/nix/store/") for p in paths)
    assert builds.cached() == paths
    assert all(h.copied_to == f"file://{builds.cache}" for h in result.hosts)


async def test_one_host_is_built_and_nothing_else(builds: Builds) -> None:
    async with builds.builder():
        result = await builds.build("web2", revision="release/25.05")
    assert result.ok
    assert [h.host for h in result.hosts] == ["web2"]
    assert [r[-1].rpartition("#")[2] for r in builds.runs() if r[0] == "build"] == [
        "nixosConfigurations.web2.config.system.build.toplevel"
    ]
    assert result.commit == commit_of("release/25.05")


async def test_a_failing_host_fails_alone_with_its_error(builds: Builds) -> None:
    async with builds.builder("--sim-fail-host", "web1"):
        result = await builds.build()
    states = {h.host: h for h in result.hosts}
    assert result.status == "failed"
    assert not result.ok
    assert states["web1"].state is HostBuildState.FAILED
    assert states["web1"].error == "build_failed"
    assert "undefined variable 'webroot'" in states["web1"].message
    assert any("webroot" in line for line in states["web1"].log_tail)
    assert {h for h, s in states.items() if s.state is HostBuildState.BUILT} == {"db1", "web2"}
    assert "1 of 3 hosts failed: web1 (build_failed)" in result.message
    assert len(builds.cached()) == 2


async def test_an_unknown_host_is_refused_by_name_with_what_there_is(builds: Builds) -> None:
    async with builds.builder():
        result = await builds.build("mail9")
    assert result.status == "failed"
    assert result.error == "unknown_host"
    assert "mail9 is not a nixosConfiguration of nixos" in result.message
    assert "db1, web1, web2" in result.message
    assert not [r for r in builds.runs() if r[0] == "build"]


async def test_without_a_builder_the_report_says_so_at_once(builds: Builds) -> None:
    with anyio.fail_after(4):  # the server's no-responders answer, not a timeout
        result = await builds.build()
    assert result.status == "no_builder"
    assert "no builder answered on build.nixos.all" in result.message
    assert "--repo nixos=" in result.message


async def test_a_second_build_meanwhile_is_rejected_and_the_first_finishes(
    builds: Builds,
) -> None:
    gate = builds.root / "gate"
    building = anyio.Event()
    first: list[BuildResult] = []

    def on_update(result: BuildResult) -> None:
        if any(h.state is HostBuildState.BUILDING for h in result.hosts):
            building.set()

    async def run_first() -> None:
        first.append(await builds.build("web1", on_update=on_update))

    async with builds.builder("--sim-wait-for", str(gate)) as builder:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_first)
            with anyio.fail_after(10):
                await building.wait()
            second = await builds.build("web2")
            gate.touch()
        assert builder.running is None
    assert second.status == "rejected"
    assert second.error == "already_running"
    assert f"already running build {first[0].build_id}" in second.message
    assert first[0].ok
    assert [h.host for h in first[0].hosts] == ["web1"]


async def test_copy_failure_is_reported_after_the_build(builds: Builds) -> None:
    async with builds.builder("--sim-fail-copy"):
        result = await builds.build("db1")
    (host,) = result.hosts
    assert host.state is HostBuildState.FAILED
    assert host.error == "copy_failed"
    assert host.message.startswith("built /nix/store/")
    assert "cannot connect to" in host.message


async def test_a_step_over_its_deadline_is_stopped_and_reported(builds: Builds) -> None:
    async with builds.builder("--sim-wait-for", str(builds.root / "never"), timeout=1.0):
        result = await builds.build("web1")
    (host,) = result.hosts
    assert host.error == "timeout"
    assert "did not finish within 1 s" in host.message


async def test_a_builder_stopping_mid_build_reports_it_cancelled(builds: Builds) -> None:
    """Stopped while nix builds (its block ends, cancelling serve): the host and the build
    are reported ``cancelled`` before the builder is gone, and the nix process with it."""
    building = anyio.Event()
    statuses: list[BuildResult] = []

    def on_update(result: BuildResult) -> None:
        if any(h.state is HostBuildState.BUILDING for h in result.hosts):
            building.set()

    async with anyio.create_task_group() as outer:

        async def ask() -> None:
            statuses.append(await builds.build("web1", on_update=on_update))

        async with builds.builder("--sim-wait-for", str(builds.root / "never")):
            outer.start_soon(ask)
            with anyio.fail_after(10):
                await building.wait()
    (result,) = statuses
    assert result.status == "failed"
    assert result.error == "cancelled"
    assert result.hosts[0].error == "cancelled"
    assert "builder builder stopped" in result.hosts[0].message


async def test_hostile_requests_are_refused_and_the_builder_serves_on(builds: Builds) -> None:
    async with builds.builder(), await builds.local.connect("deployer") as bus:
        answers = await _ask_raw(
            bus,
            [
                b"not json",
                json.dumps(
                    {"revision": "main;rm -rf /", "reply_to": "build.responses.r1"}
                ).encode(),
                json.dumps({"revision": "--option", "reply_to": "build.responses.r1"}).encode(),
                json.dumps({"revision": ["x"], "reply_to": "build.responses.r1"}).encode(),
                json.dumps({"id": "a b", "reply_to": "build.responses.r1"}).encode(),
                b"{" * 70000,
            ],
            reply="build.responses.r1",
        )
        result = await builds.build("web1")
    assert [a.status for a in answers] == ["rejected"] * 6
    assert [a.error for a in answers] == [
        "invalid_request",
        "invalid_revision",
        "invalid_revision",
        "invalid_revision",
        "invalid_request",
        "invalid_request",
    ]
    assert result.ok
    assert not [r for r in builds.runs() if "main;rm" in " ".join(r)]


async def _ask_raw(bus: Bus, payloads: Sequence[bytes], *, reply: str) -> list[BuildStatus]:
    """Publish each payload to build.nixos.web1 (NATS reply ``reply``) and collect one answer
    for each."""
    send, receive = anyio.create_memory_object_stream[BuildStatus](100)

    async def deliver(msg: Message) -> None:
        status = parse_build_status(msg.data)
        if status is not None:
            send.send_nowait(status)

    subscription = await bus.subscribe(reply, deliver)
    answers: list[BuildStatus] = []
    try:
        for payload in payloads:
            await bus.publish("build.nixos.web1", payload, reply=reply)
            with anyio.fail_after(5):
                answers.append(await receive.receive())
    finally:
        await subscription.unsubscribe()
        send.close()
        receive.close()
    return answers


@pytest.mark.parametrize(
    ("who", "subject"),
    [
        ("web1", "build.nixos.all"),  # a listener key cannot ask for builds
        ("deployer", "build.responses.forged"),  # nor can a deployer answer in a builder's name
        ("builder", "deploy.test.web1"),  # a builder key cannot deploy
    ],
)
async def test_the_permissions_keep_each_key_to_its_part(
    builds: Builds, who: str, subject: str
) -> None:
    async with await builds.local.connect(who) as bus:
        denied: list[PermissionDenied] = []
        stop = bus.watch_denials(denied.append)
        await bus.publish(subject, b"{}")
        await bus.flush()
        stop()
    assert [d.subject for d in denied] == [subject]


async def test_a_killed_builder_process_ends_the_build_lost(builds: Builds) -> None:
    """kill -9 of ``fleet-deploy builder`` mid-build: no cancelled status can go out, so the
    deployer's silence limit ends the build ``lost``, naming the builder."""
    gate = builds.root / "never"
    try:
        async with _builder_process(builds, "--sim-wait-for", str(gate)) as process:

            def on_update(result: BuildResult) -> None:
                if any(h.state is HostBuildState.BUILDING for h in result.hosts):
                    process.send_signal(signal.SIGKILL)

            result = await builds.build("web1", on_update=on_update)
            with anyio.fail_after(10):
                assert await process.wait() == -signal.SIGKILL
    finally:
        gate.touch()  # the orphaned nix stand-in (a session of its own) may end now
    assert result.status == "lost"
    assert "builder builder fell silent for 3 s" in result.message
    assert result.hosts[0].state is HostBuildState.LOST


@asynccontextmanager
async def _builder_process(builds: Builds, *sim: str) -> AsyncIterator[anyio.abc.Process]:
    """The installed ``fleet-deploy builder`` as a process, once it listens (its "listening"
    log line, after which its log is drained); stopped with SIGTERM at the block's end."""
    process = await anyio.open_process(
        _builder_argv(builds, *sim), env=_env(), stdout=subprocess.DEVNULL
    )
    async with process, anyio.create_task_group() as tg:
        assert process.stderr is not None
        lines = AsyncLinesIterator(process.stderr)
        with anyio.fail_after(20):
            async for line in lines:
                if "listening" in line:
                    break
            else:
                pytest.fail("the builder exited before it listened")

        async def drain() -> None:
            async for _ in lines:
                pass

        tg.start_soon(drain)
        try:
            yield process
        finally:
            if process.returncode is None:
                process.terminate()
            with anyio.fail_after(10):
                await process.wait()


def _builder_argv(builds: Builds, *sim: str) -> list[str]:
    settings = builds.settings(*sim)
    return [
        str(scripts_dir() / "fleet-deploy"),
        "builder",
        "--repo",
        f"nixos={FLAKE_URL}",
        "--nats-url",
        builds.local.url,
        "--nkey-file",
        str(builds.local.key_path("builder")),
        "--nix-command",
        " ".join(settings.nix_command),
        "--cache",
        f"file://{builds.cache}",
        "--heartbeat-interval",
        "0.5",
        "--name",
        "builder",
    ]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "HOMELAB_"))}


async def test_the_cli_builds_with_a_real_builder_process(builds: Builds) -> None:
    cli = [str(scripts_dir() / "fleet-deploy"), "build", "nixos"]
    key = str(builds.local.key_path("deployer"))
    connection = ["--nats-url", builds.local.url, "--nkey-file", key]
    async with _builder_process(builds, "--sim-fail-host", "web2") as process:
        with anyio.fail_after(30):
            ok = await anyio.run_process([*cli, "db1", *connection], check=False, env=_env())
            bad = await anyio.run_process(
                [*cli, "all", "--json", *connection], check=False, env=_env()
            )
    assert process.returncode == 0  # SIGTERM: a clean stop
    text = ok.stdout.decode()
    assert ok.returncode == 0, ok.stderr
    assert text.startswith("building build.nixos.db1 at master\n")
    assert "  db1                  built" in text
    assert text.splitlines()[-1] == "OK"
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["status"] == "failed"
    assert {h["host"]: h["state"] for h in report["hosts"]} == {
        "db1": "built",
        "web1": "built",
        "web2": "failed",
    }


@asynccontextmanager
async def _raw_statuses(builds: Builds, build_id: str) -> AsyncIterator[list[bytes]]:
    """Every message published to ``build.responses.<build_id>`` during the block, as sent."""
    seen: list[bytes] = []

    async def keep(msg: Message) -> None:
        seen.append(msg.data)

    async with await builds.local.connect("admin") as bus:
        subscription = await bus.subscribe(f"build.responses.{build_id}", keep)
        await bus.flush()
        try:
            yield seen
        finally:
            await bus.flush()
            await subscription.unsubscribe()


async def test_a_flood_of_output_is_throttled_and_bounded(builds: Builds) -> None:
    """50,000 log lines: the build completes, progress goes out at most about once per
    progress interval, and no status is over the size limit."""
    async with (
        builds.builder("--sim-spam", "50000", progress_interval=0.2),
        _raw_statuses(builds, "flood") as seen,
    ):
        result = await builds.build("web1", build_id="flood")
    assert result.ok
    statuses = [parse_build_status(data) for data in seen]
    assert all(s is not None for s in statuses)
    assert max(len(data) for data in seen) <= 64 * 1024
    progress = [s for s in statuses if s is not None and s.status == "progress"]
    assert 1 <= len(progress) < 200  # not one per line
    assert [s.status for s in statuses if s is not None][-1] == "completed"


async def test_heartbeats_keep_a_quiet_build_alive_past_the_silence_limit(
    builds: Builds,
) -> None:
    """A build that prints nothing for longer than the deployer's silence limit (3 s) is
    not lost: the builder's heartbeats (every 0.5 s here) say it is at it."""
    gate = builds.root / "gate"
    beats: list[float] = []

    def on_update(result: BuildResult) -> None:
        host = result.hosts[0] if result.hosts else None
        if host is not None and host.state is HostBuildState.BUILDING:
            beats.append(result.elapsed_s)
            if result.elapsed_s > TIMING.silence_limit + 1:
                gate.touch()

    async with builds.builder("--sim-wait-for", str(gate)):
        result = await builds.build("web1", on_update=on_update)
    assert result.ok, result
    assert result.elapsed_s > TIMING.silence_limit + 1
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert max(gaps) < TIMING.silence_limit


async def test_a_token_in_the_flake_url_is_never_published(builds: Builds) -> None:
    secret_url = "git+https://oauth2:SECRET-TOKEN@git.example.invalid/fleet.git"  # noqa: S105
    async with (
        builds.builder("--sim-fail-host", "web1", repos={"nixos": secret_url}),
        _raw_statuses(builds, "secret") as seen,
    ):
        result = await builds.build("all", build_id="secret")
    assert {h.state for h in result.hosts} == {HostBuildState.BUILT, HostBuildState.FAILED}
    assert seen
    assert not [data for data in seen if b"SECRET-TOKEN" in data]
    assert any(b"oauth2" in data or b"***@" in data for data in seen)


async def test_two_builders_of_one_repository_share_its_requests(builds: Builds) -> None:
    """Builders of one repository form a queue group: each request is built by one of them,
    never by both."""
    async with builds.builder(), builds.builder(label="builder-2"):
        results = [await builds.build("web1") for _ in range(4)]
    assert all(r.ok for r in results)
    built = [r for r in builds.runs() if r[0] == "build"]
    assert len(built) == 4  # one build per request, whichever builder took it
    assert {r.builder for r in results} <= {"builder", "builder-2"}


async def test_a_child_left_behind_neither_holds_the_build_nor_outlives_it(
    builds: Builds,
) -> None:
    """nix exits 0 but leaves a child holding its output open: the step ends within the
    kill grace (not at its deadline), the host is built, and the child is gone."""
    pid_file = builds.root / "child.pid"
    async with builds.builder("--sim-leave-child", str(pid_file), kill_grace=0.5, timeout=30):
        with anyio.fail_after(10):
            result = await builds.build("web1")
    assert result.ok, result
    assert not _alive(int(pid_file.read_text()))


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (killed, not yet reaped by its new parent) does not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_a_nats_restart_mid_build_is_not_the_builder_falling_silent(
    builds: Builds,
) -> None:
    """The server stops and starts again while nix builds: the client and the builder both
    reconnect to it, and the build is reported completed, not lost. (That an outage longer
    than the silence limit is not silence is the tracker's rule, tested with explicit
    clocks in test_build_tracker.py.)"""
    gate = builds.root / "gate"
    building, dropped, back = anyio.Event(), anyio.Event(), anyio.Event()
    port = int(builds.local.url.rpartition(":")[2])
    config = builds.local.server.config_path.read_text()
    again = EmbeddedNatsServer(builds.root / "nats-again", config, port=port)
    results: list[BuildResult] = []

    def on_update(result: BuildResult) -> None:
        if any(h.state is HostBuildState.BUILDING for h in result.hosts):
            building.set()

    try:
        async with (
            builds.builder("--sim-wait-for", str(gate)),
            await builds.local.connect("deployer") as bus,
        ):
            stop = bus.watch_connection(lambda up: (back if up else dropped).set())

            async def run() -> None:
                target = parse_build_target("nixos", "web1")
                client = BuildClient(bus, timing=TIMING)
                results.append(
                    await client.build(target, revision="main", timeout=60, on_update=on_update)
                )

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(run)
                    await building.wait()
                    builds.local.server.stop()
                    await dropped.wait()
                    await anyio.to_thread.run_sync(again.start)
                    await back.wait()
                    gate.touch()
            stop()
    finally:
        again.stop()
    (result,) = results
    assert result.ok, result
    assert result.hosts[0].state is HostBuildState.BUILT


async def test_a_long_metadata_line_still_pins_the_commit(builds: Builds) -> None:
    """A flake with many inputs prints its metadata as one long JSON line: it is read
    whole, so the build is still pinned to its commit."""
    async with builds.builder("--sim-metadata-pad", "200000"):
        result = await builds.build("web1")
    assert result.ok, result
    assert result.commit == commit_of("master")
    assert f"?rev={result.commit}#" in builds.runs()[-2][-1]  # the build, before the copy


async def test_a_git_flake_that_names_no_commit_is_not_built_unpinned(builds: Builds) -> None:
    async with builds.builder("--sim-no-lock"):
        result = await builds.build()
    assert (result.status, result.error) == ("failed", "eval_failed")
    assert "named no locked commit" in result.message
    assert not [r for r in builds.runs() if r[0] in ("eval", "build")]


async def test_dotted_names_are_built_and_unbuildable_ones_reported(builds: Builds) -> None:
    """nixosConfigurations."web9.example.com" is built (quoted); a name no installable can
    hold safely is reported failed by name, and the build is not OK."""
    hosts = "db1,web9.example.com,alice@mac"
    async with builds.builder("--sim-hosts", hosts):
        result = await builds.build()
    states = {h.host: (h.state.value, h.error) for h in result.hosts}
    assert states == {
        "db1": ("built", None),
        "web9.example.com": ("built", None),
        "alice@mac": ("failed", "invalid_name"),
    }
    assert (result.status, result.error) == ("failed", "invalid_name")
    assert "alice@mac" in result.message


async def test_a_request_in_the_running_builds_name_cannot_end_its_report(
    builds: Builds,
) -> None:
    """Another deployer key, which reads build.responses.*, asks the busy builder for a
    build under the running build's id and reply subject: the refusal goes there, but the
    running build's report ignores it and ends completed."""
    gate = builds.root / "gate"
    building = anyio.Event()
    results: list[BuildResult] = []

    def on_update(result: BuildResult) -> None:
        if any(h.state is HostBuildState.BUILDING for h in result.hosts):
            building.set()

    async with (
        builds.builder("--sim-wait-for", str(gate)),
        await builds.local.connect("admin") as attacker,
        anyio.create_task_group() as tasks,
    ):

        async def run() -> None:
            results.append(await builds.build("web1", build_id="victim", on_update=on_update))

        tasks.start_soon(run)
        with anyio.fail_after(10):
            await building.wait()
        for body in (
            {"id": "victim", "reply_to": "build.responses.victim"},
            {"id": "bad id!", "reply_to": "build.responses.victim"},
            {"revision": "--evil", "reply_to": "build.responses.victim"},
        ):
            await attacker.publish("build.nixos.web2", json.dumps(body).encode())
        await attacker.flush()
        gate.touch()
    (result,) = results
    assert result.ok, result
    assert [h.host for h in result.hosts] == ["web1"]


async def test_a_group_gets_its_grace_between_sigterm_and_sigkill(tmp_path: Path) -> None:
    """nix exits and leaves a child that needs a moment to end on SIGTERM: the child's
    handler runs (it is not SIGKILLed at once), and the step ends within the grace."""
    marker = tmp_path / "termed"
    child = (
        "import signal, sys, time\n"
        f"def done(*_):\n    open({str(marker)!r}, 'w').write('1'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, done)\n"
        "time.sleep(60)\n"
    )
    parent = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.DEVNULL)\n"
        "print('/nix/store/' + 'a' * 32 + '-x')\n"
    )

    async def ignore(_: str) -> None:
        return None

    with anyio.fail_after(20):
        run = await run_nix(
            [sys.executable, "-c", parent], timeout=30, on_line=ignore, kill_grace=1
        )
    assert run.ok
    assert marker.read_text() == "1"
