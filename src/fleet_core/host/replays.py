"""The listener's memory of signed requests, kept on disk so that a restart forgets none.

A signed request may run at most once, and the answer to it is its requester's alone. The
listener remembers every verified (signer, request id) until the request would have expired
anyway (its lifetime plus the clock skew allowed), and writes that memory to its state
directory before it answers — a refusal included. Otherwise a request refused as
``already_running`` leaves no trace, and the same bytes published again after a restart,
still within their lifetime, would run: a prod switch its requester was told was refused.

The file is ``replays.json`` in the state directory: one JSON list of
``[signer, request id, until]``, replaced atomically (``jobdir.write_atomically``). An
unreadable file is logged and treated as empty: the job records still catch a request
that ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from fleet_core.host.jobs.jobdir import write_atomically
from fleet_core.protocol.signing import ReplayCache

__all__ = ["REPLAYS_FILE", "load_replays", "save_replays"]

REPLAYS_FILE = "replays.json"

log = structlog.get_logger("fleet.listener")


def load_replays(state_dir: Path, cache: ReplayCache, *, now: float) -> int:
    """Remember again what ``save_replays`` wrote; returns how many entries still hold."""
    path = state_dir / REPLAYS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("replays_unreadable", path=str(path), error=exc.strerror or str(exc))
        return 0
    try:
        entries = json.loads(data)
        valid = [
            (str(signer), str(request_id), float(until))
            for signer, request_id, until in entries
            if isinstance(signer, str) and isinstance(request_id, str)
        ]
    except (ValueError, TypeError):
        log.warning("replays_unreadable", path=str(path), error="not a list of entries")
        return 0
    cache.restore(valid, now=now)
    return len(cache.entries(now=now))


def save_replays(state_dir: Path, cache: ReplayCache, *, now: float) -> None:
    """Write what ``cache`` remembers, durably, before the request is answered."""
    state_dir.mkdir(parents=True, exist_ok=True)
    entries = [[signer, request_id, until] for signer, request_id, until in cache.entries(now=now)]
    write_atomically(state_dir / REPLAYS_FILE, json.dumps(entries).encode(), mode=0o600)
