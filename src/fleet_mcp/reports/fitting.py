"""Keeping a result's text within ``TEXT_BUDGET``, whatever the fleet's size.

A model reads the text of a result, and its context is small: the text is the whole result
while it fits, and beyond that (a thousand hosts and up) a digest that each report shapes —
what went wrong in full, the rest counted. These are the digest's tools: the whole text if it
fits, as many hosts as fit (an entry too big cut down rather than dropped), and a last cut of
the summary should very long names still overflow. The structured content keeps everything.

A text is rendered by ``untrusted.text``: the summary and next step, the report without its
host output, then the host output fenced; so every size here is that rendering's, and a
host's share of it counts its fenced line too (``TextLayout.entry_cost``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from fleet_core.build.protocol import HostBuild
from fleet_core.deploy.results import HostResult
from fleet_mcp.reports.untrusted import FENCE_COST, TextLayout, as_json, text
from fleet_mcp.reports.wording import MAX_NOTE_DETAIL, glance

__all__ = [
    "LISTED",
    "TEXT_BUDGET",
    "byte_size",
    "hosts_within_budget",
    "whole",
    "within_budget",
]

TEXT_BUDGET = 15_000  # bytes of a result's text: under 16 KB, whatever the fleet's size
LISTED = 20  # hosts named in a text that had to count the rest
_TEXT_TAIL = 10  # log lines per host in a digest that could not hold the whole tails


def byte_size(text: str) -> int:
    return len(text.encode())


def whole(report: BaseModel, layout: TextLayout) -> str | None:
    """The whole report as text when it fits ``TEXT_BUDGET``; None when it needs a digest."""
    full = text(report.model_dump(mode="json"), layout)
    return full if byte_size(full) <= TEXT_BUDGET else None


def within_budget(digest: dict[str, Any], layout: TextLayout) -> str:
    """The digest as text; should a summary of very long names still overflow, the summary
    is cut (the structured content keeps it whole)."""
    rendered = text(digest, layout)
    excess = byte_size(rendered) - TEXT_BUDGET
    if excess > 0:
        summary = str(digest.get("summary", ""))
        digest["summary"] = summary[: max(0, len(summary) - excess - 2)] + "…"
        rendered = text(digest, layout)
    return rendered


def hosts_within_budget(
    digest: dict[str, Any],
    key: str,
    hosts: Sequence[HostResult] | Sequence[HostBuild],
    states: Sequence[str],
    *,
    by: str,
    layout: TextLayout,
) -> str:
    """``digest`` as text, with as many of ``hosts`` (in order) as fit listed under ``key``
    and the rest counted under ``<key>_omitted``, per state (``states``, one per host) under
    ``by``. The digest's ``note`` says so when log tails had to be cut to list more hosts."""
    # 300 bytes for what is added below, and the fence the hosts' output may need.
    room = TEXT_BUDGET - byte_size(text(digest, layout)) - FENCE_COST - 300
    shown = _fit(hosts, room, tail=None, key=key, layout=layout)
    if len(shown) < len(hosts):  # the cause is at a tail's end: shorter tails, more hosts
        cut = _fit(hosts, room, tail=_TEXT_TAIL, key=key, layout=layout)
        if len(cut) > len(shown):
            shown = cut
            digest["note"] += f" Log tails are cut to their last {_TEXT_TAIL} lines here."
    digest[key] = shown
    if len(shown) < len(hosts):
        left = Counter(states[len(shown) :])
        digest[f"{key}_omitted"] = {
            "count": len(hosts) - len(shown),
            by: dict(sorted(left.items())),
        }
    return within_budget(digest, layout)


def _fit(
    hosts: Sequence[HostResult] | Sequence[HostBuild],
    room: int,
    *,
    tail: int | None,
    key: str,
    layout: TextLayout,
) -> list[dict[str, Any]]:
    """As many of ``hosts`` (in order) as fit in ``room`` bytes of text as the list ``key``
    (each host's data and its fenced output), log tails cut to ``tail`` lines when given.
    An entry too big for a quarter of the room is cut down rather than dropped: one host's
    huge log must not hide every failure."""
    shown: list[dict[str, Any]] = []
    limit = max(room // 4, 1000)
    for host in hosts:
        entry = host.model_dump(mode="json")
        if tail is not None:
            entry["log_tail"] = entry["log_tail"][-tail:]
        if byte_size(as_json(entry)) > limit:
            entry = _shrunk(entry, limit)
        room -= layout.entry_cost(key, len(shown), entry)
        if room < 0:
            break
        shown.append(entry)
    return shown


def _shrunk(entry: dict[str, Any], limit: int) -> dict[str, Any]:
    """``entry`` within ``limit`` bytes: the message's first line, short log lines, and as
    many of the last log lines as fit."""
    entry = {**entry, "message": glance(str(entry.get("message") or ""))}
    name = "hostname" if "hostname" in entry else "host"  # a deployment's host, or a build's
    entry[name] = str(entry[name])[:MAX_NOTE_DETAIL]
    lines = [line if len(line) <= 300 else line[:299] + "…" for line in entry["log_tail"]]
    entry["log_tail"] = []
    room = limit - byte_size(as_json(entry))
    kept: list[str] = []
    for line in reversed(lines):
        room -= byte_size(as_json(line)) + 2
        if room < 0:
            break
        kept.append(line)
    entry["log_tail"] = kept[::-1]
    entry["cut"] = True
    return entry
