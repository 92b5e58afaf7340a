"""The dashboard's Starlette app: the page, its static files, the JSON API and the events.

Routes (docs/dashboard.md lists the bodies):

    GET /                        the page (index.html); its routes are fragments (#/host/web1)
    GET /static/{name}           app.js and style.css, nothing else
    GET /api/fleet               rows, live deployments, hidden tiers (?tier= &role= &state= &q=)
    GET /api/events              server-sent events: fleet, deployment, host
    GET /api/hosts/{name}        a host's row and recent jobs (a discovery of that host alone)
    GET /api/deployments/{id}    a deployment as seen live, and as its history records it
    GET /api/history             recorded deployments (?tier= &host= &limit=)
    ... and ``fleet_dashboard.actions``' routes (``/api/session``; login and actions when on)

Everything a host sent is in the board already made printable (``board.clean``), and the
page puts text in with ``textContent``. Reads that ask the fleet (a host's jobs, history)
run a few at a time (``_ASKING``) and history answers are reused for ``HISTORY_TTL``
seconds: the page must not turn a click into a discovery storm of a thousand hosts.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from typing import Any, Final

import anyio
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from fleet_core.deploy.history_reader import load_history
from fleet_core.errors import FleetError
from fleet_core.protocol.messages import MAX_RECENT_JOBS, JobSummary, StatusKind
from fleet_core.protocol.subjects import Tier
from fleet_dashboard.board import STATES, Board, clean, filter_rows
from fleet_dashboard.hub import Hub
from fleet_dashboard.watcher import Watcher

__all__ = ["HISTORY_TTL", "STATIC_FILES", "create_app", "static_file"]

STATIC_FILES: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
HISTORY_TTL: Final = 5.0  # seconds a history answer is reused
RECENT_JOBS: Final = 20  # jobs a host's page lists
MAX_HISTORY: Final = 200  # deployments one history page may ask for
PING: Final = 15.0  # seconds between keep-alive comments on an event stream
SEND_TIMEOUT: Final = 30.0  # a stream whose client takes no data for this long is closed
_ASKING: Final = 4  # fleet reads (a host's jobs, history) at once
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_FAILED = frozenset({StatusKind.FAILED, StatusKind.REJECTED})
_TIERS = frozenset(t.value for t in Tier)
_CACHED = 32  # history answers kept at most


def static_file(name: str) -> bytes:
    """A file of the page, as the package ships it (``fleet_dashboard/static``)."""
    return (resources.files("fleet_dashboard") / "static" / name).read_bytes()


def _json(body: object, status: int = 200) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json"
    )


def _error(status: int, sentence: str) -> Response:
    return _json({"error": sentence}, status)


def create_app(
    *,
    board: Board,
    hub: Hub,
    watcher: Watcher,
    extra_routes: Sequence[BaseRoute] = (),
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The app over ``board`` (fed by ``watcher``, which also lends its connection for the
    reads); ``extra_routes`` are the login's and actions'. ``hub.close()`` ends every event
    stream: call it when the server stops, or uvicorn waits for them."""
    api = _Api(board, hub, watcher, clock=clock)
    routes: list[BaseRoute] = [
        Route("/", api.index, methods=["GET"]),
        Route("/static/{name}", api.static, methods=["GET"]),
        Route("/api/fleet", api.fleet, methods=["GET"]),
        Route("/api/events", api.events, methods=["GET"]),
        Route("/api/hosts/{name}", api.host, methods=["GET"]),
        Route("/api/deployments/{id}", api.deployment, methods=["GET"]),
        Route("/api/history", api.history, methods=["GET"]),
        *extra_routes,
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


class _Api:
    """The routes' handlers, and what they share: the static files read once at start, the
    limit on reads that ask the fleet, and the short-lived history answers."""

    def __init__(
        self,
        board: Board,
        hub: Hub,
        watcher: Watcher,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.board = board
        self.hub = hub
        self.watcher = watcher
        self.clock = clock
        self.files: dict[str, bytes] = {}
        for name in STATIC_FILES:
            with contextlib.suppress(OSError):  # a broken install: said on request
                self.files[name] = static_file(name)
        self.asking = anyio.CapacityLimiter(_ASKING)
        self.history_cache: dict[tuple[str, str, int], tuple[float, dict[str, Any]]] = {}

    def _file(self, name: str) -> Response:
        data = self.files.get(name)
        if data is None:
            return _error(404, f"no such file: {name}" if name in STATIC_FILES else "not found")
        return Response(data, media_type=STATIC_FILES[name])

    async def index(self, _: Request) -> Response:
        return self._file("index.html")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name == "index.html" or name not in STATIC_FILES:
            return _error(404, "not found")
        return self._file(name)

    async def fleet(self, request: Request) -> Response:
        query = request.query_params
        wanted = {k: query.get(k, "") for k in ("tier", "role", "state", "q")}
        if wanted["state"] and wanted["state"] not in STATES:
            return _error(400, f"state must be one of {', '.join(STATES)}")
        now = self.clock()
        if not any(wanted.values()):
            return Response(self.board.fleet_json(now=now), media_type="application/json")
        rows = filter_rows(
            self.board.rows.values(),
            text=wanted["q"],
            tier=wanted["tier"],
            role=wanted["role"],
            state=wanted["state"],
        )
        return _json(self.board.fleet(now=now, rows=sorted(rows, key=lambda r: r["hostname"])))

    async def events(self, _: Request) -> Response:
        board, hub, clock = self.board, self.hub, self.clock

        async def stream() -> AsyncIterator[dict[str, str]]:
            with hub.feed() as feed:
                yield {"event": "fleet", "data": board.fleet_json(now=clock())}
                while not feed.closed:
                    stale, queued = await feed.take()
                    if stale:  # fell behind: the whole state instead of the backlog
                        yield {"event": "fleet", "data": board.fleet_json(now=clock())}
                    for event in queued:
                        yield {"event": event.name, "data": event.data}

        return EventSourceResponse(stream(), ping=PING, send_timeout=SEND_TIMEOUT)

    async def host(self, request: Request) -> Response:
        name = request.path_params["name"]
        if not _NAME.fullmatch(name):
            return _error(404, "no such host: a hostname is letters, digits, '-' and '_'")
        row = self.board.row(name)
        tier = Tier(row["tier"]) if row is not None and row.get("tier") in _TIERS else None
        deployer = self.watcher.deployer
        try:
            async with self.asking:
                found = await deployer.discover(tier, recent_jobs=RECENT_JOBS, hosts=[name])
        except FleetError as exc:
            return _error(502, f"could not ask {name}: {exc}")
        info = next((h for h in found if h.hostname == name), None)
        if row is None and info is None:
            return _error(404, f"no host {name} answered, and none is on the board")
        jobs = sorted(
            (info.recent_jobs or []) if info is not None else [],
            key=lambda j: j.started_at or 0.0,
            reverse=True,
        )
        if info is not None:
            await self._failure_tail(info.tier, name, jobs)
        return _json({"row": row, "jobs": clean([j.model_dump(mode="json") for j in jobs], 2000)})

    async def _failure_tail(self, tier: str, name: str, jobs: list[JobSummary]) -> None:
        """Summaries come without log tails (fifty must fit one message): the newest
        failure's tail is asked for by a job query, which answers with that job alone."""
        failure = next((i for i, j in enumerate(jobs) if j.status in _FAILED), None)
        if failure is None or jobs[failure].log_tail or tier not in _TIERS:
            return
        try:
            async with self.asking:
                answers = await self.watcher.deployer.query_job(
                    jobs[failure].request_id, hosts=[name], tier=Tier(tier)
                )
        except FleetError:
            return  # the list still shows; the tail is a courtesy
        answer = answers.get(name)
        if answer is not None and answer.job is not None and answer.job.log_tail:
            # The query's message is whole, where the list's is cut to a few words.
            update = {"log_tail": answer.job.log_tail, "message": answer.job.message}
            jobs[failure] = jobs[failure].model_copy(update=update)

    def _readable(self) -> list[Tier]:
        return [t for t in Tier if t not in self.watcher.deployer.unreadable_tiers]

    async def _history(self, tiers: list[Tier], *, want: int, find: str | None) -> dict[str, Any]:
        key = (",".join(t.value for t in tiers), find or "", want)
        cached = self.history_cache.get(key)
        if cached is not None and self.clock() - cached[0] < HISTORY_TTL:
            return cached[1]
        async with self.asking:
            view = await load_history(
                self.watcher.bus,
                tiers,
                timing=self.watcher.deployer.timing,
                want=want,
                find=find,
            )
        body: dict[str, Any] = clean(
            {"records": [r.model_dump(mode="json") for r in view.records], "notes": view.notes()},
            2000,
        )
        if len(self.history_cache) > _CACHED:
            self.history_cache.clear()
        self.history_cache[key] = (self.clock(), body)
        return body

    async def deployment(self, request: Request) -> Response:
        ident = request.path_params["id"]
        if not _NAME.fullmatch(ident):
            return _error(404, "no such deployment: an id is letters, digits, '-' and '_'")
        live = self.board.live(ident)
        try:
            found = await self._history(self._readable(), want=1, find=ident)
        except FleetError as exc:
            return _json({"live": live, "record": None, "error": str(exc)})
        record = next((r for r in found["records"] if r.get("id") == ident), None)
        if live is None and record is None:
            return _error(404, f"no deployment {ident} is live or recorded")
        return _json({"live": live, "record": record})

    async def history(self, request: Request) -> Response:
        query = request.query_params
        tier_name, host_name = query.get("tier", ""), query.get("host", "")
        try:
            limit = int(query.get("limit", "50"))
        except ValueError:
            return _error(400, "limit must be a whole number")
        limit = max(1, min(limit, MAX_HISTORY))
        if tier_name and tier_name not in _TIERS:
            return _error(400, "tier must be test or prod")
        if host_name and not _NAME.fullmatch(host_name):
            return _error(400, "host must be a hostname")
        tiers = [t for t in self._readable() if not tier_name or t.value == tier_name]
        if not tiers:
            return _json({"records": [], "notes": [f"{tier_name} tier: this key may not read it"]})
        try:
            found = await self._history(tiers, want=min(limit, MAX_RECENT_JOBS), find=None)
        except FleetError as exc:
            return _error(502, f"could not read the history: {exc}")
        records = [
            r
            for r in found["records"]
            if not host_name or any(h.get("hostname") == host_name for h in r.get("hosts", []))
        ]
        return _json({"records": records[:limit], "notes": found["notes"]})


async def _http_error(_: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such path, wrong method) as JSON, as ours are."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    sentence = "not found" if status == 404 else f"refused ({status})"
    if status == 405:
        sentence = "that method is not allowed here"
    return _error(status, sentence)
