"""What a job directory says about its rebuild, and what a listener does about it (pure).

The job runner (``job_runner``) leaves two files a listener reads (``jobdir``): ``runner.json``
(its pid, then the rebuild's) and, once the rebuild is over, ``exit.json``. The listener
gathers the facts — those files' bytes, whether the runner's pid is still that runner, how
old the job is — and these functions decide; nothing here touches a file or a process.

A listener that starts and finds an unfinished job ``resume``s it:

    exit file present            → REPORT   the true final status, at once
    runner alive (pid and argv)  → FOLLOW   stay busy, heartbeat, report when it ends
    no runner pid known, recent  → FOLLOW   it is starting: wait for its pid, with a deadline
    runner gone, no exit file    → LOST     failed/cancelled: the outcome cannot be known
    no runner pid known, old     → LOST     no runner ever started (or an older listener ran it)
"""

from __future__ import annotations

import contextlib
from enum import Enum

from pydantic import ValidationError

from fleet_core.host.jobs.jobdir import json_object
from fleet_core.host.jobs.outcome import ActivationFacts, ClosureFacts, RebuildResult
from fleet_core.protocol.messages import CheckStatus

__all__ = [
    "START_GRACE",
    "Resume",
    "activation_facts",
    "closure_facts",
    "is_job_runner",
    "lost_before_start",
    "lost_runner",
    "result_from_exit",
    "resume_action",
]

# How long a launched job runner may take to write its pid (systemd may be busy switching).
START_GRACE = 30.0
# The job runner as its command line names it: this release's path, and the previous
# release's (``fleet_core/job_runner.py``, or ``-m fleet_core.job_runner`` before that), so
# that a listener upgraded while an older runner works still recognises it. Drop the old two
# once no host can still run a release before 0.2.
_RUNNER_NAMES = (
    "fleet_core/host/jobs/job_runner.py",
    "fleet_core/job_runner.py",
    "fleet_core.job_runner",
)


class Resume(Enum):
    REPORT = "report"
    FOLLOW = "follow"
    LOST = "lost"


def is_job_runner(cmdline: bytes, job_dir: str) -> bool:
    """Whether ``/proc/<pid>/cmdline`` is the job runner of ``job_dir`` (and not a reused pid).

    A zombie's cmdline is empty: a runner that has exited is not running, whoever reaps it.
    """
    args = [arg.decode("utf-8", "surrogateescape") for arg in cmdline.split(b"\0") if arg]
    runs_runner = any(arg.endswith(_RUNNER_NAMES) for arg in args[:4])
    return runs_runner and job_dir in args


def is_job_runner_command(command: str, job_dir: str) -> bool:
    """Whether ``command``, a process's arguments joined by spaces as ``ps -o command=``
    shows them, is the job runner of ``job_dir``: the check of ``is_job_runner`` where there
    is no ``/proc`` (macOS, whose launchd runs a Home Manager listener)."""
    words = command.split()
    runs_runner = any(word.endswith(_RUNNER_NAMES) for word in words[:4])
    return runs_runner and f" {job_dir} " in f" {command.strip()} "


def resume_action(
    *, exit_data: bytes | None, runner_pid: int | None, runner_alive: bool, age_s: float
) -> Resume:
    """What a starting listener does with an unfinished job (see the module's table).

    ``runner_pid`` is the runner's, from its own ``runner.json`` or else from the job record
    (a session-mode launch knows it at once); ``age_s`` is the job's age.
    """
    if exit_data is not None:
        return Resume.REPORT
    if runner_pid is not None:
        return Resume.FOLLOW if runner_alive else Resume.LOST
    return Resume.FOLLOW if age_s < START_GRACE else Resume.LOST


def result_from_exit(data: bytes, tail: list[str]) -> RebuildResult:
    """``exit.json`` as the result the listener judges; an unreadable one is a lost result."""
    value = json_object(data)
    if value is None:
        return RebuildResult(
            None, False, tail, 0.0, lost="the job runner's exit file is unreadable"
        )
    exit_code = value.get("exit_code")
    duration = value.get("duration_s")
    start_error = value.get("start_error")
    return RebuildResult(
        exit_code=exit_code if isinstance(exit_code, int) else None,
        timed_out=value.get("timed_out") is True,
        tail=tail,
        duration_s=float(duration) if isinstance(duration, int | float) else 0.0,
        start_error=start_error if isinstance(start_error, str) else None,
        cancelled=value.get("cancelled") is True,
        activation=activation_facts(value.get("activation")),
        closure=closure_facts(value.get("closure")),
    )


def closure_facts(value: object) -> ClosureFacts | None:
    """``exit.json``'s ``closure`` (``host.jobs.closure.Report``) as the outcome reads it;
    None when there is none (a rebuild). Malformed details are dropped, as for activation."""
    if not isinstance(value, dict) or not isinstance(value.get("store_path"), str):
        return None
    failed, error = value.get("failed_step"), value.get("error")
    steps = value.get("steps")
    return ClosureFacts(
        store_path=value["store_path"],
        failed_step=failed if isinstance(failed, str) else None,
        error=error if isinstance(error, str) else None,
        steps=tuple(s for s in steps if isinstance(s, str)) if isinstance(steps, list) else (),
    )


def activation_facts(value: object) -> ActivationFacts | None:
    """``exit.json``'s ``activation`` (``host.jobs.activation.Activation``) as the outcome
    reads it; None when there is none. What does not parse is dropped, field by field: the
    runner wrote it, but a result must never be lost to a malformed detail."""
    if not isinstance(value, dict):
        return None
    previous = value.get("previous")
    before = previous if isinstance(previous, dict) else {}
    system = before.get("current") or before.get("profile")
    reason, error = value.get("rollback_reason"), value.get("rollback_error")
    checks = []
    for item in value.get("checks") or ():
        with contextlib.suppress(ValidationError, TypeError):
            checks.append(CheckStatus.model_validate(item))
    return ActivationFacts(
        previous=system if isinstance(system, str) else None,
        rollback_reason=reason if isinstance(reason, str) else None,
        rolled_back=value.get("rolled_back") is True,
        rollback_error=error if isinstance(error, str) else None,
        rollback=value.get("rollback") is not False,
        checks=tuple(checks),
    )


def lost_runner(pid: int, tail: list[str], duration_s: float) -> RebuildResult:
    """The result of a job whose runner ended without writing ``exit.json``."""
    return RebuildResult(
        None,
        False,
        tail,
        duration_s,
        lost=f"the job runner (pid {pid}) ended without recording the rebuild's result, so "
        "its outcome is unknown: it was killed, or the host went down; the rebuild's process "
        "group was stopped. Check the host, then deploy again",
    )


def lost_before_start(duration_s: float) -> RebuildResult:
    """The result of a job no job runner ever reported for: its listener stopped between
    accepting it and starting the runner (or, before job runners, ran the rebuild itself)."""
    return RebuildResult(
        None,
        False,
        [],
        duration_s,
        lost="no job runner ever started for this job: the listener stopped before starting "
        "the rebuild (or an older listener ran it itself), so its outcome is unknown; "
        "deploy again",
    )
