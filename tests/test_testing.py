"""``fleet_core.testing`` itself: the fleet it starts is real, its permissions hold, and
nothing of it is left once the block ends — the promises the suite, the benchmarks and the
sandbox build on."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fleet_core.deploy.deployer import Deployer
from fleet_core.errors import ConnectionFailed, PermissionDenied
from fleet_core.keys import load_seed
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import Tier, parse_target
from fleet_core.setup.nats_config import nats_config, parse_inventory
from fleet_core.testing import Access, FleetHost, InstantRebuilder, LocalFleet, local_fleet

from .conftest import FAST

pytestmark = pytest.mark.anyio

HOSTS = [FleetHost("web1", Tier.TEST, "web"), FleetHost("pdb1", Tier.PROD)]
DEPLOYERS: dict[str, Access] = {"ci": "test", "ops": "admin"}


async def denials_of(fleet: LocalFleet, who: str, subject: str) -> list[str]:
    """The subjects the server refused when ``who`` published to ``subject``."""
    denials: list[PermissionDenied] = []
    async with await fleet.connect(who) as bus:
        bus.watch_denials(denials.append)
        await bus.publish(subject, b"{}")
        await bus.flush()  # the server has answered the publish, refusal included
    return [d.subject or "" for d in denials]


class TestLocalFleet:
    async def test_keys_are_private_and_the_server_runs_the_saved_inventory(self) -> None:
        """Every seed file is mode 0600, and the server's config is what nats-config makes of
        the inventory.toml it saved."""
        async with local_fleet(HOSTS, DEPLOYERS, outsiders=["stranger"]) as fleet:
            assert set(fleet.keys) == {"web1", "pdb1", "ci", "ops", "stranger"}
            for name, path in fleet.keys.items():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
                assert load_seed(path).public_key == fleet.seed(name).public_key
            inventory_path = fleet.root / "inventory.toml"
            saved = parse_inventory(inventory_path.read_text())
            assert saved == fleet.inventory
            expected = nats_config(saved, source=str(inventory_path))
            assert fleet.server.config_path.read_text() == expected

    async def test_generated_permissions_are_enforced(self) -> None:
        """The test deployer is refused on prod, the admin is not, an outsider cannot connect."""
        async with local_fleet(HOSTS, DEPLOYERS, outsiders=["stranger"]) as fleet:
            assert await denials_of(fleet, "ci", "deploy.prod.all") == ["deploy.prod.all"]
            assert await denials_of(fleet, "ops", "deploy.prod.all") == []
            assert await denials_of(fleet, "web1", "deploy.test.all") == ["deploy.test.all"]
            with pytest.raises(ConnectionFailed, match="refused key"):
                await fleet.connect("stranger")

    async def test_nothing_is_left_after_the_block(self) -> None:
        """Once the block ends the server process is gone, a connection left open is closed
        and the temporary root is removed."""
        async with local_fleet(HOSTS, DEPLOYERS) as fleet:
            pid = fleet.server.pid
            root = fleet.root
            left_open = await fleet.connect("ci")
            async with fleet.listeners(["web1"], rebuilder=InstantRebuilder()) as running:
                assert set(running) == {"web1"}
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert not left_open.is_connected
        assert not root.exists()

    async def test_a_given_root_is_kept_and_its_keys_reused(self, tmp_path: Path) -> None:
        """With root and reuse_keys, a second fleet there has the first one's keys."""
        async with local_fleet(HOSTS, DEPLOYERS, root=tmp_path) as first:
            before = {name: first.seed(name).public_key for name in first.keys}
        assert (tmp_path / "keys" / "ci.seed").exists()
        async with local_fleet(HOSTS, DEPLOYERS, root=tmp_path, reuse_keys=True) as second:
            assert {name: second.seed(name).public_key for name in second.keys} == before
            assert await denials_of(second, "ops", "deploy.prod.all") == []


class TestInstantRebuilder:
    async def test_completes_a_deploy_naming_the_new_system(self) -> None:
        """Listeners with InstantRebuilder complete a deploy, their message naming the system
        from nixos-rebuild's last line, and write each job's directory."""
        async with (
            local_fleet(HOSTS, DEPLOYERS) as fleet,
            fleet.listeners(fleet.hosts, rebuilder=InstantRebuilder()),
            await fleet.connect("ops") as bus,
        ):
            for subject, host in (("deploy.test.all", "web1"), ("deploy.prod.all", "pdb1")):
                result = await Deployer(bus, timing=FAST).deploy(
                    parse_target(subject), revision="master", action=Action.SWITCH, timeout=30
                )
                assert result.ok, result.counts
                assert [h.hostname for h in result.hosts] == [host]
                assert f"nixos-system-{host}-" in result.hosts[0].message
                assert any((fleet.state_dir(host) / "jobs").iterdir())
