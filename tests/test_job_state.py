"""What a job directory says, and what a starting listener does about it (pure, no server)."""

from __future__ import annotations

import json

import pytest

from fleet_core.host.jobs.jobdir import RunnerPids, parse_runner
from fleet_core.host.jobs.outcome import RebuildResult, decide
from fleet_core.host.jobs.resume import (
    START_GRACE,
    Resume,
    is_job_runner,
    lost_before_start,
    lost_runner,
    result_from_exit,
    resume_action,
)
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import ErrorCode, StatusKind

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

JOB_DIR = "/var/lib/fleet-deploy/jobs/20261127T101500.000001Z-abc"


def exit_file(**fields: object) -> bytes:
    base: dict[str, object] = {
        "exit_code": 0,
        "timed_out": False,
        "cancelled": False,
        "start_error": None,
        "started_at": 1.0,
        "finished_at": 13.5,
        "duration_s": 12.5,
    }
    return json.dumps(base | fields).encode()


def judged(result: RebuildResult) -> tuple[str, str | None]:
    outcome = decide(result, action=Action.SWITCH, revision="main", timeout=600)
    return outcome.kind.value, outcome.error


class TestExitFile:
    def test_a_clean_exit_completes(self) -> None:
        """exit 0 becomes a completed result with the runner's duration and the given tail."""
        result = result_from_exit(exit_file(), ["Done. The new configuration is /nix/store/x"])
        assert result.ok and result.duration_s == 12.5
        assert judged(result) == ("completed", None)

    @pytest.mark.parametrize(
        ("fields", "expected"),
        [
            ({"exit_code": 1}, ("failed", ErrorCode.BUILD_FAILED)),
            ({"exit_code": -15, "timed_out": True}, ("failed", ErrorCode.TIMEOUT)),
            ({"exit_code": -15, "cancelled": True}, ("failed", ErrorCode.CANCELLED)),
            ({"exit_code": None, "start_error": "cannot start 'x'"}, ("failed", "build_failed")),
        ],
        ids=["exit-1", "deadline", "stopped", "not-started"],
    )
    def test_each_way_of_ending_has_its_status(
        self, fields: dict[str, object], expected: tuple[str, str]
    ) -> None:
        """Failure, deadline, a stop request and a start error each map to their error code."""
        assert judged(result_from_exit(exit_file(**fields), [])) == expected

    @pytest.mark.parametrize(
        "data",
        [b"", b"{", b"[]", b'"x"', b"\xff\xfe", b'{"exit_code": "0"}'],
        ids=["empty", "cut", "array", "string", "not-utf8", "code-as-text"],
    )
    def test_an_unreadable_or_odd_file_never_completes(self, data: bytes) -> None:
        """A damaged exit file is never taken for success."""
        result = result_from_exit(data, [])
        assert not result.ok
        assert judged(result)[0] == "failed"

    def test_wrong_types_are_ignored_field_by_field(self) -> None:
        """A boolean that is not true, or a duration that is not a number, reads as absent."""
        result = result_from_exit(exit_file(timed_out="yes", duration_s="long"), [])
        assert (result.timed_out, result.duration_s, result.ok) == (False, 0.0, True)


class TestRunnerFile:
    def test_pids_are_read(self) -> None:
        """runner.json gives the runner's pid, and the rebuild's once it was started."""
        assert parse_runner(b'{"pid": 10}') == RunnerPids(10, None)
        assert parse_runner(b'{"pid": 10, "rebuild_pid": 11}') == RunnerPids(10, 11)

    @pytest.mark.parametrize(
        "data", [None, b"", b"{}", b'{"pid": 0}', b'{"pid": true}', b'{"pid": "10"}', b"[1]"]
    )
    def test_no_pid_is_no_runner(self, data: bytes | None) -> None:
        """Anything but a positive integer pid is no runner file at all."""
        assert parse_runner(data) is None

    def test_a_bad_rebuild_pid_is_dropped(self) -> None:
        """A rebuild pid that is not a pid is left out; the runner's still counts."""
        assert parse_runner(b'{"pid": 10, "rebuild_pid": -1}') == RunnerPids(10, None)


class TestIsJobRunner:
    @pytest.mark.parametrize(
        "argv",
        [
            [
                "/nix/store/x-python3/bin/python3.11",
                "-I",
                "/s/fleet_core/host/jobs/job_runner.py",
                JOB_DIR,
            ],
            # The previous release's runner, at its place before the packages, by path and
            # as the module it once was run as: an upgraded listener still follows it.
            ["/nix/store/x-python3/bin/python3.11", "-I", "/s/fleet_core/job_runner.py", JOB_DIR],
            ["python3", "-m", "fleet_core.job_runner", JOB_DIR, "--timeout", "600"],
        ],
    )
    def test_the_runner_of_this_job(self, argv: list[str]) -> None:
        """This release's runner, and the previous release's by path or as a module, for this
        job directory, is recognised."""
        cmdline = b"\0".join(a.encode() for a in [*argv, "--", "nixos-rebuild"]) + b"\0"
        assert is_job_runner(cmdline, JOB_DIR)

    @pytest.mark.parametrize(
        "cmdline",
        [
            b"",  # a zombie
            b"python3\0-I\0/s/fleet_core/host/jobs/job_runner.py\0/other/job\0",
            b"sleep\0" + JOB_DIR.encode() + b"\0",
            # Another program that happens to be called job_runner.py is not ours.
            b"python3\0/opt/other/job_runner.py\0" + JOB_DIR.encode() + b"\0",
            b"nixos-rebuild\0switch\0--flake\0x\0job_runner.py\0" + JOB_DIR.encode() + b"\0",
        ],
        ids=["zombie", "other-job", "reused-pid", "another-job-runner", "runner-name-late-in-argv"],
    )
    def test_anything_else_is_not(self, cmdline: bytes) -> None:
        """A zombie, another job's runner or a reused pid is not this job's runner."""
        assert not is_job_runner(cmdline, JOB_DIR)


class TestResume:
    @pytest.mark.parametrize(
        ("exit_data", "pid", "alive", "age", "expected"),
        [
            (b"{}", 7, True, 5.0, Resume.REPORT),  # written, exiting: the file wins
            (b"{}", None, False, 9999.0, Resume.REPORT),
            (None, 7, True, 9999.0, Resume.FOLLOW),
            (None, 7, False, 1.0, Resume.LOST),
            (None, None, False, 1.0, Resume.FOLLOW),  # starting: wait for its pid
            (None, None, False, START_GRACE + 1, Resume.LOST),
        ],
        ids=["ended-exiting", "ended", "running", "vanished", "starting", "never-started"],
    )
    def test_the_table(
        self,
        exit_data: bytes | None,
        pid: int | None,
        alive: bool,
        age: float,
        expected: Resume,
    ) -> None:
        """The exit file wins; a live runner is followed; a runner gone without one is lost."""
        assert (
            resume_action(exit_data=exit_data, runner_pid=pid, runner_alive=alive, age_s=age)
            is expected
        )

    def test_a_lost_runner_fails_cancelled_with_a_clear_message(self) -> None:
        """A vanished runner is failed/cancelled, naming its pid and what to do."""
        outcome = decide(
            lost_runner(4242, ["building…"], 3.0), action=Action.SWITCH, revision="m", timeout=9
        )
        assert (outcome.kind, outcome.error) == (StatusKind.FAILED, ErrorCode.CANCELLED)
        assert "job runner (pid 4242) ended without recording" in outcome.message
        assert "outcome is unknown" in outcome.message
        assert outcome.log_tail == ("building…",)

    def test_a_job_that_never_started_says_so(self) -> None:
        """An accepted job no runner ever reported for is failed/cancelled: deploy again."""
        outcome = decide(lost_before_start(40.0), action=Action.SWITCH, revision="m", timeout=9)
        assert outcome.error == ErrorCode.CANCELLED
        assert "no job runner ever started for this job" in outcome.message
