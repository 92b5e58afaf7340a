"""One NATS connection per key, opened by the lifespan and kept for the server's life.

nats-py reconnects a connection that dropped and re-sends its subscriptions, so a deployment
running across a NATS restart carries on; this module adds only what nats-py does not do:

- Its first ``connect()`` fails at once for a deployer (so a tool call gets the reason, not a
  hang). ``NatsLink.run`` — a task of the lifespan's task group — therefore retries every
  ``RETRY_INTERVAL`` seconds until a connection stands, each attempt within
  ``ATTEMPT_DEADLINE`` per server named: a NATS server that comes up after the MCP server is
  still found.
- A tool that finds no connection waits for one, at most ``CONNECTION_WAIT`` seconds (and no
  longer than the outcome of a fresh attempt, which it asks for), then fails with the reason.
- Once connected, the connection is asked to reconnect forever: a server that runs for
  weeks outlasts any NATS outage on the one connection it has.
"""

from __future__ import annotations

import anyio
import structlog

from fleet_core.bus import Bus, Servers, describe_servers, server_urls
from fleet_core.config.settings import DeployTiming
from fleet_core.deploy.deployer import Deployer
from fleet_core.errors import ConnectionFailed
from fleet_core.keys import Seed

__all__ = [
    "ATTEMPT_DEADLINE",
    "CONNECTION_WAIT",
    "CONNECT_TIMEOUT",
    "RETRY_INTERVAL",
    "NatsLink",
]

log = structlog.get_logger("fleet.mcp")

CONNECT_TIMEOUT = 3.0  # nats-py's timeout for opening the socket and the handshake
ATTEMPT_DEADLINE = CONNECT_TIMEOUT + 2.0  # one whole first-connect attempt
RETRY_INTERVAL = 2.0  # between first-connect attempts, as nats-py waits between reconnects
CONNECTION_WAIT = 3.0  # how long a tool call waits for a missing connection


class NatsLink:
    """One NATS identity (the test key or the admin key) and its one connection."""

    def __init__(
        self,
        servers: Servers,
        seed: Seed,
        *,
        name: str,
        timing: DeployTiming,
    ) -> None:
        self.servers = server_urls(servers)
        self.url = ",".join(self.servers)  # as --nats-url takes it: what messages show
        self.public_key = seed.public_key
        self._seed = seed
        self._name = name
        self._timing = timing
        self._bus: Bus | None = None
        self._deployer: Deployer | None = None
        self._failure = f"no connection to {describe_servers(self.servers)} could be made yet"
        self._failed_attempts = 0
        self._changed = anyio.Event()  # pulsed when any of the above changes
        self._wanted = anyio.Event()  # a tool call asks for an attempt now

    @property
    def seed(self) -> Seed:
        """The key this link connects and signs with (a cancel is signed like a deploy)."""
        return self._seed

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.is_connected

    async def deployer(self, wait: float = CONNECTION_WAIT) -> Deployer:
        """The deployer on the live connection, waiting for one if it is down.

        Waits at most ``wait`` seconds — and, while there is no connection to wait for, only
        until the attempt it asks for fails: a tool call that cannot succeed fails at once.
        Raises ``ConnectionFailed`` saying why there is no connection.
        """
        failed = self._failed_attempts
        with anyio.move_on_after(wait):
            while not self.connected and self._failed_attempts == failed:
                if self._bus is None:
                    self._wanted.set()
                await self._changed.wait()
        deployer = self._deployer
        if deployer is None or not self.connected:
            raise ConnectionFailed(self._failure)
        return deployer

    async def run(self) -> None:
        """Connect, keep the connection, and close it when cancelled (at the server's exit)."""
        async with await self._connect() as bus:  # closed shielded, within a deadline
            stop = bus.watch_connection(self._on_connection)
            deployer = Deployer(bus, timing=self._timing, signer=self._seed)  # signs requests
            self._bus, self._deployer = bus, deployer
            self._pulse()
            try:
                await anyio.sleep_forever()  # nats-py reconnects it; the server's exit ends it
            finally:
                stop()
                self._bus = self._deployer = None
                self._pulse()

    async def _connect(self) -> Bus:
        """A new connection, after as many attempts as it takes."""
        deadline = ATTEMPT_DEADLINE * len(self.servers)  # an unresponsive server costs one
        while True:
            try:
                with anyio.fail_after(deadline):
                    bus = await Bus.connect(
                        self.servers,
                        self._seed,
                        name=self._name,
                        reconnect_forever=True,
                        connect_timeout=CONNECT_TIMEOUT,
                    )
            except TimeoutError:
                failure = (
                    f"{describe_servers(self.servers)} did not complete a connection within "
                    f"{deadline:g} s"
                )
            except ConnectionFailed as exc:
                failure = str(exc)
            else:
                log.info("nats_connected", link=self._name, url=self.url)
                return bus
            if failure != self._failure:  # once per reason, not every few seconds
                log.warning("nats_unreachable", link=self._name, url=self.url, error=failure)
            self._failure = failure
            self._failed_attempts += 1
            self._pulse()
            with anyio.move_on_after(RETRY_INTERVAL):
                await self._wanted.wait()
            self._wanted = anyio.Event()

    def _on_connection(self, connected: bool) -> None:
        if not connected:
            self._failure = (
                f"the connection to {describe_servers(self.servers)} dropped and has not come "
                "back yet"
            )
        self._pulse()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
