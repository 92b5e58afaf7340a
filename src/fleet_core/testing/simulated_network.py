"""A simulated host's network path to NATS: a TCP forwarder that the host's running system
can cut, for tests of a deploy that cuts a host off and of the rollback that must restore it.

    async with host_link(root, "127.0.0.1", server_port) as port:
        ...  # the host's listener connects to nats://127.0.0.1:{port}

It listens on a free loopback port and forwards each connection to the upstream server.
While the running system of ``root`` (``simulated_system``) has the ``sim/cut-network``
marker, the link is cut: the port is closed (a client's connect is refused, as on a host
whose network is down) and so is every forwarded connection; once the running system has no
such marker (a rollback), the same port opens again. The marker is looked at every
``interval`` seconds: it simulates a network going down, not something a test waits on.

Every task belongs to the block's task group and is cancelled when the block ends; the one
wait on something outside, the connection to the upstream, has a deadline.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio import CancelScope
from anyio.abc import SocketAttribute, SocketStream

from fleet_core.testing.simulated_system import network_cut

__all__ = ["CHECK_INTERVAL", "CONNECT_WITHIN", "LinkPort", "host_link"]

CHECK_INTERVAL = 0.05  # how often an open connection looks at the running system
CONNECT_WITHIN = 5.0  # the deadline for reaching the upstream server, per connection


class LinkPort(int):
    """The link's port, an int (``f"nats://127.0.0.1:{port}"``), that also counts what the
    link did, for tests: ``links`` connections forwarded, ``cuts`` closed or refused by a
    cut."""

    links: int = 0
    cuts: int = 0


@asynccontextmanager
async def host_link(
    root: Path,
    upstream_host: str,
    upstream_port: int,
    *,
    interval: float = CHECK_INTERVAL,
    connect_within: float = CONNECT_WITHIN,
) -> AsyncIterator[LinkPort]:
    """Forward a loopback port to the upstream for the block's length; ``root``'s running
    system decides whether the link is cut.

    A cut closes the port itself, as a host whose network is down refuses connections (a
    client sees "connection refused", not a connection that ends before the server spoke,
    which nats-py handles less tidily), and closes every connection forwarded; the port
    opens again, the same number, once the cut is over."""
    first = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = LinkPort(first.extra(SocketAttribute.local_port))  # noqa: S610 - anyio, not Django

    async def forward(client: SocketStream) -> None:
        async with client:
            try:
                with anyio.fail_after(connect_within):
                    upstream = await anyio.connect_tcp(upstream_host, upstream_port)
            except (OSError, TimeoutError):
                return  # the upstream is down: the client sees its connection end
            port.links += 1
            async with upstream, anyio.create_task_group() as pipes:
                pipes.start_soon(_pump, client, upstream, pipes.cancel_scope)
                pipes.start_soon(_pump, upstream, client, pipes.cancel_scope)

    # The link is shielded from the cancellation that ends its caller's block: like a real
    # network it stays up while the hosts behind it shut down (a listener's last statuses
    # travel over it), and goes down only when the block is left.
    shield = CancelScope(shield=True)

    async def link() -> None:
        with shield:
            await _serve()

    async def _serve() -> None:
        listener = first
        while True:
            async with listener, anyio.create_task_group() as serving:
                serving.start_soon(listener.serve, forward, serving)
                # The marker is a file on disk: there is no event to wait on, only time.
                while not network_cut(root):  # noqa: ASYNC110
                    await anyio.sleep(interval)
                port.cuts += 1
                serving.cancel_scope.cancel()  # the port and every forwarded connection
            while network_cut(root):  # noqa: ASYNC110
                await anyio.sleep(interval)
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=int(port))

    async with anyio.create_task_group() as group:
        group.start_soon(link)
        try:
            yield port
        finally:
            shield.cancel()


async def _pump(source: SocketStream, sink: SocketStream, done: CancelScope) -> None:
    """Copy ``source`` to ``sink`` until either end closes, then end the connection."""
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        async for chunk in source:
            await sink.send(chunk)
    done.cancel()
