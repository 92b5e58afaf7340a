"""Reading nixos-rebuild's output (pure): which phase a line announces, and why a build failed.

nixos-rebuild prints no machine-readable progress, so the phase is recognised from the few
lines it and nix always print; an unrecognised line keeps the previous phase. darwin-rebuild
and home-manager print nix's same build lines, and activation lines of their own that are
recognised too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["failure_summary", "phase_of", "success_summary"]

_PHASES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^building the system configuration"), "building"),
    (re.compile(r"^these \d+ derivations? will be built"), "building"),
    (re.compile(r"^building '/nix/store/"), "building"),
    (re.compile(r"^these \d+ paths? will be fetched"), "fetching"),
    (re.compile(r"^copying path '/nix/store/"), "fetching"),
    (re.compile(r"^(unpacking|fetching) '?(git|github|https?|git\+)"), "fetching"),
    (re.compile(r"^evaluating"), "evaluating"),
    (re.compile(r"^(updating GRUB|installing the boot loader|Copied |Created \")"), "bootloader"),
    (re.compile(r"^activating the configuration"), "activating"),
    (re.compile(r"^(setting up /etc|reloading user units|setting up tmpfiles)"), "activating"),
    # darwin-rebuild's activation, and Home Manager's.
    (re.compile(r"^setting up (groups|users|launchd services|/run/current-system)"), "activating"),
    (re.compile(r"^Starting Home Manager activation"), "activating"),
    (re.compile(r"^(stopping|starting|restarting|reloading) the following units"), "activating"),
    (re.compile(r"^Done\. The new configuration is"), "done"),
)
_DONE = "Done. The new configuration is "
_ERROR = re.compile(r"^\s*error:\s*(.*)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _clean(line: str) -> str:
    return _ANSI.sub("", line).rstrip()


def phase_of(line: str, previous: str | None = None) -> str | None:
    """The phase ``line`` announces, or ``previous`` when it announces none."""
    text = _clean(line)
    for pattern, phase in _PHASES:
        if pattern.search(text):
            return phase
    return previous


def failure_summary(
    lines: Sequence[str], exit_code: int | None, *, program: str = "nixos-rebuild"
) -> str:
    """One sentence for a failed rebuild: nix's last ``error:`` line, else the last line.

    nix prints the outermost context first ("error:", "… while evaluating …") and the cause
    last, so the last ``error:`` with a text of its own is the one a person needs.
    """
    cleaned = [_clean(line) for line in lines]
    detail = ""
    for index, text in enumerate(cleaned):
        match = _ERROR.match(text)
        if not match:
            continue
        found = match.group(1).strip()
        if not found:
            following = [t.strip() for t in cleaned[index + 1 : index + 3] if t.strip()]
            found = " ".join(following)
        if found:
            detail = found
    if not detail:
        detail = next((t.strip() for t in reversed(cleaned) if t.strip()), "")
    suffix = f": {detail}" if detail else " without output"
    return f"{program} failed (exit {exit_code}){suffix}"[:500]


def success_summary(lines: Iterable[str], action: str, revision: str) -> str:
    """One sentence for a completed rebuild, naming the new system when nix printed it."""
    for line in lines:
        text = _clean(line)
        if text.startswith(_DONE):
            return f"{action} of {revision} done: {text.removeprefix(_DONE)}"
    return f"{action} of {revision} done"
