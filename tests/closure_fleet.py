"""The fleets closure-deploy tests share, with real parts: a real nats-server with the tiered
permissions (and JetStream, for the builds stream), real listeners whose hosts fetch systems
from a ``file://`` cache through the packaged ``simulated_nix_store`` (signatures checked) and
switch ``simulated_system`` profiles, and a real builder whose ``simulated_nix`` signs what it
copies there.

- ``Host``, the ``host`` fixture and ``web1``: one host, its root, the cache and a record of
  its fetches, with requests signed and published as a deployer would (the host's side);
- ``Closed`` and the ``closed`` fixture: a fleet of four hosts and a builder, driven through
  the deployer, the CLI and the MCP tools (the deployer's side).

A test module takes a fixture by importing it and naming it in its ``__all__``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from fleet_core.build.builder import Builder
from fleet_core.build.protocol import NIX_FEATURES, BuildResult
from fleet_core.bus import Message
from fleet_core.config.settings import DeployTiming, HealthCheckSpec, McpSettings
from fleet_core.deploy.closure_deploy import build_for_deploy
from fleet_core.deploy.closures import Closures
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.results import DeploymentResult
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import (
    DeployRequest,
    DiscoverRequest,
    HostInfo,
    JobPhase,
    Status,
    encode,
    parse_host_info,
)
from fleet_core.protocol.signing import RequestSigner
from fleet_core.protocol.subjects import Tier, parse_target, tier_discover_subject
from fleet_core.protocol.trust import bound_replies
from fleet_core.testing import (
    FLAKE_URL,
    FleetHost,
    LocalFleet,
    init_root,
    local_fleet,
    simulated_closures,
    simulated_facts,
    simulated_nix_command,
    simulated_nix_store_command,
    simulated_rollback,
)
from fleet_core.testing.simulated_system import boot_default, current, profile, store_dir
from fleet_mcp.reports.deployment import DeploymentReport

from .conftest import DEPLOYERS, Fleet, scripts_dir
from .support import Replies, Session, commit_of, replies_on, settings_for, text_of

KEY = "cache.example.org-1"  # the builder signs the cache with it; every host trusts it
OTHER_KEY = "someone-else-1"
REVISION = "a" * 40  # the commit the closure was built from
PASS = HealthCheckSpec(name="web-answers", argv=(sys.executable, "-c", "print('200 OK')"))
FAIL = HealthCheckSpec(
    name="web-answers",
    argv=(sys.executable, "-c", "import sys; print('connection refused'); sys.exit(1)"),
)


@dataclass
class Host:
    """web1 with a root of its own, the builder's cache, and a record of every fetch."""

    root: Path
    initial: Path
    cache: Path
    record: Path

    def links(self) -> tuple[Path | None, Path | None, Path | None]:
        """The profile's system, the running one, the one booted next."""
        return profile(self.root), current(self.root), boot_default(self.root)

    def fetches(self) -> list[list[str]]:
        """The argv of every nix-store the host ran (without the --sim-* options)."""
        if not self.record.exists():
            return []
        argvs = [json.loads(line)["argv"] for line in self.record.read_text().splitlines()]
        return [argv[argv.index("--realise") :] for argv in argvs]

    def local(self, store_path: str) -> Path:
        """Where ``store_path`` lies in this host's store."""
        return store_dir(self.root) / Path(store_path).name

    def nix_store(self, *sim: str, trusted: str = KEY) -> tuple[str, ...]:
        return simulated_nix_store_command(
            self.root, self.cache, trusted, "--sim-record", str(self.record), *sim
        )


@pytest.fixture
def host(tmp_path: Path) -> Host:
    root = tmp_path / "web1-root"
    return Host(root, init_root(root, "web1"), tmp_path / "cache", tmp_path / "nix-store.jsonl")


@asynccontextmanager
async def web1(
    fleet: Fleet,
    host: Host,
    *,
    checks: Sequence[HealthCheckSpec] = (),
    sim: Sequence[str] = (),
    trusted: str = KEY,
    **overrides: object,
) -> AsyncIterator[None]:
    """web1's listener on its simulated root, taking requests signed by the test deployer."""
    fields: dict[str, Any] = simulated_closures(
        host.root, host.cache, trusted, "--sim-record", str(host.record), *sim, checks=checks
    )
    fields["trusted_deployer_keys"] = (fleet.seed("deployer").public_key,)
    async with fleet.listeners("web1", **(fields | overrides)):
        yield


def signed(
    fleet: Fleet, subject: str, action: str, *, revision: str, store_path: str | None, who: str
) -> DeployRequest:
    request_id = uuid.uuid4().hex
    signature = RequestSigner(fleet.seed(who).reveal()).sign(
        request_id=request_id,
        subject=subject,
        action=action,
        revision=revision,
        now=time.time(),
        store_path=store_path,
    )
    request = DeployRequest(
        id=request_id,
        reply_to=f"deploy.responses.{request_id}",
        action=action,
        revision=revision,
        store_path=store_path,
    )
    return request.signed(signature)


@asynccontextmanager
async def asking(
    fleet: Fleet,
    store_path: str | None,
    action: str = "switch",
    *,
    revision: str = REVISION,
    who: str = "deployer",
) -> AsyncIterator[tuple[str, Replies]]:
    """Publish one signed request to web1 and gather its statuses for the block's length."""
    subject = "deploy.test.web1"
    request = signed(fleet, subject, action, revision=revision, store_path=store_path, who=who)
    async with (
        await fleet.connect(who) as bus,
        replies_on(bus, bound_replies(request.reply_to, Tier.TEST)) as replies,
    ):
        await bus.publish(subject, encode(request))
        await bus.flush()
        assert request.id is not None
        yield request.id, replies


async def ask(
    fleet: Fleet, store_path: str | None, action: str = "switch", *, who: str = "deployer"
) -> tuple[str, list[Status]]:
    """One request to its final status: the request id and every status."""
    async with asking(fleet, store_path, action, who=who) as (request_id, replies):
        await wait_final(replies)
    return request_id, replies.statuses


async def wait_final(replies: Replies, limit: float = 40) -> Status:
    await replies.wait_for(lambda got: any(s.is_final for s in got), limit)
    [final] = replies.final()
    return final


def final_of(statuses: list[Status]) -> Status:
    [final] = [s for s in statuses if s.is_final]
    return final


async def discover(fleet: Fleet, job: str | None = None) -> HostInfo:
    """web1's answer to a discovery (a job query when ``job`` is given), as the test key."""
    reply = f"deploy.responses.{uuid.uuid4().hex}"
    query = DiscoverRequest(
        reply_to=reply, tier=Tier.TEST, job=job, hosts=["web1"] if job else None, bind=True
    )
    answers: list[HostInfo] = []
    got = anyio.Event()

    async with await fleet.connect("deployer") as bus:

        async def deliver(msg: Message) -> None:
            info = parse_host_info(msg.data)
            if info is not None and info.hostname == "web1":
                answers.append(info)
                got.set()

        subscription = await bus.subscribe(bound_replies(reply, Tier.TEST), deliver)
        await bus.flush()
        await bus.publish(tier_discover_subject(Tier.TEST), encode(query), reply=reply)
        with anyio.fail_after(10):
            await got.wait()
        await subscription.unsubscribe()
    return answers[0]


HOSTS = (
    FleetHost("web1", Tier.TEST, "web"),
    FleetHost("web2", Tier.TEST, "web"),
    FleetHost("db1", Tier.TEST, None),
    FleetHost("pweb1", Tier.PROD, "web"),
)
CONFIGURATIONS = ("db1", "pweb1", "web1", "web2")
TIMING = DeployTiming(answer_within=5.0, silence_limit=10.0)


@dataclass
class Closed:
    """The fleet, each host's simulated root, the builder's cache and its nix record."""

    local: LocalFleet
    root: Path

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def record(self) -> Path:
        return self.root / "nix.jsonl"

    def host_root(self, host: str) -> Path:
        return self.root / f"{host}-root"

    def fetched(self, host: str) -> list[list[str]]:
        """Every nix-store --realise the host ran."""
        record = self.root / f"{host}-nix-store.jsonl"
        if not record.exists():
            return []
        return [json.loads(line)["argv"] for line in record.read_text().splitlines()]

    def running(self, host: str) -> str | None:
        """The base name (hash-name) of the system the host runs."""
        system = current(self.host_root(host))
        return system.name if system is not None else None

    def builds(self) -> list[str]:
        """The installable of every nix build the builder ran."""
        if not self.record.exists():
            return []
        argvs = [json.loads(line)["argv"] for line in self.record.read_text().splitlines()]
        assert all(argv[:2] == list(NIX_FEATURES) for argv in argvs), argvs
        return [argv[-1] for argv in argvs if argv[2] == "build"]

    @asynccontextmanager
    async def listeners(self, *hosts: str, **overrides: Any) -> AsyncIterator[None]:
        """The hosts' listeners, each on its own simulated root, fetching from the cache and
        trusting the builder's key, taking requests signed by either deployer key; with
        ``overrides`` of their settings."""
        trusted = (self.local.seed("deployer").public_key, self.local.seed("admin").public_key)
        chosen = []
        for host in hosts:
            root = self.host_root(host)
            init_root(root, host)
            chosen.append(
                self.local.listener_settings(
                    host,
                    rollback=simulated_rollback(root),
                    facts=simulated_facts(root),
                    nix_store_command=simulated_nix_store_command(
                        root,
                        self.cache,
                        KEY,
                        "--sim-record",
                        str(self.root / f"{host}-nix-store.jsonl"),
                    ),
                    store_dir=store_dir(root),
                    trusted_deployer_keys=trusted,
                    **overrides,
                )
            )
        async with self.local.listeners(chosen):
            yield

    @asynccontextmanager
    async def builder(self, *sim: str) -> AsyncIterator[None]:
        """A builder of repository nixos, signing what it copies to the cache."""
        nix = simulated_nix_command(
            "--sim-hosts",
            ",".join(CONFIGURATIONS),
            "--sim-record",
            str(self.record),
            "--sim-signing-key",
            KEY,
            *sim,
        )
        settings = self.local.builder_settings(
            "builder",
            nix_command=nix,
            heartbeat_interval=0.5,
            progress_interval=0.05,
            cache=f"file://{self.cache}",
        )
        builder = Builder(settings)
        async with await self.local.connect("builder") as bus, anyio.create_task_group() as tg:
            await tg.start(builder.serve, bus)
            yield
            tg.cancel_scope.cancel()

    async def deploy(
        self, subject: str, closures: Closures, *, who: str = "deployer", **kw: Any
    ) -> DeploymentResult:
        async with await self.local.connect(who) as bus:
            return await Deployer(bus, timing=TIMING, signer=self.local.seed(who)).deploy(
                parse_target(subject),
                revision="main",
                action=Action.SWITCH,
                timeout=60,
                closures=closures,
                **kw,
            )

    async def build_and_deploy(
        self, subject: str, *, who: str = "deployer", **kw: Any
    ) -> tuple[DeploymentResult, BuildResult | None]:
        async with await self.local.connect(who) as bus:
            deployer = Deployer(bus, timing=TIMING, signer=self.local.seed(who))
            target = parse_target(subject)
            closures, build = await build_for_deploy(
                deployer, target, repo="nixos", revision="main", timeout=60
            )
            result = await deployer.deploy(
                target,
                revision="main",
                action=Action.SWITCH,
                timeout=60,
                closures=closures,
                **kw,
            )
        return result, build

    async def job_phase(self, host: str, deployment_id: str, tier: Tier = Tier.TEST) -> JobPhase:
        """What ``host``'s job records say of the deployment (asked by job query)."""
        async with await self.local.connect("admin") as bus:
            answers = await Deployer(bus, timing=TIMING).query_job(
                deployment_id, hosts=[host], tier=tier
            )
        job = answers[host].job
        assert job is not None
        return job.phase

    async def cli(self, *args: str, who: str = "deployer") -> tuple[int, str, str]:
        """The installed fleet-deploy, as a real process."""
        argv = [str(scripts_dir() / "fleet-deploy"), *args]
        argv += ["--nats-url", self.local.url, "--nkey-file", str(self.local.keys[who])]
        with anyio.fail_after(90):
            done = await anyio.run_process(argv, check=False, env=env())
        return done.returncode, done.stdout.decode(), done.stderr.decode()


def env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLEET_DEPLOY_", "HOMELAB_DEPLOY_")) and k != "INVOCATION_ID"
    }


@pytest.fixture
async def closed(tmp_path: Path) -> AsyncIterator[Closed]:
    async with local_fleet(
        list(HOSTS), DEPLOYERS, builders={"builder": ["nixos"]}, root=tmp_path, history=True
    ) as local:
        yield Closed(local, tmp_path)


def pinned(host: str) -> str:
    """The installable the builder builds ``host`` from: the commit main was pinned to."""
    commit = commit_of("main")
    return f"{FLAKE_URL}?rev={commit}#nixosConfigurations.{host}.config.system.build.toplevel"


def mcp_settings(closed: Closed, *, admin: bool = False) -> McpSettings:
    """The MCP server's settings for ``closed``: the test key, builds on, the admin key if
    asked."""
    fleet = Fleet(local=closed.local, record=closed.root / "runs.jsonl")
    return replace(settings_for(fleet, admin="admin" if admin else None), enable_builds=True)


async def deployed(s: Session, tool: str, **arguments: Any) -> DeploymentReport:
    """A deploy tool's finished report (the call waits up to a minute for it)."""
    result = await s.call(tool, wait_seconds=60, **arguments)
    assert not result.is_error, text_of(result)
    report = DeploymentReport.model_validate(result.structured_content)
    assert report.state == "finished", report.summary
    return report
