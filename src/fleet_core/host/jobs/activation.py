"""After the rebuild: health checks, the listener's confirmation, and the rollback to the exact
system it replaced — decided by the job runner, on the host.

The listener leaves a *guard* in the job directory (``guard.json``, ``write_guard``) when a
rebuild activates a system it can take back (NixOS, ``switch`` and ``test``; ``boot`` is
recorded, as nothing runs the new system yet). The runner then:

1. records, before the rebuild, the exact systems it may replace: what the system profile
   and the current system resolve to (``snapshot``: two store paths, never "generation N-1");
2. after a rebuild that activated the new system, runs the health checks (``run_checks``);
3. waits for the listener to confirm that it reached NATS again from the new system
   (``confirmed.json``, written by whichever listener follows the job: a switch may restart
   it first) for at most ``confirm_timeout`` seconds;
4. when the activation failed, a check failed or no confirmation came, re-activates the
   recorded system itself (``rollback_steps``: ``nix-env --profile P --set PATH``, then
   ``PATH/bin/switch-to-configuration``), with no listener involved.

What it found goes into ``exit.json`` under ``activation`` (``Activation``), which the
listener turns into the final status: ``failed/rolled_back`` with the reason and the checks.
The decision itself is ``rollback_reason``, a pure function of the facts.

Standard library only: the job runner loads this file by path, as it loads ``jobdir``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ACTIONS_CHECKED",
    "ACTIONS_GUARDED",
    "CHECK",
    "CONFIRMED_FILE",
    "GUARD_FILE",
    "MAX_ROLLBACK_STEPS",
    "PHASE_FILE",
    "ROLLBACK_STEP_TIMEOUT",
    "STOPPED_REASON",
    "SYSTEM_RUNNING",
    "Activation",
    "CheckResult",
    "Guard",
    "HealthCheck",
    "Phase",
    "Step",
    "await_confirmation",
    "confirm",
    "guard_activation",
    "read_guard",
    "read_phase",
    "roll_back",
    "rollback_reason",
    "rollback_steps",
    "run_checks",
    "snapshot",
    "time_after",
    "write_guard",
    "write_phase",
]

GUARD_FILE = "guard.json"
PHASE_FILE = "phase.json"
CONFIRMED_FILE = "confirmed.json"
ACTIONS_CHECKED = ("switch", "test")  # they run the new system: checks and confirmation
ACTIONS_GUARDED = ("switch", "test", "boot", "check")  # recorded; "check": checks alone
CHECK = "check"  # no rebuild: the checks, on the system that runs now
SYSTEM_RUNNING = "system-running"  # the built-in check: systemctl is-system-running
OUTPUT_TAIL_LINES = 10
ROLLBACK_STEP_TIMEOUT = 600.0  # seconds one step of a rollback may take (nix-env, activation)
MAX_ROLLBACK_STEPS = 3  # set the profile, activate what ran, restore the boot entry
# Why a new system does not stand when the runner was told to stop before it was checked and
# confirmed (systemctl stop of its unit, the host shutting down, a cancel that met the
# activation): said as it is, never as a failed check or a confirmation that did not come.
STOPPED_REASON = "the job runner was told to stop before the new system was checked and confirmed"
_STARTING = ("initializing", "starting")
_POLL = 0.2


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One check: ``argv`` run without a shell within ``timeout`` seconds, ok when it exits 0;
    or the built-in ``system-running`` (``builtin``), which runs ``systemctl``."""

    name: str
    argv: tuple[str, ...] = ()
    timeout: float = 60.0
    builtin: str | None = None
    ignore_units: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Guard:
    """What the listener asks the runner to guard: written before the launch, read once."""

    action: str
    profile: str  # the system profile link: /nix/var/nix/profiles/system
    current: str  # the running system's link: /run/current-system
    nix_env: tuple[str, ...] = ("nix-env",)
    systemctl: tuple[str, ...] = ("systemctl",)
    checks: tuple[HealthCheck, ...] = ()
    confirm_timeout: float = 120.0
    rollback: bool = True


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    duration_s: float
    output_tail: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Activation:
    """What the runner found and did after the rebuild: ``exit.json``'s ``activation``."""

    previous: dict[str, str | None]
    new: dict[str, str | None] | None = None
    rollback: bool = True  # False: the guard was told not to roll back (it only reports)
    checks: list[CheckResult] = field(default_factory=list)
    confirmed: bool | None = None  # None: not asked for
    rollback_reason: str | None = None
    rolled_back: bool = False
    rollback_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Step:
    """One command the runner runs: what ``run`` returns for it."""

    exit_code: int | None
    timed_out: bool = False
    output: list[str] = field(default_factory=list)
    start_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.start_error is None


# A way to run one argv within a timeout, its output kept in the job's log: the runner's.
Run = Callable[[Sequence[str], float], Step]
Note = Callable[[str], None]
Phase = str  # rebuilding, checking, confirming, rolling_back


# -- the files ---------------------------------------------------------------------------------


def write_guard(job_dir: Path, guard: Guard, write: Callable[[Path, dict[str, Any]], None]) -> None:
    """Leave ``guard`` for the runner; ``write`` is ``jobdir.write_json_atomically``."""
    write(job_dir / GUARD_FILE, asdict(guard))


def read_guard(job_dir: Path) -> Guard | str | None:
    """The guard the listener left; None when there is none (nothing to guard), a sentence
    saying why when it cannot be read (the runner then guards nothing, and says so)."""
    try:
        data = json.loads((job_dir / GUARD_FILE).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"cannot read the job's {GUARD_FILE}: {exc}"
    try:
        checks = tuple(
            HealthCheck(
                name=str(c["name"]),
                argv=tuple(str(a) for a in c.get("argv") or ()),
                timeout=float(c.get("timeout", 60.0)),
                builtin=c.get("builtin"),
                ignore_units=tuple(str(u) for u in c.get("ignore_units") or ()),
            )
            for c in data.get("checks") or ()
        )
        return Guard(
            action=str(data["action"]),
            profile=str(data["profile"]),
            current=str(data["current"]),
            nix_env=tuple(str(a) for a in data.get("nix_env") or ("nix-env",)),
            systemctl=tuple(str(a) for a in data.get("systemctl") or ("systemctl",)),
            checks=checks,
            confirm_timeout=float(data.get("confirm_timeout", 120.0)),
            rollback=bool(data.get("rollback", True)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"the job's {GUARD_FILE} is not what a listener writes: {exc}"


def write_phase(job_dir: Path, phase: Phase, write: Callable[[Path, dict[str, Any]], None]) -> None:
    """Tell the listener where the job is after the rebuild (it reads ``PHASE_FILE``)."""
    write(job_dir / PHASE_FILE, {"phase": phase, "at": time.time()})


def read_phase(job_dir: Path) -> Phase | None:
    try:
        value = json.loads((job_dir / PHASE_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    phase = value.get("phase") if isinstance(value, dict) else None
    return phase if isinstance(phase, str) else None


def confirm(job_dir: Path, write: Callable[[Path, dict[str, Any]], None]) -> None:
    """The listener's word that it reached NATS from the new system (``CONFIRMED_FILE``)."""
    write(job_dir / CONFIRMED_FILE, {"confirmed_at": time.time(), "pid": os.getpid()})


def _confirmed(job_dir: Path) -> bool:
    return (job_dir / CONFIRMED_FILE).exists()


# -- the facts ---------------------------------------------------------------------------------


def snapshot(guard: Guard) -> dict[str, str | None]:
    """The exact systems the profile and the current-system link resolve to now."""
    return {"profile": _resolved(guard.profile), "current": _resolved(guard.current)}


def _resolved(link: str) -> str | None:
    path = Path(link)
    if not path.exists():
        return None
    return os.path.realpath(path)


def rollback_reason(
    action: str,
    *,
    rebuild_ok: bool,
    before: dict[str, str | None],
    after: dict[str, str | None],
    failed_check: str | None = None,
    confirmed: bool | None = None,
    confirm_timeout: float = 0.0,
    stopped: bool = False,
) -> str | None:
    """Why the recorded system must be re-activated; None when the result stands (pure).

    A failed rebuild that changed neither link changed nothing: there is nothing to take
    back. One that changed either failed while activating. ``boot`` runs nothing new, so
    nothing can be checked or confirmed; ``switch`` and ``test`` need both, and a runner
    told to stop (``stopped``) before it had both does not let the new system stand.
    """
    activated = before != after
    if not rebuild_ok:
        return "the activation failed" if activated else None
    if action not in ACTIONS_CHECKED:
        return None
    if stopped:
        return STOPPED_REASON
    if failed_check is not None:
        return f"the health check {failed_check!r} failed"
    if confirmed is False:
        return (
            f"the listener did not confirm within {confirm_timeout:g} s that it reached NATS "
            "from the new system"
        )
    return None


def rollback_steps(guard: Guard, before: dict[str, str | None]) -> list[list[str]] | str:
    """The argv that make ``before`` the running (and booting) system again, in order; a
    sentence when there is nothing recorded to go back to.

    ``test`` never touched the profile: only the previous current system is activated again
    (``test``). ``switch`` and ``boot`` set the profile back to the exact previous path, then
    activate it: ``switch`` when it is also what ran, else the running one with ``test`` and
    the profile's with ``boot`` (a pending boot entry is kept as it was)."""
    profile, current = before.get("profile"), before.get("current")
    if guard.action == "test":
        if current is None:
            return "no current system was recorded before the rebuild"
        return [[_activate(current), "test"]]
    if profile is None:
        return "no system profile was recorded before the rebuild"
    steps = [[*guard.nix_env, "--profile", guard.profile, "--set", profile]]
    if guard.action == "boot":
        return [*steps, [_activate(profile), "boot"]]
    if current is None or current == profile:
        return [*steps, [_activate(profile), "switch"]]
    return [*steps, [_activate(current), "test"], [_activate(profile), "boot"]]


def _activate(system: str) -> str:
    return str(Path(system) / "bin" / "switch-to-configuration")


# -- what the runner does ----------------------------------------------------------------------


def time_after(guard: Guard) -> float:
    """The longest the runner may take after the rebuild under ``guard``: every check to
    its timeout, the wait for confirmation, every rollback step to its own. A service
    manager's deadline on the runner must leave it that, or it could cut a rollback."""
    checks = sum(check.timeout for check in guard.checks)
    if guard.action == CHECK:
        return checks
    rollback = MAX_ROLLBACK_STEPS * ROLLBACK_STEP_TIMEOUT if guard.rollback else 0.0
    return checks + guard.confirm_timeout + rollback


def run_checks(guard: Guard, run: Run, note: Note) -> list[CheckResult]:
    """Every check, in order, each within its timeout; all run, so the status tells all."""
    results = []
    for check in guard.checks:
        began = time.monotonic()
        if check.builtin == SYSTEM_RUNNING:
            ok, output = _system_running(guard, check, run)
        elif check.builtin is not None:
            ok, output = False, [f"unknown built-in check {check.builtin!r}"]
        else:
            step = run(check.argv, check.timeout)
            ok, output = step.ok, _why(step, check.timeout)
        result = CheckResult(
            name=check.name,
            ok=ok,
            duration_s=round(time.monotonic() - began, 3),
            output_tail=output[-OUTPUT_TAIL_LINES:],
        )
        note(f"fleet-deploy: health check {check.name}: {'ok' if ok else 'FAILED'}")
        results.append(result)
    return results


def _why(step: Step, timeout: float) -> list[str]:
    if step.start_error is not None:
        return [*step.output, step.start_error]
    if step.timed_out:
        return [*step.output, f"did not finish within {timeout:g} s"]
    return step.output


def _system_running(guard: Guard, check: HealthCheck, run: Run) -> tuple[bool, list[str]]:
    """``systemctl is-system-running`` until it leaves starting/initializing; degraded is a
    failure unless every failed unit is one of ``ignore_units``."""
    deadline = time.monotonic() + check.timeout
    while True:
        left = max(0.1, deadline - time.monotonic())
        step = run([*guard.systemctl, "is-system-running"], left)
        state = step.output[-1].strip() if step.output else ""
        if state in _STARTING and time.monotonic() < deadline:
            time.sleep(_POLL)  # the system is still starting: ask again, within the check's time
            continue
        if state == "running":
            return True, [state]
        if state == "degraded":
            failed = run([*guard.systemctl, "list-units", "--failed", "--plain", "--no-legend"], 30)
            units = [line.split()[0] for line in failed.output if line.strip()]
            bad = [u for u in units if u not in check.ignore_units]
            if not bad:
                return True, [f"degraded, only by ignored units: {', '.join(units)}"]
            return False, [f"degraded: failed units {', '.join(bad)}"]
        if state in _STARTING:
            return False, [f"still {state} after {check.timeout:g} s"]
        return False, [*_why(step, check.timeout), f"the system is {state or 'in no known state'}"]


def await_confirmation(job_dir: Path, timeout: float, stopped: Callable[[], bool]) -> bool:
    """Whether the listener confirmed within ``timeout`` s; a stop request ends the wait."""
    deadline = time.monotonic() + timeout
    while not _confirmed(job_dir):
        if stopped() or time.monotonic() >= deadline:
            return _confirmed(job_dir)
        time.sleep(_POLL)  # a file another process writes: looked for, within the deadline
    return True


def roll_back(guard: Guard, before: dict[str, str | None], run: Run, note: Note) -> str | None:
    """Re-activate ``before``; None when it worked, else why not (each step is told)."""
    steps = rollback_steps(guard, before)
    if isinstance(steps, str):
        note(f"fleet-deploy: cannot roll back: {steps}")
        return steps
    for argv in steps:
        note(f"fleet-deploy: rolling back: {' '.join(argv)}")
        step = run(argv, ROLLBACK_STEP_TIMEOUT)
        if not step.ok:
            error = step.start_error or (
                f"{Path(argv[0]).name} exited {step.exit_code}"
                if not step.timed_out
                else f"{Path(argv[0]).name} ran past {ROLLBACK_STEP_TIMEOUT:g} s"
            )
            note(f"fleet-deploy: the rollback step failed: {error}")
            return error
    return None


def guard_activation(
    job_dir: Path,
    guard: Guard,
    before: dict[str, str | None],
    *,
    rebuild_ok: bool,
    run: Run,
    note: Note,
    phase: Callable[[Phase], None],
    stopped: Callable[[], bool],
) -> Activation:
    """Steps 2 to 4 of the module's docstring, after the rebuild ended; what was found and
    done, for ``exit.json``."""
    activation = Activation(previous=before, new=snapshot(guard), rollback=guard.rollback)
    if guard.action == CHECK:  # on demand: checked, and nothing to confirm or take back
        phase("checking")
        activation.checks = run_checks(guard, run, note)
        return activation
    failed_check = None
    interrupted = False
    if rebuild_ok and guard.action in ACTIONS_CHECKED and activation.new != before:
        # A stop that came before the new system was checked (and, with rollback on,
        # confirmed) — while an activation ran to its end, or cutting a check or the wait
        # short — is why it does not stand: not a check that "failed", nor a confirmation
        # that "did not come".
        if not stopped():
            phase("checking")
            activation.checks = run_checks(guard, run, note)
            failed_check = next((c.name for c in activation.checks if not c.ok), None)
        interrupted = stopped()
        if failed_check is None and guard.rollback and not interrupted:
            phase("confirming")
            note("fleet-deploy: waiting for the listener to confirm it reached NATS")
            activation.confirmed = await_confirmation(job_dir, guard.confirm_timeout, stopped)
            interrupted = stopped() and not activation.confirmed
    activation.rollback_reason = rollback_reason(
        guard.action,
        rebuild_ok=rebuild_ok,
        before=before,
        after=activation.new or {},
        failed_check=failed_check,
        confirmed=activation.confirmed,
        confirm_timeout=guard.confirm_timeout,
        stopped=interrupted,
    )
    if activation.rollback_reason is None:
        return activation
    if not guard.rollback:
        note(f"fleet-deploy: not rolling back (rollback is off): {activation.rollback_reason}")
        return activation
    phase("rolling_back")
    note(
        f"fleet-deploy: rolling back to {before.get('current') or before.get('profile')}: "
        f"{activation.rollback_reason}"
    )
    activation.rollback_error = roll_back(guard, before, run, note)
    activation.rolled_back = activation.rollback_error is None
    activation.new = snapshot(guard)
    return activation
