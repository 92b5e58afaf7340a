"""Closure deploys through the MCP tools, with real parts: real ``mcp.Client`` sessions, a
real nats-server under the tiered permissions with JetStream (the builds stream), a real
builder whose packaged nix stand-in signs what it copies into a ``file://`` cache, and real
listeners whose hosts fetch from that cache (signatures checked) and switch simulated system
profiles.

What is asserted is what the hosts run afterwards against what the tools reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_core.build.client import BuildClient
from fleet_core.build.protocol import parse_build_target
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.testing import publish_system
from fleet_mcp.reports.build import BuildReport
from fleet_mcp.reports.deployment import deployment_report

from .closure_fleet import KEY, Closed, closed, deployed, mcp_settings
from .support import session, text_of

pytestmark = pytest.mark.anyio

__all__ = ["closed"]  # the fixture (closure_fleet)


async def test_the_build_tool_says_how_to_deploy_and_deploy_sends_each_host_its_system(
    closed: Closed,
) -> None:
    """build's result names deploy with its build_id; deploy(role, build_id) switches each
    host to exactly the system built for it, which the report names per host."""
    listeners = closed.listeners("web1", "web2")
    async with closed.builder(), listeners, session(mcp_settings(closed), "auto") as s:
        built = await s.call("build", repo="nixos", target="all", wait_seconds=60)
        assert not built.is_error, text_of(built)
        build = BuildReport.model_validate(built.structured_content)
        assert build.ok and build.state == "finished"
        assert f"build_id={build.build_id!r}" in build.next_step
        assert "deploy" in build.next_step and "no evaluation on the hosts" in build.next_step
        report = await deployed(s, "deploy", role="web", build_id=build.build_id)
    paths = {h.host: h.store_path for h in build.hosts}
    assert report.ok, report.summary
    assert report.build_id == build.build_id and report.commit == build.commit
    assert f"build {build.build_id}" in report.summary
    assert {h.hostname: h.store_path for h in report.hosts} == {
        "web1": paths["web1"],
        "web2": paths["web2"],
    }
    for host in ("web1", "web2"):
        assert closed.running(host) == Path(str(paths[host])).name


async def test_a_single_host_is_pinned_to_a_given_system(closed: Closed) -> None:
    """store_path with hostname switches that host to exactly that path; with a group, or
    another host's system, or beside build_id, it is refused before anything is sent."""
    known_good = publish_system(closed.cache, "web1", "known-good", signing_key=KEY)
    other = publish_system(closed.cache, "web2", "known-good", signing_key=KEY)
    async with closed.listeners("web1"), session(mcp_settings(closed), "auto") as s:
        refused = {
            "group": await s.error("deploy", role="web", store_path=known_good),
            "wrong host": await s.error("deploy", hostname="web1", store_path=other),
            "both": await s.error("deploy", hostname="web1", store_path=known_good, build_id="x"),
            "unknown build": await s.error("deploy", hostname="web1", build_id="f" * 32),
        }
        before = closed.running("web1")
        report = await deployed(s, "deploy", hostname="web1", store_path=known_good)
    assert "with hostname" in refused["group"]
    assert "not a system of 'web1'" in refused["wrong host"]
    assert "not both" in refused["both"]
    assert "No build" in refused["unknown build"] and "call build" in refused["unknown build"]
    assert before != Path(known_good).name  # the refusals changed nothing
    assert report.ok, report.summary
    assert [h.store_path for h in report.hosts] == [known_good]
    assert closed.running("web1") == Path(known_good).name


async def test_deploy_admin_deploys_a_recorded_build_and_deploy_cannot_reach_prod(
    closed: Closed,
) -> None:
    """A build this server never ran is read from the builds stream by deploy_admin (the
    admin key may read JetStream); the test-tier deploy tool knows only its own builds, and
    its target is the test tier whatever the build holds."""
    async with closed.builder(), closed.listeners("web1", "pweb1"):
        async with await closed.local.connect("admin") as bus:
            recorded = await BuildClient(bus).build(
                parse_build_target("nixos"), revision="main", timeout=60
            )
        assert recorded.ok, recorded
        async with session(mcp_settings(closed, admin=True), "auto") as s:
            unknown = await s.error("deploy", hostname="web1", build_id=recorded.build_id)
            report = await deployed(
                s, "deploy_admin", tier="prod", hostname="pweb1", build_id=recorded.build_id
            )
    assert "No build" in unknown
    paths = {h.host: h.store_path for h in recorded.hosts}
    assert report.ok and report.tier == "prod", report.summary
    assert [h.store_path for h in report.hosts] == [paths["pweb1"]]
    assert closed.running("pweb1") == Path(str(paths["pweb1"])).name
    assert closed.running("web1") != Path(str(paths["web1"])).name  # only the target moved


def test_a_failed_closure_deploy_says_whose_words_the_messages_hold() -> None:
    """A failed host of a closure deploy holds the build's, nix's fetch or the activation's
    words, not nixos-rebuild's; a deploy of a branch still names nixos-rebuild."""
    failed = HostResult(hostname="web2", status="failed", final=True, error="closure_unavailable")
    common = {
        "deployment_id": "d1",
        "subject": "deploy.test.role.web",
        "tier": "test",
        "action": "switch",
        "revision": "c" * 40,
        "ok": False,
        "done": True,
        "counts": {"failed": 1},
        "duration_s": 1.0,
    }
    path = "/nix/store/" + "a" * 32 + "-nixos-system-web2-r"
    closure = DeploymentResult(
        **common, hosts=[failed.model_copy(update={"store_path": path})], build_id="b1"
    )
    branch = DeploymentResult(**common, hosts=[failed])
    said = deployment_report(closure, finished=True, test_only=True).next_step
    old = failed.model_copy(update={"error": "closures_unsupported"})
    unsupported = DeploymentResult(**common, hosts=[old], build_id="b1")
    summary = deployment_report(unsupported, finished=True, test_only=True).summary
    assert "closures_unsupported" in summary and "does not know" not in summary
    assert "nix's fetch error" in said and "nixos-rebuild" not in said
    assert (
        "nixos-rebuild's error"
        in deployment_report(branch, finished=True, test_only=True).next_step
    )
