"""Deploying to 10,000 hosts: a one-shot deploy and a rollout against raw nats-py, in one run.

``fanout.py`` cannot reach this size: its hosts live in its own process and event loop, one
connection and key each, and ten thousand of them outrun a small machine before the deployer
is measured. Here the hosts are bare responders (``_responders.py``: accepted, started and
completed at once, as a listener answers) in separate processes, several hundred to a NATS
connection, so the benchmark's own process holds only what is measured: the deployer, and
the raw nats-py client it is compared with — never both at once, and never beside the
hosts' work in the same event loop. nats-server and the responders still share the
machine's CPUs with it: the ratio, taken in the same run, is the figure to trust.

The server is the one ``fleet_core.testing.local_fleet`` starts, with the permissions
``nats-config`` writes for the test-tier deployer key (the deployer and the raw client both
use it) and one extra key for the responders that may publish on every bound reply subject
(no per-host key could answer for several hundred hosts). Every request is signed, as the
CLI signs it, and asks for bound replies; the responders answer on each host's own bound
subject and name the signer, so the deployer's checks of subject, request id and signer all
run as on a real fleet.

Measured, in shuffled order every round (each compared with its own raw baseline):

``raw-once``
    plain nats-py: subscribe to the reply subject and its bound replies, sign and publish
    the deployer's request JSON to ``deploy.test.all``, ``json.loads`` every status until
    each of the N hosts sent a final one. Publish → last final.
``once`` / ``once+cb``
    ``Deployer.deploy(Target.all(Tier.TEST))`` without / with an ``on_update`` callback
    that does nothing (the CLI and the MCP server pass one). The gather runs from the
    request's publish (a ``Bus`` subclass notes it) to the return; the discovery window
    before it is reported apart.
``raw-rollout``
    the same hosts by name in batches of 10 % (``--batch``): each host's own request, signed
    for ``deploy.test.<host>``, all with one id and reply subject, as the deployer sends
    them; the next batch only once every host of this one is final. First publish → last
    final.
``rollout`` / ``rollout+cb``
    ``Deployer.deploy(..., rollout=RolloutSettings(batch=10, batch_percent=True))``, from
    its first batch's first publish to the return.

For each run: the wall time, this process's CPU time in it, and the time its garbage
collector took (ten thousand live models make every full collection long). After the
rounds, each measurement runs once more under tracemalloc (untimed) for the most Python
memory it holds at once; the process's resident memory is read connected, before any run,
and at its peak (``VmHWM``) after all of them. The deployer's log lines (structlog JSON at
info, as under systemd) go to a meter that keeps the longest.

``python bench/scale.py`` (10,000 hosts, 7 runs: about 2½ minutes), or ``--hosts 1000``;
``--only NAME…`` for some measurements (under py-spy, say), ``--profile once|rollout`` for
cProfile over deploys instead of measuring. Results go to the ``fanout-scale`` block of
RESULTS.md.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import gc
import io
import json
import math
import pstats
import random
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import nats
import nkeys
from _responders import ALL_SUBJECT, host_name
from _results import Stats, invocation, load_average, machine, ms, publish
from nats.aio.client import Client
from nats.aio.msg import Msg

from fleet_core.bus import Bus
from fleet_core.config.settings import DeployTiming, RolloutSettings
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.keys import Seed
from fleet_core.logging import configure_logging
from fleet_core.protocol.actions import Action
from fleet_core.protocol.signing import canonical_text
from fleet_core.protocol.subjects import RESPONSES_PREFIX, Target, Tier
from fleet_core.testing import local_fleet

BENCH = Path(__file__).resolve().parent
TARGET = Target.all(Tier.TEST)
DEPLOYER = "deployer"
RESPONDERS = "responders"
# The responders' key: the requests (each host's and the group's), the test tier's discovery,
# and every bound reply. Looser than any one listener's, on purpose: see the module docstring.
RESPONDER_PERMISSIONS = {
    "publish": ["deploy.responses.>"],
    "subscribe": ["deploy.test.>", "deploy.discover.test"],
}
FINAL = frozenset({"completed", "failed", "rejected"})
ROLLOUT = RolloutSettings(batch=10, batch_percent=True)
# The shipped discovery windows, but a cap that ten thousand answers fit in under load; a
# silence limit no healthy run reaches (a job query would be a benchmark fault).
TIMING = DeployTiming(
    answer_within=30.0,
    silence_limit=60.0,
    discovery_first=2.0,
    discovery_quiet=0.3,
    discovery_cap=15.0,
)
RUN_LIMIT = 180.0  # no single measured run may take longer (seconds)
START_LIMIT = 120.0  # the responders must be subscribed within this
MAX_LOG_LINE = 4096  # what the report calls a bounded log line (bytes)


# -- the deployer's process: memory, CPU, log lines ----------------------------------------


def _status_kb(field_name: str) -> int:
    """A ``/proc/self/status`` figure in kB (0 where there is none: not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class LineMeter(io.StringIO):
    """Where the deployer's log lines go: counts them and keeps the longest (and its event),
    keeping none of the text."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = 0
        self.longest = 0
        self.longest_event = ""
        self._current: list[str] = []

    def write(self, text: str) -> int:
        *complete, rest = text.split("\n")
        for piece in complete:
            self._current.append(piece)
            self._end_line("".join(self._current))
            self._current = []
        if rest:
            self._current.append(rest)
        return len(text)

    def _end_line(self, line: str) -> None:
        self.lines += 1
        size = len(line.encode())
        if size > self.longest:
            self.longest = size
            try:
                self.longest_event = str(json.loads(line).get("event", "?"))
            except ValueError:
                self.longest_event = "?"


class MarkedBus(Bus):
    """A ``Bus`` that notes its first publish to a deploy subject of the test tier (the
    request of a one-shot deploy, a rollout's first host): where the gather starts."""

    def __init__(self, client: Client, url: str) -> None:
        super().__init__(client, url)
        self.first_deploy: float | None = None
        self.cpu_at_first_deploy = 0.0  # process CPU seconds then

    async def publish(self, subject: str, payload: bytes, *, reply: str | None = None) -> None:
        if self.first_deploy is None and subject.startswith("deploy.test."):
            self.first_deploy = time.perf_counter()
            self.cpu_at_first_deploy = time.process_time()
        await super().publish(subject, payload, reply=reply)


# -- the hosts ------------------------------------------------------------------------------


@asynccontextmanager
async def responder_processes(url: str, seed_file: Path, shape: Shape) -> AsyncIterator[None]:
    """The hosts, answering from ``shape.processes`` processes, until the block ends."""
    hosts, per_process = shape.hosts, math.ceil(shape.hosts / shape.processes)
    async with AsyncExitStack() as stack:
        started: list[anyio.abc.Process] = []
        for first in range(0, hosts, per_process):
            count = min(per_process, hosts - first)
            argv = [
                sys.executable,
                str(BENCH / "_responders.py"),
                f"--url={url}",
                f"--seed-file={seed_file}",
                f"--first={first}",
                f"--count={count}",
                f"--per-connection={shape.per_connection}",
            ]
            process = await anyio.open_process(argv, stderr=None)
            stack.push_async_callback(_stop, process)
            started.append(process)
        with anyio.fail_after(START_LIMIT):
            for process in started:
                assert process.stdout is not None
                said = await process.stdout.receive()
                assert said.strip() == b"ready", f"a responder process said {said!r}"
        yield


async def _stop(process: anyio.abc.Process) -> None:
    """Close its stdin (it leaves on its own), then wait; kill it past a deadline."""
    with anyio.CancelScope(shield=True):
        if process.stdin is not None:
            await process.stdin.aclose()
        with anyio.move_on_after(15):
            await process.wait()
            return
        process.kill()
        await process.wait()


# -- the raw baselines -------------------------------------------------------------------------


class RawSigner:
    """Signs a request as the protocol asks (``protocol.signing.canonical_text``, ed25519 with
    the deployer's NKey), with its key pair made once: what any client has to pay."""

    def __init__(self, seed: Seed) -> None:
        self._pair = nkeys.from_seed(bytearray(seed.reveal().encode()))
        self.public_key = str(self._pair.public_key.decode())

    def fields(self, request_id: str, subject: str) -> dict[str, Any]:
        signed_at = round(time.time(), 3)
        text = canonical_text(
            request_id=request_id,
            subject=subject,
            action="switch",
            revision="master",
            signed_at=signed_at,
        )
        signature = base64.urlsafe_b64encode(self._pair.sign(text)).decode().rstrip("=")
        return {"signer": self.public_key, "signed_at": signed_at, "signature": signature}


class RawGather:
    """One raw deployment: its reply subjects subscribed, finals counted by host."""

    def __init__(self, client: Client, signer: RawSigner) -> None:
        self.client = client
        self.signer = signer
        self.id = uuid.uuid4().hex
        self.reply = RESPONSES_PREFIX + self.id
        self.finals: dict[str, str] = {}
        self._want: set[str] = set()
        self._all_in = anyio.Event()

    def body(self, subject: str) -> bytes:
        """The deployer's request JSON, signed for ``subject``."""
        request = {
            "action": "switch",
            "revision": "master",
            "reply_to": self.reply,
            "id": self.id,
            "bind": True,
            **self.signer.fields(self.id, subject),
        }
        return json.dumps(request).encode()

    async def _on_reply(self, msg: Msg) -> None:
        status = json.loads(msg.data)
        if status["status"] in FINAL:
            name = status["hostname"]
            self.finals[name] = status["status"]
            self._want.discard(name)
            if not self._want:
                self._all_in.set()

    def expect(self, hosts: Sequence[str]) -> None:
        """Wait for these hosts next (``wait``), before publishing to them."""
        self._all_in = anyio.Event()
        self._want = set(hosts) - self.finals.keys()
        if not self._want:
            self._all_in.set()

    async def wait(self) -> None:
        """Until every host ``expect`` named is final."""
        await self._all_in.wait()

    @asynccontextmanager
    async def subscribed(self) -> AsyncIterator[RawGather]:
        subscriptions = [
            await self.client.subscribe(self.reply, cb=self._on_reply),
            await self.client.subscribe(f"{self.reply}.test.*", cb=self._on_reply),
        ]
        await self.client.flush()
        try:
            yield self
        finally:
            for subscription in subscriptions:
                await subscription.unsubscribe()

    def check(self, n: int) -> None:
        bad = {h: s for h, s in self.finals.items() if s != "completed"}
        assert not bad and len(self.finals) == n, f"raw: {len(self.finals)} final, bad {bad}"


@dataclass(frozen=True)
class Sample:
    """One run: the measured wall time, this process's CPU time in it, and (for the
    deployer) the discovery window before it (seconds)."""

    wall: float
    cpu: float
    discovery: float | None = None


async def raw_once(client: Client, signer: RawSigner, names: Sequence[str]) -> Sample:
    """Publish to ``deploy.test.all`` once; publish → every host final."""
    gather = RawGather(client, signer)
    async with gather.subscribed():
        gather.expect(names)
        cpu, started = time.process_time(), time.perf_counter()
        await client.publish(ALL_SUBJECT, gather.body(ALL_SUBJECT), reply=gather.reply)
        await gather.wait()
        sample = Sample(time.perf_counter() - started, time.process_time() - cpu)
    gather.check(len(names))
    return sample


def raw_batches(names: Sequence[str], settings: RolloutSettings) -> list[list[str]]:
    """The rollout's batches as a person would cut them: by name, ``batch``% of all each."""
    assert settings.batch is not None and settings.batch_percent and not settings.canary
    size = max(1, math.ceil(len(names) * settings.batch / 100))
    ordered = sorted(names)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


async def raw_rollout(client: Client, signer: RawSigner, names: Sequence[str]) -> Sample:
    """Each batch's hosts on their own subjects, the next batch once this one is final;
    first publish → last final."""
    gather = RawGather(client, signer)
    async with gather.subscribed():
        cpu, started = time.process_time(), time.perf_counter()
        for batch in raw_batches(names, ROLLOUT):
            gather.expect(batch)
            for name in batch:
                subject = f"deploy.test.{name}"
                await client.publish(subject, gather.body(subject), reply=gather.reply)
            await gather.wait()
        sample = Sample(time.perf_counter() - started, time.process_time() - cpu)
    gather.check(len(names))
    return sample


# -- the deployer ----------------------------------------------------------------------------


def _ignore(host: HostResult, result: DeploymentResult) -> None:
    """The cheapest ``on_update``: what the deployer costs when someone listens."""


async def deploy(
    deployer: Deployer, bus: MarkedBus, n: int, *, rollout: bool, with_callback: bool
) -> Sample:
    """One ``Deployer.deploy``: first publish → return, and the discovery window before."""
    bus.first_deploy = None
    started = time.perf_counter()
    result = await deployer.deploy(
        TARGET,
        revision="master",
        action=Action.SWITCH,
        timeout=RUN_LIMIT,
        on_update=_ignore if with_callback else None,
        rollout=ROLLOUT if rollout else None,
    )
    done, cpu = time.perf_counter(), time.process_time()
    assert bus.first_deploy is not None
    assert result.ok, f"deploy failed: {result.counts}"
    assert len(result.hosts) == n, f"deploy saw {len(result.hosts)} of {n} hosts"
    assert all(h.expected for h in result.hosts), "discovery missed hosts"
    assert result.server_verified and not result.flagged_count, "replies were not believed"
    if rollout:
        assert result.rollout is not None and result.rollout.batches == 10, result.rollout
    gather = done - bus.first_deploy
    return Sample(gather, cpu - bus.cpu_at_first_deploy, bus.first_deploy - started)


# -- rounds --------------------------------------------------------------------------------


@dataclass
class Series:
    """Every run of one measurement, in round order: ``Sample``'s figures and the time the
    garbage collector took (seconds); ``heap_peak`` from one more run under tracemalloc."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    discovery: list[float] = field(default_factory=list)
    gc: list[float] = field(default_factory=list)
    heap_peak: int = 0  # bytes


Measure = Callable[[], Awaitable[Sample]]


class GcClock:
    """Time spent in the garbage collector (``gc.callbacks``): a deployer that keeps ten
    thousand models alive has every full collection walk them."""

    def __init__(self) -> None:
        self.total = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._started


GC_CLOCK = GcClock()


async def rounds(measures: dict[str, Measure], runs: int, warmup: int) -> dict[str, Series]:
    """``warmup`` + ``runs`` rounds; each round runs every measurement once, in random order."""
    series = {name: Series() for name in measures}
    order = list(measures)
    rng = random.Random(runs)  # noqa: S311 - shuffling, not secrets
    for round_no in range(warmup + runs):
        rng.shuffle(order)
        for name in order:
            gc.collect()
            in_gc = GC_CLOCK.total
            with anyio.fail_after(RUN_LIMIT):
                sample = await measures[name]()
            in_gc = GC_CLOCK.total - in_gc
            if round_no >= warmup:
                s = series[name]
                s.wall.append(sample.wall)
                s.cpu.append(sample.cpu)
                s.gc.append(in_gc)
                if sample.discovery is not None:
                    s.discovery.append(sample.discovery)
        print(f"  round {round_no + 1}/{warmup + runs} done", flush=True)
    return series


async def heap_peaks(measures: dict[str, Measure], series: dict[str, Series]) -> None:
    """One more run of each under tracemalloc (untimed: it slows everything down), for the
    most Python memory each holds at once."""
    for name, run in measures.items():
        gc.collect()
        tracemalloc.start()
        try:
            with anyio.fail_after(RUN_LIMIT * 3):
                await run()
            series[name].heap_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


@dataclass(frozen=True)
class Shape:
    """The simulated fleet: its hosts, over how many processes and connections."""

    hosts: int
    processes: int
    per_connection: int


@dataclass
class Bench:
    """What the runs share: the deployer and its bus, the raw client and its signer."""

    deployer: Deployer
    bus: MarkedBus
    raw: Client
    signer: RawSigner
    names: list[str]
    setup_s: float  # to start the responders and see them subscribed


@dataclass
class Run:
    shape: Shape
    setup_s: float
    rest_kb: int  # this process's VmRSS, connected, before any run
    peak_kb: int  # its VmHWM after every run
    series: dict[str, Series]


@asynccontextmanager
async def bench_fleet(shape: Shape, root: Path) -> AsyncIterator[Bench]:
    """nats-server, the responders and both clients, until the block ends."""
    async with local_fleet(
        (), {DEPLOYER: "test"}, extra_users={RESPONDERS: RESPONDER_PERMISSIONS}, root=root
    ) as fleet:
        started = time.perf_counter()
        async with responder_processes(fleet.url, fleet.key_path(RESPONDERS), shape):
            setup = time.perf_counter() - started
            seed = fleet.seed(DEPLOYER)
            bus = await MarkedBus.connect(fleet.url, seed, name="bench deployer")
            assert isinstance(bus, MarkedBus)
            raw = await nats.connect(fleet.url, nkeys_seed_str=seed.reveal(), name="bench raw")
            try:
                async with bus:
                    deployer = Deployer(bus, timing=TIMING, signer=seed)
                    names = [host_name(i) for i in range(shape.hosts)]
                    yield Bench(deployer, bus, raw, RawSigner(seed), names, setup)
            finally:
                await raw.close()


def measures_of(bench: Bench) -> dict[str, Measure]:
    """Every measurement, by name (``LABELS``)."""
    n = len(bench.names)

    def deployer(*, rollout: bool, cb: bool) -> Measure:
        async def run() -> Sample:
            return await deploy(bench.deployer, bench.bus, n, rollout=rollout, with_callback=cb)

        return run

    async def raw_one_shot() -> Sample:
        return await raw_once(bench.raw, bench.signer, bench.names)

    async def raw_in_batches() -> Sample:
        return await raw_rollout(bench.raw, bench.signer, bench.names)

    return {
        "raw-once": raw_one_shot,
        "once": deployer(rollout=False, cb=False),
        "once+cb": deployer(rollout=False, cb=True),
        "raw-rollout": raw_in_batches,
        "rollout": deployer(rollout=True, cb=False),
        "rollout+cb": deployer(rollout=True, cb=True),
    }


async def measure(
    shape: Shape, *, runs: int, warmup: int, root: Path, only: Sequence[str] = ()
) -> Run:
    async with bench_fleet(shape, root) as bench:
        rest = _status_kb("VmRSS")
        measures = measures_of(bench)
        if only:
            measures = {name: measures[name] for name in only}
        series = await rounds(measures, runs, warmup)
        peak = _status_kb("VmHWM")  # before tracemalloc adds its own
        await heap_peaks(measures, series)
    return Run(shape, bench.setup_s, rest, peak, series)


# -- profiling --------------------------------------------------------------------------------


async def profile(shape: Shape, *, runs: int, root: Path, kind: str) -> None:
    """cProfile ``runs`` deploys (with callback); only the deployer's process is in it."""
    async with bench_fleet(shape, root) as bench:
        rollout = kind == "rollout"
        n = shape.hosts
        await deploy(bench.deployer, bench.bus, n, rollout=rollout, with_callback=True)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(runs):
            await deploy(bench.deployer, bench.bus, n, rollout=rollout, with_callback=True)
        profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout)
    print(f"\n== cProfile: {runs} x {kind} (with on_update) at N={n} (by tottime) ==")
    stats.sort_stats("tottime").print_stats(30)
    print("== the same by cumulative time ==")
    stats.sort_stats("cumulative").print_stats(45)


# -- report -----------------------------------------------------------------------------------

LABELS = {
    "raw-once": "raw nats-py, one publish to deploy.test.all",
    "once": "deploy(): publish → return",
    "once+cb": "deploy(on_update=…): publish → return",
    "raw-rollout": "raw nats-py, 10 batches of per-host requests",
    "rollout": "deploy(rollout=10 %): first publish → return",
    "rollout+cb": "deploy(rollout=10 %, on_update=…): first publish → return",
}
BASELINE = {
    "once": "raw-once",
    "once+cb": "raw-once",
    "rollout": "raw-rollout",
    "rollout+cb": "raw-rollout",
}


def _mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def report(
    run: Run, meter: LineMeter, command: str, elapsed: float, load: tuple[float, float]
) -> str:
    s = run.series
    shape = run.shape
    med = {name: Stats(series.wall).median for name, series in s.items()}
    lines = [
        f"### Scale: {shape.hosts:,} hosts, one-shot and rollout, vs. raw nats-py",
        "",
        f"- Machine: {machine(load[0])}; {load[1]:.2f} after.",
        f"- Command: `{command}` ({elapsed:.0f} s); medians of {len(s['once'].wall)} runs "
        "after a warm-up round; every round runs all six measurements in shuffled order.",
        f"- Hosts: {shape.hosts:,} bare responders (`bench/_responders.py`) in "
        f"{shape.processes} processes, {shape.per_connection} to a NATS connection (up in "
        f"{run.setup_s:.1f} s); every request signed by the deployer's key, every answer on "
        "its host's bound reply subject, naming the signer. The deployer and the raw client "
        "take turns in this process; nats-server and the responders share its 2 CPUs.",
        f"- Deployer timing: discovery_quiet {TIMING.discovery_quiet:g} s (the shipped "
        f"default), discovery_cap {TIMING.discovery_cap:g} s, answer_within "
        f"{TIMING.answer_within:g} s. A rollout: `--batch 10%`, 10 batches of "
        f"{math.ceil(shape.hosts / 10):,}.",
        "",
        "Target: the deployer's gather at most 1.5x the raw gather of the same requests "
        "(publish → every host final):",
        "",
        "| measurement | median ms | p90 ms | min ms | median ÷ raw median "
        "| per round ÷ raw (median) | target ≤ 1.5x |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, label in LABELS.items():
        st = Stats(s[name].wall)
        base = BASELINE.get(name)
        cells = ["", "", ""]
        if base:
            ratio = med[name] / med[base]
            paired = Stats([a / b for a, b in zip(s[name].wall, s[base].wall, strict=True)])
            cells = [
                f"{ratio:.2f}x",
                f"{paired.median:.2f}x",
                "met" if max(ratio, paired.median) <= 1.5 else "**missed**",
            ]
        lines.append(
            f"| {label} | {ms(st.median)} | {ms(st.p90)} | {ms(st.min)} | {' | '.join(cells)} |"
        )
    lines += [
        "",
        "This process in the measured span (medians): CPU time and time in the garbage "
        "collector; the most Python memory held at once in one more run under tracemalloc "
        "(untimed); the deployer's discovery window, which comes before its gather.",
        "",
        "| measurement | CPU s | GC ms | Python heap peak MB | discovery window ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in LABELS.items():
        series = s[name]
        disc = ms(Stats(series.discovery).median) if series.discovery else ""
        lines.append(
            f"| {label} | {Stats(series.cpu).median:.2f} | {ms(Stats(series.gc).median)} "
            f"| {series.heap_peak / 2**20:.1f} | {disc} |"
        )
    bounded = "within" if meter.longest <= MAX_LOG_LINE else "**over**"
    lines += [
        "",
        f"Resident memory of this process (the deployer, the raw client, nats-py): "
        f"{_mb(run.rest_kb)} MB connected before the first run, {_mb(run.peak_kb)} MB at its "
        "peak (VmHWM) over every run.",
        f"Log lines of the deployer (JSON, info level) over the whole benchmark: "
        f"{meter.lines}; the longest {meter.longest} bytes (`{meter.longest_event}`), "
        f"{bounded} {MAX_LOG_LINE}.",
        "",
    ]
    return "\n".join(lines)


def shape_parser(description: str | None, *, hosts: int, runs: int) -> argparse.ArgumentParser:
    """The options every benchmark over bare responders takes (this one's, closures.py's):
    the fleet's size and shape, the rounds, and whether RESULTS.md is written."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--hosts", type=int, default=hosts, help=f"N (default {hosts})")
    parser.add_argument("--runs", type=int, default=runs, help=f"measured rounds (default {runs})")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    parser.add_argument(
        "--processes", type=int, default=2, help="responder processes (default 2: the CPUs)"
    )
    parser.add_argument(
        "--per-connection", type=int, default=250, help="hosts per responder connection"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the report, leave RESULTS.md alone"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    description = __doc__.split("\n\n")[0] if __doc__ else None
    parser = shape_parser(description, hosts=10_000, runs=7)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=tuple(LABELS),
        default=(),
        help="run only these measurements and print a line each (under py-spy, say)",
    )
    parser.add_argument(
        "--profile",
        choices=("once", "rollout"),
        help="instead of measuring, cProfile deploys of this kind and print the hottest",
    )
    return parser.parse_args(argv)


async def main(args: argparse.Namespace, meter: LineMeter) -> None:
    load_before = load_average()
    shape = Shape(args.hosts, args.processes, args.per_connection)
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as tmp:
        if args.profile:
            await profile(shape, runs=args.runs, root=Path(tmp), kind=args.profile)
            return
        started = time.perf_counter()
        run = await measure(
            shape, runs=args.runs, warmup=args.warmup, root=Path(tmp), only=args.only
        )
        elapsed = time.perf_counter() - started
    if args.only:
        for name, series in run.series.items():
            st, cpu, in_gc = Stats(series.wall), Stats(series.cpu), Stats(series.gc)
            print(
                f"{name}: median {ms(st.median)} ms, min {ms(st.min)} ms, "
                f"CPU {cpu.median:.2f} s, GC {ms(in_gc.median)} ms"
            )
        return
    text = report(run, meter, invocation("scale.py"), elapsed, (load_before, load_average()))
    publish("fanout-scale", text, write=not args.no_write)


if __name__ == "__main__":
    arguments = parse_args()
    line_meter = LineMeter()
    configure_logging("info", json=True, stream=line_meter)
    gc.callbacks.append(GC_CLOCK)
    anyio.run(main, arguments, line_meter, backend="asyncio")
