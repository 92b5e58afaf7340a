"""Which final status a rebuild result becomes (pure), against recorded output in tests/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_core.host.jobs.outcome import Outcome, RebuildResult, decide
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import MAX_MESSAGE_CHARS, ErrorCode, StatusKind

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

DATA = Path(__file__).parent / "data"


def lines(name: str) -> list[str]:
    return (DATA / name).read_text().splitlines()


def judge(result: RebuildResult, timeout: float = 600) -> Outcome:
    return decide(result, action=Action.SWITCH, revision="main", timeout=timeout)


def test_a_clean_switch_completes() -> None:
    """Exit 0 is completed, naming the new system, with no error and no log tail."""
    outcome = judge(RebuildResult(0, False, lines("switch-success.txt"), 12.5))
    assert (outcome.kind, outcome.error, outcome.log_tail) == (StatusKind.COMPLETED, None, None)
    assert outcome.ok
    assert outcome.message.startswith("switch of main done: /nix/store/5q4w3e2r")


@pytest.mark.parametrize(
    ("sample", "cause"),
    [
        ("nix-eval-error.txt", "The option `services.nginx"),
        ("build-failure.txt", "1 dependencies of derivation"),
    ],
)
def test_a_failed_rebuild_says_what_nix_said(sample: str, cause: str) -> None:
    """A non-zero exit is failed/build_failed with nix's cause in the message and the tail."""
    output = lines(sample)
    outcome = judge(RebuildResult(1, False, output, 3.0))
    assert (outcome.kind, outcome.error) == (StatusKind.FAILED, ErrorCode.BUILD_FAILED)
    assert not outcome.ok
    assert outcome.message.startswith("nixos-rebuild failed (exit 1): ")
    assert cause in outcome.message
    assert outcome.log_tail == tuple(output)


def test_the_deadline_wins_over_the_exit_code() -> None:
    """A rebuild stopped at its deadline is failed/timeout, whatever it exited with."""
    output = [*lines("build-failure.txt"), "fleet-deploy: the rebuild ran past its 90 s deadline"]
    outcome = judge(RebuildResult(-15, True, output, 90.2), timeout=90)
    assert (outcome.kind, outcome.error) == (StatusKind.FAILED, ErrorCode.TIMEOUT)
    assert "longer than 90 s" in outcome.message
    assert outcome.log_tail is not None and "deadline" in outcome.log_tail[-1]


def test_a_program_that_never_started() -> None:
    """A start error is failed/build_failed with the start error as the message."""
    why = "cannot start '/nonexistent/nixos-rebuild': No such file or directory"
    outcome = judge(RebuildResult(None, False, [why], 0.0, start_error=why))
    assert (outcome.kind, outcome.error, outcome.message) == (
        StatusKind.FAILED,
        ErrorCode.BUILD_FAILED,
        why,
    )


def test_exit_zero_with_a_start_error_is_not_success() -> None:
    """Only a clean exit with no deadline and no start error counts as completed."""
    assert not RebuildResult(0, True, [], 1.0).ok
    assert not RebuildResult(0, False, [], 1.0, start_error="x").ok
    assert RebuildResult(0, False, [], 1.0).ok


def test_credentials_are_redacted_before_the_message_is_cut() -> None:
    """A token at the cut-off point is masked, and message and tail never carry it."""
    url = "git+https://oauth2:s3cr3t-T0KEN@git.example.invalid/fleet.git"
    why = "x" * (MAX_MESSAGE_CHARS - 28) + " " + url
    outcome = judge(RebuildResult(None, False, [f"unpacking '{url}'"], 0.0, start_error=why))
    assert len(outcome.message) <= MAX_MESSAGE_CHARS
    assert "s3cr3t" not in outcome.message
    assert outcome.log_tail == ("unpacking 'git+https://***@git.example.invalid/fleet.git'",)
