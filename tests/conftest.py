"""Shared fixtures: a real nats-server per test with real NKeys and the tiered permissions.

Every test gets its own ``fleet_core.testing.local_fleet`` — the plumbing the sandbox and
the benchmarks use too — on a free port (so tests can run in parallel), with the tiered layout
that ``nats-config`` writes. Listeners run in the test's event loop, each on its own NATS
connection; their rebuild is the packaged ``simulated_rebuild`` program, run as a real
subprocess, recording its argv.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sysconfig
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from fleet_core.bus import Bus
from fleet_core.config.settings import DeployTiming, ListenerSettings
from fleet_core.deploy.deployer import Deployer, OnUpdate
from fleet_core.deploy.results import DeploymentResult
from fleet_core.host.listener import Listener
from fleet_core.keys import Seed
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import Tier, parse_target
from fleet_core.setup.nats_config import DEFAULT_LAYOUT, Layout
from fleet_core.testing import (
    FLAKE_URL,
    Access,
    FleetHost,
    LocalFleet,
    local_fleet,
    simulated_rebuild_command,
)
from fleet_core.testing.embedded_server import EmbeddedNatsServer

__all__ = [  # what the test modules import from here (FLAKE_URL comes from fleet_core.testing)
    "DEPLOYERS",
    "FAST",
    "FLAKE_URL",
    "HOSTS",
    "TEST_HOSTS",
    "Fleet",
    "expected_argv",
    "scripts_dir",
]

# name: (tier, role). Role "web" exists in both tiers on purpose.
HOSTS: dict[str, tuple[Tier, str | None]] = {
    "web1": (Tier.TEST, "web"),
    "web2": (Tier.TEST, "web"),
    "web3": (Tier.TEST, "web"),
    "db1": (Tier.TEST, None),
    "pweb1": (Tier.PROD, "web"),
    "pdb1": (Tier.PROD, None),
}
TEST_HOSTS = sorted(h for h, (tier, _) in HOSTS.items() if tier is Tier.TEST)
DEPLOYERS: dict[str, Access] = {"deployer": "test", "admin": "admin"}

# Short windows so tests finish fast; the defaults are exercised through the CLI.
FAST = DeployTiming(
    answer_within=5.0,
    silence_limit=10.0,
    discovery_first=0.5,
    discovery_quiet=0.2,
    discovery_cap=2.0,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``long`` first: with parallel workers, one starts them at once and the
    rest of the suite runs beside them, instead of waiting for them at the end."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def scripts_dir() -> Path:
    return Path(sysconfig.get_path("scripts"))


@dataclass
class Fleet:
    """The test's ``LocalFleet``, with the simulated rebuild's record and helpers around it."""

    local: LocalFleet
    record: Path

    @property
    def root(self) -> Path:
        return self.local.root

    @property
    def server(self) -> EmbeddedNatsServer:
        return self.local.server

    @property
    def url(self) -> str:
        return self.local.url

    @property
    def keys(self) -> dict[str, Path]:
        return self.local.keys

    def seed(self, who: str) -> Seed:
        return self.local.seed(who)

    async def connect(self, who: str = "deployer") -> Bus:
        return await self.local.connect(who, name=f"test {who}")

    def listener_argv(
        self, host: str, *extra: str, sim: Sequence[str] = (), state: Path | None = None
    ) -> list[str]:
        """The installed ``fleet-deploy listener`` for ``host`` as a real process would run:
        its tier, role and key, the simulated rebuild (``sim`` flags), its own state dir."""
        tier, role = HOSTS[host]
        return [
            str(scripts_dir() / "fleet-deploy"),
            "listener",
            *("--hostname", host, "--tier", tier.value),
            *(("--role", role) if role else ()),
            *("--nats-url", self.url, "--nkey-file", str(self.keys[host])),
            *("--flake-url", FLAKE_URL, "--rebuild-command", self.rebuild_command(*sim)),
            *("--state-dir", str(state or self.root / "state" / host)),
            *extra,
        ]

    def rebuild_command(self, *sim: str) -> str:
        """The simulated rebuild as a ``--rebuild-command`` value, recording into ``record``."""
        return shlex.join(self._rebuild_argv(*sim))

    def _rebuild_argv(self, *sim: str) -> tuple[str, ...]:
        return simulated_rebuild_command("--sim-record", str(self.record), *sim)

    def settings(self, host: str, *sim: str, **overrides: Any) -> ListenerSettings:
        fast = {"rebuild_command": self._rebuild_argv(*sim), "progress_interval": 0.05}
        return self.local.listener_settings(host, **(fast | overrides))

    @asynccontextmanager
    async def listeners(
        self,
        *hosts: str,
        sim: Mapping[str, Sequence[str]] | None = None,
        **overrides: Any,
    ) -> AsyncIterator[dict[str, Listener]]:
        """Run listeners for ``hosts`` (each on its own connection) for the block's length."""
        chosen = [self.settings(h, *(sim or {}).get(h, ()), **overrides) for h in hosts]
        async with self.local.listeners(chosen) as running:
            yield running

    async def deploy(
        self,
        subject: str,
        *,
        who: str = "deployer",
        revision: str = "master",
        action: Action = Action.SWITCH,
        on_update: OnUpdate | None = None,
    ) -> DeploymentResult:
        """Deploy through the core deployer on a connection of its own, with FAST timing;
        the request is signed with ``who``'s key, as the CLI and the MCP server sign theirs."""
        async with await self.connect(who) as bus:
            return await Deployer(bus, timing=FAST, signer=self.seed(who)).deploy(
                parse_target(subject),
                revision=revision,
                action=action,
                timeout=30,
                on_update=on_update,
            )

    def runs(self) -> list[list[str]]:
        """The argv of every simulated rebuild so far (without the --sim-* prefix)."""
        if not self.record.exists():
            return []
        lines = self.record.read_text().splitlines()
        return [json.loads(line)["argv"][-4:] for line in lines]

    def hosts_run(self) -> list[str]:
        return sorted(argv[2].rpartition("#")[2] for argv in self.runs())

    def cli_env(self, **extra: str) -> dict[str, str]:
        """This environment without FLEET_DEPLOY_*, homelab-deploy's HOMELAB_DEPLOY_* (read
        as their fallback) and INVOCATION_ID: run from a systemd service (a CI runner), a
        listener would otherwise start its rebuilds with the real systemd-run
        (--rebuild-runner auto)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FLEET_DEPLOY_", "HOMELAB_DEPLOY_")) and k != "INVOCATION_ID"
        }
        env.update(extra)
        return env

    async def cli(
        self, *args: str, who: str = "deployer", limit: float = 30.0, **env: str
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the installed ``fleet-deploy`` console script as a real subprocess."""
        argv = [str(scripts_dir() / "fleet-deploy"), *args]
        if args and args[0] in ("deploy", "check", "hosts"):
            argv += ["--nats-url", self.url, "--nkey-file", str(self.keys[who])]
        with anyio.fail_after(limit):
            return await anyio.run_process(argv, check=False, env=self.cli_env(**env))


def expected_argv(host: str, revision: str = "master", action: str = "switch") -> list[str]:
    key = "rev" if len(revision) == 40 else "ref"
    return [action, "--flake", f"{FLAKE_URL}?{key}={revision}#{host}", "--refresh"]


@pytest.fixture
async def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Fleet]:
    """The fleet under the layout nats-config writes; ``parametrize("fleet", ["homelab"],
    indirect=True)`` runs a test under homelab-deploy's published layout instead."""
    hosts = [FleetHost(name, tier, role) for name, (tier, role) in HOSTS.items()]
    layout: Layout = getattr(request, "param", DEFAULT_LAYOUT)
    async with local_fleet(
        hosts, DEPLOYERS, outsiders=["stranger"], root=tmp_path, layout=layout
    ) as local:
        yield Fleet(local=local, record=tmp_path / "runs.jsonl")
