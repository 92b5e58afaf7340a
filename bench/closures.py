"""Closure deploys at scale: each of 1,000 hosts sent its own store path, against raw nats-py.

A closure deploy (docs/closures.md) cannot publish one request to ``deploy.test.all``: each
host is sent the store path of its own system, signed for its own subject
``deploy.test.<host>`` with the path in the signed text. So the deployer publishes N requests,
each signed, and gathers N hosts' statuses. This measures what that costs the deployer
against the cheapest client that sends the same requests.

The hosts are ``scale.py``'s: bare responders (``_responders.py``: accepted, started and
completed at once, as a listener answers, and a discovery answer that says ``closures:
true``, as a listener of this release does) in other processes, several hundred to a NATS
connection, on the nats-server ``fleet_core.testing.local_fleet`` starts with the permissions
``nats-config`` writes for the test-tier deployer key (which the deployer and the raw client
both use). Every answer comes on its host's bound reply subject and names the signer, so the
deployer's checks run as on a real fleet. The responders do not verify signatures or fetch
anything: that is each host's own cost, paid in parallel on a real fleet.

What each host is sent comes from a build's result, as after ``fleet-deploy deploy --build``:
a completed ``BuildResult`` of every host, each built to its own store path
``/nix/store/<hash>-nixos-system-<host>-<label>`` from one commit, turned into ``Closures`` by
``closures_from_build`` (timed too: the deployer's step between the build and the deploy).
The build itself is not measured (the builder builds each host's system with nix, minutes per
host, on its own machine); ``tests/test_closure_deploy.py`` runs build-then-deploy end to end
with a real builder.

Measured, in shuffled order every round:

``raw``
    plain nats-py: subscribe to the reply subject and its bound replies, then for each host
    sign (ed25519 over the v2 text, ``protocol.signing.canonical_text`` with the store path)
    and publish the deployer's request JSON with that host's path to ``deploy.test.<host>``;
    ``json.loads`` every status until each host sent a final one. First publish → last final.
``deploy`` / ``deploy+cb``
    ``Deployer.deploy(Target.all(Tier.TEST), closures=Closures(...))`` without / with an
    ``on_update`` callback that does nothing (the CLI and the MCP server pass one), from its
    first publish to a host's subject (a ``Bus`` subclass notes it) to its return. Its
    discovery window, before that, is reported apart: a closure deploy discovers first to
    learn which hosts take closures.

Also: the largest message each side published (every request, every discovery) against the
server's max payload, and the largest request a closure deploy can make (the longest host
name and store path the protocol admits, signed), which does not depend on the fleet's size;
this process's resident memory connected before any run and at its peak (``VmHWM``), and
its CPU time in the measured span.

``python bench/closures.py`` (1,000 hosts, 15 runs: about 30 seconds), ``--hosts N``,
``--runs N``; results go to the ``closures`` block of RESULTS.md unless ``--no-write``.
``--profile`` runs cProfile over ``--runs`` deploys instead of measuring.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import gc
import hashlib
import json
import pstats
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import nats
from _responders import host_name
from _results import Stats, invocation, load_average, machine, ms, publish
from nats.aio.client import Client
from nats.aio.msg import Msg
from scale import (
    RESPONDER_PERMISSIONS,
    RESPONDERS,
    LineMeter,
    MarkedBus,
    RawSigner,
    Shape,
    responder_processes,
    shape_parser,
)

from fleet_core.build.protocol import BuildResult, HostBuild, HostBuildState
from fleet_core.config.settings import DeployTiming
from fleet_core.deploy.closures import Closures, closures_from_build
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.logging import configure_logging
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import MAX_REQUEST_BYTES, DeployRequest, encode
from fleet_core.protocol.signing import RequestSigner, canonical_text
from fleet_core.protocol.subjects import RESPONSES_PREFIX, Target, Tier
from fleet_core.testing import local_fleet

TARGET = Target.all(Tier.TEST)
DEPLOYER = "deployer"
FINAL = frozenset({"completed", "failed", "rejected"})
COMMIT = "5e4fbfb" + "0" * 33  # the commit every system was "built" from
LABEL = "25.11.20251201.5e4fbfb"  # system.nixos.label of every simulated system
# The shipped discovery windows; a cap that a thousand answers fit in under load; a silence
# limit no healthy run reaches.
TIMING = DeployTiming(
    answer_within=30.0,
    silence_limit=60.0,
    discovery_first=2.0,
    discovery_quiet=0.3,
    discovery_cap=15.0,
)
RUN_LIMIT = 120.0  # no single measured run may take longer (seconds)
TARGET_RATIO = 1.5
_NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"


def store_path(host: str, commit: str = COMMIT, label: str = LABEL) -> str:
    """A system's store path as nix would print it: a 32-character hash of nix's alphabet
    (here a digest of the host and commit) and ``nixos-system-<host>-<label>``."""
    digest = hashlib.sha256(f"{host}\n{commit}".encode()).digest()
    hashed = "".join(_NIX_BASE32[byte % 32] for byte in digest)
    return f"/nix/store/{hashed}-nixos-system-{host}-{label}"


def _status_kb(field_name: str) -> int:
    """A ``/proc/self/status`` figure in kB (0 where there is none: not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MeasuredBus(MarkedBus):
    """``scale.MarkedBus`` (the first publish to a test-tier deploy subject) that also keeps
    the largest payload it published."""

    def __init__(self, client: Client, url: str) -> None:
        super().__init__(client, url)
        self.largest = 0
        self.largest_subject = ""

    async def publish(self, subject: str, payload: bytes, *, reply: str | None = None) -> None:
        if len(payload) > self.largest:
            self.largest, self.largest_subject = len(payload), subject
        await super().publish(subject, payload, reply=reply)


# -- the raw baseline ------------------------------------------------------------------------


class ClosureSigner(RawSigner):
    """``scale.RawSigner`` over the v2 text: the store path signed with the rest."""

    def closure_fields(self, request_id: str, subject: str, path: str) -> dict[str, Any]:
        signed_at = round(time.time(), 3)
        text = canonical_text(
            request_id=request_id,
            subject=subject,
            action="switch",
            revision=COMMIT,
            signed_at=signed_at,
            store_path=path,
        )
        signature = self._pair.sign(text)
        encoded = base64.urlsafe_b64encode(signature).decode().rstrip("=")
        return {"signer": self.public_key, "signed_at": signed_at, "signature": encoded}


@dataclass
class RawRun:
    """One raw closure deployment: its reply subjects, the finals by host, the largest
    request it published."""

    client: Client
    signer: ClosureSigner
    paths: dict[str, str]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    finals: dict[str, str] = field(default_factory=dict)
    largest: int = 0

    def __post_init__(self) -> None:
        self.reply = RESPONSES_PREFIX + self.id
        self._all_in = anyio.Event()

    def body(self, host: str, subject: str) -> bytes:
        """The deployer's request JSON for ``host``: its path, signed for its subject."""
        path = self.paths[host]
        request = {
            "action": "switch",
            "revision": COMMIT,
            "reply_to": self.reply,
            "id": self.id,
            "bind": True,
            "store_path": path,
            **self.signer.closure_fields(self.id, subject, path),
        }
        return json.dumps(request).encode()

    async def _on_reply(self, msg: Msg) -> None:
        status = json.loads(msg.data)
        if status["status"] in FINAL:
            self.finals[status["hostname"]] = status["status"]
            if len(self.finals) == len(self.paths):
                self._all_in.set()

    async def run(self) -> tuple[float, float]:
        """First publish → every host final: wall and CPU seconds."""
        subscriptions = [
            await self.client.subscribe(self.reply, cb=self._on_reply),
            await self.client.subscribe(f"{self.reply}.test.*", cb=self._on_reply),
        ]
        await self.client.flush()
        try:
            cpu, started = time.process_time(), time.perf_counter()
            for host in self.paths:
                subject = f"deploy.test.{host}"
                body = self.body(host, subject)
                self.largest = max(self.largest, len(body))
                await self.client.publish(subject, body, reply=self.reply)
            await self._all_in.wait()
            wall, used = time.perf_counter() - started, time.process_time() - cpu
        finally:
            for subscription in subscriptions:
                await subscription.unsubscribe()
        bad = {h: s for h, s in self.finals.items() if s != "completed"}
        assert not bad, f"raw: not completed: {sorted(bad)[:5]}"
        return wall, used


# -- the deployer -----------------------------------------------------------------------------


def _ignore(host: HostResult, result: DeploymentResult) -> None:
    """The cheapest ``on_update``: what the deployer costs when someone listens."""


@dataclass(frozen=True)
class Sample:
    wall: float
    cpu: float
    discovery: float | None = None


async def deployer_run(
    deployer: Deployer, bus: MeasuredBus, closures: Closures, *, with_callback: bool
) -> Sample:
    """One closure deploy: first publish to a host → return; and the discovery before."""
    bus.first_deploy = None
    started = time.perf_counter()
    result = await deployer.deploy(
        TARGET,
        revision="master",
        action=Action.SWITCH,
        timeout=RUN_LIMIT,
        on_update=_ignore if with_callback else None,
        closures=closures,
    )
    done, cpu = time.perf_counter(), time.process_time()
    assert bus.first_deploy is not None, "the deployer published no request"
    assert result.ok, f"deploy failed: {result.counts}"
    n = len(closures.paths)
    assert len(result.hosts) == n, f"deploy saw {len(result.hosts)} of {n} hosts"
    assert result.server_verified and not result.flagged_count, "replies were not believed"
    wrong = [h.hostname for h in result.hosts if h.store_path != closures.paths[h.hostname]]
    assert not wrong, f"hosts reported with another path: {wrong[:5]}"
    return Sample(
        done - bus.first_deploy, cpu - bus.cpu_at_first_deploy, bus.first_deploy - started
    )


# -- rounds -----------------------------------------------------------------------------------


Measure = Callable[[], Awaitable[Sample]]


@dataclass
class Series:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    discovery: list[float] = field(default_factory=list)


async def rounds(measures: dict[str, Measure], runs: int, warmup: int) -> dict[str, Series]:
    """``warmup`` + ``runs`` rounds; each round runs every measurement once, in random order."""
    series = {name: Series() for name in measures}
    order = list(measures)
    rng = random.Random(runs)  # noqa: S311 - shuffling, not secrets
    for round_no in range(warmup + runs):
        rng.shuffle(order)
        for name in order:
            gc.collect()
            with anyio.fail_after(RUN_LIMIT):
                sample = await measures[name]()
            if round_no >= warmup:
                series[name].wall.append(sample.wall)
                series[name].cpu.append(sample.cpu)
                if sample.discovery is not None:
                    series[name].discovery.append(sample.discovery)
        print(f"  round {round_no + 1}/{warmup + runs} done", flush=True)
    return series


@dataclass
class Run:
    shape: Shape
    setup_s: float
    from_build_s: float  # closures_from_build of the whole build (median)
    max_payload: int  # the server's, from its INFO
    possible: int  # largest_possible_request's
    rest_kb: int
    peak_kb: int
    raw_largest: int
    deployer_largest: int
    deployer_largest_subject: str
    series: dict[str, Series]


@asynccontextmanager
async def bench_fleet(shape: Shape, root: Path) -> AsyncIterator[tuple[Any, float]]:
    """nats-server and the responders, until the block ends; and how long they took."""
    async with local_fleet(
        (), {DEPLOYER: "test"}, extra_users={RESPONDERS: RESPONDER_PERMISSIONS}, root=root
    ) as fleet:
        started = time.perf_counter()
        async with responder_processes(fleet.url, fleet.key_path(RESPONDERS), shape):
            yield fleet, time.perf_counter() - started


async def profile(shape: Shape, *, runs: int, root: Path) -> None:
    """cProfile ``runs`` closure deploys (with callback); only the deployer's process is in it."""
    names = [host_name(i) for i in range(shape.hosts)]
    closures, _ = from_build(built(names), names)
    async with bench_fleet(shape, root) as (fleet, _):
        seed = fleet.seed(DEPLOYER)
        bus = await MeasuredBus.connect(fleet.url, seed, name="bench deployer")
        assert isinstance(bus, MeasuredBus)
        async with bus:
            deployer = Deployer(bus, timing=TIMING, signer=seed)
            await deployer_run(deployer, bus, closures, with_callback=True)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(runs):
                await deployer_run(deployer, bus, closures, with_callback=True)
            profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout)
    print(f"\n== cProfile: {runs} closure deploys (with on_update) at N={shape.hosts} ==")
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)


def built(names: Sequence[str]) -> BuildResult:
    """A build of every host that ended well: each built to its own system from COMMIT and
    copied to the cache, as the build tracker records it."""
    return BuildResult(
        build_id=uuid.uuid4().hex,
        target="build.fleet.all",
        repo="fleet",
        revision="main",
        builder="bench",
        commit=COMMIT,
        status="completed",
        hosts=[
            HostBuild(
                host=name,
                state=HostBuildState.BUILT,
                store_path=store_path(name),
                copied_to="s3://nix-cache",
            )
            for name in names
        ],
    )


def from_build(build: BuildResult, names: Sequence[str]) -> tuple[Closures, float]:
    """``closures_from_build`` for the target's hosts, and its median time of 5."""
    times = []
    closures = None
    for _ in range(5):
        started = time.perf_counter()
        closures = closures_from_build(build, names)
        times.append(time.perf_counter() - started)
    assert closures is not None and len(closures.paths) == len(names) and not closures.failed
    return closures, Stats(times).median


async def measure(shape: Shape, *, runs: int, warmup: int, root: Path) -> Run:
    names = [host_name(i) for i in range(shape.hosts)]
    closures, from_build_s = from_build(built(names), names)
    paths = dict(closures.paths)
    async with bench_fleet(shape, root) as (fleet, setup_s):
        seed = fleet.seed(DEPLOYER)
        bus = await MeasuredBus.connect(fleet.url, seed, name="bench deployer")
        assert isinstance(bus, MeasuredBus)
        raw = await nats.connect(fleet.url, nkeys_seed_str=seed.reveal(), name="bench raw")
        signer = ClosureSigner(seed)
        raw_largest = 0
        try:
            async with bus:
                deployer = Deployer(bus, timing=TIMING, signer=seed)

                async def raw_run() -> Sample:
                    nonlocal raw_largest
                    run = RawRun(raw, signer, paths)
                    wall, cpu = await run.run()
                    raw_largest = max(raw_largest, run.largest)
                    return Sample(wall, cpu)

                async def deploy() -> Sample:
                    return await deployer_run(deployer, bus, closures, with_callback=False)

                async def deploy_cb() -> Sample:
                    return await deployer_run(deployer, bus, closures, with_callback=True)

                rest = _status_kb("VmRSS")
                series = await rounds(
                    {"raw": raw_run, "deploy": deploy, "deploy+cb": deploy_cb}, runs, warmup
                )
                peak = _status_kb("VmHWM")
                max_payload = int(raw.max_payload)
                possible = largest_possible_request(seed.reveal())
        finally:
            await raw.close()
    return Run(
        shape,
        setup_s,
        from_build_s,
        max_payload,
        possible,
        rest,
        peak,
        raw_largest,
        bus.largest,
        bus.largest_subject,
        series,
    )


def largest_possible_request(seed: str) -> int:
    """The largest request a closure deploy can send, whatever the fleet's size: the longest
    host name (63 characters), a store path of the longest name nix admits, a full commit,
    signed, bound (``DeployRequest``, encoded as the deployer encodes it)."""
    host = "h" * 63
    name = f"nixos-system-{host}-" + "9" * (211 - len(f"nixos-system-{host}-"))
    path = f"/nix/store/{'a' * 32}-{name}"
    subject = f"deploy.test.{host}"
    request = DeployRequest(
        action=Action.SWITCH,
        revision=COMMIT,
        reply_to=RESPONSES_PREFIX + uuid.uuid4().hex,
        id=uuid.uuid4().hex,
        bind=True,
        store_path=path,
    )
    signer = RequestSigner(seed)
    signature = signer.sign(
        request_id=str(request.id),
        subject=subject,
        action=request.action.value,
        revision=request.revision,
        now=time.time(),
        store_path=path,
    )
    return len(encode(request.signed(signature)))


# -- report -----------------------------------------------------------------------------------

LABELS = {
    "raw": "raw nats-py: a signed request per host → every host final",
    "deploy": "deploy(closures=…): first publish → return",
    "deploy+cb": "deploy(closures=…, on_update=…): first publish → return",
}


def report(
    run: Run, meter: LineMeter, command: str, elapsed: float, load: tuple[float, float]
) -> str:
    s, shape = run.series, run.shape
    raw = Stats(s["raw"].wall)
    possible = run.possible
    lines = [
        f"### Closure deploys: {shape.hosts:,} hosts, each its own store path, vs. raw nats-py",
        "",
        f"- Machine: {machine(load[0])}; {load[1]:.2f} after.",
        f"- Command: `{command}` ({elapsed:.0f} s); medians of {raw.runs} runs after a "
        "warm-up round; each round runs the three measurements in shuffled order.",
        f"- Hosts: {shape.hosts:,} bare responders (`bench/_responders.py`) in "
        f"{shape.processes} processes, {shape.per_connection} to a NATS connection (up in "
        f"{run.setup_s:.1f} s); each host sent its own request on `deploy.test.<host>` with "
        "its own store path, signed over the v2 text; every answer on its host's bound reply "
        "subject. nats-server and the responders share the machine's CPUs with the deployer.",
        f"- Deployer timing: discovery_quiet {TIMING.discovery_quiet:g} s (the shipped "
        f"default), discovery_cap {TIMING.discovery_cap:g} s.",
        "",
        f"Target: the deployer's gather at most {TARGET_RATIO}x the raw gather of the same "
        "requests:",
        "",
        "| measurement | median ms | p90 ms | min ms | median ÷ raw median "
        f"| per round ÷ raw (median) | target ≤ {TARGET_RATIO}x | CPU s | discovery ms |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, label in LABELS.items():
        st = Stats(s[name].wall)
        cpu = Stats(s[name].cpu).median
        disc = ms(Stats(s[name].discovery).median) if s[name].discovery else ""
        cells = ["", "", ""]
        if name != "raw":
            ratio = st.median / raw.median
            paired = Stats([a / b for a, b in zip(s[name].wall, s["raw"].wall, strict=True)])
            met = max(ratio, paired.median) <= TARGET_RATIO
            cells = [f"{ratio:.2f}x", f"{paired.median:.2f}x", "met" if met else "**missed**"]
        lines.append(
            f"| {label} | {ms(st.median)} | {ms(st.p90)} | {ms(st.min)} | {' | '.join(cells)} "
            f"| {cpu:.2f} | {disc} |"
        )
    under = "under" if max(run.deployer_largest, possible) <= run.max_payload else "**over**"
    lines += [
        "",
        f"Largest message published: the deployer {run.deployer_largest:,} bytes "
        f"(`{run.deployer_largest_subject.rsplit('.', 1)[0]}.<host>`), the raw client "
        f"{run.raw_largest:,} bytes; the largest closure request the protocol admits (a "
        f"63-character host name, a 211-character store path name, signed) {possible:,} "
        f"bytes — the same at any fleet size, {under} the server's max payload "
        f"({run.max_payload:,} bytes) and the request limit ({MAX_REQUEST_BYTES:,}).",
        f"`closures_from_build` of the {shape.hosts:,}-host build (every host built, one "
        f"commit): {ms(run.from_build_s)} ms, median of 5.",
        f"Resident memory of this process (the deployer, the raw client, nats-py): "
        f"{run.rest_kb / 1024:.1f} MB connected before the first run, "
        f"{run.peak_kb / 1024:.1f} MB at its peak (VmHWM) over every run.",
        f"Log lines of the deployer (JSON, info level) over the whole benchmark: "
        f"{meter.lines}; the longest {meter.longest} bytes (`{meter.longest_event}`).",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    description = __doc__.split("\n\n")[0] if __doc__ else None
    parser = shape_parser(description, hosts=1000, runs=15)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of measuring, cProfile --runs deploys and print the hottest functions",
    )
    return parser.parse_args(argv)


async def main(args: argparse.Namespace, meter: LineMeter) -> None:
    load_before = load_average()
    shape = Shape(args.hosts, args.processes, args.per_connection)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fleet-closures-") as tmp:
        if args.profile:
            await profile(shape, runs=args.runs, root=Path(tmp))
            return
        run = await measure(shape, runs=args.runs, warmup=args.warmup, root=Path(tmp))
    elapsed = time.perf_counter() - started
    text = report(run, meter, invocation("closures.py"), elapsed, (load_before, load_average()))
    publish("closures", text, write=not args.no_write)


if __name__ == "__main__":
    arguments = parse_args()
    line_meter = LineMeter()
    configure_logging("info", json=True, stream=line_meter)
    anyio.run(main, arguments, line_meter, backend="asyncio")
