"""The board: what the dashboard shows, kept up to date (pure: no I/O).

Two sources feed it, and it answers the page with JSON bodies built here:

- **Host rows**, from a discovery (``refresh``): each tier judged on its own by
  ``fleet_core.deploy.fleet_status`` (test usually runs ahead of prod, so one tier's last
  deploy is no news for the other), one ``HostStatus`` dump per host.
- **Live deployments**, from every status on ``deploy.responses.>`` (``take_status``): the
  reply subject names the deployment (its id), and a bound one the host and tier that sent
  it, which the server vouches for under the layout ``nats-config`` writes. A status whose
  body contradicts its subject is dropped, as a deployer drops it (``protocol.trust``).

Every string a host sent is made printable (``protocol.text``) before it enters the board,
and cut to a bounded length: the page puts text in with ``textContent``, but a log line with
an escape sequence must not reach a terminal either when someone ``curl``s the API.

Costs, for a fleet of thousands: a status does work for its own host only (counts are kept
incrementally); a deployment's JSON is built at most once per change and emission, and the
fleet body once per change, however many pages watch (``fleet_json`` caches it). A
deployment's events are coalesced to one per ``COALESCE`` seconds (``due``).

Bounds: a host keeps ``MAX_EVENTS`` timeline events (the first and the newest), the board
``MAX_RUNNING`` running deployments (a hostile listener can name many ids; the oldest quiet
one goes) and the ``MAX_ENDED`` newest ended ones; all of them together ``MAX_HOST_RUNS``
host entries (on a bare reply subject, homelab-deploy's layout, a status names its host
itself: one listener could name endless hosts in one deployment).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from fleet_core.deploy.fleet_status import HostStatus, fleet_status
from fleet_core.protocol.messages import FINAL_STATUSES, HostInfo, Status
from fleet_core.protocol.subjects import RESPONSES_PREFIX
from fleet_core.protocol.text import printable

__all__ = [
    "COALESCE",
    "ENDED_QUIET",
    "FLEET_ENDED_HOSTS",
    "HOST_BURST",
    "MAX_ENDED",
    "MAX_EVENTS",
    "MAX_HOST_RUNS",
    "MAX_RUNNING",
    "STATES",
    "Board",
    "Origin",
    "clean",
    "filter_rows",
    "origin_of",
    "row_state",
]

ENDED_QUIET: Final = 5.0  # seconds without a word from any host before a deployment is over
COALESCE: Final = 0.25  # at most one ``deployment`` event per deployment in this many seconds
MAX_EVENTS: Final = 50  # timeline events kept per host of a deployment
MAX_RUNNING: Final = 200  # running deployments tracked at once
MAX_ENDED: Final = 20  # ended deployments kept for the page
MAX_HOST_RUNS: Final = 20_000  # host entries of every deployment kept, together
MAX_TEXT: Final = 500  # characters of a host's line or error that the page gets
FLEET_ENDED_HOSTS: Final = 2000  # host entries of ended deployments in the fleet body
HOST_BURST: Final = 50  # rows changed at once past which one fleet body replaces host events
_TIERS: Final = frozenset({"test", "prod"})
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_FINAL = frozenset(str(s) for s in FINAL_STATUSES)
_FAILED_JOB = frozenset({"failed", "rejected"})  # a last job fleet_status holds against a host

State = Literal["ok", "problem", "behind", "reboot", "failed", "busy", "silent", "outdated"]
STATES: Final[tuple[State, ...]] = (
    "ok",
    "problem",
    "behind",
    "reboot",
    "failed",
    "busy",
    "silent",
    "outdated",
)


def clean(value: Any, limit: int | None = None) -> Any:
    """``value`` (JSON data) with every string made printable, and cut to ``limit``; a
    number that is not finite is None. A host can send ``1e999``, which Python reads as
    infinity and writes back as ``Infinity``: no JSON, and the page's ``JSON.parse``
    of the whole fleet would fail on it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        text = printable(value)
        return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"
    if isinstance(value, dict):
        return {printable(str(k)): clean(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v, limit) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a status came from, as its subject says: the deployment, and for a bound
    reply subject the tier and host (None on the bare one, homelab-deploy's)."""

    deployment: str
    tier: str | None = None
    hostname: str | None = None


def origin_of(subject: str) -> Origin | None:
    """The origin of a message on ``subject``; None for anything that is not a status's
    subject: log chunks (``.log``), history reads (``….history.read``), odd tokens."""
    if not subject.startswith(RESPONSES_PREFIX):
        return None
    tokens = subject[len(RESPONSES_PREFIX) :].split(".")
    if not all(_TOKEN.fullmatch(t) for t in tokens):
        return None
    if len(tokens) == 1:
        return Origin(tokens[0])
    if len(tokens) == 3 and tokens[1] in _TIERS:
        return Origin(tokens[0], tokens[1], tokens[2])
    return None


@dataclass(slots=True)
class _HostRun:
    """One host's part of a live deployment."""

    hostname: str
    status: str = "accepted"
    phase: str | None = None
    final: bool = False
    line: str = ""
    error: str | None = None
    duration_s: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    _dump: dict[str, Any] | None = None  # built once per change: a deployment's JSON is
    # sent up to four times a second, with every host in it

    def dump(self) -> dict[str, Any]:
        if self._dump is None:
            self._dump = {
                "hostname": self.hostname,
                "status": self.status,
                "phase": self.phase,
                "final": self.final,
                "line": self.line,
                "error": self.error,
                "duration_s": self.duration_s,
                "events": list(self.events),
            }
        return self._dump

    def touched(self) -> None:
        self._dump = None


@dataclass(slots=True)
class _Live:
    """One deployment as its statuses tell it."""

    id: str
    tier: str | None
    started_at: float
    updated_at: float
    action: str | None = None
    revision: str | None = None
    ended: bool = False
    hosts: dict[str, _HostRun] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    unfinished: int = 0  # hosts seen that are not final
    emitted_at: float = float("-inf")  # when its last ``deployment`` event went out
    dirty: bool = False  # changed since that event
    _dump: dict[str, Any] | None = None

    def count(self, status: str, by: int) -> None:
        left = self.counts.get(status, 0) + by
        if left:
            self.counts[status] = left
        else:
            self.counts.pop(status, None)

    def dump(self) -> dict[str, Any]:
        if self._dump is None:
            self._dump = {
                "id": self.id,
                "tier": self.tier,
                "action": self.action,
                "revision": self.revision,
                "started_at": self.started_at,
                "updated_at": self.updated_at,
                "ended": self.ended,
                "counts": dict(self.counts),
                "hosts": [self.hosts[name].dump() for name in sorted(self.hosts)],
            }
        return self._dump

    def touched(self) -> None:
        self._dump = None

    def changed(self) -> None:
        self._dump = None
        self.dirty = True


def row_state(row: dict[str, Any], state: str) -> bool:
    """Whether a host row (a ``HostStatus`` dump) is in ``state`` (one of ``STATES``)."""
    job = row.get("last_job") or {}
    checks = {
        "ok": bool(row.get("ok")),
        "problem": not row.get("ok"),
        "behind": bool(row.get("behind")),
        "reboot": bool(row.get("needs_reboot")),
        "failed": job.get("status") in ("failed", "rejected"),
        "busy": bool(row.get("busy")),
        "silent": not row.get("answered", True),
        "outdated": bool(row.get("outdated")),
    }
    return checks.get(state, False)


def filter_rows(
    rows: Iterable[dict[str, Any]],
    *,
    text: str = "",
    tier: str = "",
    role: str = "",
    state: str = "",
) -> list[dict[str, Any]]:
    """The rows that match every filter given (an empty one matches all): ``text`` is a
    case-blind substring of the hostname, role, revision or listener version."""
    needle = text.strip().lower()
    chosen = []
    for row in rows:
        if tier and row.get("tier") != tier:
            continue
        if role and (row.get("role") or "") != role:
            continue
        if state and not row_state(row, state):
            continue
        if needle:
            hay = " ".join(
                str(row.get(k) or "") for k in ("hostname", "role", "revision", "listener_version")
            )
            if needle not in hay.lower():
                continue
        chosen.append(row)
    return chosen


class Board:
    """The dashboard's state: rows by host, live deployments by id, and the bodies the
    page reads. ``cli_version`` is this program's version (a row's ``outdated``)."""

    def __init__(self, *, cli_version: str, actions: bool = False) -> None:
        self.cli_version = cli_version
        self.actions = actions
        self.rows: dict[str, dict[str, Any]] = {}  # hostname -> HostStatus dump, cleaned
        self.tiers_hidden: list[str] = []
        self.refreshed_at: float | None = None
        self.error: str | None = None
        self._live: dict[str, _Live] = {}
        self._ended: list[str] = []  # ids of ended deployments, oldest first
        self._fleet: str | None = None  # the cached fleet body
        self._rows_changed: set[str] = set()  # rows that statuses changed, not yet sent

    # -- host rows ---------------------------------------------------------------------------

    def refresh(self, hosts: Sequence[HostInfo], *, hidden: Iterable[str], now: float) -> None:
        """New rows from a discovery's answers; ``hidden`` tiers are those the key may not
        read (shown as such, not an error)."""
        by_tier: dict[str, list[HostInfo]] = {}
        for host in hosts:
            by_tier.setdefault(host.tier, []).append(host)
        rows: dict[str, dict[str, Any]] = {}
        for tier in sorted(by_tier):
            status = fleet_status(
                by_tier[tier], target=None, revision=None, cli_version=self.cli_version
            )
            for judged in status.hosts:
                rows[judged.hostname] = self._row(judged)
        for name in self._running_hosts() & rows.keys():  # statuses know better than facts
            rows[name]["busy"] = True
        self.rows = rows
        self.tiers_hidden = sorted(set(hidden))
        self.refreshed_at = now
        self.error = None
        self._fleet = None

    def _row(self, row: HostStatus) -> dict[str, Any]:
        dumped: dict[str, Any] = clean(row.model_dump(mode="json"), MAX_TEXT)
        return dumped

    def _running_hosts(self) -> set[str]:
        """The hosts that a running deployment has heard from and that are not final."""
        return {
            name
            for live in self._live.values()
            if not live.ended and live.unfinished
            for name, run in live.hosts.items()
            if not run.final
        }

    def failed_refresh(self, error: str) -> None:
        """A discovery that could not run: the rows stay, the page says why (our words)."""
        self.error = error
        self._fleet = None

    def row(self, hostname: str) -> dict[str, Any] | None:
        return self.rows.get(hostname)

    # -- live deployments --------------------------------------------------------------------

    def take_status(self, origin: Origin, status: Status, *, now: float) -> dict[str, Any] | None:
        """One status into its deployment, which is then marked for ``due``. Returns the
        host's row when the status changed it (busy, last job), which ``changed_rows`` will
        also hand out. A status its subject does not vouch for is dropped."""
        hostname = origin.hostname or status.hostname
        if not _TOKEN.fullmatch(hostname):
            return None
        if origin.hostname is not None and (
            status.hostname != origin.hostname
            or (status.tier is not None and status.tier != origin.tier)
        ):
            return None  # its body contradicts its subject: not what this host sent
        if status.request_id is not None and status.request_id != origin.deployment:
            return None
        tier = origin.tier or (status.tier if status.tier in _TIERS else None)
        live = self._live.get(origin.deployment)
        if (live is None or hostname not in live.hosts) and not self._room(keep=live):
            return None  # a host more than the board holds: only a flood gets here
        if live is None:
            live = self._open(origin.deployment, tier, now)
        elif live.ended:
            self._reopen(live)
        live.updated_at = now
        if live.action is None and status.action:
            live.action = clean(status.action, 64)
        if live.revision is None and status.revision:
            live.revision = clean(status.revision, 128)
        run = live.hosts.get(hostname)
        if run is None:
            run = live.hosts[hostname] = _HostRun(hostname)
            live.count(run.status, 1)
            live.unfinished += 1
        self._apply(live, run, status, now)
        live.changed()
        self._fleet = None
        return self._host_changed(hostname, live, status, now)

    def _open(self, deployment: str, tier: str | None, now: float) -> _Live:
        running = [d for d in self._live.values() if not d.ended]
        if len(running) >= MAX_RUNNING:
            oldest = min(running, key=lambda d: d.updated_at)
            del self._live[oldest.id]
        live = self._live[deployment] = _Live(deployment, tier, started_at=now, updated_at=now)
        self._fleet = None
        return live

    def _room(self, *, keep: _Live | None) -> bool:
        """Whether one more host entry fits in ``MAX_HOST_RUNS``; the oldest ended
        deployments (but ``keep``) make room. Running ones are never dropped for it."""
        while sum(len(live.hosts) for live in self._live.values()) >= MAX_HOST_RUNS:
            oldest = next((i for i in self._ended if keep is None or i != keep.id), None)
            if oldest is None:
                return False
            self._ended.remove(oldest)
            self._live.pop(oldest, None)
            self._fleet = None
        return True

    def _reopen(self, live: _Live) -> None:
        """A late word from a host of an ended deployment (a job that outlived the quiet)."""
        live.ended = False
        if live.id in self._ended:
            self._ended.remove(live.id)
        self._fleet = None

    def _apply(self, live: _Live, run: _HostRun, status: Status, now: float) -> None:
        kind = str(status.status)
        if run.final and kind not in _FINAL:
            return  # a heartbeat overtaken by the final status: the final one stands
        run.touched()
        phase = clean(status.phase, 64) if status.phase else run.phase
        if kind != run.status or phase != run.phase or not run.events:
            run.events.append({"at": now, "status": kind, "phase": phase})
            if len(run.events) > MAX_EVENTS:
                del run.events[1]  # keep the first: where the timeline starts
        if kind != run.status:
            live.count(run.status, -1)
            live.count(kind, 1)
        was_final = run.final
        run.status, run.phase = kind, phase
        run.final = kind in _FINAL
        if run.final and not was_final:
            live.unfinished -= 1
        # A final status's message is its outcome ("nixos-rebuild failed (exit 1): undefined
        # variable 'webroot'"); the last line of its log tail is often a fragment of a
        # trace ("15|   };"), which would hide why the host failed.
        if run.final and status.message.strip():
            run.line = clean(status.message.strip().partition("\n")[0], MAX_TEXT)
        elif status.log_tail:
            run.line = clean(status.log_tail[-1], MAX_TEXT)
        elif status.message:
            run.line = clean(status.message.rstrip("\n").rpartition("\n")[2], MAX_TEXT)
        run.error = clean(status.error, MAX_TEXT) if status.error else run.error
        if status.duration_s is not None and math.isfinite(status.duration_s):
            run.duration_s = status.duration_s

    def _host_changed(
        self, hostname: str, live: _Live, status: Status, now: float
    ) -> dict[str, Any] | None:
        row = self.rows.get(hostname)
        if row is None or (live.tier is not None and row.get("tier") != live.tier):
            return None
        run = live.hosts[hostname]
        changed = False
        busy = not run.final
        if row.get("busy") != busy:
            row["busy"] = busy
            changed = True
        if run.final and live.action in ("switch", "boot", "test", "dry-activate", "build"):
            job = {
                "id": live.id,
                "action": live.action,
                "revision": live.revision,
                "store_path": None,
                "status": run.status,
                "error": run.error,
                "finished_at": now,
            }
            if row.get("last_job") != job:
                row["last_job"] = job
                changed = True
            if run.status in _FAILED_JOB and row.get("ok") is not False:
                # As fleet_status judges it at the next discovery (seconds away): a host
                # whose deploy just failed is not ok now, not after the refresh.
                problem = f"last {live.action} {run.status}"
                row["problems"] = [*row.get("problems", []), problem]
                row["healthy"] = row["ok"] = False
        if not changed:
            return None
        self._fleet = None
        self._rows_changed.add(hostname)
        return row

    def tick(self, now: float) -> list[str]:
        """Deployments that are over by now: every host seen is final and none spoke for
        ``ENDED_QUIET`` seconds. Returns their ids (each is then ``due`` once more)."""
        ended = []
        for live in self._live.values():
            if not live.ended and live.unfinished == 0 and now - live.updated_at >= ENDED_QUIET:
                live.ended = True
                live.changed()
                ended.append(live.id)
                self._ended.append(live.id)
        while len(self._ended) > MAX_ENDED:
            self._live.pop(self._ended.pop(0), None)
        if ended:
            self._fleet = None
        return ended

    def next_tick(self) -> float | None:
        """When ``tick`` can next end a deployment (None: none can without new statuses)."""
        waiting = [
            live.updated_at + ENDED_QUIET
            for live in self._live.values()
            if not live.ended and live.unfinished == 0
        ]
        return min(waiting) if waiting else None

    def due(self, now: float) -> tuple[list[dict[str, Any]], float | None]:
        """The deployments to send now (changed, and not sent within ``COALESCE``), and when
        the next one that changed becomes due (None: none waits)."""
        send: list[dict[str, Any]] = []
        later: float | None = None
        for live in self._live.values():
            if not live.dirty:
                continue
            at = live.emitted_at + COALESCE
            if at <= now:
                live.dirty = False
                live.emitted_at = now
                send.append(live.dump())
            else:
                later = at if later is None else min(later, at)
        return send, later

    def tier_of(self, deployment: str) -> str | None:
        """The tier a deployment on the board was seen on, or None (not seen, or its
        statuses named none): a cancel from the page reaches only that tier."""
        live = self._live.get(deployment)
        return live.tier if live is not None else None

    def live(self, deployment: str) -> dict[str, Any] | None:
        found = self._live.get(deployment)
        return found.dump() if found is not None else None

    def deployments(self) -> list[dict[str, Any]]:
        """Running deployments first (newest first), then the ended ones, newest first: as
        many as ``FLEET_ENDED_HOSTS`` host entries hold (at least one), so that a page's
        first body stays small after deploys to thousands of hosts (each ended one stays
        whole at ``live``, for ``/api/deployments/ID``)."""
        running = sorted(
            (d for d in self._live.values() if not d.ended), key=lambda d: -d.started_at
        )
        ended: list[_Live] = []
        entries = 0
        for ident in reversed(self._ended):
            live = self._live.get(ident)
            if live is None:
                continue
            entries += len(live.hosts)
            if ended and entries > FLEET_ENDED_HOSTS:
                break
            ended.append(live)
        return [d.dump() for d in (*running, *ended)]

    def changed_rows(self) -> list[dict[str, Any]] | None:
        """The rows that statuses changed since the last call, to send as ``host`` events;
        None when more than ``HOST_BURST`` did (a deploy to many hosts): one ``fleet``
        body then says it all at once, cheaper for the page than a storm of rows."""
        names, self._rows_changed = self._rows_changed, set()
        if len(names) > HOST_BURST:
            return None
        return [self.rows[n] for n in sorted(names) if n in self.rows]

    # -- bodies ------------------------------------------------------------------------------

    def fleet(self, *, now: float, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The ``/api/fleet`` body (with ``rows``: those, filtered, instead of all)."""
        return {
            "generated_at": now,
            "refreshed_at": self.refreshed_at,
            "hosts": rows if rows is not None else [self.rows[n] for n in sorted(self.rows)],
            "deployments": self.deployments(),
            "tiers_hidden": list(self.tiers_hidden),
            "actions": self.actions,
            "error": self.error,
        }

    def fleet_json(self, *, now: float) -> str:
        """The whole ``/api/fleet`` body as JSON, built once per change of the board."""
        if self._fleet is None:
            self._fleet = json.dumps(self.fleet(now=now), separators=(",", ":"))
        return self._fleet
