"""Serving the dashboard: the socket, the NATS connections, the watcher and uvicorn, run
from anyio until cancelled.

uvicorn's ``Server`` runs inside this event loop, with two changes: it installs no signal
handlers (``fleet_core.lifecycle.run_until_signal`` owns SIGINT and SIGTERM, and cancels),
and it is stopped the way uvicorn stops itself — ``should_exit`` — from a ``finally`` that
waits for it, shielded and within ``STOP_DEADLINE``: cancelling it mid-request would leave
its sockets open. The event streams end first (``Hub.close``), or uvicorn would wait on them.

The listening socket is bound here, before anything else starts, so a busy port is a
``UsageError`` naming ``--listen`` rather than uvicorn's ``sys.exit``; with port 0 its port
is the kernel's choice, and the URL says which. ``running`` is the same as a context
manager, for tests that look at the board while the page is served.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
import structlog
import uvicorn

from fleet_core import __version__
from fleet_core.bus import Bus
from fleet_core.config.settings import DashboardSettings
from fleet_core.errors import UsageError
from fleet_core.keys import Seed
from fleet_dashboard.app import create_app
from fleet_dashboard.board import Board
from fleet_dashboard.hub import Hub
from fleet_dashboard.security import WILDCARDS, Guard, HostPolicy
from fleet_dashboard.watcher import Watcher

if TYPE_CHECKING:
    from fleet_dashboard.auth import Auth

__all__ = ["STOP_DEADLINE", "Dashboard", "running", "serve"]

log = structlog.get_logger("fleet.dashboard")

STOP_DEADLINE: Final = 10.0  # seconds the server may take to stop
GRACE: Final = 3  # of which open requests get this long to finish


class _Server(uvicorn.Server):
    """uvicorn's server without signal handlers, telling when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # run_until_signal owns the signals: they cancel, and the finally stops us

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.up.set()


@dataclass(frozen=True, slots=True)
class Dashboard:
    """A running dashboard: where it listens, and its parts (for tests)."""

    url: str
    board: Board
    hub: Hub
    watcher: Watcher


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port``; a ``UsageError`` that names ``--listen``."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bare, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise UsageError(
            f"cannot listen on {host}:{port} ({reason}): choose another address or port with "
            "--listen HOST:PORT (port 0 takes any free one)",
            fix="choose another --listen HOST:PORT",
        ) from exc
    return sock


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in WILDCARDS else host.strip("[]")
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


@asynccontextmanager
async def running(
    settings: DashboardSettings,
    *,
    read_seed: Seed,
    deploy_seed: Seed | None = None,
    auth: Auth | None = None,
) -> AsyncIterator[Dashboard]:
    """The dashboard, listening and watching, for the block's length."""
    host, port = settings.listen
    sock = _bind(host, port)
    try:
        port = sock.getsockname()[1]
        board = Board(cli_version=__version__, actions=settings.allow_actions)
        hub = Hub()
        async with AsyncExitStack() as stack:
            bus = await stack.enter_async_context(
                await Bus.connect(
                    settings.connection.nats_urls,
                    read_seed,
                    name="fleet-deploy dashboard",
                    reconnect_forever=True,  # a page outlives a NATS restart
                )
            )
            watcher = Watcher(bus, board, hub, refresh=settings.refresh, timing=settings.timing)
            # The login and actions are fleet_dashboard.actions'; without --allow-actions
            # only its read-only /api/session exists, and no deploying key is ever loaded.
            from fleet_dashboard.actions import auth_routes, open_actions

            actions = None
            if settings.allow_actions:
                if deploy_seed is None or auth is None:
                    raise UsageError("--allow-actions needs --deploy-nkey-file and --password-file")
                actions = await stack.enter_async_context(
                    open_actions(settings, auth=auth, deploy_seed=deploy_seed)
                )
            app = create_app(
                board=board,
                hub=hub,
                watcher=watcher,
                extra_routes=auth_routes(actions, tier_of=board.tier_of),
            )
            guarded = Guard(app, HostPolicy.of(host, port, settings.allowed_hosts))
            config = uvicorn.Config(
                guarded,
                log_config=None,
                lifespan="off",
                access_log=False,
                server_header=False,
                # uvicorn would take X-Forwarded-For and -Proto from any client on
                # 127.0.0.1 as the truth: a local process could then name a new address
                # for each login guess and never meet the per-client limit. The client is
                # the socket's peer (behind a proxy: the proxy, docs/dashboard.md says so).
                proxy_headers=False,
                timeout_graceful_shutdown=GRACE,
            )
            server = _Server(config)
            tasks = await stack.enter_async_context(anyio.create_task_group())
            await tasks.start(watcher.run)
            stopped = anyio.Event()

            async def serve_http() -> None:
                try:
                    with anyio.CancelScope(shield=True):  # it stops by should_exit only
                        await server.serve(sockets=[sock])
                finally:
                    stopped.set()

            tasks.start_soon(serve_http)
            try:
                with anyio.fail_after(STOP_DEADLINE):
                    await server.up.wait()
                yield Dashboard(_url(host, port), board, hub, watcher)
            finally:
                hub.close()  # the event streams end, or uvicorn would wait for them
                server.should_exit = True
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(STOP_DEADLINE):
                        await stopped.wait()
                    if not stopped.is_set():  # pragma: no cover - uvicorn hung
                        server.force_exit = True
                        log.warning("dashboard_stop_overdue", deadline=STOP_DEADLINE)
                tasks.cancel_scope.cancel()
    finally:
        sock.close()


async def serve(
    settings: DashboardSettings,
    *,
    read_seed: Seed,
    deploy_seed: Seed | None,
    auth: Auth | None,
    on_listening: Callable[[str], None],
) -> None:
    """Serve the dashboard until cancelled; ``on_listening(url)`` once it listens."""
    async with running(
        settings, read_seed=read_seed, deploy_seed=deploy_seed, auth=auth
    ) as dashboard:
        on_listening(dashboard.url)
        await anyio.sleep_forever()
