"""Which final status a rebuild's result becomes (pure: no I/O).

The listener runs the rebuild; this module only judges what came back, so every way a
rebuild can end — done, failed with nix's error, stopped at its deadline, stopped on request,
never started, or lost with its job runner — is decided in one function that is tested
against recorded nixos-rebuild output.

A closure deploy (``fleet_core.host.jobs.closure``) is judged here too: its fetch failing is
``closure_unavailable``, its check failing ``not_a_system``; its activation, deadline and
stop end as a rebuild's do.

The outcome is what people are told, on the wire and in the job record alike, so its
message and tail are redacted and bounded here rather than by each reader.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet_core.host.jobs.rebuild_output import failure_summary, success_summary
from fleet_core.protocol.actions import Action, redact
from fleet_core.protocol.messages import MAX_MESSAGE_CHARS, CheckStatus, ErrorCode, StatusKind

__all__ = [
    "CLOSURE_CHECK",
    "CLOSURE_FETCH",
    "ActivationFacts",
    "ClosureFacts",
    "Outcome",
    "RebuildResult",
    "decide",
]

# A closure deploy's steps as exit.json names them (``closure.FETCH``, ``closure.CHECK``: that
# module is the job runner's, stdlib only; a test holds the names to the same values).
CLOSURE_FETCH = "fetch"
CLOSURE_CHECK = "check"
# What each step runs, for the messages: set-profile and activate are the primitive a
# rollback uses too.
_STEP_PROGRAMS = {
    CLOSURE_FETCH: "nix-store --realise",
    "set-profile": "nix-env --set",
    "activate": "switch-to-configuration",
}


@dataclass(frozen=True, slots=True)
class ActivationFacts:
    """What the job runner found and did after a guarded switch, test or boot
    (``fleet_core.host.jobs.activation``), as ``exit.json`` tells it."""

    previous: str | None  # the exact system that ran (or that the profile held) before
    rollback_reason: str | None = None  # why it had to go back; None: the new system stands
    rolled_back: bool = False
    rollback_error: str | None = None
    rollback: bool = True  # False: told not to roll back
    checks: tuple[CheckStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class ClosureFacts:
    """What the steps of a closure deploy did, as ``exit.json``'s ``closure`` tells it."""

    store_path: str
    failed_step: str | None = None  # fetch, check, set-profile, activate; None: none failed
    error: str | None = None  # the runner's sentence, when the step's output is not the why
    steps: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What a ``Rebuilder`` reports once the rebuild process is gone."""

    exit_code: int | None
    timed_out: bool
    tail: list[str]
    duration_s: float
    start_error: str | None = None  # the program could not be started at all
    cancelled: bool = False  # its job runner was told to stop it (SIGTERM to the runner)
    lost: str | None = None  # why the result cannot be known: the job runner vanished
    activation: ActivationFacts | None = None  # a guarded switch, test or boot
    closure: ClosureFacts | None = None  # a closure deploy's steps

    @property
    def ok(self) -> bool:
        return (
            self.exit_code == 0
            and not self.timed_out
            and not self.cancelled
            and self.start_error is None
            and self.lost is None
            and (self.activation is None or self.activation.rollback_reason is None)
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """A job's final status: ``kind`` is completed or failed; a failure carries its tail."""

    kind: StatusKind
    error: ErrorCode | None = None
    message: str = ""
    log_tail: tuple[str, ...] | None = None
    checks: tuple[CheckStatus, ...] | None = None
    rolled_back_to: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind is StatusKind.COMPLETED


def decide(
    result: RebuildResult,
    *,
    action: Action,
    revision: str,
    timeout: float,
    program: str = "nixos-rebuild",
) -> Outcome:
    """The final status of a rebuild of ``revision`` with ``action`` that ran into ``result``;
    ``program`` (darwin-rebuild, home-manager) is what the messages say ran.

    A deadline or a stop wins over the exit code: a group stopped by SIGTERM exits non-zero,
    and "build_failed" would send the reader looking for a nix error that is not there. A
    result that was lost with its job runner is ``cancelled`` too: the rebuild did not finish
    under supervision, and nothing says it failed to build.
    """
    activation = result.activation
    checks = activation.checks if activation is not None and activation.checks else None
    if action is Action.CHECK and result.lost is None and not result.cancelled:
        return _checked(checks or ())
    closure = result.closure
    if result.ok:
        if closure is not None:
            message = _closure_done(closure, action)
        else:
            message = success_summary(result.tail, action.value, revision)
        return Outcome(StatusKind.COMPLETED, message=_shown(message), checks=checks)
    tail = tuple(redact(line) for line in result.tail)
    if activation is not None and activation.rollback_reason is not None:
        error, message = _went_back(activation)
        return Outcome(
            StatusKind.FAILED,
            error,
            _shown(message),
            tail,
            checks=checks,
            rolled_back_to=activation.previous if activation.rolled_back else None,
        )
    stopped = result.timed_out or result.cancelled or result.lost is not None
    if closure is not None and not stopped:
        failed = _closure_failed(closure, result)
        if failed is not None:
            error, message = failed
            return Outcome(StatusKind.FAILED, error, _shown(message), tail, checks=checks)
        program = _STEP_PROGRAMS.get(closure.failed_step or "", program)
    if result.timed_out:
        error = ErrorCode.TIMEOUT
        running = closure.steps[-1] if closure is not None and closure.steps else None
        message = (
            f"{program} ran longer than {timeout:g} s and was stopped with its whole process group"
            if closure is None
            else f"the closure deploy of {closure.store_path} ran longer than {timeout:g} s and "
            f"was stopped with its whole process group (in its {running or 'first'} step)"
        )
    elif result.lost is not None:
        error = ErrorCode.CANCELLED
        message = result.lost
    elif result.cancelled and closure is not None:
        error = ErrorCode.CANCELLED
        message = (
            f"the closure deploy of {closure.store_path} was stopped before it activated "
            "anything: its job runner was told to stop"
        )
    elif result.cancelled:
        error = ErrorCode.CANCELLED
        message = "the rebuild was stopped before it finished: its job runner was told to stop"
    else:
        error = ErrorCode.BUILD_FAILED
        message = result.start_error or failure_summary(
            result.tail, result.exit_code, program=program
        )
    return Outcome(StatusKind.FAILED, error, _shown(message), tail, checks=checks)


def _closure_failed(closure: ClosureFacts, result: RebuildResult) -> tuple[ErrorCode, str] | None:
    """The error of a closure deploy whose fetch or check failed; None for another step
    (its activation ends as a rebuild's does)."""
    if closure.failed_step == CLOSURE_FETCH:
        return ErrorCode.CLOSURE_UNAVAILABLE, _unavailable(closure, result)
    if closure.failed_step == CLOSURE_CHECK:
        message = closure.error or f"{closure.store_path} is not a NixOS system"
        return ErrorCode.NOT_A_SYSTEM, f"{message}; nothing was activated"
    return None


def _closure_done(closure: ClosureFacts, action: Action) -> str:
    """The message of a closure deploy that completed."""
    if action is Action.BUILD:
        return f"fetched {closure.store_path}: a NixOS system, signed by a key this host trusts"
    if action is Action.DRY_ACTIVATE:
        return f"dry-activate of {closure.store_path} done: nothing was changed"
    return f"{action.value} of {closure.store_path} done"


def _unavailable(closure: ClosureFacts, result: RebuildResult) -> str:
    """Why a closure could not be fetched: nix's own last error, and what that means."""
    said = result.start_error or closure.error
    if said is None:
        said = failure_summary(result.tail, result.exit_code, program="nix-store --realise")
    return (
        f"{closure.store_path} could not be fetched ({said}): no substituter this host trusts "
        "serves it with a valid signature, or none could be reached. Nothing was changed"
    )


def _checked(checks: tuple[CheckStatus, ...]) -> Outcome:
    """The status of health checks run on demand (``check``): failed when one failed."""
    failed = [c.name for c in checks if not c.ok]
    if failed:
        named = ", ".join(repr(name) for name in failed)
        message = f"the health check{'s' if len(failed) > 1 else ''} {named} failed"
        return Outcome(StatusKind.FAILED, ErrorCode.CHECK_FAILED, _shown(message), checks=checks)
    message = (
        f"{len(checks)} health check{'s' if len(checks) != 1 else ''} passed"
        if checks
        else "no health checks are declared on this host"
    )
    return Outcome(StatusKind.COMPLETED, message=message, checks=checks or None)


def _went_back(activation: ActivationFacts) -> tuple[ErrorCode, str]:
    """The error and message of a guarded activation that did not stand."""
    reason = activation.rollback_reason
    previous = activation.previous or "the previous system"
    if activation.rolled_back:
        return ErrorCode.ROLLED_BACK, f"rolled back to {previous}: {reason}"
    if activation.rollback_error is not None:
        return (
            ErrorCode.ROLLBACK_FAILED,
            f"{reason}, and rolling back to {previous} failed too "
            f"({activation.rollback_error}): check the host",
        )
    failed_check = any(not c.ok for c in activation.checks)
    return (
        ErrorCode.CHECK_FAILED if failed_check else ErrorCode.BUILD_FAILED,
        f"{reason}; not rolled back (rollback is off for this deploy or host), so the new "
        f"system is still active",
    )


def _shown(message: str) -> str:
    # Redacted before it is cut: a cut through "user:token@" would hide it from redact().
    return redact(message)[:MAX_MESSAGE_CHARS]
