"""Fan-out benchmark: deploy to N simulated hosts, against a raw nats-py gather in the same run.

For each N (10, 100, 1000) ``fleet_core.testing.local_fleet`` starts one real nats-server
with the tiered authorization of docs/security.md (one permission block per host, as
``nats-config`` writes it), N listener keys and a test-tier deployer key. Two fleets are
measured, one after the other:

``listeners``
    N real ``fleet_core.host.listener.Listener`` objects in this process, each on its own
    ``Bus`` connection with its own key, sharing ``fleet_core.testing.InstantRebuilder``
    (exit 0 at once with nixos-rebuild's last line). Each
    job still costs what it costs on a host: request validation, three statuses, structlog
    lines (JSON, info level, to /dev/null) and a job directory whose job.json is written
    three times (accepted, running, finished) under a temporary state dir.
``responders``
    N bare nats-py connections (same keys) that answer a deploy with accepted, started and
    completed at once, and discovery with a host record: the cheapest possible host, to show
    what the deployer costs by itself and what the listener costs.

Against each fleet, in shuffled order every round:

``raw``
    plain nats-py with the deployer's seed: subscribe to a fresh ``deploy.responses.<id>``
    and its bound replies ``deploy.responses.<id>.test.*`` (as the deployer does), publish
    the same request JSON as the deployer (``"bind": true``) to ``deploy.test.all``,
    ``json.loads`` each message and stop when every one of the N hosts sent a final status.
    Timed from just before the publish to the last final status.
``deploy`` / ``deploy+cb``
    ``Deployer.deploy(Target.all(Tier.TEST))`` without / with an ``on_update`` callback (the
    CLI and the MCP server pass one; here it does nothing). A ``Bus`` subclass notes when the
    deployer publishes the request, which splits the call into the discovery window
    (call → publish) and the gather (publish → return, the figure compared with ``raw``).
    Every run must return ``ok`` with all N hosts.
``discover`` / ``raw-discover`` (listeners only)
    ``Deployer.discover(Tier.TEST)`` — the window closes ``discovery_quiet`` after the last
    reply — against a raw gather of N discovery replies.

Run ``python bench/fanout.py`` (about 3 minutes) or ``--quick``; results go to RESULTS.md.
Past a few thousand hosts the hosts in this one process are what is measured (at 10,000 a
raw gather alone passes ``RUN_LIMIT``): ``scale.py`` measures 10,000, its hosts elsewhere.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import anyio
import anyio.abc
import nats
from _results import Stats, invocation, load_average, machine, ms, publish
from nats.aio.client import Client
from nats.aio.msg import Msg

from fleet_core.bus import Bus
from fleet_core.config.settings import DeployTiming
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.host.jobs.outcome import Outcome
from fleet_core.host.jobs.store import JobRecord, JobStore
from fleet_core.host.listener import Listener
from fleet_core.logging import configure_logging
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import DeployRequest, StatusKind
from fleet_core.protocol.subjects import RESPONSES_PREFIX, Target, Tier, tier_discover_subject
from fleet_core.testing import FLAKE_URL, FleetHost, InstantRebuilder, LocalFleet, local_fleet

TARGET = Target.all(Tier.TEST)
DEPLOYER = "deployer"
FINAL = frozenset({"completed", "failed", "rejected"})
# Short discovery windows, so discovery does not drown everything else. The window closes
# DISCOVERY_QUIET after the last reply (the shipped default is 0.3 s).
TIMING = DeployTiming(
    answer_within=20.0,
    silence_limit=60.0,
    discovery_first=1.0,
    discovery_quiet=0.1,
    discovery_cap=5.0,
)
T = TypeVar("T")
RUN_LIMIT = 30.0  # no single measured run may take longer (seconds)
CONNECT_PARALLEL = 50
TEST_DISCOVERY = tier_discover_subject(Tier.TEST)  # where the test tier hears discovery


class TimedBus(Bus):
    """A ``Bus`` that notes when it last published to each subject (perf_counter seconds)."""

    def __init__(self, client: Client, url: str) -> None:
        super().__init__(client, url)
        self.published_at: dict[str, float] = {}

    async def publish(self, subject: str, payload: bytes, *, reply: str | None = None) -> None:
        self.published_at[subject] = time.perf_counter()
        await super().publish(subject, payload, reply=reply)


def bench_fleet(n: int, root: Path, state: Path) -> AbstractAsyncContextManager[LocalFleet]:
    """N test-tier hosts and a test-tier deployer; the listeners' state dirs under ``state``."""
    hosts = [FleetHost(f"h{i:04d}") for i in range(n)]
    return local_fleet(hosts, {DEPLOYER: "test"}, root=root, state_root=state)


async def timed_bus(fleet: LocalFleet) -> TimedBus:
    bus = await TimedBus.connect(fleet.url, fleet.seed(DEPLOYER), name="bench deployer")
    assert isinstance(bus, TimedBus)
    return bus


async def gather_all(
    count: int, make: Callable[[int], Awaitable[T]], parallel: int = CONNECT_PARALLEL
) -> list[T]:
    """``make(0..count-1)`` with at most ``parallel`` at a time, results in order."""
    results: dict[int, T] = {}
    limiter = anyio.CapacityLimiter(parallel)

    async def one(i: int) -> None:
        async with limiter:
            results[i] = await make(i)

    async with anyio.create_task_group() as tasks:
        for i in range(count):
            tasks.start_soon(one, i)
    return [results[i] for i in range(count)]


@asynccontextmanager
async def listener_fleet(fleet: LocalFleet) -> AsyncIterator[list[Listener]]:
    """N real listeners, each on its own connection, until the block ends."""
    async with fleet.listeners(fleet.hosts, rebuilder=InstantRebuilder()) as running:
        yield list(running.values())


@asynccontextmanager
async def responder_fleet(fleet: LocalFleet) -> AsyncIterator[None]:
    """N bare nats-py hosts that answer discovery, and a deploy with three statuses at once."""
    names = list(fleet.hosts)

    async def start(i: int) -> Client:
        name, seed = names[i], fleet.seed(names[i])
        client = await nats.connect(
            fleet.url, nkeys_seed_str=seed.reveal(), name=f"bench raw {name}"
        )
        info = json.dumps(
            {
                "hostname": name,
                "tier": "test",
                "role": None,
                "version": "bench",
                "busy": False,
                "deploy_subjects": [f"deploy.test.{name}", TARGET.subject],
            }
        ).encode()

        def answer_to(request: dict[str, Any]) -> str:
            reply = str(request["reply_to"])
            return f"{reply}.test.{name}" if request.get("bind") else reply

        async def on_deploy(msg: Msg) -> None:
            request = json.loads(msg.data)
            for status in ("accepted", "started", "completed"):
                body = {
                    "hostname": name,
                    "status": status,
                    "error": None,
                    "message": "",
                    "request_id": request.get("id"),
                }
                await client.publish(answer_to(request), json.dumps(body).encode())

        async def on_discover(msg: Msg) -> None:
            await client.publish(answer_to(json.loads(msg.data)), info)

        await client.subscribe(TARGET.subject, cb=on_deploy)
        await client.subscribe(TEST_DISCOVERY, cb=on_discover)  # as a listener of this tier
        await client.flush()
        return client

    clients = await gather_all(len(names), start)
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await gather_all(len(clients), lambda i: clients[i].close())


def default_state_root() -> Path:
    shm = Path("/dev/shm")  # noqa: S108 - a private temp dir is made inside it
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def filesystem(path: Path) -> str:
    """The file system type and mount point that hold ``path`` (Linux), e.g. "tmpfs on /dev/shm"."""
    best = ("?", "")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "?"
    resolved = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point, kind = fields[1], fields[2]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[1]):
            best = (kind, point)
    return f"{best[0]} on {best[1]}"


def job_dir_cost(root: Path, jobs: int = 150, keep: int = 50) -> tuple[str, Stats]:
    """What one job's directory costs a listener: ``JobStore.create``, then ``save`` when the
    rebuild starts and when it ends (each job.json written atomically and fsynced)."""
    store = JobStore(root / "job-dir-cost", keep=keep)
    request = DeployRequest(reply_to="deploy.responses.x")
    argv = ("nixos-rebuild", "switch", "--flake", FLAKE_URL, "--refresh")
    done = Outcome(StatusKind.COMPLETED, message="switch of master done")
    samples: list[float] = []
    for i in range(jobs):
        started = time.perf_counter()
        record = JobRecord(
            request_id=f"{i:06d}", request=request, argv=argv, started_at=time.time()
        )
        directory = store.create(record)
        store.save(directory, record.running())
        store.save(directory, record.finished(done, exit_code=0, duration_s=0.0, now=time.time()))
        samples.append(time.perf_counter() - started)
    return filesystem(root), Stats(samples[keep:])  # steady state: each new job prunes one


# -- the measurements -------------------------------------------------------------------------


@dataclass
class Series:
    """Durations of one measurement (seconds), and those of its parts."""

    total: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)

    def add(self, total: float, **parts: float) -> None:
        self.total.append(total)
        for name, value in parts.items():
            self.parts.setdefault(name, []).append(value)


async def _round_trip(
    client: Client, subject: str, request: dict[str, Any], done: Callable[[dict[str, Any]], bool]
) -> float:
    """Publish ``request`` (with its id's ``reply_to``, asking for bound replies) and time it
    until ``done`` holds for a reply: plain nats-py and ``json.loads``, subscribed as the
    deployer is (the bare reply and the test tier's bound ones), the baseline it is compared
    with."""
    # A request with an id answers on deploy.responses.<id> (docs/protocol.md).
    reply = RESPONSES_PREFIX + str(request.get("id") or uuid.uuid4().hex)
    finished = anyio.Event()

    async def on_reply(msg: Msg) -> None:
        if done(json.loads(msg.data)):
            finished.set()

    subscriptions = [
        await client.subscribe(reply, cb=on_reply),
        await client.subscribe(f"{reply}.test.*", cb=on_reply),
    ]
    body = json.dumps({**request, "reply_to": reply, "bind": True}).encode()
    try:
        with anyio.fail_after(RUN_LIMIT):
            started = time.perf_counter()
            await client.publish(subject, body, reply=reply)
            await finished.wait()
            return time.perf_counter() - started
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()


async def raw_gather(client: Client, n: int, subject: str = TARGET.subject) -> float:
    """Publish the deployer's request JSON and wait for a final status from all N hosts."""
    finals: dict[str, str] = {}

    def all_final(status: dict[str, Any]) -> bool:
        if status["status"] in FINAL:
            finals[status["hostname"]] = status["status"]
        return len(finals) == n

    request = {"action": "switch", "revision": "master", "id": uuid.uuid4().hex}
    elapsed = await _round_trip(client, subject, request, all_final)
    bad = {h: s for h, s in finals.items() if s != "completed"}
    assert not bad, f"raw gather: hosts did not complete: {bad}"
    return elapsed


async def raw_discover(client: Client, n: int) -> float:
    """Publish a discovery request and wait until all N hosts answered (no quiet window)."""
    seen: set[str] = set()

    def everyone(info: dict[str, Any]) -> bool:
        seen.add(info["hostname"])
        return len(seen) == n

    return await _round_trip(client, TEST_DISCOVERY, {"tier": "test"}, everyone)


def _ignore(host: HostResult, result: DeploymentResult) -> None:
    """The cheapest ``on_update``: what the deployer costs when someone listens."""


async def deploy(bus: TimedBus, n: int, *, with_callback: bool) -> tuple[float, float, float]:
    """One ``Deployer.deploy``; returns (whole call, discovery part, publish → return)."""
    deployer = Deployer(bus, timing=TIMING)
    with anyio.fail_after(RUN_LIMIT):
        started = time.perf_counter()
        result = await deployer.deploy(
            TARGET,
            revision="master",
            action=Action.SWITCH,
            timeout=RUN_LIMIT,
            on_update=_ignore if with_callback else None,
        )
        done = time.perf_counter()
    published = bus.published_at[TARGET.subject]
    assert result.ok, f"deploy failed: {result.counts}"
    assert len(result.hosts) == n, f"deploy saw {len(result.hosts)} of {n} hosts"
    assert all(h.expected for h in result.hosts), "discovery missed hosts (window too short?)"
    return done - started, published - started, done - published


async def discover(bus: TimedBus, n: int) -> float:
    with anyio.fail_after(RUN_LIMIT):
        started = time.perf_counter()
        hosts = await Deployer(bus, timing=TIMING).discover(Tier.TEST)
        elapsed = time.perf_counter() - started
    assert len(hosts) == n, f"discovery found {len(hosts)} of {n} hosts"
    return elapsed


async def until_idle(listeners: Sequence[Listener]) -> None:
    """Wait (with a deadline) until no listener still holds its last job."""
    with anyio.fail_after(RUN_LIMIT):
        # Listener offers no "idle" event; its public ``busy`` flag, polled with a deadline.
        while any(listener.busy for listener in listeners):  # noqa: ASYNC110
            await anyio.sleep(0.001)


# One measured run: its duration and named parts of it (seconds).
Measure = Callable[[], Awaitable[tuple[float, dict[str, float]]]]


async def rounds(
    measures: dict[str, Measure], runs: int, warmup: int, between: Callable[[], Awaitable[None]]
) -> dict[str, Series]:
    """``warmup`` + ``runs`` rounds; each round runs every measurement once, in random order."""
    series = {name: Series() for name in measures}
    order = list(measures)
    rng = random.Random(runs)  # noqa: S311 - shuffling, not secrets
    for round_no in range(warmup + runs):
        rng.shuffle(order)
        for name in order:
            await between()
            gc.collect()
            total, parts = await measures[name]()
            if round_no >= warmup:
                series[name].add(total, **parts)
    return series


@dataclass
class SizeResult:
    n: int
    setup_s: dict[str, float]
    listeners: dict[str, Series]
    responders: dict[str, Series]


async def measure_size(n: int, runs: int, warmup: int, root: Path, state: Path) -> SizeResult:
    """All measurements at one N on a fresh nats-server; listener state dirs under ``state``."""
    setup: dict[str, float] = {}
    async with bench_fleet(n, root, state) as fleet:
        bus = await timed_bus(fleet)
        async with bus:
            raw = await nats.connect(
                fleet.url, nkeys_seed_str=fleet.seed(DEPLOYER).reveal(), name="raw"
            )
            try:
                started = time.perf_counter()
                async with listener_fleet(fleet) as listeners:
                    setup["listeners"] = time.perf_counter() - started
                    on_listeners = await _measure_fleet(
                        bus, raw, n, runs=runs, warmup=warmup, listeners=listeners
                    )
                started = time.perf_counter()
                async with responder_fleet(fleet):
                    setup["responders"] = time.perf_counter() - started
                    on_responders = await _measure_fleet(
                        bus, raw, n, runs=runs, warmup=warmup, listeners=None
                    )
            finally:
                await raw.close()
    return SizeResult(n, setup, on_listeners, on_responders)


async def _measure_fleet(
    bus: TimedBus,
    raw: Client,
    n: int,
    *,
    runs: int,
    warmup: int,
    listeners: Sequence[Listener] | None,
) -> dict[str, Series]:

    async def m_raw() -> tuple[float, dict[str, float]]:
        return await raw_gather(raw, n), {}

    async def m_deploy() -> tuple[float, dict[str, float]]:
        total, discovery, gather = await deploy(bus, n, with_callback=False)
        return total, {"discovery": discovery, "gather": gather}

    async def m_deploy_cb() -> tuple[float, dict[str, float]]:
        total, discovery, gather = await deploy(bus, n, with_callback=True)
        return total, {"discovery": discovery, "gather": gather}

    async def m_discover() -> tuple[float, dict[str, float]]:
        return await discover(bus, n), {}

    async def m_raw_discover() -> tuple[float, dict[str, float]]:
        return await raw_discover(raw, n), {}

    measures: dict[str, Measure] = {"raw": m_raw, "deploy": m_deploy, "deploy+cb": m_deploy_cb}
    if listeners is not None:
        measures |= {"discover": m_discover, "raw-discover": m_raw_discover}

    async def between() -> None:
        if listeners is not None:
            await until_idle(listeners)

    return await rounds(measures, runs, warmup, between)


# -- profiling --------------------------------------------------------------------------------


async def profile(n: int, *, runs: int, root: Path, state: Path, fleet: str, out: TextIO) -> None:
    """cProfile ``runs`` deploys (with callback) at N; everything in this process is in it."""
    async with bench_fleet(n, root, state) as local:
        bus = await timed_bus(local)
        hosts = listener_fleet(local) if fleet == "listeners" else responder_fleet(local)
        async with bus, hosts:
            await deploy(bus, n, with_callback=True)  # warm-up
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(runs):
                await deploy(bus, n, with_callback=True)
            profiler.disable()
    stats = pstats.Stats(profiler, stream=out)
    print(f"\n== cProfile: {runs} x deploy+cb at N={n} against {fleet} (by tottime) ==", file=out)
    stats.sort_stats("tottime").print_stats(25)
    print("== the same by cumulative time ==", file=out)
    stats.sort_stats("cumulative").print_stats(40)


# -- report -----------------------------------------------------------------------------------


def _row(label: str, samples: Sequence[float], raw: Sequence[float] | None = None) -> str:
    s = Stats(samples)
    ratio = f"{s.median / Stats(raw).median:.2f}x" if raw else ""
    return f"| {label} | {ms(s.median)} | {ms(s.p90)} | {ms(s.min)} | {s.runs} | {ratio} |"


def _fleet_table(result: SizeResult, fleet: str, series: dict[str, Series]) -> list[str]:
    raw = series["raw"].total
    lines = [
        f"**N = {result.n}, {fleet}** (set-up of the N connections: {result.setup_s[fleet]:.2f} s)",
        "",
        "| measurement | median ms | p90 ms | min ms | runs | median ÷ raw |",
        "|---|---:|---:|---:|---:|---:|",
        _row("raw gather (publish → N final)", raw),
    ]
    for name in ("deploy", "deploy+cb"):
        s = series[name]
        label = "deploy()" if name == "deploy" else "deploy(on_update=…)"
        lines += [
            _row(f"{label}: publish → return", s.parts["gather"], raw),
            _row(f"{label}: discovery window", s.parts["discovery"]),
            _row(f"{label}: whole call", s.total, raw),
        ]
    if "discover" in series:
        lines += [
            _row("raw discovery (publish → N replies)", series["raw-discover"].total),
            _row("discover() (closes 0.1 s after the last reply)", series["discover"].total),
        ]
    return [*lines, ""]


def _target(n: int, ratio: float) -> str:
    if n < 100:
        return "n/a"
    return "met" if ratio <= 2 else f"**missed** by {ratio / 2 - 1:.0%}"


def _verdict(results: Sequence[SizeResult]) -> list[str]:
    lines = [
        "| N | raw gather ms | deploy() gather ms | ratio | deploy(on_update) gather ms "
        "| ratio | target <= 2x: deploy() / with on_update |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        raw = Stats(r.listeners["raw"].total).median
        plain = Stats(r.listeners["deploy"].parts["gather"]).median
        cb = Stats(r.listeners["deploy+cb"].parts["gather"]).median
        verdict = " / ".join(_target(r.n, value / raw) for value in (plain, cb))
        lines.append(
            f"| {r.n} | {ms(raw)} | {ms(plain)} | {plain / raw:.2f}x | {ms(cb)} "
            f"| {cb / raw:.2f}x | {verdict} |"
        )
    lines.append("")
    lines += [
        "What the listener and the deployer each cost (medians, publish → N final, ms):",
        "",
        "| N | responders: raw | responders: deploy(on_update) | listeners: raw "
        "| listeners ÷ responders (raw) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rr = Stats(r.responders["raw"].total).median
        rd = Stats(r.responders["deploy+cb"].parts["gather"]).median
        lr = Stats(r.listeners["raw"].total).median
        lines.append(
            f"| {r.n} | {ms(rr)} | {ms(rd)} ({rd / rr:.2f}x) | {ms(lr)} | {lr / rr:.1f}x |"
        )
    return [*lines, ""]


def report(
    results: Sequence[SizeResult],
    command: str,
    elapsed: float,
    job_dirs: dict[str, tuple[str, Stats]],
    load_before: float,
) -> str:
    (state_fs, state_cost), (tmp_fs, tmp_cost) = job_dirs["state root"], job_dirs["temp dir"]
    lines = [
        "### Fan-out: deploy to N hosts vs. a raw nats-py gather",
        "",
        f"- Machine: {machine(load_before)}",
        f"- Command: `{command}` ({elapsed:.0f} s); medians over the runs shown, after a "
        "warm-up; every round runs all measurements in shuffled order.",
        f"- Deployer timing: discovery_first {TIMING.discovery_first:g} s, "
        f"discovery_quiet {TIMING.discovery_quiet:g} s (shipped default 0.3 s), "
        f"discovery_cap {TIMING.discovery_cap:g} s.",
        "- Everything runs in one process and one event loop (plus nats-server): the N hosts, "
        "the deployer and the raw client share the CPU, so every figure includes the hosts' "
        "own work. *Listeners* are real `Listener` objects with an instant rebuild (job "
        "directory and its job.json, written three times, under a temp state dir; structlog "
        "JSON at info to /dev/null; no rebuild subprocess, no output.log); *responders* are "
        "bare nats-py clients answering accepted/started/completed at once.",
        f"- The listeners' state dirs are on {state_fs}, where one job directory "
        "(`JobStore.create` + two `save`s: mkdir, prune, job.json written atomically three "
        "times) costs "
        f"{ms(state_cost.median)} ms (median); on {tmp_fs} it costs "
        f"{ms(tmp_cost.median)} ms. A host pays that once per deploy; here N listeners pay "
        "it one after another in one thread, so a slow state disk would count N times "
        "(`--state-root DIR` to measure that).",
        "- *publish → return* starts when the deployer publishes the request (noted by a "
        "`Bus` subclass) and ends when `deploy()` returns: the gather, comparable with the "
        "raw gather. *discovery window* is call → publish. `deploy(on_update=…)` passes a "
        "do-nothing callback, as the CLI and the MCP server pass a real one.",
        "",
        "Target: deployer gather at most 2x the raw gather at N = 100 and N = 1000 "
        "(discovery window aside), both against the same listeners:",
        "",
        *_verdict(results),
        "#### All figures",
        "",
    ]
    for r in results:
        lines += _fleet_table(r, "listeners", r.listeners)
        lines += _fleet_table(r, "responders", r.responders)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="N = 10, 100; 5 runs; ~20 s")
    parser.add_argument("--sizes", type=int, nargs="+", help="N values (default 10 100 1000)")
    parser.add_argument("--runs", type=int, help="runs per measurement (default 15; 7 at N≥1000)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    parser.add_argument(
        "--state-root",
        type=Path,
        default=default_state_root(),
        help="where the listeners' state dirs go (default: a temp dir on /dev/shm if it "
        "exists, so N hosts' job directories, written one after another in this one process, "
        "cost what they cost on N hosts in parallel: little)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the report, leave RESULTS.md alone"
    )
    parser.add_argument(
        "--profile",
        type=int,
        metavar="N",
        help="instead of measuring, cProfile deploys at N and print the hottest functions",
    )
    parser.add_argument(
        "--profile-fleet",
        choices=("listeners", "responders"),
        default="responders",
        help="which fleet --profile deploys to (default: responders, to see the deployer)",
    )
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    load_before = load_average()
    with (
        tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp,
        tempfile.TemporaryDirectory(prefix="fleet-bench-state-", dir=args.state_root) as st,
    ):
        if args.profile:
            await profile(
                args.profile,
                runs=args.runs or 5,
                root=Path(tmp),
                state=Path(st),
                fleet=args.profile_fleet,
                out=sys.stdout,
            )
            return
        job_dirs = {
            where: job_dir_cost(Path(directory))
            for where, directory in (("state root", st), ("temp dir", tmp))
        }
        sizes = args.sizes or ([10, 100] if args.quick else [10, 100, 1000])
        results: list[SizeResult] = []
        started = time.perf_counter()
        for n in sizes:
            runs = args.runs or (5 if args.quick else (7 if n >= 1000 else 15))
            t0 = time.perf_counter()
            result = await measure_size(
                n, runs, args.warmup, Path(tmp) / f"n{n}", Path(st) / f"n{n}"
            )
            results.append(result)
            lr = Stats(result.listeners["raw"].total).median
            ld = Stats(result.listeners["deploy+cb"].parts["gather"]).median
            print(
                f"N={n}: raw {ms(lr)} ms, deploy(on_update) gather {ms(ld)} ms "
                f"({ld / lr:.2f}x) [{time.perf_counter() - t0:.0f} s]",
                flush=True,
            )
        elapsed = time.perf_counter() - started
    text = report(results, invocation("fanout.py"), elapsed, job_dirs, load_before)
    publish("fanout-latency", text, write=not args.no_write)


if __name__ == "__main__":
    arguments = parse_args()
    # Listener logging as on a host (JSON lines at info level), but to /dev/null.
    with open(os.devnull, "w") as devnull:
        configure_logging("info", json=True, stream=devnull)
        anyio.run(main, arguments, backend="asyncio")
