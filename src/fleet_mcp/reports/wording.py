"""The numbers and phrases every report and note shares, so that a deployment and a build
say the same thing the same way: host counts, a message at a glance, a list of names that
stops naming, a log tail cut to the lines that hold the cause."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TypeVar

from fleet_core.build.protocol import HostBuild
from fleet_core.deploy.results import HostResult

__all__ = [
    "DEFAULT_WAIT",
    "MAX_NAMED",
    "MAX_NOTE_DETAIL",
    "MAX_TAIL_LINES",
    "clock",
    "counted",
    "first_problems",
    "full_stop",
    "glance",
    "some_names",
    "trimmed",
]

# How long a deploy or deployment_status call waits by default. Claude Desktop and the
# official TypeScript SDK end a call after 60 s whatever progress says; 45 s leaves 15 s for
# the connection, the result's transfer and the client's own latency. A deployment that needs
# longer is not cut short: the call returns it as running, and deployment_status waits again.
DEFAULT_WAIT = 45.0
MAX_TAIL_LINES = 50  # nix prints the cause last; fifty lines hold it and its trace
MAX_NOTE_DETAIL = 200  # characters of a host's message in a note: a glance, not the log
MAX_NAMED = 5  # hosts a summary names before it stops naming them

Host = TypeVar("Host", HostResult, HostBuild)


def counted(counts: dict[str, int]) -> str:
    """Hosts per state, as in "1 failed, 3 completed"."""
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no hosts"


def glance(text: str) -> str:
    """The first line of a message, at most ``MAX_NOTE_DETAIL`` characters: a sentence
    names the cause; the host's own entry has the rest."""
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= MAX_NOTE_DETAIL else first[: MAX_NOTE_DETAIL - 1] + "…"


def clock(timestamp: float) -> str:
    """A Unix time as a person reads it in a sentence: the time of day, in UTC."""
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%H:%M:%S UTC")


def full_stop(text: str) -> str:
    """``text`` ending as a sentence does, so that the next one can follow it."""
    text = text.rstrip()
    return text if text.endswith((".", "?", "!")) else text + "."


def some_names(names: Sequence[str]) -> str:
    """The first ``MAX_NAMED`` names, and "…" when there are more."""
    return ", ".join(names[:MAX_NAMED]) + ("…" if len(names) > MAX_NAMED else "")


def first_problems(problems: list[str]) -> list[str]:
    """The first ``MAX_NAMED`` problems of a summary, then how many more the hosts hold."""
    if len(problems) <= MAX_NAMED:
        return problems
    more = len(problems) - MAX_NAMED
    return [*problems[:MAX_NAMED], f"and {more} more host(s) (see hosts)"]


def trimmed(host: Host) -> Host:
    """``host`` with at most the last ``MAX_TAIL_LINES`` lines of its log tail."""
    if len(host.log_tail) <= MAX_TAIL_LINES:
        return host
    return host.model_copy(update={"log_tail": host.log_tail[-MAX_TAIL_LINES:]})
