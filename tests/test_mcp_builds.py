"""The MCP build tools through real ``mcp.Client`` sessions, with a real builder.

As in ``test_mcp``, sessions run in both protocol eras against a real nats-server under the
permissions ``nats-config`` writes — here with a builder's key too — and the builder is a
real ``Builder`` whose ``nix`` is the packaged stand-in (``fleet_core.testing.simulated_nix``). The
digest of a very large build is checked without MCP, as ``test_mcp_deployments`` does for
deployments; the installed ``fleet-mcp --enable-builds`` is driven over HTTP at the end.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.abc
import mcp
import pytest

from fleet_core.build.client import BuildClient
from fleet_core.build.protocol import (
    BuildResult,
    BuildTarget,
    HostBuild,
    HostBuildState,
    parse_build_target,
)
from fleet_core.config.settings import McpSettings
from fleet_core.testing import FleetHost, local_fleet
from fleet_mcp.builds import Build, BuildRegistry
from fleet_mcp.reports.build import BuildReport, build_report, build_text
from fleet_mcp.reports.fitting import TEXT_BUDGET

from .conftest import DEPLOYERS, HOSTS, Fleet, scripts_dir
from .support import (
    BASE_TOOLS,
    CONFIGURATIONS,
    Builds,
    Session,
    commit_of,
    fleet_mcp_over_http,
    read_text,
    result_text,
    scrape,
    series,
    session,
    settings_for,
    text_of,
    value,
)

pytestmark = pytest.mark.anyio

BUILD_TOOLS = {"build", "build_status"}
_BUILD_ID = re.compile(r"build [0-9a-f]{32} \(build\.nixos\.all at master\)")


@pytest.fixture(params=["auto", "legacy"], ids=["modern", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both protocol eras: "auto" is the 2026 direct path in process, "legacy" the handshake."""
    return str(request.param)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """The conftest's fleet, with a builder's key and permissions for repository nixos."""
    hosts = [FleetHost(name, tier, role) for name, (tier, role) in HOSTS.items()]
    async with local_fleet(
        hosts, DEPLOYERS, builders={"builder": ["nixos"]}, root=tmp_path
    ) as local:
        yield Fleet(local=local, record=tmp_path / "runs.jsonl")


@pytest.fixture
def builds(fleet: Fleet) -> Builds:
    return Builds(local=fleet.local, root=fleet.root)


def enabled(fleet: Fleet, **kw: Any) -> McpSettings:
    """The test-key server's settings with --enable-builds."""
    return replace(settings_for(fleet, **kw), enable_builds=True)


async def build(s: Session, tool: str = "build", **arguments: Any) -> BuildReport:
    result = await s.call(tool, **arguments)
    assert not result.is_error, text_of(result)
    report = BuildReport.model_validate(result.structured_content)
    assert read_text(text_of(result)) == result.structured_content  # small: the whole report
    return report


class TestToolList:
    async def test_the_build_tools_exist_only_with_enable_builds(
        self, fleet: Fleet, mode: str
    ) -> None:
        """Without --enable-builds there is no build tool to list or call, and the
        instructions do not speak of one; with it both are listed and explained."""
        async with session(settings_for(fleet), mode) as s:
            without = {t.name for t in (await s.client.list_tools()).tools}
            plain = s.client.instructions or ""
            unknown = [await s.error(tool, repo="nixos") for tool in ("build", "build_status")]
        async with session(enabled(fleet), mode) as s:
            listed = {t.name for t in (await s.client.list_tools()).tools}
            instructions = s.client.instructions or ""
        async with session(enabled(fleet, admin="admin"), mode) as s:
            with_admin = {t.name for t in (await s.client.list_tools()).tools}
        assert without == BASE_TOOLS
        assert all("Unknown tool" in message for message in unknown), unknown
        assert "build_status" not in plain and "builder" not in plain
        assert listed == BASE_TOOLS | BUILD_TOOLS
        assert with_admin == BASE_TOOLS | BUILD_TOOLS | {"deploy_admin"}
        assert "build_status" in instructions
        assert "changes no host" in instructions

    async def test_annotations_schemas_and_descriptions(self, fleet: Fleet, mode: str) -> None:
        """build changes no host but is not read-only, nor idempotent (the branch may move);
        build_status is read-only; both are typed and described in plain sentences, and
        build says it uses the test key."""
        async with session(enabled(fleet), mode) as s:
            tools = {t.name: t for t in (await s.client.list_tools()).tools}
        hints = tools["build"].annotations
        assert hints is not None
        assert (hints.read_only_hint, hints.destructive_hint) == (False, False)
        assert (hints.idempotent_hint, hints.open_world_hint) == (False, False)
        status = tools["build_status"].annotations
        assert status is not None and status.read_only_hint is True
        assert tools["build"].input_schema["required"] == ["repo"]
        assert set(tools["build"].input_schema["properties"]) == {
            "repo",
            "target",
            "branch",
            "wait_seconds",
        }
        description = tools["build"].description or ""
        assert "test-tier key" in description and "changes no host" in description
        for name in BUILD_TOOLS:
            schema = tools[name].output_schema
            assert schema is not None and {"build_id", "next_step"} <= set(schema["properties"])
            texts = [tools[name].description or ""] + [
                str(field.get("description", ""))
                for field in tools[name].input_schema["properties"].values()
            ]
            for text in texts:
                assert text
                assert not re.search(r"(^|\n)[ \t]", text), text
                assert not re.search(r"`|\*\*|::|^\s*[-*] ", text), text


class TestBuild:
    async def test_a_build_of_all_builds_every_host(
        self, fleet: Fleet, builds: Builds, mode: str
    ) -> None:
        """build(repo) builds every configuration at one commit; the report says nothing is
        left to wait for, and the notes name the build, the builder and every host built."""
        async with builds.builder(), session(enabled(fleet), mode) as s:
            report = await build(s, repo="nixos")
        assert (report.state, report.status, report.ok) == ("finished", "completed", True)
        assert report.subject == "build.nixos.all"
        assert (report.repo, report.revision) == ("nixos", "master")
        assert report.commit == commit_of("master")
        assert report.builder == "builder"
        assert [h.host for h in report.hosts] == list(CONFIGURATIONS)
        assert all(h.state is HostBuildState.BUILT for h in report.hosts)
        assert report.counts == {"built": 3}
        assert report.next_step.startswith("Nothing to wait for: every host was built")
        assert f"branch={report.commit!r}" in report.next_step
        assert "finished OK" in report.summary
        values = [v for v, _ in s.progress]
        assert values == sorted(set(values)), "progress must increase with every notification"
        notes = s.messages()
        prefix = f"build {report.build_id}: "
        assert notes[0] == f"{prefix}build.nixos.all at master"
        assert all(note.startswith(prefix) for note in notes), notes
        assert any(n.startswith(f"{prefix}builder builder took it") for n in notes), notes
        for host in report.hosts:  # its store path is builder output: in the result only
            assert f"{prefix}{host.host} built" in notes
        assert notes[-1].startswith(f"{prefix}completed")

    async def test_a_long_build_runs_on_and_build_status_follows_it(
        self, fleet: Fleet, builds: Builds, mode: str
    ) -> None:
        """Held open past wait_seconds, build returns it running with next_step pointing at
        build_status; a second build meanwhile is refused by the builder, pointing at the
        first; build_status without an id follows the running one, and after the gate
        opens reports it completed. Heartbeats keep coming while nothing changes."""
        gate = builds.root / "gate"
        settings = replace(enabled(fleet), heartbeat=0.2)
        async with (
            builds.builder("--sim-wait-for", str(gate)),
            session(settings, mode) as s,
        ):
            pending = await build(s, repo="nixos", target="web1", wait_seconds=1)
            with anyio.fail_after(30):  # web1 is being built before the second is asked for
                while not [h for h in pending.hosts if h.state is HostBuildState.BUILDING]:
                    pending = await build(
                        s, "build_status", build_id=pending.build_id, wait_seconds=0.2
                    )
            second = await build(s, repo="nixos", target="web2", wait_seconds=30)
            followed = await build(s, "build_status", wait_seconds=0)
            gate.touch()
            final = await build(s, "build_status", wait_seconds=30)
        assert (pending.state, pending.status, pending.ok) == ("running", "running", False)
        assert "build_status" in pending.next_step
        assert f"build_id={pending.build_id!r}" in pending.next_step
        assert "Do not build again" in pending.next_step
        assert (second.state, second.status, second.error) == (
            "finished",
            "rejected",
            "already_running",
        )
        assert f"build_id={pending.build_id!r}" in second.next_step
        refused = [m for m in s.messages() if m.startswith(f"build {second.build_id}: ")]
        assert len(refused) == 2 and "took it" not in " ".join(refused), refused  # took nothing
        assert refused[-1].startswith(f"build {second.build_id}: rejected — ")
        assert (followed.build_id, followed.state) == (pending.build_id, "running")
        assert (final.build_id, final.state, final.ok) == (pending.build_id, "finished", True)
        assert [(h.host, h.state) for h in final.hosts] == [("web1", HostBuildState.BUILT)]
        assert final.next_step.startswith("Nothing to wait for")
        beats = [m for m in s.messages() if "still running" in m]
        assert len(beats) >= 2, s.messages()

    async def test_a_cancelled_call_stops_waiting_not_the_build(
        self, fleet: Fleet, builds: Builds, mode: str
    ) -> None:
        """The client gives up on a build call mid-build: the build goes on in the server,
        and build_status with the id from the notes reports it completed."""
        gate = builds.root / "gate"
        building = anyio.Event()
        ids: list[str] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            found = re.match(r"build ([0-9a-f]{32}): ", message or "")
            if found:
                ids.append(found.group(1))
            if re.search(r": web1 building\b", message or ""):
                building.set()

        async with (
            builds.builder("--sim-wait-for", str(gate)),
            session(enabled(fleet), mode) as s,
        ):
            call = anyio.CancelScope()

            async def ask() -> None:
                with call:
                    await s.client.call_tool(
                        "build", {"repo": "nixos", "target": "web1"}, progress_callback=on_progress
                    )

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(ask)
                with anyio.fail_after(15):
                    await building.wait()
                call.cancel()
            assert call.cancelled_caught
            gate.touch()
            final = await build(s, "build_status", build_id=ids[0], wait_seconds=30)
        assert (final.state, final.ok) == ("finished", True)
        assert [h.host for h in final.hosts] == ["web1"]

    async def test_a_failing_host_shows_in_the_text_and_the_structure(
        self, fleet: Fleet, builds: Builds, mode: str
    ) -> None:
        """One host's build fails: the result (not a tool error) names it in the summary,
        carries nix's error and log tail, and the others are built."""
        async with (
            builds.builder("--sim-fail-host", "web1"),
            session(enabled(fleet), mode) as s,
        ):
            result = await s.call("build", repo="nixos")
        assert not result.is_error, text_of(result)
        report = BuildReport.model_validate(result.structured_content)
        assert (report.state, report.status, report.ok) == ("finished", "failed", False)
        states = {h.host: h for h in report.hosts}
        web1 = states["web1"]
        assert (web1.state, web1.error) == (HostBuildState.FAILED, "build_failed")
        assert "undefined variable 'webroot'" in web1.message
        assert any("webroot" in line for line in web1.log_tail)
        assert {h for h, b in states.items() if b.state is HostBuildState.BUILT} == {
            "db1",
            "web2",
        }
        assert "web1 failed (build_failed)" in report.summary
        assert "log_tail" in report.summary and "log_tail" in report.next_step
        text = result_text(text_of(result))
        assert "undefined variable 'webroot'" in "\n".join(text.fenced)
        assert "web1" in text.report
        assert f"build {report.build_id}: web1 failed — build_failed" in s.messages()

    async def test_without_a_builder_the_result_says_what_to_run(
        self, fleet: Fleet, mode: str
    ) -> None:
        """Nobody listens on build.nixos.all: at once, a finished result that names the
        subject and the command that would answer it."""
        async with session(enabled(fleet), mode) as s:
            with anyio.fail_after(10):  # the NATS server's no-responders, not a timeout
                report = await build(s, repo="nixos")
        assert (report.state, report.status, report.ok) == ("finished", "no_builder", False)
        assert report.hosts == []
        assert "no builder answered on build.nixos.all" in report.summary
        assert "fleet-deploy builder --repo nixos=<flake URL>" in report.next_step
        assert "build.nixos.all" in report.next_step

    async def test_a_key_refused_the_subject_is_an_error_naming_the_build(
        self, fleet: Fleet, mode: str
    ) -> None:
        """A key NATS does not let ask for builds (a listener's): a tool error, raised after
        the build started, that names the build and the next step."""
        async with session(enabled(fleet, key="web1"), mode) as s:
            with anyio.fail_after(10):
                message = await s.error("build", repo="nixos")
        assert "refused this MCP server's key" in message
        assert _BUILD_ID.search(message), message
        assert "Next step:" in message

    async def test_build_status_before_any_build_and_for_an_unknown_id(
        self, fleet: Fleet, mode: str
    ) -> None:
        async with session(enabled(fleet), mode) as s:
            none = await s.error("build_status")
            unknown = await s.error("build_status", build_id="0" * 32)
        assert "No build has been started" in none and "Next step:" in none
        assert f"No build {'0' * 32!r} is known" in unknown and "Next step:" in unknown


class TestArguments:
    @pytest.mark.parametrize(
        ("call", "hint"),
        [
            (("build", {"repo": "nixos.>"}), "invalid repository name"),
            (("build", {"repo": "*"}), "invalid repository name"),
            (("build", {"repo": "responses"}), "invalid repository name"),
            (("build", {"repo": ""}), "invalid repository name"),
            (("build", {"repo": "nixos", "target": "web1.>"}), "invalid hostname"),
            (("build", {"repo": "nixos", "target": "*"}), "invalid hostname"),
            (("build", {"repo": "nixos", "target": ">"}), "invalid hostname"),
            (("build", {"repo": "nixos", "target": ""}), "invalid hostname"),
            (("build", {"repo": "nixos", "branch": "--upload-pack=evil"}), "not a branch, tag"),
            (("build", {"repo": "nixos", "branch": "master;reboot"}), "not a branch, tag"),
            (("build", {"repo": "nixos", "branch": "main#pdb1"}), "not a branch, tag"),
            (("build", {"repo": "nixos", "hostname": "web1"}), "Name the hosts with target"),
            (("build", {"repo": "nixos", "subject": "build.>"}), "has no argument 'subject'"),
            (("build", {"repo": 1}), "repo must be a string"),
            (("build", {"repo": "nixos", "target": ["web1"]}), "target must be a string"),
            (("build", {"repo": "nixos", "wait_seconds": "45"}), "wait_seconds must be a number"),
            (("build", {"repo": "nixos", "wait_seconds": -1}), "wait_seconds"),
            (("build", {}), "repo"),
            (("build_status", {"build_id": 1}), "build_id must be a string"),
            (("build_status", {"wait_seconds": 10_000}), "wait_seconds"),
        ],
    )
    async def test_bad_arguments_are_tool_errors_and_nothing_is_built(
        self,
        fleet: Fleet,
        builds: Builds,
        mode: str,
        call: tuple[str, dict[str, Any]],
        hint: str,
    ) -> None:
        """Subjects, wildcards, options and wrong types are refused before anything is sent:
        the builder, listening, runs nothing."""
        async with builds.builder(), session(enabled(fleet), mode) as s:
            tool, arguments = call
            message = await s.error(tool, **arguments)
        assert hint in message
        assert builds.runs() == []


class TestLargeBuilds:
    """The text of a very large build stays within the budget; the structure keeps all."""

    HOSTS = 10_000

    @staticmethod
    def result(hosts: list[HostBuild], status: str = "failed") -> BuildResult:
        return BuildResult(
            build_id="b" * 32,
            target="build.nixos.all",
            repo="nixos",
            revision="master",
            builder="builder",
            commit="c" * 40,
            status=status,
            message=f"{sum(h.state is HostBuildState.FAILED for h in hosts)} hosts failed",
            hosts=hosts,
            elapsed_s=3600.0,
        )

    def test_every_failure_first_as_far_as_it_fits_and_the_rest_counted(self) -> None:
        """10,000 hosts, 500 failed with long logs and 100 lost: under 16 KB, failures
        first, the built hosts counted, what did not fit counted by state."""
        hosts = [
            HostBuild(
                host=f"host{i:05d}",
                state=HostBuildState.FAILED,
                error="build_failed",
                message=f"error: builder for '/nix/store/{'x' * 32}-host{i}.drv' failed\n" * 5,
                log_tail=[f"line {n} of a long nix log " + "y" * 100 for n in range(60)],
            )
            if i % 20 == 0
            else HostBuild(host=f"host{i:05d}", state=HostBuildState.LOST, error="lost")
            if i % 100 == 1
            else HostBuild(
                host=f"host{i:05d}",
                state=HostBuildState.BUILT,
                store_path=f"/nix/store/{'z' * 32}-nixos-system-host{i}",
            )
            for i in range(self.HOSTS)
        ]
        report = build_report(self.result(hosts), finished=True)
        text = build_text(report)
        assert len(text.encode()) <= TEXT_BUDGET
        digest = read_text(text)
        assert digest["built_hosts"]["count"] == self.HOSTS - 600
        shown = digest["hosts_not_built"]
        assert shown and all(h["state"] == "failed" for h in shown)
        omitted = digest["hosts_not_built_omitted"]
        assert len(shown) + omitted["count"] == 600
        assert omitted["by_state"]["lost"] == 100
        assert "and 595 more host(s)" in report.summary  # failed and lost
        assert len(report.hosts) == self.HOSTS
        assert all(len(h.log_tail) <= 50 for h in report.hosts)

    def test_a_running_build_of_many_waiting_hosts(self) -> None:
        hosts = [HostBuild(host=f"host{i:05d}") for i in range(self.HOSTS)]
        hosts[0] = HostBuild(host="host00000", state=HostBuildState.BUILDING, phase="building")
        report = build_report(self.result(hosts, status="running"), finished=False)
        text = build_text(report)
        assert len(text.encode()) <= TEXT_BUDGET
        digest = read_text(text)
        assert digest["state"] == "running"
        assert digest["hosts_not_built"][0]["host"] == "host00000"
        assert "build_status" in digest["next_step"]

    def test_one_huge_entry_is_cut_not_dropped(self) -> None:
        """A host whose message and log are megabytes is shown cut, its log's end kept."""
        huge = HostBuild(
            host="h" * 63,
            state=HostBuildState.FAILED,
            error="build_failed",
            message="m" * 1_000_000,
            log_tail=["x" * 10_000] * 49 + ["error: the cause"],
        )
        report = build_report(self.result([huge]), finished=True)
        text = build_text(report)
        assert len(text.encode()) <= TEXT_BUDGET
        [entry] = read_text(text)["hosts_not_built"]
        assert entry["cut"] is True
        assert entry["log_tail"][-1] == "error: the cause"

    def test_a_small_result_is_the_whole_report(self) -> None:
        report = build_report(
            self.result([HostBuild(host="web1", state=HostBuildState.BUILT)], "completed"),
            finished=True,
        )
        assert read_text(build_text(report)) == report.model_dump(mode="json")


class StubBuilder:
    """Stands in for ``BuildClient.build``: finishes at once, or when ``release`` is set."""

    def __init__(self, *, hold: bool) -> None:
        self.release = anyio.Event()
        if not hold:
            self.release.set()

    async def build(self, target: BuildTarget, **options: Any) -> BuildResult:
        await self.release.wait()
        return BuildResult(
            build_id=options["build_id"],
            target=target.subject,
            repo=target.repo,
            revision=options["revision"],
            status="completed",
        )


def stub(builder: StubBuilder) -> BuildClient:
    return cast(BuildClient, builder)


class TestRegistry:
    async def test_keeps_running_builds_and_drops_the_oldest_finished(self) -> None:
        """Bounded like the deployments: past its size the registry forgets finished builds,
        oldest first, never a running one; latest() prefers the running one."""
        held, quick = StubBuilder(hold=True), StubBuilder(hold=False)
        target = parse_build_target("nixos")
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                registry = BuildRegistry(tasks, keep=2)
                running = registry.start(Build(target, revision="master"), stub(held), limit=60)
                old = registry.start(Build(target, revision="master"), stub(quick), limit=60)
                await old.finished.wait()
                newer = registry.start(Build(target, revision="master"), stub(quick), limit=60)
                await newer.finished.wait()
                assert registry.get(running.id) is running
                assert registry.get(old.id) is None
                assert len(registry) == 2
                assert registry.latest() is running
                assert registry.running(besides=running) is None
                held.release.set()
        assert running.done and running.current().ok

    async def test_a_build_stopped_at_exit_says_so_to_its_waiters(self) -> None:
        """The server's exit cancels the task group: the build's waiters end, told why."""
        held = StubBuilder(hold=True)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tasks:
                registry = BuildRegistry(tasks)
                followed = registry.start(
                    Build(parse_build_target("nixos", "web1"), revision="master"),
                    stub(held),
                    limit=60,
                )
                await anyio.wait_all_tasks_blocked()
                tasks.cancel_scope.cancel()
        assert followed.done
        assert followed.error is not None
        assert "stopped before the build finished" in str(followed.error)


class TestSubprocess:
    async def test_fleet_deploy_mcp_enables_builds_from_the_environment(self, fleet: Fleet) -> None:
        """FLEET_DEPLOY_ENABLE_BUILDS=true registers the build tools in the installed
        fleet-deploy mcp over stdio."""
        params = mcp.StdioServerParameters(
            command=str(scripts_dir() / "fleet-deploy"),
            args=["mcp"],
            env=fleet.cli_env(
                FLEET_DEPLOY_NATS_URL=fleet.url,
                FLEET_DEPLOY_NKEY_FILE=str(fleet.keys["deployer"]),
                FLEET_DEPLOY_ENABLE_BUILDS="true",
            ),
        )
        async with mcp.Client(params) as client:
            with anyio.fail_after(60):
                names = {t.name for t in (await client.list_tools()).tools}
        assert names == BASE_TOOLS | BUILD_TOOLS

    async def test_fleet_mcp_enable_builds_over_http_counts_the_build_tools(
        self, fleet: Fleet, builds: Builds
    ) -> None:
        """The installed fleet-mcp --enable-builds lists build and build_status, builds with
        a real builder, and /metrics counts the build tools' calls from zero."""
        async with builds.builder(), fleet_mcp_over_http(fleet, "--enable-builds") as port:
            async with mcp.Client(f"http://127.0.0.1:{port}/mcp") as client:
                with anyio.fail_after(30):
                    names = {t.name for t in (await client.list_tools()).tools}
                    result = await client.call_tool("build", {"repo": "nixos"})
            with anyio.fail_after(30):
                metrics = series(await anyio.to_thread.run_sync(scrape, port))
        assert names == BASE_TOOLS | BUILD_TOOLS
        assert not result.is_error, text_of(result)
        assert BuildReport.model_validate(result.structured_content).ok
        calls = "fleet_deploy_mcp_tool_calls_total"
        assert value(metrics, calls, tool="build") == 1
        assert value(metrics, calls, tool="build_status") == 0
        assert value(metrics, calls, tool="deploy") == 0


class TestAdvice:
    """next_step after a failed build says what to do about why it failed: a stopped or
    slow builder, or a cache that refused, is not a configuration to fix."""

    @staticmethod
    def failed(*errors: str, error: str = "build_failed") -> BuildResult:
        hosts = [
            HostBuild(host=f"h{i}", state=HostBuildState.FAILED, error=code)
            for i, code in enumerate(errors)
        ]
        return BuildResult(
            build_id="b1",
            target="build.nixos.all",
            repo="nixos",
            revision="main",
            status="failed",
            error=error,
            hosts=hosts,
        )

    @pytest.mark.parametrize(
        ("errors", "error", "says"),
        [
            (("cancelled", "lost"), "cancelled", "The builder stopped before it finished"),
            (("timeout",), "build_failed", "ran past the builder's --timeout"),
            (("copy_failed", "copy_failed"), "build_failed", "could not be copied"),
            (("build_failed", "cancelled"), "cancelled", "they hold nix's error"),
            (("build_failed", "cancelled"), "cancelled", "The builder stopped before the rest"),
        ],
    )
    def test_the_advice_follows_the_cause(
        self, errors: tuple[str, ...], error: str, says: str
    ) -> None:
        report = build_report(self.failed(*errors, error=error), finished=True)
        assert says in report.next_step
        assert not report.ok


def test_a_refusal_by_a_builder_shutting_down_is_not_the_requests_fault() -> None:
    refused = BuildResult(
        build_id="b1",
        target="build.nixos.all",
        repo="nixos",
        revision="main",
        builder="builder",
        status="rejected",
        error="cancelled",
        message="builder builder is shutting down: build again once it is back",
    )
    report = build_report(refused, finished=True)
    assert "nothing is wrong with the request" in report.next_step
