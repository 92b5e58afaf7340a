"""The dashboard attacked as an outsider would, where an attack once got through: each test
here failed before the fix it names.

- A flood of statuses on bare reply subjects (homelab-deploy's layout, where a status names
  its host itself) cannot grow the board past ``MAX_HOST_RUNS`` host entries (pure).
- ``X-Forwarded-For`` from a local client does not give each login guess a new address
  (the real ``fleet-deploy dashboard --allow-actions`` process, HTTP over a real socket).

- A login body nested 8,000 deep was an internal error (500 and a traceback in the log).
- A number too big for a float (``1e999``) from a host reached the page as ``Infinity``,
  which is no JSON: the whole fleet view failed to load, for every viewer.
- A link with a malformed escape in its fragment (``#/host/%E0``) left the page empty.

- Any listener could end a deployment of its own making every fraction of a second, and
  each end set off a discovery of the whole fleet: now at most one per ENDED_REFRESH_GAP.

And one that held, kept as a guard: markup a listener sends runs nothing in chromium.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import pytest
from playwright.async_api import expect

from fleet_core.bus import Message
from fleet_core.protocol.messages import Status, StatusKind
from fleet_core.testing import FleetHost, local_fleet
from fleet_dashboard.board import ENDED_QUIET, MAX_HOST_RUNS, Board, Origin
from fleet_dashboard.watcher import ENDED_REFRESH_GAP

from .browser import launched, new_page
from .conftest import DEPLOYERS, HOSTS, Fleet
from .dashboard_support import PASSWORD, Events, dashboard, dashboard_fleet, reading, serving

WAIT_MS = 30_000.0  # Playwright's deadline for what the fleet must do first


def _status(name: str, kind: StatusKind, deployment: str) -> Status:
    return Status(hostname=name, status=kind, request_id=deployment, tier="test")


class TestStatusFlood:
    pytestmark = pytest.mark.pure

    def test_endless_host_names_on_a_bare_subject_are_bounded(self) -> None:
        """One listener naming a new host in every status of one deployment fills the
        board up to MAX_HOST_RUNS host entries and no further; the hosts it holds still
        take their statuses."""
        board = Board(cli_version="1.0")
        flood = Origin("flood")  # a bare reply subject: no host, no tier in it
        for i in range(MAX_HOST_RUNS + 500):
            board.take_status(flood, _status(f"h{i}", StatusKind.STARTED, "flood"), now=1.0)
        live = board.live("flood")
        assert live is not None
        assert len(live["hosts"]) == MAX_HOST_RUNS
        board.take_status(flood, _status("h0", StatusKind.COMPLETED, "flood"), now=2.0)
        live = board.live("flood")
        assert live is not None
        assert live["counts"]["completed"] == 1

    def test_ended_deployments_make_room_and_running_ones_stay(self) -> None:
        """At the bound, the oldest ended deployment is dropped for a new host entry; a
        running one is not, so a flood cannot push a live deploy off the page."""
        board = Board(cli_version="1.0")
        half = MAX_HOST_RUNS // 2
        for i in range(half):  # ended: every host final, then quiet
            board.take_status(Origin("old"), _status(f"o{i}", StatusKind.COMPLETED, "old"), now=0.0)
        board.tick(100.0)
        board.take_status(Origin("live"), _status("web1", StatusKind.STARTED, "live"), now=100.0)
        for i in range(half + 10):
            board.take_status(
                Origin("flood"), _status(f"f{i}", StatusKind.STARTED, "flood"), now=101.0
            )
        assert board.live("old") is None  # made room
        running = board.live("live")
        assert running is not None and [h["hostname"] for h in running["hosts"]] == ["web1"]
        flood = board.live("flood")
        assert flood is not None and len(flood["hosts"]) == half + 10


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """The test fleet plus ``dash``, an observer key: what the dashboard reads with."""
    hosts = [FleetHost(name, tier, role) for name, (tier, role) in HOSTS.items()]
    async with local_fleet(hosts, {**DEPLOYERS, "dash": "observer"}, root=tmp_path) as local:
        yield Fleet(local=local, record=tmp_path / "runs.jsonl")


@pytest.mark.anyio
class TestLoginRequests:
    async def test_a_forwarded_for_header_does_not_dodge_the_per_client_limit(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """Five wrong passwords, each claiming another address in X-Forwarded-For, all count
        against the socket's own address: the sixth is refused unchecked (429, this
        address)."""
        async with dashboard(fleet, tmp_path) as dash:
            for n in range(5):
                wrong = await dash.client.post(
                    "/login",
                    json={"password": "guess"},
                    headers={"Origin": dash.origin, "X-Forwarded-For": f"203.0.113.{n + 1}"},
                )
                assert wrong.status_code == 401, wrong.text
            limited = await dash.client.post(
                "/login",
                json={"password": "guess"},
                headers={"Origin": dash.origin, "X-Forwarded-For": "198.51.100.7"},
            )
            assert limited.status_code == 429, limited.text
            assert "from this address" in limited.json()["error"]

    async def test_the_cookie_is_secure_when_the_page_is_https_whatever_the_headers_claim(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """Behind a TLS proxy the request arrives over http, but the page's Origin is https:
        its cookie is Secure. X-Forwarded-Proto on a plain http page changes nothing."""
        async with dashboard(fleet, tmp_path) as dash:
            host = dash.origin.removeprefix("http://")
            claimed = await dash.client.post(
                "/login",
                json={"password": PASSWORD},
                headers={"Origin": dash.origin, "X-Forwarded-Proto": "https"},
            )
            assert claimed.status_code == 200, claimed.text
            assert "secure" not in claimed.headers["set-cookie"].lower()
            proxied = await dash.client.post(
                "/login", json={"password": PASSWORD}, headers={"Origin": f"https://{host}"}
            )
            assert proxied.status_code == 200, proxied.text
            flags = [part.strip().lower() for part in proxied.headers["set-cookie"].split(";")]
            assert "secure" in flags

    async def test_a_deeply_nested_body_is_a_400_not_a_crash(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """A login body of arrays nested 8,000 deep (16 kB, under the size limit) is refused
        as bad input (400, a sentence), not an internal error; the login then still works."""
        async with dashboard(fleet, tmp_path) as dash:
            nested = "[" * 8000 + "]" * 8000
            refused = await dash.client.post(
                "/login",
                content=nested,
                headers={"Origin": dash.origin, "Content-Type": "application/json"},
            )
            assert refused.status_code == 400, refused.text
            assert "nests too deeply" in refused.json()["error"]
            assert (await dash.login()).status_code == 200


# What a hostile listener puts in every string it sends: markup, an attribute breaking out,
# an event handler, terminal escapes and a right-to-left override.
HOSTILE = (
    '<script>window.pwned = 1</script>"><img src=x onerror="window.pwned = 2">'
    "<svg onload=window.pwned=3> \x1b[2J\x07 \u202eexe.txt"
)


def _hostile_job(request_id: str) -> dict[str, object]:
    return {
        "request_id": request_id,
        "phase": "finished",
        "status": "failed",
        "error": "build_failed",
        "message": HOSTILE,
        "log_tail": [HOSTILE, HOSTILE],
        "action": "switch",
        "revision": "master",
        "started_at": 1.0,
        "finished_at": 2.0,
    }


@pytest.mark.anyio
class TestHostileText:
    async def test_markup_from_a_host_runs_nothing_in_the_browser(self, tmp_path: Path) -> None:
        """web1's key (a listener's) sends statuses and a discovery answer whose every
        string holds markup, escapes and a bidi override. In chromium the fleet, the
        deployment, its timeline and the host's failed job show that text escaped and
        inert: no script ran, no element came of it, and the console (where a CSP
        violation is reported) stays empty."""
        async with (
            dashboard_fleet(tmp_path) as local,
            serving(local) as served,
            await local.connect("web1") as bus,
        ):

            async def answer(message: Message) -> None:  # a discovery, as web1 answers it
                asked = json.loads(message.data)
                if "web1" not in asked.get("hosts", ["web1"]) or not message.reply:
                    return
                info = {
                    "hostname": "web1",
                    "tier": "test",
                    "role": "web",
                    "version": HOSTILE,
                    "recent_jobs": [_hostile_job("evil1")],
                }
                reply = asked.get("reply_to") or message.reply
                await bus.publish(f"{reply}.test.web1", json.dumps(info).encode())

            await bus.subscribe("deploy.discover.test", answer)
            await bus.flush()
            served.watcher.refresh_soon()
            for kind in ("started", "progress", "failed"):
                status = {
                    "hostname": "web1",
                    "status": kind,
                    "request_id": "evil1",
                    "tier": "test",
                    "action": "switch",
                    "revision": "master",
                    "phase": HOSTILE,
                    "message": HOSTILE,
                    "error": HOSTILE if kind == "failed" else None,
                    "log_tail": [HOSTILE],
                }
                await bus.publish("deploy.responses.evil1.test.web1", json.dumps(status).encode())
            await bus.flush()

            async with launched() as browser:
                page, console = await new_page(browser)
                await page.goto(served.url)
                line = page.locator(
                    '#deployments [data-deployment="evil1"] [data-host="web1"] .line'
                )
                await expect(line).to_contain_text("<img src=x onerror=", timeout=WAIT_MS)
                await expect(line).to_contain_text("\\u202e")
                version = page.locator('#fleet tr[data-host="web1"] td.version')
                await expect(version).to_contain_text("<script>", timeout=WAIT_MS)
                await page.goto(f"{served.url}#/deployment/evil1")
                await expect(page.locator("#timeline")).to_contain_text("web1", timeout=WAIT_MS)
                await page.goto(f"{served.url}#/host/web1")
                tail = page.locator("#host-detail pre.log-tail").first
                await expect(tail).to_contain_text("<svg onload=", timeout=WAIT_MS)
                await expect(tail).to_contain_text("\\x1b[2J")
                assert await page.evaluate("window.pwned") is None
                markup = "img[src=x], svg[onload], #deployments script, #host-detail script"
                assert await page.locator(markup).count() == 0
                assert console.errors == [], console.errors

    async def test_a_link_with_a_malformed_escape_leaves_the_page_working(
        self, tmp_path: Path
    ) -> None:
        """A link such as ``#/host/%E0%A4%A`` (anyone can send one) opens the host view
        saying there is no such host, with no uncaught exception that would leave the
        page empty; the fleet view then loads as usual."""
        async with (
            dashboard_fleet(tmp_path) as local,
            serving(local) as served,
            launched() as browser,
        ):
            page, console = await new_page(browser)
            await page.goto(f"{served.url}#/host/%E0%A4%A")
            detail = page.locator("#host-detail .error")
            await expect(detail).to_contain_text("no such host", timeout=WAIT_MS)
            await page.goto(f"{served.url}#/")
            await expect(page.locator("#view-fleet")).to_be_visible()
            # The 404 of the host's read is reported as a failed resource, as it should be.
            assert [e for e in console.errors if "404" not in e] == [], console.errors


def _strict(text: str) -> Any:
    """JSON as a browser's ``JSON.parse`` reads it: ``Infinity`` and ``NaN`` are errors."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a body: no browser can parse it")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.anyio
class TestHostileNumbers:
    async def test_a_number_too_big_for_a_float_keeps_every_body_json(self, tmp_path: Path) -> None:
        """web1's key sends ``1e999`` (Python reads infinity) as a status's duration and as
        a job's: the deployment event, /api/fleet, the deployment and the host's jobs stay
        JSON a browser parses, the number shown as null."""
        async with (
            dashboard_fleet(tmp_path) as local,
            serving(local) as served,
            await local.connect("web1") as bus,
            httpx.AsyncClient(base_url=served.url, timeout=30) as client,
            anyio.create_task_group() as tasks,
        ):
            job = (
                b'{"request_id":"inf1","phase":"finished","status":"completed","duration_s":1e999}'
            )

            async def answer(message: Message) -> None:  # a discovery, as web1 answers it
                reply = json.loads(message.data).get("reply_to") or message.reply
                info = b'{"hostname":"web1","tier":"test","role":"web","recent_jobs":[%s]}' % job
                await bus.publish(f"{reply}.test.web1", info)

            await bus.subscribe("deploy.discover.test", answer)
            await bus.flush()
            events = Events()
            tasks.start_soon(events.read, client)
            await events.wait_count("fleet", 1)
            status = (
                b'{"hostname":"web1","status":"completed","request_id":"inf1","tier":"test",'
                b'"action":"switch","duration_s":1e999}'
            )
            await bus.publish("deploy.responses.inf1.test.web1", status)
            await bus.flush()
            _, live = await events.wait_for(
                lambda name, data: name == "deployment" and data["id"] == "inf1"
            )
            assert live["hosts"][0]["duration_s"] is None
            for path in ("/api/fleet", "/api/deployments/inf1", "/api/hosts/web1"):
                response = await client.get(path)
                assert response.status_code == 200, (path, response.text)
                _strict(response.text)
            jobs = _strict((await client.get("/api/hosts/web1")).text)["jobs"]
            assert [j["duration_s"] for j in jobs] == [None]
            tasks.cancel_scope.cancel()


@pytest.mark.anyio
class TestDiscoveryAmplification:
    async def test_deployments_ending_one_after_another_refresh_at_most_every_gap(
        self, tmp_path: Path
    ) -> None:
        """web1's key ends a deployment of its own making every 0.3 s for 4.5 s (one small
        status each). Each end used to set off a discovery of the whole fleet, back to
        back; now those refreshes come at least ENDED_REFRESH_GAP apart."""
        async with (
            dashboard_fleet(tmp_path) as local,
            serving(local) as served,
            await local.connect("web1") as bus,
            httpx.AsyncClient(base_url=served.url, timeout=30) as client,
            reading(client) as events,
        ):
            await events.wait_count("fleet", 1)
            before, began = served.watcher.refreshes, time.monotonic()
            sent = 15
            for n in range(sent):
                status = {
                    "hostname": "web1",
                    "status": "completed",
                    "request_id": f"amp{n}",
                    "tier": "test",
                    "action": "check",
                }
                subject = f"deploy.responses.amp{n}.test.web1"
                await bus.publish(subject, json.dumps(status).encode())
                await bus.flush()
                # The attack's own pace (what the attacker chooses), not a wait for a state.
                await anyio.sleep(0.3)
            last = f"amp{sent - 1}"
            ended_at, _ = await events.wait_for(
                lambda name, data: name == "deployment" and data["id"] == last and data["ended"],
                limit=ENDED_QUIET + 10,
            )
            span = ended_at - began  # from the first status to the last end
            assert served.watcher.refreshes - before <= span / ENDED_REFRESH_GAP + 1
