"""The dashboard served for real: a local fleet with an observer key, the real server in
this event loop, httpx and server-sent events, real deploys (the CLI as a subprocess)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import pytest

from fleet_core.bus import Message
from fleet_core.protocol.messages import parse_status
from fleet_core.protocol.subjects import Tier
from fleet_core.protocol.text import printable
from fleet_core.testing.embedded_server import EmbeddedNatsServer
from fleet_dashboard.hub import MAX_PENDING
from fleet_dashboard.server import GRACE

from .conftest import HOSTS, TEST_HOSTS, Fleet
from .dashboard_support import Events, dashboard_fleet, reading, refreshed, serving

pytestmark = pytest.mark.anyio

LIMIT = 60.0
ALL = {name: tier for name, (tier, _) in HOSTS.items()}
TESTS = {name: Tier.TEST for name in TEST_HOSTS}


class Wire:
    """Every final status on the reply subjects, with the monotonic time it arrived (read
    with the admin key on a connection of its own: what the dashboard races against)."""

    def __init__(self) -> None:
        self.finals: dict[str, tuple[float, Any]] = {}

    async def deliver(self, message: Message) -> None:
        status = parse_status(message.data)
        if status is not None and status.is_final and message.subject.count(".") == 4:
            self.finals.setdefault(status.hostname, (time.monotonic(), status))


def final_in(live: dict[str, Any], hostname: str) -> bool:
    return any(h["hostname"] == hostname and h["final"] for h in live["hosts"])


@pytest.fixture
async def fleet(tmp_path: Path) -> Any:
    async with dashboard_fleet(tmp_path) as local:
        yield Fleet(local=local, record=tmp_path / "runs.jsonl")


class TestFleet:
    async def test_every_host_is_listed_with_its_columns(self, fleet: Fleet) -> None:
        """/api/fleet has one row per host of both tiers (the observer reads both), with
        tier, role, kind, listener version and busy; nothing hidden, no actions."""
        with anyio.fail_after(LIMIT):
            async with (
                fleet.listeners(*HOSTS),
                serving(fleet.local) as dash,
                httpx.AsyncClient(base_url=dash.url) as client,
                reading(client) as events,
            ):
                await events.wait_for(refreshed(ALL))
                body = (await client.get("/api/fleet")).json()
        rows = {row["hostname"]: row for row in body["hosts"]}
        assert set(rows) == set(HOSTS)
        for name, (tier, role) in HOSTS.items():
            row = rows[name]
            assert (row["tier"], row["role"], row["kind"]) == (tier.value, role, "nixos")
            assert row["answered"] is True and row["busy"] is False
            assert row["listener_version"]
            assert {"revision", "behind", "needs_reboot", "last_job", "outdated"} <= set(row)
        assert body["tiers_hidden"] == [] and body["actions"] is False
        assert body["error"] is None

    async def test_a_test_key_sees_its_tier_and_says_prod_is_hidden(self, fleet: Fleet) -> None:
        """With the test deployer's key the prod hosts are not shown, and the body says so."""
        with anyio.fail_after(LIMIT):
            async with (
                fleet.listeners(*HOSTS),
                serving(fleet.local, "deployer") as dash,
                httpx.AsyncClient(base_url=dash.url) as client,
                reading(client) as events,
            ):
                _, body = await events.wait_for(refreshed(TESTS))
        assert {row["hostname"] for row in body["hosts"]} == set(TEST_HOSTS)
        assert body["tiers_hidden"] == ["prod"]

    async def test_filters_narrow_the_rows(self, fleet: Fleet) -> None:
        """?tier=, ?role= and ?q= filter the rows; a state that does not exist is a 400."""
        with anyio.fail_after(LIMIT):
            async with (
                fleet.listeners(*HOSTS),
                serving(fleet.local) as dash,
                httpx.AsyncClient(base_url=dash.url) as client,
                reading(client) as events,
            ):
                await events.wait_for(refreshed(ALL))
                prod = (await client.get("/api/fleet", params={"tier": "prod"})).json()
                web = (await client.get("/api/fleet", params={"role": "web", "q": "p"})).json()
                bad = await client.get("/api/fleet", params={"state": "sideways"})
        assert [r["hostname"] for r in prod["hosts"]] == ["pdb1", "pweb1"]
        assert [r["hostname"] for r in web["hosts"]] == ["pweb1"]
        assert bad.status_code == 400 and "state must be one of" in bad.json()["error"]


class TestLiveDeploy:
    async def test_a_cli_deploy_streams_live_and_ends_with_each_hosts_outcome(
        self, fleet: Fleet
    ) -> None:
        """A deploy started from the CLI shows on /api/events as deployment events, each
        host's final status within a second of it appearing on NATS; the deployment ends
        with the right outcomes, the failed host's line is its log's last line, the rows
        turn busy and back, and the host page and history show the failed job's log tail."""
        wire = Wire()
        with anyio.fail_after(LIMIT):
            async with (
                fleet.listeners(*TEST_HOSTS, sim={"web2": ["--sim-fail"]}),
                serving(fleet.local) as dash,
                await fleet.local.connect("admin") as spy,
                httpx.AsyncClient(base_url=dash.url) as client,
                anyio.create_task_group() as tasks,
            ):
                await spy.subscribe("deploy.responses.>", wire.deliver)
                await spy.flush()
                events = Events()
                tasks.start_soon(events.read, client)
                await events.wait_for(refreshed(TESTS))
                proc = await fleet.cli("deploy", "deploy.test.all")
                assert proc.returncode == 1, proc.stderr.decode()  # web2 failed
                _, live = await events.wait_for(
                    lambda name, data: name == "deployment" and data["ended"]
                )
                ident = live["id"]
                host = await client.get("/api/hosts/web2")
                history = await client.get("/api/history", params={"host": "web2"})
                one = await client.get(f"/api/deployments/{ident}")
                missing = await client.get("/api/hosts/nosuch")
                tasks.cancel_scope.cancel()
        outcomes = {h["hostname"]: h["status"] for h in live["hosts"]}
        assert outcomes == {
            "web1": "completed",
            "web2": "failed",
            "web3": "completed",
            "db1": "completed",
        }
        assert live["counts"] == {"completed": 3, "failed": 1}
        assert (live["tier"], live["action"], live["revision"]) == ("test", "switch", "master")
        failed = next(h for h in live["hosts"] if h["hostname"] == "web2")
        wire_status = wire.finals["web2"][1]
        assert wire_status.message and wire_status.log_tail  # why, and the output
        assert failed["line"] == printable(wire_status.message)  # the why, not a tail line
        assert failed["error"] == wire_status.error
        assert [e["status"] for e in failed["events"]][-1] == "failed"

        # Within a second of NATS: the first deployment event that shows each host final.
        deployments = [(at, data) for at, name, data in events.seen if name == "deployment"]
        for hostname, (on_wire, _) in wire.finals.items():
            shown = next(at for at, data in deployments if final_in(data, hostname))
            assert shown - on_wire < 1.0, (hostname, shown - on_wire)

        # A host's row turned busy and back, through host events.
        busy = [(d["hostname"], d["busy"]) for d in events.of("host")]
        assert ("web1", True) in busy and ("web1", False) in busy

        assert host.status_code == 200
        jobs = host.json()["jobs"]
        assert jobs[0]["request_id"] == ident and jobs[0]["status"] == "failed"
        assert any("webroot" in line for line in jobs[0]["log_tail"])
        assert jobs[0]["message"] == printable(wire_status.message)  # whole, as the host said
        assert host.json()["row"]["hostname"] == "web2"

        records = history.json()["records"]
        assert records and records[0]["id"] == ident
        web2 = next(h for h in records[0]["hosts"] if h["hostname"] == "web2")
        assert web2["status"] == "failed"
        assert history.json()["notes"]  # the observer reads the hosts' job records: said

        assert one.status_code == 200
        assert one.json()["live"]["id"] == ident and one.json()["record"]["id"] == ident
        assert missing.status_code == 404 and "nosuch" in missing.json()["error"]

    async def test_the_stream_survives_a_nats_restart_and_resumes(self, fleet: Fleet) -> None:
        """NATS goes away and comes back: the event stream stays open, the board refreshes
        once the connection is back, and the next deploy streams as before."""
        port = int(fleet.url.rpartition(":")[2])
        config = fleet.server.config_path.read_text()
        again = EmbeddedNatsServer(fleet.root / "nats-again", config, port=port)
        try:
            with anyio.fail_after(LIMIT):
                async with (
                    fleet.listeners("web1", "web3"),
                    serving(fleet.local) as dash,
                    httpx.AsyncClient(base_url=dash.url) as client,
                    anyio.create_task_group() as tasks,
                ):
                    pair = {"web1": Tier.TEST, "web3": Tier.TEST}
                    events = Events()
                    tasks.start_soon(events.read, client)
                    await events.wait_for(refreshed(pair))
                    fleet.server.stop()
                    down = len(events.seen)
                    await anyio.to_thread.run_sync(again.start)
                    # A refresh after the reconnect that found both listeners back.
                    await events.wait_for(refreshed(pair), after=down, limit=30)
                    proc = await fleet.cli("deploy", "deploy.test.web1")
                    assert proc.returncode == 0, proc.stderr.decode()
                    _, live = await events.wait_for(
                        lambda n, d: n == "deployment" and final_in(d, "web1"), after=down
                    )
                    assert not events.closed
                    tasks.cancel_scope.cancel()
        finally:
            again.stop()
        assert live["hosts"][0]["status"] == "completed"


class TestStopping:
    async def test_stopping_ends_open_event_streams_cleanly_and_at_once(self, fleet: Fleet) -> None:
        """The server stops without waiting out uvicorn's grace for an open event stream:
        the stream ends with its closing chunk (no truncated response) right away."""
        with anyio.fail_after(LIMIT):
            async with httpx.AsyncClient() as client, anyio.create_task_group() as tasks:
                events = Events()
                async with serving(fleet.local) as dash:
                    tasks.start_soon(events.read, client, dash.url + "api/events")
                    await events.wait_for(lambda n, d: n == "fleet")
                    leaving = time.monotonic()
                took = time.monotonic() - leaving
                await events.wait_closed()
        assert took < GRACE, took


class TestBounds:
    async def test_a_slow_client_holds_a_bounded_backlog_and_gets_the_state_anew(
        self, fleet: Fleet
    ) -> None:
        """A stream whose client never reads holds at most MAX_PENDING events, then drops
        them for one fresh fleet body; a reading client meanwhile gets every event."""
        payload = json.dumps({"filler": "x" * 20_000})
        with anyio.fail_after(LIMIT):
            async with (
                serving(fleet.local) as dash,
                httpx.AsyncClient(base_url=dash.url) as client,
                anyio.create_task_group() as tasks,
            ):
                port = int(dash.url.rstrip("/").rpartition(":")[2])
                slow = socket.socket()
                slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                slow.connect(("127.0.0.1", port))
                slow.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
                fast = Events()
                tasks.start_soon(fast.read, client)
                await fast.wait_for(lambda n, d: n == "fleet")
                # The two feeds exist once both streams started; no event says so.
                while len(dash.hub.feeds) < 2:  # noqa: ASYNC110 - polled, under the deadline
                    await anyio.sleep(0.01)
                sent, batch = 3000, 10  # 60 MB: far past what the sockets' buffers hold
                for done in range(batch, sent + 1, batch):
                    for _ in range(batch):
                        dash.hub.publish("host", payload)
                    await fast.wait_count("host", done)  # the reader keeps up; the slow not
                feeds = dash.hub.feeds
                slow.close()
                tasks.cancel_scope.cancel()
        assert all(feed.peak <= MAX_PENDING for feed in feeds)
        assert sum(feed.stale_count for feed in feeds) >= 1  # the slow one fell behind
        assert len(fast.of("host")) == sent  # the reading one lost nothing
