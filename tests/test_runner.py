"""Running a rebuild as a process group: output handling and exit codes (real subprocesses)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fleet_core import outcome
from fleet_core.runner import ProcessRebuilder, RebuildJob, RebuildResult, TailBuffer

pytestmark = pytest.mark.anyio

SIM = [sys.executable, "-m", "fleet_core.simulated_rebuild"]
ARGS = ["switch", "--flake", "git+https://g/r.git?ref=main#h", "--refresh"]


async def test_output_is_bounded(tmp_path: Path) -> None:
    """Thousands of lines and one endless line keep the tail and the message small."""
    script = tmp_path / "noisy.py"
    script.write_text(
        "import sys\nfor i in range(20000): print('line', i)\nsys.stdout.write('x' * 500000)\n"
    )
    seen: list[str] = []
    result = await ProcessRebuilder().run(
        RebuildJob(argv=[sys.executable, str(script)], timeout=30, log_path=tmp_path / "out.log"),
        seen.append,
    )
    assert result.ok
    assert len(seen) > 20000
    assert sum(len(line) + 1 for line in result.tail) <= 16 * 1024
    assert max(len(line) for line in seen) <= 2000
    assert result.tail[0].startswith("line") or result.tail[0].startswith("x")
    assert (tmp_path / "out.log").stat().st_size > 100_000


async def test_exit_code_and_start_error(tmp_path: Path) -> None:
    """A failing program reports its exit code; a missing one reports why it did not start."""
    failed = await ProcessRebuilder().run(
        RebuildJob(argv=[*SIM, "--sim-fail", *ARGS], timeout=30), lambda _: None
    )
    assert (failed.exit_code, failed.ok) == (1, False)
    missing = await ProcessRebuilder().run(
        RebuildJob(argv=[str(tmp_path / "nope"), *ARGS], timeout=30), lambda _: None
    )
    assert missing.start_error is not None and "cannot start" in missing.start_error


def test_tail_buffer_budget() -> None:
    """The tail keeps the newest lines within its character budget."""
    tail = TailBuffer(max_lines=5, max_chars=14)
    for word in ("one", "two", "three", "four", "five", "six"):
        tail.append(word)
    assert tail.lines() == ["four", "five", "six"]


def test_rebuild_result_is_still_importable_from_runner() -> None:
    """RebuildResult moved to the pure outcome module; runner re-exports the same class."""
    assert RebuildResult is outcome.RebuildResult
