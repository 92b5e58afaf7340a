"""The dashboard's server with 1,000 hosts: how soon a page hears of a deploy, and its cost.

The hosts are ``scale.py``'s bare responders (``_responders.py``: accepted, started and
completed at once, on each host's bound reply subject) in two other processes; the
dashboard is the real ``fleet-deploy dashboard`` in a process of its own, reading with an
observer key, as deployed; each deploy is the real ``fleet-deploy deploy deploy.test.all``
(the test key), in a process of its own too. This process only reads: the page's event
stream, and — the baseline — every status straight off NATS with plain nats-py. All of a
deploy's statuses arrive within a fraction of a second: the worst case for the server, whose
events must keep up.

Measured, every round:

``lag``
    for each host, from its final status arriving here over NATS to the first
    ``deployment`` event on ``/api/events`` that shows it final; the median and the
    largest over the hosts (the page's "within a second").
``fleet``
    ``GET /api/fleet``: the whole board (1,000 rows), its time and size, with the deploy's
    statuses taken into the board.
``cpu``
    the dashboard process's CPU time during the deploy and its events (``/proc``).

Also: the time from the dashboard's start to its first ``fleet`` event listing every host
(its first discovery, with the shipped windows), and its resident memory (``VmRSS`` after
the rounds, ``VmHWM``). ``python bench/dashboard.py`` (1,000 hosts, 5 rounds: ~30 s);
results go to the ``fanout-dashboard`` block of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import nats
from _results import Stats, load_average, machine, ms, publish
from nats.aio.msg import Msg
from scale import RESPONDER_PERMISSIONS, RESPONDERS, Shape, responder_processes

from fleet_core.testing import local_fleet

DEPLOYER, OBSERVER = "deployer", "dash"
FINAL = frozenset({"completed", "failed", "rejected"})
RUN_LIMIT = 60.0
START_LIMIT = 60.0
SCRIPTS = Path(sys.executable).parent
DEPLOYMENT = "deployment"


def _proc_status(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stream:
    """The page's event stream: when each host was first shown final, per deployment."""

    def __init__(self) -> None:
        self.shown: dict[str, dict[str, float]] = {}
        self.fleets: list[tuple[float, int]] = []  # (arrival, hosts listed)
        self.events = 0
        self.changed = anyio.Event()

    async def read(self, client: httpx.AsyncClient) -> None:
        name, data = "", ""
        async with client.stream("GET", "/api/events", timeout=None) as response:
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data = line[5:].strip()
                elif not line and data:
                    self._take(name, json.loads(data), time.monotonic())
                    name, data = "", ""

    def _take(self, name: str, body: Any, at: float) -> None:
        self.events += 1
        if name == "fleet":
            self.fleets.append((at, len(body["hosts"])))
        elif name == DEPLOYMENT:
            seen = self.shown.setdefault(body["id"], {})
            for host in body["hosts"]:
                if host["final"]:
                    seen.setdefault(host["hostname"], at)
        self.changed.set()
        self.changed = anyio.Event()


class Wire:
    """Every final status straight off NATS: when it arrived here."""

    def __init__(self) -> None:
        self.finals: dict[str, dict[str, float]] = {}

    async def on_message(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        if len(tokens) != 5:
            return
        body = json.loads(msg.data)
        if body.get("status") in FINAL:
            self.finals.setdefault(tokens[2], {}).setdefault(body["hostname"], time.monotonic())


async def _dashboard(url: str, key: Path) -> tuple[anyio.abc.Process, str]:
    argv = [
        str(SCRIPTS / "fleet-deploy"),
        "dashboard",
        *("--nats-url", url, "--nkey-file", str(key)),
        *("--listen", "127.0.0.1:0", "--log-level", "warning"),
    ]
    process = await anyio.open_process(argv, stderr=None)
    assert process.stdout is not None
    with anyio.fail_after(START_LIMIT):
        buffered = b""
        while b"\n" not in buffered:
            buffered += await process.stdout.receive()
    line = buffered.decode().splitlines()[0]
    assert line.startswith("dashboard: "), line
    return process, line.removeprefix("dashboard: ")


async def measure(shape: Shape, runs: int, root: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"lag_median": [], "lag_max": [], "fleet": [], "cpu": []}
    async with (
        local_fleet(
            (),
            {DEPLOYER: "test", OBSERVER: "observer"},
            extra_users={RESPONDERS: RESPONDER_PERMISSIONS},
            root=root,
        ) as fleet,
        responder_processes(fleet.url, fleet.key_path(RESPONDERS), shape),
    ):
        started = time.monotonic()
        process, url = await _dashboard(fleet.url, fleet.key_path(OBSERVER))
        stream, wire = Stream(), Wire()
        seed = fleet.seed(DEPLOYER)
        raw = await nats.connect(fleet.url, nkeys_seed_str=seed.reveal(), name="bench raw")
        try:
            await raw.subscribe("deploy.responses.>", cb=wire.on_message)
            async with (
                httpx.AsyncClient(base_url=url) as client,
                anyio.create_task_group() as tasks,
            ):
                tasks.start_soon(stream.read, client)
                with anyio.fail_after(START_LIMIT):
                    while not any(n >= shape.hosts for _, n in stream.fleets):
                        await stream.changed.wait()
                result["first_fleet"] = (
                    next(at for at, n in stream.fleets if n >= shape.hosts) - started
                )
                deploy = [
                    str(SCRIPTS / "fleet-deploy"),
                    "deploy",
                    "deploy.test.all",
                    *("--nats-url", fleet.url, "--nkey-file", str(fleet.key_path(DEPLOYER))),
                ]
                for _ in range(runs):
                    before = set(wire.finals)
                    cpu_before = _cpu_s(process.pid)
                    with anyio.fail_after(RUN_LIMIT):
                        done = await anyio.run_process(deploy, check=False)
                        assert done.returncode == 0, done.stderr.decode()[-2000:]
                        (ident,) = set(wire.finals) - before
                        while len(stream.shown.get(ident, {})) < shape.hosts:
                            await stream.changed.wait()
                    result["cpu"].append(_cpu_s(process.pid) - cpu_before)
                    lags = [
                        stream.shown[ident][host] - at for host, at in wire.finals[ident].items()
                    ]
                    result["lag_median"].append(Stats(lags).median)
                    result["lag_max"].append(max(lags))
                    begun = time.perf_counter()
                    body = (await client.get("/api/fleet")).content
                    result["fleet"].append(time.perf_counter() - begun)
                    result["fleet_kb"] = len(body) / 1024
                result["rss_kb"] = _proc_status(process.pid, "VmRSS")
                result["hwm_kb"] = _proc_status(process.pid, "VmHWM")
                result["events"] = stream.events
                tasks.cancel_scope.cancel()
        finally:
            await raw.close()
            process.terminate()
            with anyio.move_on_after(10):
                await process.wait()
    return result


def report(shape: Shape, runs: int, result: dict[str, Any], load: tuple[float, float]) -> str:
    lag_median, lag_max = Stats(result["lag_median"]), Stats(result["lag_max"])
    fleet, cpu = Stats(result["fleet"]), Stats(result["cpu"])
    return "\n".join(
        [
            "### Dashboard: 1,000 hosts (`python bench/dashboard.py`)",
            "",
            f"- Hosts: {shape.hosts:,} bare responders in {shape.processes} processes; the "
            "real `fleet-deploy dashboard` in its own process with an observer key; "
            f"{runs} deploys to every host (statuses all within a fraction of a second).",
            f"- {machine(load[0])}",
            "",
            "| measure | median | worst round |",
            "|---|---|---|",
            f"| final status on NATS → shown final on /api/events, median host | "
            f"{ms(lag_median.median)} ms | {ms(max(result['lag_median']))} ms |",
            f"| the same, last host | {ms(lag_max.median)} ms | {ms(max(result['lag_max']))} ms |",
            f"| GET /api/fleet ({result['fleet_kb']:.0f} KiB) | {ms(fleet.median)} ms | "
            f"{ms(max(result['fleet']))} ms |",
            f"| dashboard CPU per deploy of {shape.hosts:,} | {ms(cpu.median)} ms | "
            f"{ms(max(result['cpu']))} ms |",
            "",
            f"- First `fleet` event with every host, from the process's start: "
            f"{result['first_fleet']:.2f} s (its discovery, with the shipped windows).",
            f"- Dashboard memory: {result['rss_kb'] / 1024:.0f} MiB resident after the rounds, "
            f"{result['hwm_kb'] / 1024:.0f} MiB at its peak; {result['events']:,} events read.",
            f"- Load average before/after: {load[0]:.2f} / {load[1]:.2f}.",
            "",
        ]
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--per-connection", type=int, default=250)
    parser.add_argument("--no-write", action="store_true")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    shape = Shape(args.hosts, args.processes, args.per_connection)
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="fleet-dashboard-") as tmp:
        result = await measure(shape, args.runs, Path(tmp))
    text = report(shape, args.runs, result, (load_before, load_average()))
    publish("fanout-dashboard", text, write=not args.no_write)


if __name__ == "__main__":
    anyio.run(main, parse_args(), backend="asyncio")
