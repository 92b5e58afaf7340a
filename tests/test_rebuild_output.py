"""Reading nixos-rebuild output (pure), against output samples kept in tests/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_core.host.jobs.rebuild_output import failure_summary, phase_of, success_summary

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

DATA = Path(__file__).parent / "data"


def lines(name: str) -> list[str]:
    return (DATA / name).read_text().splitlines()


def phases(output: list[str]) -> list[str]:
    seen: list[str] = []
    phase: str | None = None
    for line in output:
        phase = phase_of(line, phase)
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
    return seen


def test_phases_of_a_switch() -> None:
    """A switch walks building → bootloader → activating → done."""
    assert phases(lines("switch-success.txt")) == ["building", "bootloader", "activating", "done"]


def test_success_summary_names_the_new_system() -> None:
    """The success message carries the new system's store path."""
    message = success_summary(lines("switch-success.txt"), "switch", "main")
    assert message.startswith("switch of main done: /nix/store/5q4w3e2r")
    assert success_summary([], "build", "v1") == "build of v1 done"


def test_evaluation_error_summary_is_the_cause() -> None:
    """For an evaluation error the summary is nix's last error line, not its context."""
    message = failure_summary(lines("nix-eval-error.txt"), 1)
    assert message.startswith("nixos-rebuild failed (exit 1): The option `services.nginx")
    assert "conflicting definition values" in message


def test_build_failure_summary() -> None:
    """For a failed build the summary is the last error line."""
    message = failure_summary(lines("build-failure.txt"), 1)
    assert "1 dependencies of derivation" in message


def test_summary_without_error_lines() -> None:
    """Without an error: line the last non-empty line is used; no output is said so."""
    assert failure_summary(["a", "killed", ""], 137) == "nixos-rebuild failed (exit 137): killed"
    assert failure_summary([], None) == "nixos-rebuild failed (exit None) without output"


def test_ansi_colours_are_ignored() -> None:
    """Coloured nix output is read like plain output."""
    assert phase_of("\x1b[1mactivating the configuration...\x1b[0m") == "activating"
    assert failure_summary(["\x1b[31;1merror:\x1b[0m boom"], 1).endswith(": boom")


def test_unknown_lines_keep_the_phase() -> None:
    """A line that announces nothing keeps the previous phase."""
    assert phase_of("some chatter", "building") == "building"
