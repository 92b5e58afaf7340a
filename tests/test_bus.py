"""The NATS boundary: connection errors, permission denials, and flush really flushing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import pytest
import structlog.testing

from fleet_core.bus import Bus, Message
from fleet_core.errors import ConnectionFailed, PermissionDenied
from fleet_core.keys import load_seed
from fleet_core.testing.embedded_server import EmbeddedNatsServer

from .conftest import Fleet
from .support import free_port

pytestmark = pytest.mark.anyio


class TestConnect:
    async def test_server_down_is_a_clear_error(self, fleet: Fleet) -> None:
        """Connecting to a port where nothing listens fails at once, naming the URL."""
        url = f"nats://127.0.0.1:{free_port()}"
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match="cannot reach the NATS server at nats://127"):
            await Bus.connect(url, fleet.seed("deployer"), name="test")
        assert time.monotonic() - started < 5

    async def test_unknown_key_is_refused(self, fleet: Fleet) -> None:
        """A key the server does not know is refused naming its public key and its file."""
        seed = load_seed(fleet.keys["stranger"])
        with pytest.raises(ConnectionFailed) as refused:
            await Bus.connect(fleet.url, seed, name="test")
        assert f"refused key {seed.public_key} from NKey seed file {fleet.keys['stranger']}" in (
            str(refused.value)
        )


class TestPermissions:
    async def test_forbidden_publish_reaches_the_watcher(self, fleet: Fleet) -> None:
        """A publish the test key may not make is reported as PermissionDenied on its subject."""
        bus = await fleet.connect("deployer")
        denials: list[PermissionDenied] = []
        stop = bus.watch_denials(denials.append)
        try:
            await bus.publish("deploy.prod.pweb1", b"{}")
            await bus.flush()
        finally:
            stop()
            await bus.close()
        assert [(d.operation, d.subject) for d in denials] == [("publish", "deploy.prod.pweb1")]
        public_key = fleet.seed("deployer").public_key
        assert f"refused key {public_key} permission to publish to 'deploy.prod.pweb1'" in str(
            denials[0]
        )

    async def test_forbidden_subscribe_reaches_the_watcher(self, fleet: Fleet) -> None:
        """A listener key subscribing to another host's subject is reported too."""
        bus = await fleet.connect("web1")
        denials: list[PermissionDenied] = []
        bus.watch_denials(denials.append)

        async def ignore(_: Message) -> None:
            return None

        try:
            await bus.subscribe("deploy.test.web2", ignore)
            await bus.flush()
        finally:
            await bus.close()
        assert [d.subject for d in denials] == ["deploy.test.web2"]


class TestFlush:
    async def test_flush_means_the_server_has_the_subscription(self, fleet: Fleet) -> None:
        """After subscribe + flush, a message published by another client is never missed.

        nats-py 2.16's own flush() can return before the SUB left the client; Bus.flush must not.
        """
        receiver = await fleet.connect("deployer")
        sender = await fleet.connect("web1")
        try:
            for round_ in range(100):
                got = anyio.Event()

                async def deliver(_: Message, got: anyio.Event = got) -> None:
                    got.set()

                subject = f"deploy.responses.flush{round_}.test.web1"  # web1's own
                subscription = await receiver.subscribe(subject, deliver)
                await receiver.flush()
                await sender.publish(subject, b"x")
                await sender.flush()
                with anyio.fail_after(2):
                    await got.wait()
                await subscription.unsubscribe()
        finally:
            await sender.close()
            await receiver.close()

    async def test_a_cancelled_flush_leaves_the_connection_working(self, fleet: Fleet) -> None:
        """A flush cancelled while it waits for the server's answer does not stop the
        connection from receiving (nats-py's read loop dies on the PONG of a cancelled one)."""
        receiver = await fleet.connect("deployer")
        sender = await fleet.connect("web1")
        got = anyio.Event()
        server = fleet.server.pid
        assert server is not None

        async def deliver(_: Message) -> None:
            got.set()

        async def flush(scope: anyio.CancelScope) -> None:
            with scope:
                await receiver.flush()

        try:
            await receiver.subscribe("deploy.responses.after-cancel.test.web1", deliver)
            await receiver.flush()
            scope = anyio.CancelScope()
            os.kill(server, signal.SIGSTOP)  # the PONG cannot come before the cancel
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(flush, scope)
                    await anyio.wait_all_tasks_blocked()  # the flush waits for its PONG
                    scope.cancel()
                    os.kill(server, signal.SIGCONT)
            finally:
                os.kill(server, signal.SIGCONT)
            await sender.publish("deploy.responses.after-cancel.test.web1", b"x")
            await sender.flush()
            with anyio.fail_after(5):
                await got.wait()
        finally:
            await sender.close()
            await receiver.close()


class TestClose:
    async def test_close_after_the_server_vanished(self, fleet: Fleet) -> None:
        """Closing a connection whose server died with data pending raises nothing."""
        bus = await fleet.connect("deployer")
        fleet.server.stop()
        await bus.publish("deploy.test.web1", b"{}")
        with pytest.raises(ConnectionFailed):
            await bus.flush(timeout=1)
        await bus.publish("deploy.test.web1", b"{}")
        await bus.close()
        await bus.close()

    async def test_a_normal_close_is_not_reported_as_a_drop(self, fleet: Fleet) -> None:
        """Closing on purpose logs no nats_disconnected warning and tells no watcher."""
        seen: list[bool] = []
        with structlog.testing.capture_logs() as logs:
            async with await fleet.connect("deployer") as bus:
                bus.watch_connection(seen.append)
                await bus.flush()
        assert not bus.is_connected
        assert seen == []
        assert [e for e in logs if e["event"] == "nats_disconnected"] == []

    async def test_a_deployer_gives_up_a_dropped_connection_a_long_lived_one_never(
        self, fleet: Fleet
    ) -> None:
        """A CLI deployer retries a drop about a minute; reconnect_forever (MCP) never stops."""
        async with await fleet.connect("deployer") as bus:
            assert bus.reconnect_attempts == 30
        seed = fleet.seed("deployer")
        async with await Bus.connect(fleet.url, seed, name="t", reconnect_forever=True) as bus:
            assert bus.reconnect_attempts == -1


class TestReconnect:
    async def test_drop_and_return_are_reported(self, fleet: Fleet, tmp_path: Path) -> None:
        """A deployer connection reports the server going away and coming back, and works after."""
        dropped, back = anyio.Event(), anyio.Event()
        bus = await fleet.connect("deployer")
        bus.watch_connection(lambda connected: (back if connected else dropped).set())
        port = int(fleet.url.rpartition(":")[2])
        config = fleet.server.config_path.read_text()
        try:
            fleet.server.stop()
            with anyio.fail_after(10):
                await dropped.wait()
            with EmbeddedNatsServer(tmp_path / "again", config, port=port):
                with anyio.fail_after(20):
                    await back.wait()
                await bus.publish("deploy.discover", b"{}")
                await bus.flush()
        finally:
            await bus.close()
