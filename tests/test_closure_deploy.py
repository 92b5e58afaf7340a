"""Closure deploys from the deployer's side, with real parts: a real nats-server with the
tiered permissions and JetStream (the builds stream), a real builder running the packaged
nix stand-in that signs what it copies into a ``file://`` cache, real listeners whose hosts
fetch from that cache (``simulated_nix_store``, signatures checked) and switch simulated
system profiles, and the installed ``fleet-deploy`` where the command line is the point.

What is asserted is what the hosts ran (the nix stand-ins' records, the systems their links
point to, their job records) against what the deployer reported."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.abc
import pytest

from fleet_core.build.builder import Builder
from fleet_core.build.client import BuildClient
from fleet_core.build.protocol import (
    BuildResult,
    HostBuildState,
    parse_build_status,
    parse_build_target,
)
from fleet_core.bus import Message
from fleet_core.config.settings import DeployTiming, RolloutSettings
from fleet_core.deploy.closure_deploy import build_for_deploy, load_build
from fleet_core.deploy.closures import (
    BuildUnusable,
    Closures,
    closures_from_build,
    single_closure,
)
from fleet_core.deploy.deployer import Deployer
from fleet_core.errors import PermissionDenied
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import MAX_STATUS_BYTES, JobPhase
from fleet_core.protocol.subjects import parse_target
from fleet_core.testing import (
    FLAKE_URL,
    publish_system,
    simulated_nix_command,
)
from tests.conftest import scripts_dir

from .closure_fleet import (
    CONFIGURATIONS,
    KEY,
    TIMING,
    Closed,
    closed,
    env,
    pinned,
)
from .support import commit_of

pytestmark = pytest.mark.anyio

__all__ = ["closed"]  # the fixture


async def test_the_cli_builds_a_role_once_and_each_host_switches_to_its_own_system(
    closed: Closed,
) -> None:
    """`deploy deploy.test.role.web --build nixos --json`: the builder builds web1 and web2
    alone (not db1, not prod's pweb1), both from the one commit main was pinned to; each host
    fetches exactly its own path and runs it; the JSON names the build, the commit and each
    host's store path."""
    async with closed.listeners("web1", "web2", "db1"), closed.builder():
        code, out, err = await closed.cli(
            "deploy", "deploy.test.role.web", "--build", "nixos", "--branch", "main", "--json"
        )
    assert code == 0, err
    result = json.loads(out)
    assert sorted(closed.builds()) == [pinned("web1"), pinned("web2")]
    assert result["commit"] == commit_of("main") and result["build_id"]
    assert result["revision"] == commit_of("main")
    by_host = {h["hostname"]: h for h in result["hosts"]}
    assert sorted(by_host) == ["web1", "web2"]
    for host in ("web1", "web2"):
        path = by_host[host]["store_path"]
        assert by_host[host]["status"] == "completed"
        assert Path(path).name.split("-", 1)[1].startswith(f"nixos-system-{host}-")
        assert closed.running(host) == Path(path).name
        assert [argv[argv.index("--realise") :] for argv in closed.fetched(host)] == [
            ["--realise", path]
        ]
    assert closed.fetched("db1") == []
    assert "build" in err and "web1" in err  # the build's own lines, live, beside the JSON


async def test_a_host_whose_build_failed_gets_nothing_and_ends_with_the_builds_error(
    closed: Closed,
) -> None:
    """web2's build fails: it ends failed/build_failed with nix's error, is sent nothing
    (no job record of the deployment, no fetch) and runs what it ran; web1 switches."""
    async with closed.listeners("web1", "web2"), closed.builder("--sim-fail-host", "web2"):
        before = closed.running("web2")
        result, build = await closed.build_and_deploy("deploy.test.role.web")
        assert build is not None and build.status == "failed"
        hosts = {h.hostname: h for h in result.hosts}
        assert (hosts["web1"].status, hosts["web2"].status) == ("completed", "failed")
        assert hosts["web2"].error == "build_failed"
        assert "build_failed" in hosts["web2"].message
        assert "undefined variable" in hosts["web2"].message  # the builder's summary of nix's
        assert hosts["web2"].store_path is None
        assert await closed.job_phase("web2", result.deployment_id) is JobPhase.UNKNOWN
        assert await closed.job_phase("web1", result.deployment_id) is JobPhase.FINISHED
    assert closed.fetched("web2") == []
    assert closed.running("web2") == before
    assert not result.ok and result.build_id == build.build_id


async def test_with_no_failure_budget_a_failed_build_stops_everyone(closed: Closed) -> None:
    """`--canary 1 --max-failures 0` and web2's build failed: the budget is spent before the
    first batch, so web1 is skipped, never sent a request, and still runs what it ran."""
    rollout = RolloutSettings(canary=1, max_failures=0)
    async with closed.listeners("web1", "web2"), closed.builder("--sim-fail-host", "web2"):
        before = closed.running("web1")
        result, _ = await closed.build_and_deploy("deploy.test.role.web", rollout=rollout)
        assert await closed.job_phase("web1", result.deployment_id) is JobPhase.UNKNOWN
    hosts = {h.hostname: h for h in result.hosts}
    assert (hosts["web1"].status, hosts["web2"].status) == ("skipped", "failed")
    assert result.rollout is not None and result.rollout.current is None
    assert result.rollout.failed == ["web2"]
    assert "before any batch (its build failed)" in (result.rollout.stopped or "")
    assert closed.fetched("web1") == [] and closed.running("web1") == before


async def test_one_host_is_pinned_to_a_given_system_and_a_group_is_refused(
    closed: Closed,
) -> None:
    """`--store-path` sends web1 exactly that system (e.g. a known-good one); the CLI
    refuses it for a group before connecting, saying what to do."""
    path = publish_system(closed.cache, "web1", "known-good", signing_key=KEY)
    async with closed.listeners("web1"):
        code, out, err = await closed.cli(
            "deploy", "deploy.test.web1", "--store-path", path, "--json"
        )
        again, text, said = await closed.cli("deploy", "deploy.test.web1", "--store-path", path)
    assert code == 0, err
    (host,) = json.loads(out)["hosts"]
    assert (host["status"], host["store_path"]) == ("completed", path)
    assert closed.running("web1") == Path(path).name
    lines = text.splitlines()
    assert again == 0, said
    assert lines[0] == f"deploying {path} (switch) to deploy.test.web1"
    (first,) = [line for line in lines if line.startswith("deployment ")]
    assert first.endswith("switch of a given system to deploy.test.web1", 0, first.rindex(" ("))
    assert lines[lines.index("--- systems sent ---") + 1].split() == ["web1", path]
    assert lines[-1] == "OK: 1 completed"
    code, _, err = await closed.cli("deploy", "deploy.test.role.web", "--store-path", path)
    assert code == 2
    assert "--store-path sends one host its own system" in err
    assert "--build REPO" in err


async def test_a_previous_build_is_deployed_from_history_with_the_admin_key_only(
    closed: Closed,
) -> None:
    """A build run before (the builds stream recorded it) is deployed by its id with the
    admin key; the test key has no JetStream, and is told so, with what to do instead."""
    async with closed.builder(), await closed.local.connect("deployer") as bus:
        build = await BuildClient(bus).build(
            parse_build_target("nixos"), revision="main", timeout=60
        )
    assert build.ok
    async with await closed.local.connect("admin") as bus:
        recorded = await load_build(bus, build.build_id)
    assert recorded.status == "completed" and recorded.commit == build.commit
    assert {h.host: h.store_path for h in recorded.hosts} == {
        h.host: h.store_path for h in build.hosts
    }
    async with closed.listeners("web1", "web2"):
        code, out, err = await closed.cli(
            "deploy",
            "deploy.test.role.web",
            "--from-build",
            build.build_id,
            "--json",
            who="admin",
        )
        assert code == 0, err
        refused, _, said = await closed.cli(
            "deploy", "deploy.test.role.web", "--from-build", build.build_id
        )
    result = json.loads(out)
    assert result["build_id"] == build.build_id
    assert {h["hostname"]: h["status"] for h in result["hosts"]} == {
        "web1": "completed",
        "web2": "completed",
    }
    assert refused == 2
    assert "may not read recorded builds" in said and "admin key" in said


async def test_without_a_builder_nothing_is_deployed_and_the_error_says_why(
    closed: Closed,
) -> None:
    """No builder: a clear error (exit 2), and no host has a job of it or fetched anything."""
    async with closed.listeners("web1", "web2"):
        with pytest.raises(BuildUnusable, match="no builder answered"):
            await closed.build_and_deploy("deploy.test.role.web")
        code, _, err = await closed.cli(
            "deploy", "deploy.test.role.web", "--build", "nixos", "--build-timeout", "20"
        )
    assert code == 2
    assert "no builder answered" in err and "Nothing was deployed" in err
    assert closed.fetched("web1") == [] and closed.fetched("web2") == []


def _once_building() -> tuple[anyio.Event, Callable[[BuildResult], None]]:
    """An event set once the builder says it builds a host, and the build's callback."""
    building = anyio.Event()

    def on_build(result: BuildResult) -> None:
        if any(host.state is HostBuildState.BUILDING for host in result.hosts):
            building.set()

    return building, on_build


async def test_a_builder_stopped_mid_build_deploys_nothing(closed: Closed) -> None:
    """The builder stops mid-build (its build ends cancelled, web2 never built): web2 is
    sent nothing, and nothing was fetched for it."""
    hold = closed.root / "hold"
    async with closed.listeners("web1", "web2"), await closed.local.connect("deployer") as bus:
        deployer = Deployer(bus, timing=TIMING, signer=closed.local.seed("deployer"))
        target = parse_target("deploy.test.role.web")
        building, on_build = _once_building()
        async with anyio.create_task_group() as tg:

            async def stop_builder_once_building(scope: anyio.CancelScope) -> None:
                with anyio.fail_after(30):
                    await building.wait()
                scope.cancel()

            async def run_builder() -> None:
                with anyio.CancelScope() as scope:
                    tg.start_soon(stop_builder_once_building, scope)
                    async with closed.builder("--sim-wait-for", str(hold)):
                        await anyio.sleep_forever()

            tg.start_soon(run_builder)
            closures, build = await build_for_deploy(
                deployer, target, repo="nixos", revision="main", timeout=60, on_update=on_build
            )
        result = await deployer.deploy(
            target, revision="main", action=Action.SWITCH, timeout=30, closures=closures
        )
    assert build is not None and build.status == "failed" and build.error == "cancelled"
    assert {h.hostname: h.status for h in result.hosts} == {"web1": "failed", "web2": "failed"}
    assert all(h.error == "build_failed" for h in result.hosts)
    assert closed.fetched("web1") == [] and closed.fetched("web2") == []


async def test_a_lost_build_is_an_error_and_deploys_nothing(closed: Closed) -> None:
    """kill -9 of the builder process mid-build: the build falls silent and ends lost; that
    is an error naming it (exit 2 at the command line), and no host was sent anything."""
    gate = closed.root / "never"
    nix = simulated_nix_command(
        "--sim-hosts",
        ",".join(CONFIGURATIONS),
        "--sim-wait-for",
        str(gate),
        "--sim-record",
        str(closed.record),
    )
    argv = [
        str(scripts_dir() / "fleet-deploy"),
        "builder",
        "--repo",
        f"nixos={FLAKE_URL}",
        "--nats-url",
        closed.local.url,
        "--nkey-file",
        str(closed.local.key_path("builder")),
        "--nix-command",
        " ".join(nix),
        "--heartbeat-interval",
        "0.5",
        "--name",
        "builder",
    ]
    quick = DeployTiming(answer_within=5.0, silence_limit=3.0)
    try:
        async with (
            closed.listeners("web1", "web2"),
            await anyio.open_process(argv, env=env(), stdout=subprocess.DEVNULL) as process,
        ):
            assert process.stderr is not None
            seen = b""
            with anyio.fail_after(20):
                async for chunk in process.stderr:
                    seen += chunk
                    if b"listening" in seen:
                        break
            async with await closed.local.connect("deployer") as bus:
                deployer = Deployer(bus, timing=quick, signer=closed.local.seed("deployer"))

                def kill_once_building(result: BuildResult) -> None:
                    if any(h.state.value == "building" for h in result.hosts):
                        process.send_signal(signal.SIGKILL)

                with pytest.raises(BuildUnusable, match="ended lost: builder builder fell silent"):
                    await build_for_deploy(
                        deployer,
                        parse_target("deploy.test.role.web"),
                        repo="nixos",
                        revision="main",
                        timeout=60,
                        on_update=kill_once_building,
                    )
            with anyio.fail_after(10):
                assert await process.wait() == -signal.SIGKILL
    finally:
        gate.touch()  # the orphaned nix stand-in (a session of its own) may end now
    assert closed.fetched("web1") == [] and closed.fetched("web2") == []


async def test_the_test_key_cannot_closure_deploy_prod(closed: Closed) -> None:
    """A prod host's system with the test key: the server refuses it the prod hosts, so it
    is a permission error before anything is sent, and pweb1 has no job of it."""
    path = publish_system(closed.cache, "pweb1", "sneaky", signing_key=KEY)
    async with closed.listeners("pweb1"):
        with pytest.raises(PermissionDenied, match="admin key"):
            await closed.deploy("deploy.prod.pweb1", single_closure("pweb1", path))
        code, _, err = await closed.cli("deploy", "deploy.prod.pweb1", "--store-path", path)
    assert code == 2, err
    assert closed.fetched("pweb1") == []
    assert closed.running("pweb1") != Path(path).name


async def test_the_admin_deploys_a_prod_closure(closed: Closed) -> None:
    """The same system with the admin key reaches pweb1, which runs it."""
    path = publish_system(closed.cache, "pweb1", "release", signing_key=KEY)
    async with closed.listeners("pweb1"):
        result = await closed.deploy(
            "deploy.prod.pweb1", single_closure("pweb1", path), who="admin"
        )
    assert result.ok, result
    assert closed.running("pweb1") == Path(path).name


async def test_a_system_that_is_not_the_hosts_own_is_refused_and_never_fetched(
    closed: Closed,
) -> None:
    """web1 given web2's system: from a build (a builder's slip), the deployer ends web1
    failed/wrong_host before sending anything; given directly, web1 refuses it by name
    (rejected/wrong_host). Either way nothing is fetched and web1 runs what it ran."""
    path = publish_system(closed.cache, "web2", "mixup", signing_key=KEY)
    async with closed.listeners("web1"):
        before = closed.running("web1")
        built = await closed.deploy(
            "deploy.test.web1", Closures(paths={"web1": path}, build_id="b1")
        )
        given = await closed.deploy("deploy.test.web1", Closures(paths={"web1": path}))
    (host,) = built.hosts
    assert (host.status, host.error) == ("failed", "wrong_host"), host
    assert "nixos-system-web2-" in host.message
    (host,) = given.hosts
    assert (host.status, host.error, host.store_path) == ("rejected", "wrong_host", path)
    assert closed.fetched("web1") == [] and closed.running("web1") == before


async def test_a_host_whose_configuration_is_not_its_name_gets_its_configurations_system(
    closed: Closed,
) -> None:
    """web1's listener builds the configuration web1.example.com (--configuration): --build
    asks the builder for that configuration, and web1 switches to what it built."""
    async with (
        closed.builder("--sim-hosts", "web1.example.com"),
        closed.listeners("web1", configuration="web1.example.com"),
    ):
        result, build = await closed.build_and_deploy("deploy.test.web1")
    assert build is not None and [h.host for h in build.hosts] == ["web1.example.com"]
    (host,) = result.hosts
    assert (host.hostname, host.status) == ("web1", "completed"), host
    assert host.store_path is not None and "nixos-system-web1.example.com-" in host.store_path
    assert closed.running("web1") == Path(host.store_path).name


async def test_a_build_of_named_hosts_builds_those_alone_and_fails_an_unknown_one(
    closed: Closed,
) -> None:
    """A request naming web1 and nosuch: web1 is built from the pinned commit, nosuch fails
    alone (unknown_host, naming what the flake has), and nothing else is built."""
    async with closed.builder(), await closed.local.connect("deployer") as bus:
        result = await BuildClient(bus).build(
            parse_build_target("nixos"), revision="main", timeout=60, hosts=["web1", "nosuch"]
        )
    assert closed.builds() == [pinned("web1")]
    states = {h.host: (h.state.value, h.error) for h in result.hosts}
    assert states == {"web1": ("built", None), "nosuch": ("failed", "unknown_host")}
    (unknown,) = [h for h in result.hosts if h.host == "nosuch"]
    assert "it has: db1, pweb1, web1, web2" in unknown.message
    assert result.status == "failed"


async def test_names_that_do_not_fit_one_request_build_all_and_the_targets_are_taken(
    closed: Closed,
) -> None:
    """A thousand long host names do not fit in one request: the build asks for all, and
    the deploy takes its targets' systems from it."""
    many = ["web1", *(f"h{n:04d}" + "x" * 58 for n in range(1000))]
    async with closed.builder(), await closed.local.connect("deployer") as bus:
        result = await BuildClient(bus).build(
            parse_build_target("nixos"), revision="main", timeout=60, hosts=many
        )
    assert sorted(closed.builds()) == sorted(pinned(h) for h in CONFIGURATIONS)
    closures = closures_from_build(result, many)
    assert list(closures.paths) == ["web1"]
    assert len(closures.failed) == 1000


async def test_the_whole_builds_statuses_fit_for_ten_thousand_hosts(closed: Closed) -> None:
    """A flake of 10,000 hosts: the whole build's started status (and its end, when the
    builder stops) fit in MAX_STATUS_BYTES, parse, and count the hosts they cannot name."""
    names = [f"h{n:05d}" for n in range(10_000)]
    hold = closed.root / "never"
    seen: list[bytes] = []
    arrived = anyio.Event()

    async def keep(msg: Message) -> None:
        seen.append(msg.data)
        status = parse_build_status(msg.data)
        if status is not None and status.host is None and status.is_final:
            arrived.set()

    async with await closed.local.connect("admin") as watcher:
        subscription = await watcher.subscribe("build.responses.big", keep)
        await watcher.flush()
        async with await closed.local.connect("deployer") as bus:
            builder_scope = anyio.CancelScope()

            async def serve(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                nix = simulated_nix_command(
                    "--sim-hosts",
                    ",".join(names),
                    "--sim-wait-for",
                    str(hold),
                    "--sim-record",
                    str(closed.record),
                )
                settings = closed.local.builder_settings(
                    "builder", nix_command=nix, heartbeat_interval=0.5
                )
                async with await closed.local.connect("builder") as own:
                    with builder_scope:
                        await Builder(settings).serve(own, task_status=task_status)

            building, on_build = _once_building()

            async def stop_once_building() -> None:
                with anyio.fail_after(60):
                    await building.wait()
                builder_scope.cancel()

            async with anyio.create_task_group() as tg:
                await tg.start(serve)
                tg.start_soon(stop_once_building)
                result = await BuildClient(bus, timing=TIMING).build(
                    parse_build_target("nixos"),
                    revision="main",
                    timeout=60,
                    build_id="big",
                    on_update=on_build,
                )
            with anyio.fail_after(10):
                await arrived.wait()
        await subscription.unsubscribe()
    wholes = [parse_build_status(data) for data in seen]
    started = [s for s in wholes if s and s.host is None and s.status == "started"]
    ended = [s for s in wholes if s and s.host is None and s.is_final]
    assert all(len(data) <= MAX_STATUS_BYTES for data in seen)
    assert [(s.hosts, s.host_count) for s in started] == [(None, 10_000)]
    assert [(s.error, s.host_count) for s in ended] == [("cancelled", 10_000)]
    assert result.status == "failed" and result.error == "cancelled"


async def test_show_names_the_system_each_host_was_sent(closed: Closed) -> None:
    """The tier's history records each host's request, path and all: `show` names the
    system each host was sent, and `--json` carries it per host."""
    async with closed.builder(), closed.listeners("web1", "web2"):
        result, _ = await closed.build_and_deploy("deploy.test.role.web")
    assert result.ok, result
    sent = {h.hostname: h.store_path for h in result.hosts}
    code, out, err = await closed.cli("show", result.deployment_id, who="admin")
    assert code == 0, err
    for host in ("web1", "web2"):
        assert f"    system {sent[host]}" in out, out
    code, dumped, err = await closed.cli("show", result.deployment_id, "--json", who="admin")
    assert code == 0, err
    [recorded] = json.loads(dumped)["deployments"]
    assert {h["hostname"]: h["store_path"] for h in recorded["hosts"]} == sent
