"""Listener footprint and CLI start-up: resident memory, `--help` time, no MCP imports.

1. Starts a real ``fleet-deploy listener`` (the installed console script) against the
   nats-server of a ``fleet_core.testing.local_fleet`` with the tiered keys, waits for its
   "listening" log line, lets it sit idle, and reads VmRSS (plus VmHWM, PSS and USS from
   ``smaps_rollup``) from /proc. Then it deploys once to that host (the packaged
   ``simulated_rebuild`` as the rebuild command, a real subprocess) and reads them again.
   Each run does this twice: metrics off (the default, the figure with a target), then
   ``--metrics-enabled`` on a loopback port, scraped once before each reading as
   Prometheus would. Repeated ``--runs`` times, medians.
2. Resident memory of a bare interpreter and of one with each big dependency imported,
   to show where the listener's memory goes.
3. ``fleet-deploy --help`` wall time (subprocess, median of ``--help-runs``), next to
   ``python -c pass``.
4. Which modules the CLI and the listener import: none may be ``mcp`` or ``mcp.*``.

Run ``python bench/listener_rss.py`` (about 30 s); results go to RESULTS.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
from _results import Stats, load_average, machine, ms, publish
from anyio.streams.text import TextReceiveStream

from fleet_core.deploy.deployer import Deployer
from fleet_core.logging import configure_logging
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import Target, Tier
from fleet_core.testing import (
    FLAKE_URL,
    FleetHost,
    LocalFleet,
    local_fleet,
    simulated_rebuild_command,
)

HOST = "rss1"
DEPLOYER = "deployer"
SETTLE = 2.0  # seconds an idle listener is left alone before its memory is read
RSS_TARGET_MB = 45.0
HELP_TARGET_S = 0.4
START_LIMIT = 30.0
SCRIPTS = Path(sysconfig.get_path("scripts"))
# Imported cumulatively, in this order, to see what each step adds to resident memory.
IMPORTS = (
    "asyncio,ssl,json,logging",  # the standard library every other step needs
    "anyio",
    "structlog",
    "nats",  # with nkeys and PyNaCl (libsodium)
    "pydantic",
    "fleet_core.protocol.messages",  # the wire models (pydantic classes)
    "fleet_core.host.daemon",  # everything the listener runs
    "prometheus_client",  # only with --metrics-enabled
)
_RSS_PROBE = (
    "import sys\n"
    "for names in sys.argv[1:]:\n"
    "    for name in names.split(','): __import__(name)\n"
    "status = open('/proc/self/status').read().split('\\n')\n"
    "print([l.split()[1] for l in status if l.startswith('VmRSS')][0])\n"
)
_MCP_PROBE = (
    "import sys\n"
    "for name in sys.argv[1:]: __import__(name)\n"
    "print(len(sys.modules), sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))"
)


def fleet_deploy() -> Path:
    """The installed console script: the environment's scripts dir, else beside python."""
    for candidate in (SCRIPTS / "fleet-deploy", Path(sys.executable).parent / "fleet-deploy"):
        if candidate.is_file():
            return candidate
    raise SystemExit("fleet-deploy is not installed in this environment: pip install -e .")


@dataclass
class Memory:
    rss_mb: float
    hwm_mb: float
    pss_mb: float
    uss_mb: float


def read_memory(pid: int) -> Memory:
    """VmRSS and VmHWM from /proc/PID/status; PSS and USS from /proc/PID/smaps_rollup."""
    status = _kb_fields(Path(f"/proc/{pid}/status").read_text())
    rollup = _kb_fields(Path(f"/proc/{pid}/smaps_rollup").read_text())
    private = rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
    return Memory(
        rss_mb=status["VmRSS"] / 1024,
        hwm_mb=status["VmHWM"] / 1024,
        pss_mb=rollup.get("Pss", 0) / 1024,
        uss_mb=private / 1024,
    )


def _kb_fields(text: str) -> dict[str, int]:
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name.strip()] = int(parts[0])
    return fields


@dataclass
class ListenerRun:
    metrics: bool  # started with --metrics-enabled
    start_s: float  # spawn → "listening" logged
    idle: Memory
    after_job: Memory
    job_s: float  # deploy() of one simulated rebuild


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _scrape(port: int) -> str:
    """GET /metrics from the listener, as Prometheus would (blocking: run in a thread)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200, f"/metrics answered {response.status}"
        return response.read().decode()
    finally:
        connection.close()


async def one_listener_run(fleet: LocalFleet, *, metrics: bool) -> ListenerRun:
    argv = [
        str(fleet_deploy()), "listener",
        "--hostname", HOST, "--tier", "test",
        "--nats-url", fleet.url, "--nkey-file", str(fleet.key_path(HOST)),
        "--flake-url", FLAKE_URL,
        "--state-dir", str(fleet.state_dir(HOST)),
        "--rebuild-command", shlex.join(simulated_rebuild_command()),
    ]  # fmt: skip
    port = _free_port()
    if metrics:
        argv += ["--metrics-enabled", "--metrics-addr", f"127.0.0.1:{port}"]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLEET_DEPLOY_", "HOMELAB_DEPLOY_"))
    }
    log: list[str] = []
    listening = anyio.Event()
    spawned = time.perf_counter()
    process = await anyio.open_process(argv, stdin=subprocess.DEVNULL, env=env)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_read_log, process, log, listening)
            with anyio.fail_after(START_LIMIT):
                await listening.wait()
            start_s = time.perf_counter() - spawned
            if metrics:
                await anyio.to_thread.run_sync(_scrape, port)
            await anyio.sleep(SETTLE)
            idle = read_memory(process.pid)
            job_s = await _deploy_once(fleet)
            if metrics:
                scraped = await anyio.to_thread.run_sync(_scrape, port)
                done = 'action="switch",error_code="",status="completed"} 1.0'
                assert f"fleet_deploy_deployments_total{{{done}" in scraped, "deploy not counted"
            await anyio.sleep(SETTLE)
            after_job = read_memory(process.pid)
            process.terminate()
            with anyio.fail_after(10):
                await process.wait()
    except BaseException:
        print("listener log:\n" + "\n".join(log[-40:]), file=sys.stderr)
        raise
    finally:
        if process.returncode is None:
            process.kill()
        await process.aclose()
    return ListenerRun(
        metrics=metrics, start_s=start_s, idle=idle, after_job=after_job, job_s=job_s
    )


async def _read_log(process: anyio.abc.Process, log: list[str], listening: anyio.Event) -> None:
    """Keep the listener's stderr drained; set ``listening`` at its "listening" line."""
    assert process.stderr is not None
    pending = ""
    async for chunk in TextReceiveStream(process.stderr):
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            log.append(line)
            try:
                event = json.loads(line).get("event")
            except (ValueError, AttributeError):
                continue
            if event == "listening":
                listening.set()


async def _deploy_once(fleet: LocalFleet) -> float:
    async with await fleet.connect(DEPLOYER, name="bench rss deployer") as bus:
        started = time.perf_counter()
        with anyio.fail_after(START_LIMIT):
            result = await Deployer(bus).deploy(
                Target.host(Tier.TEST, HOST), revision="master", action=Action.SWITCH,
                timeout=START_LIMIT,
            )  # fmt: skip
        elapsed = time.perf_counter() - started
    assert result.ok, f"the deploy to the measured listener failed: {result.hosts}"
    return elapsed


def import_rss() -> list[tuple[str, float]]:
    """RSS (MB) of ``python -c`` bare, then importing ``IMPORTS[:1]``, ``IMPORTS[:2]``, ..."""
    rows: list[tuple[str, float]] = []
    for step in range(len(IMPORTS) + 1):
        done = subprocess.run(  # noqa: S603 - our own interpreter, fixed argv
            [sys.executable, "-c", _RSS_PROBE, *IMPORTS[:step]],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        label = f"+ {IMPORTS[step - 1]}" if step else "bare interpreter"
        rows.append((label, int(done.stdout) / 1024))
    return rows


def wall_times(argv: Sequence[str], runs: int) -> Stats:
    """Wall time of ``argv`` as a subprocess, after one unmeasured run (warm page cache)."""
    samples: list[float] = []
    for i in range(runs + 1):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)  # noqa: S603
        if i:
            samples.append(time.perf_counter() - started)
    return Stats(samples)


def mcp_imports() -> list[tuple[str, int, list[str]]]:
    """For each entry point: how many modules it loads and which of them are MCP's."""
    rows: list[tuple[str, int, list[str]]] = []
    for names in (
        ("fleet_core.cli",),
        ("fleet_core.host.listener",),
        (
            "fleet_core.cli",
            "fleet_core.host.daemon",
            "fleet_core.host.listener",
            "fleet_core.deploy.deployer",
        ),
    ):
        done = subprocess.run(  # noqa: S603 - our own interpreter, fixed argv
            [sys.executable, "-c", _MCP_PROBE, *names], capture_output=True, text=True, check=True
        )
        count, _, found = done.stdout.strip().partition(" ")
        rows.append((" + ".join(names), int(count), json.loads(found.replace("'", '"'))))
    return rows


def help_importtime() -> tuple[float, list[tuple[str, float]]]:
    """``-X importtime`` of ``fleet-deploy --help``: total import time and the top packages."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c",
         "import sys; from fleet_core.cli import main; sys.argv = ['fleet-deploy', '--help']; "
         "main()"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return _importtime_summary(done.stderr)


def listener_importtime() -> tuple[float, list[tuple[str, float]]]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import fleet_core.host.daemon"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return _importtime_summary(done.stderr)


def _importtime_summary(text: str) -> tuple[float, list[tuple[str, float]]]:
    """Total import time (s) and the top-level packages that spent most of it (self time)."""
    per_package: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        try:
            micros = int(own.strip())
        except ValueError:  # the header line
            continue
        package = name.strip().split(".")[0]
        per_package[package] = per_package.get(package, 0.0) + micros / 1e6
    ranked = sorted(per_package.items(), key=lambda item: -item[1])
    return sum(per_package.values()), ranked[:8]


def report(
    runs: Sequence[ListenerRun],
    *,
    imports: Sequence[tuple[str, float]],
    help_s: Stats,
    startup: dict[str, Stats],
    help_times: tuple[float, list[tuple[str, float]]],
    listener_times: tuple[float, list[tuple[str, float]]],
    mcp: Sequence[tuple[str, int, list[str]]],
    command: str,
    load_before: float,
) -> str:
    def med(values: Sequence[float]) -> float:
        return Stats(values).median

    plain = [r for r in runs if not r.metrics]
    with_metrics = [r for r in runs if r.metrics]
    idle_rss = med([r.idle.rss_mb for r in plain])
    metrics_rss = med([r.idle.rss_mb for r in with_metrics])
    rss_ok = idle_rss <= RSS_TARGET_MB
    help_ok = help_s.median < HELP_TARGET_S
    mcp_free = all(not found for _, _, found in mcp)

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = [
        "### Listener footprint and CLI start-up",
        "",
        f"- Machine: {machine(load_before)}",
        f"- Command: `{command}`; the listener is the environment's installed `fleet-deploy` "
        f"(`fleet-deploy listener`, JSON logs), measured {len(plain)} times from a fresh start "
        f"with metrics off (the default) and {len(with_metrics)} times with "
        "`--metrics-enabled --metrics-addr 127.0.0.1:PORT`, scraped once before each reading.",
        "",
        "| target | measured (median) | target | verdict |",
        "|---|---:|---:|---|",
        f"| idle listener VmRSS (metrics off) | {idle_rss:.1f} MB | <= {RSS_TARGET_MB:g} MB "
        f"| {verdict(rss_ok)} |",
        f"| idle listener VmRSS with `--metrics-enabled` | {metrics_rss:.1f} MB "
        f"({metrics_rss - idle_rss:+.1f}) | reported | — |",
        f"| `fleet-deploy --help` wall time | {ms(help_s.median)} ms (p90 {ms(help_s.p90)}) "
        f"| < {HELP_TARGET_S * 1000:g} ms | {verdict(help_ok)} |",
        f"| MCP modules imported by the CLI and the listener | "
        f"{'none' if mcp_free else 'some'} | none | {verdict(mcp_free)} |",
        "",
        f"Listener process ({len(plain)} runs each; idle = {SETTLE:g} s after its `listening` "
        "line; "
        "after one job = after one deploy of the simulated rebuild, then "
        f"{SETTLE:g} s idle):",
        "",
        "| | VmRSS MB | VmHWM MB | PSS MB | USS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, chosen in (("", plain), (", metrics on", with_metrics)):
        for label, pick in (("idle", "idle"), ("after one job", "after_job")):
            mems = [getattr(r, pick) for r in chosen]
            figures = [
                med([getattr(m, f) for m in mems]) for f in ("rss_mb", "hwm_mb", "pss_mb", "uss_mb")
            ]
            lines.append(f"| {label}{mode} | " + " | ".join(f"{v:.1f}" for v in figures) + " |")
    lines += [
        "",
        f"Start-up, spawn → `listening` logged (imports, key check, connect, subscribe): "
        f"{ms(med([r.start_s for r in plain]))} ms "
        f"({ms(med([r.start_s for r in with_metrics]))} ms with metrics); one single-host "
        f"deploy with the simulated rebuild (a Python subprocess): "
        f"{ms(med([r.job_s for r in plain]))} ms.",
        "",
        "Where the memory goes — VmRSS of `python -c` importing these cumulatively "
        "(each row adds one step to the one above):",
        "",
        "| imports | VmRSS MB | step adds MB |",
        "|---|---:|---:|",
    ]
    previous = imports[0][1]
    for name, rss in imports:
        lines.append(f"| {name} | {rss:.1f} | {rss - previous:+.1f} |")
        previous = rss
    help_total, help_top = help_times
    listener_total, listener_top = listener_times
    lines += [
        "",
        f"Start-up pieces, subprocess wall time ({help_s.runs} runs each after one unmeasured; "
        f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r} in this "
        "environment, so only bytecode already on disk is used):",
        "",
        "| command | median ms | p90 ms |",
        "|---|---:|---:|",
        *(f"| `{name}` | {ms(st.median)} | {ms(st.p90)} |" for name, st in startup.items()),
        "",
        "`fleet-deploy --help` by package (`-X importtime` self time, which the "
        f"instrumentation inflates): {ms(help_total)} ms in all; "
        + ", ".join(f"{name} {ms(t)}" for name, t in help_top)
        + ". `importlib` and `email` come from `fleet_core/__init__.py` calling "
        "`importlib.metadata.version()` for `__version__`.",
        "",
        f"`import fleet_core.host.daemon` (what `fleet-deploy listener` loads): "
        f"{ms(listener_total)} ms under `-X importtime`, slowest: "
        + ", ".join(f"{name} {ms(t)}" for name, t in listener_top)
        + ".",
        "",
        "| imports | modules loaded | MCP modules among them |",
        "|---|---:|---|",
    ]
    lines += [
        f"| `{name}` | {count} | {', '.join(found) if found else 'none'} |"
        for name, count, found in mcp
    ]
    return "\n".join([*lines, ""])


async def measure_listener(runs: int) -> list[ListenerRun]:
    results: list[ListenerRun] = []
    for i in range(runs):
        for metrics in (False, True):
            async with local_fleet([FleetHost(HOST)], {DEPLOYER: "test"}) as fleet:
                results.append(await one_listener_run(fleet, metrics=metrics))
            last = results[-1]
            print(
                f"run {i + 1}{' (metrics on)' if metrics else ''}: start {ms(last.start_s)} ms, "
                f"idle RSS {last.idle.rss_mb:.1f} MB, after one job "
                f"{last.after_job.rss_mb:.1f} MB",
                flush=True,
            )
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="listener starts (default 3)")
    parser.add_argument("--help-runs", type=int, default=10, help="--help timings (default 10)")
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    args = parser.parse_args(argv)
    configure_logging("warning")  # the deployer side of this script: quiet
    load_before = load_average()

    runs = anyio.run(measure_listener, args.runs, backend="asyncio")
    help_s = wall_times([str(fleet_deploy()), "--help"], args.help_runs)
    startup = {
        f"python -c {code!r}": wall_times([sys.executable, "-c", code], args.help_runs)
        for code in (
            "pass",
            "import argparse",
            "import importlib.metadata",
            "import fleet_core.cli",
        )
    }
    startup["fleet-deploy --help"] = help_s
    text = report(
        runs,
        imports=import_rss(),
        help_s=help_s,
        startup=startup,
        help_times=help_importtime(),
        listener_times=listener_importtime(),
        mcp=mcp_imports(),
        command=" ".join(["python bench/listener_rss.py", *sys.argv[1:]]),
        load_before=load_before,
    )
    publish("fanout-footprint", text, write=not args.no_write)


if __name__ == "__main__":
    main()
