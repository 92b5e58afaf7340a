"""The job runner and its launchers, as real processes: output, deadline, stop, result file.

Every wait is for an event with a deadline: a pidfd turning readable (``process_gone``), a
file the runner writes, or ``follow`` returning.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleet_core.host.jobs import job_runner, outcome
from fleet_core.host.jobs.follow import follow, read_runner, runner_alive, stop_runner
from fleet_core.host.jobs.jobdir import EXIT_FILE, OUTPUT_LOG, RUNNER_FILE, runner_argv, write_argv
from fleet_core.host.jobs.launch import (
    ProcessRebuilder,
    RebuildJob,
    RebuildResult,
    StartFailed,
    TailBuffer,
)
from fleet_core.testing import simulated_rebuild_command, simulated_systemd_run_command

from .support import process_gone, wait_for_file

pytestmark = pytest.mark.anyio

ARGS = ["switch", "--flake", "git+https://g/r.git?ref=main#h", "--refresh"]


def run_runner(
    job_dir: Path, argv: list[str], timeout: float = 30, grace: float = 1
) -> dict[str, Any]:
    """Run the job runner in the foreground; its exit.json."""
    job_dir.mkdir(exist_ok=True)
    write_argv(job_dir, argv)
    command = runner_argv(sys.executable, job_dir, timeout=timeout, kill_grace=grace)
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads((job_dir / EXIT_FILE).read_text())
    return result


class TestJobRunner:
    def test_a_rebuild_that_works(self, tmp_path: Path) -> None:
        """exit.json says exit 0; output.log has every line; runner.json names both pids."""
        result = run_runner(tmp_path / "job", [*simulated_rebuild_command(), *ARGS])
        assert (result["exit_code"], result["timed_out"], result["cancelled"]) == (0, False, False)
        assert result["start_error"] is None
        assert result["finished_at"] >= result["started_at"]
        assert "Done. The new configuration is" in (tmp_path / "job" / OUTPUT_LOG).read_text()
        runner = read_runner(tmp_path / "job")
        assert runner is not None and runner.rebuild is not None

    def test_a_failing_and_a_missing_program(self, tmp_path: Path) -> None:
        """A failing rebuild's exit code is kept; a missing one is a start error in the log."""
        failed = run_runner(tmp_path / "a", [*simulated_rebuild_command("--sim-fail"), *ARGS])
        assert failed["exit_code"] == 1
        missing = run_runner(tmp_path / "b", [str(tmp_path / "nope"), *ARGS])
        assert missing["exit_code"] is None
        assert "cannot start" in missing["start_error"]
        assert missing["start_error"] in (tmp_path / "b" / OUTPUT_LOG).read_text()

    def test_output_is_bounded_with_a_visible_marker(self, tmp_path: Path) -> None:
        """Past its limit the log says it stopped keeping output, and at the end how much
        was dropped; an endless line is kept whole up to the limit."""
        script = tmp_path / "noisy.py"
        script.write_text("import sys\nsys.stdout.write('x' * 70_000_000)\n")
        result = run_runner(tmp_path / "job", [sys.executable, str(script)])
        log = (tmp_path / "job" / OUTPUT_LOG).read_bytes()
        assert result["exit_code"] == 0
        assert len(log) < 64 * 1024 * 1024 + 1024
        lines = log.split(b"\n")
        assert lines[-3] == (
            b"fleet-deploy: output.log reached its limit of 67108864 bytes; "
            b"the rest of the output is not kept"
        )
        assert lines[-2] == b"fleet-deploy: 2891136 more bytes of output were not kept"

    def test_the_deadline_stops_the_whole_group(self, tmp_path: Path) -> None:
        """A hanging rebuild with a grandchild is stopped at the deadline: timed_out, and no
        process of its group is left."""
        grandchild = tmp_path / "grandchild.pid"
        argv = simulated_rebuild_command("--sim-hang", "--sim-grandchild-pid", str(grandchild))
        result = run_runner(tmp_path / "job", [*argv, *ARGS], timeout=0.5, grace=0.5)
        assert (result["timed_out"], result["cancelled"]) == (True, False)
        assert "deadline" in (tmp_path / "job" / OUTPUT_LOG).read_text().splitlines()[-1]
        assert process_gone(int(grandchild.read_text()), 5)

    def test_children_that_hold_the_output_are_stopped(self, tmp_path: Path) -> None:
        """A rebuild that exits 0 but leaves a child holding its output still completes,
        and the child is stopped."""
        grandchild = tmp_path / "grandchild.pid"
        argv = simulated_rebuild_command("--sim-grandchild-pid", str(grandchild))
        result = run_runner(tmp_path / "job", [*argv, *ARGS])
        assert (result["exit_code"], result["timed_out"]) == (0, False)
        assert process_gone(int(grandchild.read_text()), 5)

    async def test_sigterm_stops_the_rebuild_and_records_cancelled(self, tmp_path: Path) -> None:
        """SIGTERM to the runner (systemctl stop) stops the rebuild's group; exit.json says
        cancelled, so the outcome is known."""
        job = tmp_path / "job"
        job.mkdir()
        argv = [*simulated_rebuild_command("--sim-wait-for", str(tmp_path / "never")), *ARGS]
        write_argv(job, argv)
        command = runner_argv(sys.executable, job, timeout=30, kill_grace=1)
        async with await anyio.open_process(command) as process:
            await wait_for_file(job / OUTPUT_LOG)
            runner = read_runner(job)
            while runner is None or runner.rebuild is None:
                await wait_for_file(job / RUNNER_FILE)
                runner = read_runner(job)
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(10):
                assert await process.wait() == 0
        result = json.loads((job / EXIT_FILE).read_text())
        assert (result["cancelled"], result["timed_out"]) == (True, False)
        assert process_gone(runner.rebuild, 5)
        assert "got SIGTERM: stopping the rebuild" in (job / OUTPUT_LOG).read_text()

    def test_it_starts_fast_and_imports_nothing_of_ours(self, tmp_path: Path) -> None:
        """Run by path in isolated mode, it loads no fleet_core module and no third party."""
        write_argv(tmp_path, [sys.executable, "-c", "pass"])
        command = runner_argv(sys.executable, tmp_path, timeout=5, kill_grace=1)
        command[1:1] = ["-X", "importtime"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        imported = {
            line.rpartition("|")[2].strip().split(".")[0]
            for line in done.stderr.splitlines()
            if line.startswith("import time:")
        }
        assert "json" in imported
        assert not imported & {"fleet_core", "pydantic", "anyio", "structlog", "nats"}


class TestLaunchers:
    async def test_session_mode_detaches_the_runner(self, tmp_path: Path) -> None:
        """The runner gets a session of its own and /dev/null as stdio; the job is followed
        to its result through the directory."""
        job = tmp_path / "job"
        job.mkdir()
        launched = await ProcessRebuilder("session").start(
            RebuildJob("j1", [*simulated_rebuild_command(), *ARGS], job, timeout=30)
        )
        assert launched.pid is not None and launched.unit is None
        lines: list[str] = []
        if runner_alive(launched.pid, job):  # it may have finished already
            assert os.getsid(launched.pid) == launched.pid
            for fd in (0, 1, 2):
                assert os.readlink(f"/proc/{launched.pid}/fd/{fd}") == os.devnull
        result = await follow(job, lines.append, pid=launched.pid, started_at=time.time())
        assert result.ok
        assert lines[-1].startswith("Done. The new configuration is")

    async def test_systemd_mode_runs_systemd_run(self, tmp_path: Path) -> None:
        """systemd mode asks systemd-run for a collected transient unit named after the job,
        with a backstop deadline and the listener's environment by name; the runner's pid is
        learnt from runner.json."""
        job = tmp_path / "job"
        job.mkdir()
        record = tmp_path / "systemd-run.jsonl"
        rebuilder = ProcessRebuilder(
            "systemd",
            systemd_run=simulated_systemd_run_command("--sim-record", str(record)),
            pass_env=("PATH", "HOME"),
        )
        launched = await rebuilder.start(
            RebuildJob("j2", [*simulated_rebuild_command(), *ARGS], job, timeout=60, kill_grace=5)
        )
        assert (launched.pid, launched.unit) == (None, "fleet-deploy-job-j2")
        result = await follow(job, lambda _: None, pid=None, started_at=time.time())
        assert result.ok
        (call,) = [json.loads(line) for line in record.read_text().splitlines()]
        assert call["unit"] == "fleet-deploy-job-j2.service"
        assert call["collect"] and call["quiet"] and call["service_type"] == "exec"
        assert (call["user"], call["same_dir"]) == (False, False)  # the system manager
        assert call["properties"] == ["RuntimeMaxSec=100"]
        assert {"PATH", "HOME", "INVOCATION_ID"} <= set(call["setenv"])
        runner_path = job_runner.__file__
        assert call["command"][1:4] == ["-I", str(Path(runner_path).resolve()), str(job)]  # noqa: ASYNC240

    async def test_a_failing_systemd_run_is_a_start_error(self, tmp_path: Path) -> None:
        """When systemd-run refuses, the job fails to start with systemd-run's own words."""
        refusing = [sys.executable, "-c", "import sys; sys.exit('Unit exists')"]
        rebuilder = ProcessRebuilder("systemd", systemd_run=refusing)
        with pytest.raises(StartFailed, match=r"exit 1.*Unit exists"):
            await rebuilder.start(RebuildJob("j3", ["x"], tmp_path, timeout=1))

    async def test_stop_runner_reports_cancelled(self, tmp_path: Path) -> None:
        """stop_runner (the clean-up of test fleets) ends a held rebuild: cancelled."""
        job = tmp_path / "job"
        job.mkdir()
        argv = [*simulated_rebuild_command("--sim-wait-for", str(tmp_path / "never")), *ARGS]
        launched = await ProcessRebuilder().start(RebuildJob("j4", argv, job, timeout=30))
        await wait_for_file(job / OUTPUT_LOG)
        assert await stop_runner(job, 1.0)
        result = await follow(job, lambda _: None, pid=launched.pid, started_at=time.time())
        assert result.cancelled and not result.ok
        assert not await stop_runner(job, 1.0)  # nothing left to stop


def test_tail_buffer_budget() -> None:
    """The tail keeps the newest lines within its character budget."""
    tail = TailBuffer(max_lines=5, max_chars=14)
    for word in ("one", "two", "three", "four", "five", "six"):
        tail.append(word)
    assert tail.lines() == ["four", "five", "six"]


def test_rebuild_result_is_still_importable_from_runner() -> None:
    """RebuildResult lives in the pure outcome module; runner re-exports the same class."""
    assert RebuildResult is outcome.RebuildResult
