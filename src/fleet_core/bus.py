"""The NATS connection, and the only module that imports ``nats``.

Everything else talks to ``Bus``: publish, subscribe, flush, close — and hears about
permission violations, which nats-py reports only through its ``error_cb`` (a publish the
server refuses returns normally). Foreign errors are translated here into ``FleetError``.

A bus is an async context manager, like ``anyio.open_file``::

    async with await Bus.connect(urls, seed, name="fleet-deploy") as bus:
        ...

``urls`` may name several servers of one cluster (a sequence, or one string with commas, as
``--nats-url`` takes them). Like other NATS clients, each connection tries them in a random
order, so a fleet's listeners spread over the servers and a server's loss moves only its
share; a drop fails over to another one.

Leaving the block closes the connection shielded from cancellation and within a deadline,
so neither a cancelled caller nor a dead server can leave a socket open or hang the exit.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, Literal, NamedTuple

import anyio
import nats
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import DEFAULT_SUB_PENDING_MSGS_LIMIT
from nats.aio.subscription import Subscription as _NatsSubscription

from fleet_core.errors import ConnectionFailed, PermissionDenied
from fleet_core.keys import Seed

__all__ = [
    "CLOSE_DEADLINE",
    "Bus",
    "Message",
    "Servers",
    "Subscription",
    "describe_servers",
    "server_urls",
]

log = structlog.get_logger("fleet.bus")

_DENIED = re.compile(r'permissions violation for (publish|subscription) to "?([^"\s]+)"?', re.I)
_NO_RESPONDERS = "503"
_SHED_REPORT_INTERVAL = 10.0  # seconds between two "messages_shed" lines for one subject
CLOSE_DEADLINE = 5.0  # seconds a close may take before the socket is abandoned


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class Message(NamedTuple):
    """A received message; ``no_responders`` marks the server's "nobody listens" status.

    ``headers`` are the message's NATS headers (a status line shows as ``Status`` and
    ``Description``): what JetStream's answers carry, such as a history message's original
    subject and sequence (``fleet_core.deploy.history_reader``); empty for a plain message.

    A named tuple, immutable as a frozen dataclass is, at half its cost to make: a deployer
    makes one per status, thirty thousand in a deploy of 10,000 hosts (``bench/scale.py``).
    """

    subject: str
    data: bytes
    reply: str | None
    no_responders: bool = False
    headers: Mapping[str, str] = _NO_HEADERS


Handler = Callable[[Message], Awaitable[None]]
# A watcher returns True for a denial it expected (the log line is then only debug).
DenialWatcher = Callable[[PermissionDenied], bool | None]
ConnectionWatcher = Callable[[bool], None]
Servers = str | Sequence[str]  # one URL, several joined by commas, or a sequence of URLs


def server_urls(servers: Servers) -> tuple[str, ...]:
    """``servers`` as a tuple of URLs: a string is split at its commas, blanks dropped.

    No other check: ``settings`` validates what a user typed before it gets here.
    """
    items = servers.split(",") if isinstance(servers, str) else servers
    urls = tuple(item.strip() for item in items if item.strip())
    if not urls:
        raise ValueError("no NATS server URL given")
    return urls


def _key(public_key: str | None) -> str:
    return f"key {public_key}" if public_key else "this key"


def describe_servers(urls: Sequence[str]) -> str:
    """The servers as a message names them: ``the NATS server at URL``, or
    ``the NATS servers at URL, URL`` for several."""
    if len(urls) == 1:
        return f"the NATS server at {urls[0]}"
    return f"the NATS servers at {', '.join(urls)}"


class Subscription:
    """A live subscription; ``unsubscribe()`` is safe to call more than once."""

    def __init__(self, inner: _NatsSubscription) -> None:
        self._inner = inner
        self._active = True

    async def unsubscribe(self) -> None:
        if self._active:
            self._active = False
            # A closed or draining connection has nothing left to undo.
            with contextlib.suppress(nats.errors.Error):
                await self._inner.unsubscribe()

    async def drain(self) -> None:
        """Stop the interest, then handle what was delivered already: unlike ``unsubscribe``,
        which drops it."""
        if self._active:
            self._active = False
            with contextlib.suppress(nats.errors.Error):
                await self._inner.drain()  # type: ignore[no-untyped-call]  # nats-py: untyped


class Bus:
    """One authenticated NATS connection, to one of ``servers`` at a time.

    ``url`` is every server, comma-separated as ``--nats-url`` takes them: what logs and
    messages show. ``connected_url`` is the one the connection is on now.
    """

    def __init__(self, client: Client, servers: Servers) -> None:
        self._client = client
        self.servers = server_urls(servers)
        self.url = ",".join(self.servers)
        self._watchers: list[DenialWatcher] = []
        self._shed_counts: dict[str, tuple[int, float]] = {}  # subject -> (untold, told at)
        self._connection_watchers: list[ConnectionWatcher] = []
        self._closing = False  # a drop we caused is no news: neither logged nor reported
        self.public_key: str | None = None  # the key ``connect`` authenticated with

    @classmethod
    async def connect(
        cls,
        servers: Servers,
        seed: Seed,
        *,
        name: str,
        persistent: bool = False,
        reconnect_forever: bool = False,
        connect_timeout: float = 3.0,
        randomize: bool = True,
    ) -> Bus:
        """Connect to one of ``servers`` and authenticate with ``seed``.

        ``persistent`` (the listener) waits for an absent server and reconnects forever.
        Otherwise (a deployer) the first connect goes through the servers (a refused or
        unreachable one is tried twice) and then raises ``ConnectionFailed``, and later
        drops are retried for about a minute — or forever with ``reconnect_forever`` (a
        long-lived deployer: the MCP server). ``randomize=False`` tries the servers in the
        order given (for tests that need to know which one is first).
        """
        urls = server_urls(servers)
        url = ",".join(urls)
        bus_ref: list[Bus] = []

        async def on_error(exc: Exception) -> None:
            if bus_ref:
                bus_ref[0]._on_error(exc)
            elif persistent:
                log.warning(
                    "nats_connect_failed",
                    url=url,
                    key=seed.public_key,
                    error=str(exc) or type(exc).__name__,
                )

        async def on_disconnected() -> None:
            if bus_ref:
                bus_ref[0]._on_connection(connected=False)

        async def on_reconnected() -> None:
            if bus_ref:
                bus_ref[0]._on_connection(connected=True)

        options: dict[str, Any] = {
            # Shuffled here, not by nats-py, so that the first connect goes through the
            # servers in one order (a listener's again and again) instead of a new one each
            # time; after it, reconnects shuffle as nats-py does by default.
            "servers": random.sample(urls, len(urls)) if randomize else list(urls),
            "dont_randomize": True,
            "name": name,
            "nkeys_seed_str": seed.reveal(),
            "connect_timeout": connect_timeout,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
            # Replies go to deploy.responses.<id>; _INBOX.> is forbidden by the tiered layout.
            "inbox_prefix": "deploy.responses",
            "allow_reconnect": persistent,
            # nats-py retries inside its first connect too; a deployer gives up at once.
            "max_reconnect_attempts": -1 if persistent else 1,
            "reconnect_time_wait": 2 if persistent else 0.1,
        }
        client = Client()
        try:
            try:
                await client.connect(**options)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await client.close()  # a failed connect leaves its socket open otherwise
                raise
        except nats.errors.AuthorizationError as exc:
            raise ConnectionFailed(_auth_message(urls, seed)) from exc
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            if "authorization violation" in str(exc).lower():
                raise ConnectionFailed(_auth_message(urls, seed)) from exc
            check = (
                "is it running, and is the URL right?"
                if len(urls) == 1
                else "is any of them running, and are the URLs right?"
            )
            raise ConnectionFailed(
                f"cannot reach {describe_servers(urls)} ({_describe(exc)}): {check}"
            ) from exc
        # Fail fast on the first attempt, but ride out a server restart once connected.
        client.options.update(
            allow_reconnect=True,
            max_reconnect_attempts=-1 if persistent or reconnect_forever else 30,
            reconnect_time_wait=2,
            dont_randomize=not randomize,
        )
        bus = cls(client, urls)
        bus.public_key = seed.public_key
        bus_ref.append(bus)
        return bus

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            self._shed(exc.subject)
            return
        match = _DENIED.search(str(exc))
        if match is None:
            log.warning("nats_error", url=self.url, error=_describe(exc))
            return
        operation: Literal["publish", "subscribe"] = (
            "publish" if match.group(1).lower() == "publish" else "subscribe"
        )
        subject = match.group(2)
        denial = PermissionDenied(
            f"the NATS server refused {_key(self.public_key)} permission to {operation} to "
            f"{subject!r}: use a key whose permissions allow it",
            subject=subject,
            operation=operation,
        )
        expected = [watcher(denial) for watcher in list(self._watchers)]
        (log.debug if any(expected) else log.warning)(
            "nats_permission_denied", subject=subject, operation=operation
        )

    def _shed(self, subject: str) -> None:
        """A message dropped past a subscription's backlog: counted, and told at most once
        every ``_SHED_REPORT_INTERVAL`` seconds per subject (a flood must not flood the log)."""
        now = time.monotonic()
        unreported, told_at = self._shed_counts.get(subject, (0, -math.inf))
        unreported += 1
        if now - told_at >= _SHED_REPORT_INTERVAL:
            log.warning("messages_shed", subject=subject, dropped=unreported)
            unreported, told_at = 0, now
        self._shed_counts[subject] = (unreported, told_at)

    def _on_connection(self, *, connected: bool) -> None:
        if self._closing:
            return
        # Once connected, nats-py reconnects by itself; these lines say when it had to.
        if connected:  # with several servers, say which one took it
            log.info("nats_reconnected", url=self.url, server=self.connected_url)
        else:
            log.warning("nats_disconnected", url=self.url)
        for watcher in list(self._connection_watchers):
            watcher(connected)

    def watch_connection(self, watcher: ConnectionWatcher) -> Callable[[], None]:
        """Call ``watcher(False)`` when the connection drops and ``watcher(True)`` when it is
        back; returns the function that stops."""
        self._connection_watchers.append(watcher)

        def stop() -> None:
            if watcher in self._connection_watchers:
                self._connection_watchers.remove(watcher)

        return stop

    def watch_denials(self, watcher: DenialWatcher) -> Callable[[], None]:
        """Call ``watcher`` for every permission violation; returns the function that stops.

        A watcher that expected the denial (a deployer probing whether its key may read a
        tier) returns True: the violation is then logged at debug level, not as a warning."""
        self._watchers.append(watcher)

        def stop() -> None:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

        return stop

    async def publish(self, subject: str, payload: bytes, *, reply: str | None = None) -> None:
        try:
            await self._client.publish(subject, payload, reply=reply or "")
        except nats.errors.Error as exc:
            raise ConnectionFailed(f"cannot publish to {subject!r}: {_describe(exc)}") from exc

    async def subscribe(
        self, subject: str, handler: Handler, *, queue: str = "", backlog: int | None = None
    ) -> Subscription:
        """Deliver every message on ``subject`` to ``handler``; with ``queue``, each message
        goes to one member of that queue group only. With ``backlog``, at most that many
        messages wait for the handler: past it new ones are dropped (shed, and counted in a
        log line), so a flood cannot queue work ahead of what matters."""

        async def deliver(msg: Msg) -> None:
            headers = msg.headers or _NO_HEADERS
            data = msg.data
            no_responders = not data and headers.get("Status") == _NO_RESPONDERS
            await handler(Message(msg.subject, data, msg.reply or None, no_responders, headers))

        try:
            inner = await self._client.subscribe(
                subject,
                queue=queue,
                cb=deliver,
                pending_msgs_limit=backlog
                if backlog is not None
                else DEFAULT_SUB_PENDING_MSGS_LIMIT,
            )
            return Subscription(inner)
        except nats.errors.Error as exc:
            raise ConnectionFailed(f"cannot subscribe to {subject!r}: {_describe(exc)}") from exc

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until the server has processed everything sent so far (and said no, if so)."""
        try:
            with anyio.fail_after(timeout):
                # nats-py 2.16 writes the PING of flush() straight to the socket while SUB and
                # PUB commands wait in its pending buffer for the flusher task, so the PONG
                # can come back before they were even sent. Push the buffer out first.
                await self._client._flush_pending(force_flush=True)
            # Shielded: a flush cancelled while it waits leaves its PONG future, cancelled, in
            # nats-py's queue; the PONG then kills the connection's read loop (InvalidStateError)
            # and nothing is received any more. nats-py's own timeout bounds the wait.
            with anyio.CancelScope(shield=True):
                await self._client.flush(timeout=max(1, int(timeout)))
        except (TimeoutError, nats.errors.Error) as exc:
            current = self.connected_url
            where = describe_servers([current] if current else self.servers)
            raise ConnectionFailed(f"{where} did not answer within {timeout:g} s") from exc

    @property
    def reconnect_attempts(self) -> int:
        """How often a dropped connection is retried before it is given up; -1 is forever."""
        return int(self._client.options["max_reconnect_attempts"])

    @property
    def is_connected(self) -> bool:
        return bool(self._client.is_connected)

    @property
    def is_closed(self) -> bool:
        """Closed for good: by ``close``, or by nats-py once its reconnect attempts ran out
        (connection watchers then hear ``False`` once more, with this already true)."""
        return bool(self._client.is_closed)

    @property
    def connected_url(self) -> str | None:
        """The server this connection is on now (``nats://host:port``); None while down."""
        current = self._client.connected_url
        return current.geturl() if current is not None else None

    async def close(self, deadline: float = CLOSE_DEADLINE) -> None:
        """Flush what is pending and close, shielded and within ``deadline``; safe twice.

        A drain that runs out of time is cut short and the connection closed outright, so
        no socket or nats-py task outlives the call.
        """
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(deadline):
                await self._close()
            if not self._client.is_closed:
                with anyio.move_on_after(1), contextlib.suppress(OSError, nats.errors.Error):
                    await self._client.close()

    async def _close(self) -> None:
        self._closing = True
        if self._client.is_closed:
            return
        try:
            await self._client.drain()
        except (TimeoutError, OSError, nats.errors.Error):
            # Draining fails when the server is gone; closing then may still hit the dead
            # socket. Either way nothing more can be delivered.
            with contextlib.suppress(OSError, nats.errors.Error):
                await self._client.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _auth_message(urls: Sequence[str], seed: Seed) -> str:
    who = describe_servers(urls) if len(urls) == 1 else f"one of {describe_servers(urls)}"
    return (
        f"{who} refused key {seed.public_key} from {seed.source}: add this public key to "
        "the server's authorization block, or use the seed that belongs to it"
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
