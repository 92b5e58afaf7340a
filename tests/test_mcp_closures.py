"""Closure deploys through the MCP tools, with real parts: real ``mcp.Client`` sessions, a
real nats-server under the tiered permissions with JetStream (the builds stream), a real
builder whose packaged nix stand-in signs what it copies into a ``file://`` cache, and real
listeners whose hosts fetch from that cache (signatures checked) and switch simulated system
profiles.

What is asserted is what the hosts run afterwards against what the tools reported."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleet_core.build.builder import Builder
from fleet_core.build.client import BuildClient
from fleet_core.build.protocol import parse_build_target
from fleet_core.config.settings import McpSettings
from fleet_core.deploy.tracker import DeploymentResult, HostResult
from fleet_core.protocol.subjects import Tier
from fleet_core.testing import (
    FleetHost,
    LocalFleet,
    init_root,
    local_fleet,
    publish_system,
    simulated_facts,
    simulated_nix_command,
    simulated_nix_store_command,
    simulated_rollback,
)
from fleet_core.testing.simulated_system import current, store_dir
from fleet_mcp.reports.build import BuildReport
from fleet_mcp.reports.deployment import DeploymentReport, deployment_report

from .conftest import DEPLOYERS, Fleet
from .support import Session, session, settings_for, text_of

pytestmark = pytest.mark.anyio

KEY = "cache.example.org-1"
HOSTS = (
    FleetHost("web1", Tier.TEST, "web"),
    FleetHost("web2", Tier.TEST, "web"),
    FleetHost("pweb1", Tier.PROD, "web"),
)
CONFIGURATIONS = ("pweb1", "web1", "web2")


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalFleet]:
    async with local_fleet(
        list(HOSTS), DEPLOYERS, builders={"builder": ["nixos"]}, root=tmp_path, history=True
    ) as fleet:
        yield fleet


def _root(local: LocalFleet, host: str) -> Path:
    return local.root / f"{host}-root"


def _cache(local: LocalFleet) -> Path:
    return local.root / "cache"


def _running(local: LocalFleet, host: str) -> str | None:
    system = current(_root(local, host))
    return system.name if system is not None else None


@asynccontextmanager
async def _listeners(local: LocalFleet, *hosts: str) -> AsyncIterator[None]:
    """The hosts' listeners on their own simulated roots, fetching from the builder's cache
    and trusting its key, taking requests signed by either deployer key."""
    trusted = (local.seed("deployer").public_key, local.seed("admin").public_key)
    chosen = []
    for host in hosts:
        root = _root(local, host)
        init_root(root, host)
        chosen.append(
            local.listener_settings(
                host,
                rollback=simulated_rollback(root),
                facts=simulated_facts(root),
                nix_store_command=simulated_nix_store_command(root, _cache(local), KEY),
                store_dir=store_dir(root),
                trusted_deployer_keys=trusted,
            )
        )
    async with local.listeners(chosen):
        yield


@asynccontextmanager
async def _builder(local: LocalFleet, *sim: str) -> AsyncIterator[None]:
    nix = simulated_nix_command(
        "--sim-hosts", ",".join(CONFIGURATIONS), "--sim-signing-key", KEY, *sim
    )
    settings = local.builder_settings(
        "builder",
        nix_command=nix,
        heartbeat_interval=0.5,
        progress_interval=0.05,
        cache=f"file://{_cache(local)}",
    )
    async with await local.connect("builder") as bus, anyio.create_task_group() as tg:
        await tg.start(Builder(settings).serve, bus)
        yield
        tg.cancel_scope.cancel()


def _settings(local: LocalFleet, *, admin: bool = False) -> McpSettings:
    fleet = Fleet(local=local, record=local.root / "runs.jsonl")
    settings = settings_for(fleet, admin="admin" if admin else None)
    return replace(settings, enable_builds=True)


async def _deployed(s: Session, tool: str, **arguments: Any) -> DeploymentReport:
    result = await s.call(tool, wait_seconds=60, **arguments)
    assert not result.is_error, text_of(result)
    report = DeploymentReport.model_validate(result.structured_content)
    assert report.state == "finished", report.summary
    return report


async def test_the_build_tool_says_how_to_deploy_and_deploy_sends_each_host_its_system(
    local: LocalFleet,
) -> None:
    """build's result names deploy with its build_id; deploy(role, build_id) switches each
    host to exactly the system built for it, which the report names per host."""
    listeners = _listeners(local, "web1", "web2")
    async with _builder(local), listeners, session(_settings(local), "auto") as s:
        built = await s.call("build", repo="nixos", target="all", wait_seconds=60)
        assert not built.is_error, text_of(built)
        build = BuildReport.model_validate(built.structured_content)
        assert build.ok and build.state == "finished"
        assert f"build_id={build.build_id!r}" in build.next_step
        assert "deploy" in build.next_step and "no evaluation on the hosts" in build.next_step
        report = await _deployed(s, "deploy", role="web", build_id=build.build_id)
    paths = {h.host: h.store_path for h in build.hosts}
    assert report.ok, report.summary
    assert report.build_id == build.build_id and report.commit == build.commit
    assert f"build {build.build_id}" in report.summary
    assert {h.hostname: h.store_path for h in report.hosts} == {
        "web1": paths["web1"],
        "web2": paths["web2"],
    }
    for host in ("web1", "web2"):
        assert _running(local, host) == Path(str(paths[host])).name


async def test_a_single_host_is_pinned_to_a_given_system(local: LocalFleet) -> None:
    """store_path with hostname switches that host to exactly that path; with a group, or
    another host's system, or beside build_id, it is refused before anything is sent."""
    known_good = publish_system(_cache(local), "web1", "known-good", signing_key=KEY)
    other = publish_system(_cache(local), "web2", "known-good", signing_key=KEY)
    async with _listeners(local, "web1"), session(_settings(local), "auto") as s:
        refused = {
            "group": await s.error("deploy", role="web", store_path=known_good),
            "wrong host": await s.error("deploy", hostname="web1", store_path=other),
            "both": await s.error("deploy", hostname="web1", store_path=known_good, build_id="x"),
            "unknown build": await s.error("deploy", hostname="web1", build_id="f" * 32),
        }
        before = _running(local, "web1")
        report = await _deployed(s, "deploy", hostname="web1", store_path=known_good)
    assert "with hostname" in refused["group"]
    assert "not a system of 'web1'" in refused["wrong host"]
    assert "not both" in refused["both"]
    assert "No build" in refused["unknown build"] and "call build" in refused["unknown build"]
    assert before != Path(known_good).name  # the refusals changed nothing
    assert report.ok, report.summary
    assert [h.store_path for h in report.hosts] == [known_good]
    assert _running(local, "web1") == Path(known_good).name


async def test_deploy_admin_deploys_a_recorded_build_and_deploy_cannot_reach_prod(
    local: LocalFleet,
) -> None:
    """A build this server never ran is read from the builds stream by deploy_admin (the
    admin key may read JetStream); the test-tier deploy tool knows only its own builds, and
    its target is the test tier whatever the build holds."""
    async with _builder(local), _listeners(local, "web1", "pweb1"):
        async with await local.connect("admin") as bus:
            recorded = await BuildClient(bus).build(
                parse_build_target("nixos"), revision="main", timeout=60
            )
        assert recorded.ok, recorded
        async with session(_settings(local, admin=True), "auto") as s:
            unknown = await s.error("deploy", hostname="web1", build_id=recorded.build_id)
            report = await _deployed(
                s, "deploy_admin", tier="prod", hostname="pweb1", build_id=recorded.build_id
            )
    assert "No build" in unknown
    paths = {h.host: h.store_path for h in recorded.hosts}
    assert report.ok and report.tier == "prod", report.summary
    assert [h.store_path for h in report.hosts] == [paths["pweb1"]]
    assert _running(local, "pweb1") == Path(str(paths["pweb1"])).name
    assert _running(local, "web1") != Path(str(paths["web1"])).name  # only the target moved


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
