"""``keygen`` and ``nats-config`` through the real CLI, and the tiers the config enforces.

The round trip: keys from ``fleet-deploy keygen``, an inventory of their public keys,
``fleet-deploy nats-config`` → a real nats-server. Then each credential tries what it must
not do. A refused publish is proven twice: the server reports the violation, and an admin
subscribed to ``deploy.>`` receives the publisher's next (allowed) message without having
seen the refused one — NATS keeps one publisher's messages in order, so it never arrived.
"""

from __future__ import annotations

import math
import stat
import subprocess
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from fleet_core.bus import Bus, Message
from fleet_core.errors import ConnectionFailed, PermissionDenied
from fleet_core.keys import Seed, generate_seed, load_seed
from fleet_core.protocol.subjects import Tier
from fleet_core.setup.nats_config import (
    DeployerEntry,
    HostEntry,
    Inventory,
    inventory_toml,
    parse_inventory,
)
from fleet_core.testing.embedded_server import EmbeddedNatsServer, find_nats_server

from .conftest import scripts_dir

FLEET_DEPLOY = str(scripts_dir() / "fleet-deploy")
EXAMPLE = Path(__file__).parent.parent / "examples" / "inventory.toml"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLEET_DEPLOY, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def nats_server_test(config: Path) -> subprocess.CompletedProcess[str]:
    """``nats-server -t -c config``: parse and check the config, then exit."""
    return subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class TestKeygen:
    def test_writes_a_0600_seed_and_prints_its_public_key(self, tmp_path: Path) -> None:
        """keygen creates DIR/NAME.seed with mode 0600 and prints exactly its public key."""
        result = run("keygen", "web1", "--dir", str(tmp_path / "keys"))
        assert result.returncode == 0, result.stderr
        path = tmp_path / "keys" / "web1.seed"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert result.stdout == load_seed(path).public_key + "\n"
        assert load_seed(path).reveal() not in result.stdout + result.stderr  # never printed

    def test_refuses_to_overwrite(self, tmp_path: Path) -> None:
        """A second keygen for the same name exits 2 and leaves the first seed untouched."""
        assert run("keygen", "admin", "--dir", str(tmp_path)).returncode == 0
        before = (tmp_path / "admin.seed").read_bytes()
        again = run("keygen", "admin", "--dir", str(tmp_path))
        assert again.returncode == 2
        assert "already exists" in again.stderr
        assert again.stdout == ""
        assert (tmp_path / "admin.seed").read_bytes() == before

    def test_rejects_a_path_as_name(self, tmp_path: Path) -> None:
        """A name with a path in it is a usage error, and nothing is written."""
        result = run("keygen", "../escape", "--dir", str(tmp_path / "keys"))
        assert result.returncode == 2
        assert "invalid key name" in result.stderr
        assert not (tmp_path / "escape.seed").exists()


def _inventory(seeds: dict[str, Seed]) -> Inventory:
    return Inventory(
        hosts=(
            HostEntry("web1", Tier.TEST, seeds["web1"].public_key, role="web"),
            HostEntry("pweb1", Tier.PROD, seeds["pweb1"].public_key, role="web"),
        ),
        deployers=(
            DeployerEntry("assistant", "test", seeds["assistant"].public_key),
            DeployerEntry("admin", "admin", seeds["admin"].public_key),
        ),
    )


class TestNatsConfig:
    def test_example_inventory_is_accepted_by_nats_server(self, tmp_path: Path) -> None:
        """The shipped example renders to a file that `nats-server -t` accepts."""
        output = tmp_path / "auth.conf"
        result = run("nats-config", str(EXAMPLE), "-o", str(output))
        assert result.returncode == 0, result.stderr
        checked = nats_server_test(output)
        assert checked.returncode == 0, checked.stderr
        text = output.read_text()
        assert text.count("permissions:") == 9  # 4 hosts, 4 deployers, 1 builder
        assert 'publish: ["deploy.discover.test", "deploy.discover.prod"]' in text  # observer
        assert 'subscribe: ["build.nixos.*"]' in text

    @pytest.mark.parametrize(
        ("layout", "listener_publish"),
        [
            ("bound", '"deploy.responses.*.test.web1", "deploy.responses.*.test.web1.log"'),
            ("homelab", '"deploy.responses.>", "deploy.discover"'),
        ],
    )
    def test_layouts(self, tmp_path: Path, layout: str, listener_publish: str) -> None:
        """--layout picks the permissions; the header says which, and nats-server takes both."""
        output = tmp_path / "auth.conf"
        result = run("nats-config", str(EXAMPLE), "-o", str(output), "--layout", layout)
        assert result.returncode == 0, result.stderr
        text = output.read_text()
        assert f"# Layout `{layout}`:" in text
        assert f"publish: [{listener_publish}]" in text
        checked = nats_server_test(output)
        assert checked.returncode == 0, checked.stderr
        assert run("nats-config", str(EXAMPLE), "--layout", "loose").returncode == 2

    def test_stdout_and_file_output_agree(self, tmp_path: Path) -> None:
        """Without -o the same config goes to stdout, and `-` reads the inventory from stdin."""
        output = tmp_path / "auth.conf"
        assert run("nats-config", str(EXAMPLE), "-o", str(output)).returncode == 0
        piped = run("nats-config", "-", stdin=EXAMPLE.read_text())
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout == output.read_text().replace(str(EXAMPLE), "<stdin>")

    @pytest.mark.parametrize(
        ("toml", "place"),
        [
            ('[hosts.web9]\ntier = "staging"\nnkey = "U"\n', "[hosts.web9]: tier"),
            ('[hosts.web9]\ntier = "test"\nnkey = "SUAB"\n', "[hosts.web9]: nkey"),
            ('[deployers.ci]\naccess = "root"\nnkey = "U"\n', "[deployers.ci]: access"),
            ("[hosts\n", "is not valid TOML"),
        ],
    )
    def test_a_mistake_names_its_place(self, toml: str, place: str) -> None:
        """A bad inventory exits 2 with a message naming the table and field at fault."""
        result = run("nats-config", "-", stdin=toml)
        assert result.returncode == 2
        assert place in result.stderr
        assert result.stdout == ""

    def test_missing_inventory_is_a_usage_error(self, tmp_path: Path) -> None:
        """An inventory path that does not exist exits 2 and says so."""
        result = run("nats-config", str(tmp_path / "nope.toml"))
        assert result.returncode == 2
        assert "cannot read inventory" in result.stderr

    def test_inventory_toml_round_trips(self) -> None:
        """inventory_toml writes what parse_inventory reads back unchanged."""
        seeds = {name: generate_seed() for name in ("web1", "pweb1", "assistant", "admin")}
        inventory = _inventory(seeds)
        assert parse_inventory(inventory_toml(inventory)) == inventory


@dataclass
class Enforced:
    """A nats-server running nats-config's output, and a connection for each credential."""

    buses: dict[str, Bus]
    seen: MemoryObjectReceiveStream[Message]  # everything the admin sees under deploy.>
    url: str

    async def refused_publish(self, who: str, subject: str, then: str) -> PermissionDenied:
        """``who`` publishes to ``subject`` (must be refused), then to ``then`` (allowed)."""
        bus = self.buses[who]
        denial = await self._denied(bus, subject, bus.publish(subject, b"{}"))
        await bus.publish(then, b"{}")
        await bus.flush()
        with anyio.fail_after(5):
            message = await self.seen.receive()
        assert message.subject == then, f"{subject} reached a subscriber"
        return denial

    async def allowed_publish(self, who: str, subject: str) -> None:
        bus = self.buses[who]
        await bus.publish(subject, b"{}")
        await bus.flush()
        with anyio.fail_after(5):
            message = await self.seen.receive()
        assert message.subject == subject

    async def refused_subscribe(self, who: str, subject: str) -> PermissionDenied:
        bus = self.buses[who]

        async def ignore(_: Message) -> None:
            return None

        return await self._denied(bus, subject, bus.subscribe(subject, ignore))

    async def allowed_subscribe(self, who: str, subject: str) -> None:
        """``who`` subscribes to ``subject`` and receives what the admin publishes there."""
        send, receive = anyio.create_memory_object_stream[Message](math.inf)

        async def deliver(msg: Message) -> None:
            send.send_nowait(msg)

        with send, receive:
            subscription = await self.buses[who].subscribe(subject, deliver)
            await self.buses[who].flush()
            await self.allowed_publish("admin", subject)
            with anyio.fail_after(5):
                assert (await receive.receive()).subject == subject
            await subscription.unsubscribe()

    @staticmethod
    async def _denied(bus: Bus, subject: str, action: Awaitable[object]) -> PermissionDenied:
        denials: list[PermissionDenied] = []
        arrived = anyio.Event()

        def watcher(exc: PermissionDenied) -> None:
            if exc.subject == subject:
                denials.append(exc)
                arrived.set()

        stop = bus.watch_denials(watcher)
        try:
            await action  # the publish or subscribe
            await bus.flush()
            with anyio.fail_after(5):
                await arrived.wait()
        finally:
            stop()
        return denials[0]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def enforced(tmp_path: Path) -> AsyncIterator[Enforced]:
    """keygen → inventory → nats-config → nats-server, and every credential connected."""
    keys = tmp_path / "keys"
    seeds: dict[str, Seed] = {}
    for name in ("web1", "pweb1", "assistant", "admin"):
        made = run("keygen", name, "--dir", str(keys))
        assert made.returncode == 0, made.stderr
        seeds[name] = load_seed(keys / f"{name}.seed")
        assert made.stdout.strip() == seeds[name].public_key
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(inventory_toml(_inventory(seeds)))
    config = tmp_path / "auth.conf"
    rendered = run("nats-config", str(inventory), "-o", str(config))
    assert rendered.returncode == 0, rendered.stderr
    assert nats_server_test(config).returncode == 0

    server = EmbeddedNatsServer(tmp_path / "nats", config.read_text()).start()
    buses: dict[str, Bus] = {}
    try:
        for name, seed in seeds.items():
            buses[name] = await Bus.connect(server.url, seed, name=f"test {name}")
        send, receive = anyio.create_memory_object_stream[Message](math.inf)

        async def record(msg: Message) -> None:
            send.send_nowait(msg)

        await buses["admin"].subscribe("deploy.>", record)
        await buses["admin"].flush()
        with send, receive:
            yield Enforced(buses=buses, seen=receive, url=server.url)
    finally:
        for bus in buses.values():
            await bus.close()
        server.stop()


@pytest.mark.anyio
class TestGeneratedConfigEnforcesTiers:
    async def test_test_key_reaches_test_but_not_prod(self, tmp_path: Path) -> None:
        """The test deployer may publish to deploy.test.> and the test tier's discovery,
        never to prod, nor to the bare or prod discovery subject (the prod listeners hear
        those), and it may read no discovery subject (the admin's prod job queries)."""
        async with enforced(tmp_path) as server:
            await server.allowed_publish("assistant", "deploy.test.web1")
            await server.allowed_publish("assistant", "deploy.discover.test")
            for subject in (
                "deploy.prod.pweb1",
                "deploy.prod.all",
                "deploy.prod.role.web",
                "deploy.discover",
                "deploy.discover.prod",
            ):
                denial = await server.refused_publish("assistant", subject, "deploy.test.all")
                assert "publish to" in str(denial)
            for subject in ("deploy.prod.all", "deploy.discover", "deploy.discover.prod"):
                await server.refused_subscribe("assistant", subject)

    async def test_each_tier_hears_only_its_own_discovery(self, tmp_path: Path) -> None:
        """A listener subscribes to its tier's discovery subject only: a prod listener may
        not hear the test tier's (nor the bare one), and the admin may ask every tier."""
        async with enforced(tmp_path) as server:
            await server.allowed_subscribe("web1", "deploy.discover.test")
            await server.allowed_subscribe("pweb1", "deploy.discover.prod")
            for subject in ("deploy.discover.test", "deploy.discover", "deploy.discover.>"):
                await server.refused_subscribe("pweb1", subject)
            for subject in ("deploy.discover.test", "deploy.discover.prod", "deploy.discover"):
                await server.allowed_publish("admin", subject)

    async def test_listener_publishes_only_its_own_statuses(self, tmp_path: Path) -> None:
        """A listener key answers only on reply subjects bound to its own tier and hostname
        (deploy.responses.<id>.test.web1): not on a bare reply subject, not in another host's
        or tier's name, and it publishes no deploy request and no discovery."""
        async with enforced(tmp_path) as server:
            await server.allowed_publish("web1", "deploy.responses.0123abcd.test.web1")
            for subject in (
                "deploy.discover",
                "deploy.discover.prod",
                "deploy.test.web1",
                "deploy.test.all",
                "deploy.prod.pweb1",
                "deploy.history",
                "deploy.responses.0123abcd",
                "deploy.responses.0123abcd.test.web2",
                "deploy.responses.0123abcd.prod.web1",
                "deploy.responses.0123abcd.prod.pweb1",
                "deploy.responses.a.b.test.web1",
            ):
                await server.refused_publish("web1", subject, "deploy.responses.next.test.web1")

    async def test_test_key_reads_no_prod_reply(self, tmp_path: Path) -> None:
        """The test deployer reads bare and test-tier replies; a prod one it may neither
        subscribe to nor receive through deploy.responses.>, which its deploy.responses.*
        admits (a * matches the literal token >): the deny rule withholds it."""
        async with enforced(tmp_path) as server:
            await server.allowed_subscribe("assistant", "deploy.responses.abc")
            await server.allowed_subscribe("assistant", "deploy.responses.abc.test.web1")
            for subject in ("deploy.responses.abc.prod.*", "deploy.responses.*.*.*"):
                await server.refused_subscribe("assistant", subject)
            send, receive = anyio.create_memory_object_stream[Message](math.inf)

            async def deliver(msg: Message) -> None:
                send.send_nowait(msg)

            with send, receive:
                await server.buses["assistant"].subscribe("deploy.responses.>", deliver)
                await server.buses["assistant"].flush()
                await server.allowed_publish("admin", "deploy.responses.abc.prod.pweb1")
                await server.allowed_publish("admin", "deploy.responses.abc.test.web1")
                with anyio.fail_after(5):  # one publisher's messages arrive in order
                    assert (await receive.receive()).subject == "deploy.responses.abc.test.web1"

    async def test_listener_subscribes_only_to_its_own_subjects(self, tmp_path: Path) -> None:
        """web1 hears deploy.test.web1, .all and .role.web; not another host's, nor prod's."""
        async with enforced(tmp_path) as server:
            for subject in ("deploy.test.web1", "deploy.test.all", "deploy.test.role.web"):
                await server.allowed_subscribe("web1", subject)
            for subject in (
                "deploy.test.pweb1",
                "deploy.prod.all",
                "deploy.prod.role.web",
                "deploy.responses.>",
            ):
                await server.refused_subscribe("web1", subject)
            await server.allowed_subscribe("pweb1", "deploy.prod.all")

    async def test_admin_reaches_prod_and_strangers_are_turned_away(self, tmp_path: Path) -> None:
        """The admin key deploys prod; a key missing from the inventory cannot even connect."""
        async with enforced(tmp_path) as server:
            await server.allowed_subscribe("pweb1", "deploy.prod.pweb1")
            with pytest.raises(ConnectionFailed, match="refused key"):
                await Bus.connect(server.url, generate_seed(), name="stranger")
