"""The dashboard on a network: Host and Origin checks, security headers, no inline script,
no secret in any page or event — the rules first (pure), then the real server."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import pytest

from fleet_core.protocol.subjects import Tier
from fleet_dashboard.app import STATIC_FILES, static_file
from fleet_dashboard.security import CSP, HostPolicy, host_allowed, origin_allowed

from .conftest import TEST_HOSTS, Fleet
from .dashboard_support import dashboard_fleet, reading, refreshed, serving

LIMIT = 60.0
ANY = "0.0.0.0"  # noqa: S104 - a policy's input here, never bound
POLICY = HostPolicy.of("127.0.0.1", 8420, ["fleet.example.org", "proxy.lan:9000"])


class TestRules:
    pytestmark = pytest.mark.pure

    @pytest.mark.parametrize(
        ("host", "allowed"),
        [
            ("127.0.0.1:8420", True),
            ("localhost:8420", True),
            ("LOCALHOST:8420", True),
            ("[::1]:8420", True),
            ("fleet.example.org", True),  # a proxy's name, on its default port
            ("fleet.example.org:443", True),
            ("proxy.lan:9000", True),
            ("proxy.lan", False),  # given with a port: that port only
            ("127.0.0.1:8421", False),
            ("127.0.0.1", False),
            ("evil.example:8420", False),  # DNS rebinding: another name for this address
            ("evil.example", False),
            ("", False),
            (None, False),
        ],
    )
    def test_host(self, host: str | None, allowed: bool) -> None:
        """Only the listen address, the loopback names with its port, and --allowed-host."""
        assert host_allowed(POLICY, host) is allowed

    def test_a_wildcard_listen_names_no_host(self) -> None:
        """Listening on 0.0.0.0 admits loopback names only, until --allowed-host says more."""
        policy = HostPolicy.of(ANY, 8420)
        assert host_allowed(policy, "127.0.0.1:8420")
        assert not host_allowed(policy, "0.0.0.0:8420")
        assert not host_allowed(policy, "192.168.1.9:8420")
        assert host_allowed(HostPolicy.of(ANY, 8420, ["192.168.1.9"]), "192.168.1.9:8420")

    @pytest.mark.parametrize(
        ("origin", "allowed"),
        [
            ("http://127.0.0.1:8420", True),
            ("http://localhost:8420", True),
            ("https://fleet.example.org", True),
            ("http://proxy.lan:9000", True),
            ("http://evil.example", False),
            ("http://127.0.0.1:8421", False),
            ("http://127.0.0.1:8420/page", False),
            ("ftp://127.0.0.1:8420", False),
            ("null", False),
            ("", False),
            (None, False),
            ("http://[::1", False),
        ],
    )
    def test_origin(self, origin: str | None, allowed: bool) -> None:
        """An Origin passes only when it is this dashboard's own."""
        assert origin_allowed(POLICY, origin) is allowed


class _Page(HTMLParser):
    """What a CSP without 'unsafe-inline' would block, and what would load from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts: list[str] = []
        self.handlers: list[str] = []
        self.styles: list[str] = []
        self.sources: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        if "style" in named:
            self.styles.append(f"{tag} style=")
        if tag == "style":
            self.styles.append("<style>")
        for name in ("src", "href", "action"):
            if named.get(name):
                self.sources.append(str(named[name]))
        self._in_script = tag == "script"
        if tag == "script" and not named.get("src"):
            self.inline_scripts.append("<script> without src")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data.strip()[:40])


class TestThePage:
    pytestmark = pytest.mark.pure

    def test_the_static_files_ship_in_the_package(self) -> None:
        """index.html, app.js and style.css are found through importlib.resources."""
        for name in STATIC_FILES:
            assert static_file(name).strip(), name

    def test_no_inline_script_or_style_and_nothing_from_elsewhere(self) -> None:
        """The page runs under script-src 'self' and style-src 'self': no inline script,
        no event handler attribute, no inline style, and every source is this server's."""
        page = _Page()
        page.feed(static_file("index.html").decode())
        assert page.inline_scripts == []
        assert page.handlers == []
        assert page.styles == []
        assert all(not s.startswith(("http:", "https:", "//")) for s in page.sources), page.sources
        for name in ("app.js", "style.css"):
            text = static_file(name).decode()
            assert "http://" not in text and "https://" not in text, name
        script = static_file("app.js").decode()
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", script)


@pytest.fixture
async def fleet(tmp_path: Path) -> Any:
    async with dashboard_fleet(tmp_path) as local:
        yield Fleet(local=local, record=tmp_path / "runs.jsonl")


SECURITY = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def secured(response: httpx.Response) -> None:
    for name, value in SECURITY.items():
        assert response.headers.get(name) == value, (response.url, name)
    if response.url.path.startswith("/api/"):
        assert response.headers.get("cache-control") == "no-store", response.url


@pytest.mark.anyio
class TestTheServer:
    async def test_refusals_and_headers_on_every_response(self, fleet: Fleet) -> None:
        """A foreign Host gets 421, a foreign Origin 403 (the event stream too), and every
        response — pages, API, errors, refusals, the stream — carries the security headers."""
        with anyio.fail_after(LIMIT):
            async with (
                fleet.listeners(*TEST_HOSTS),
                serving(fleet.local) as dash,
                httpx.AsyncClient(base_url=dash.url) as client,
            ):
                port = dash.url.rstrip("/").rpartition(":")[2]
                own = f"http://127.0.0.1:{port}"
                responses = [
                    await client.get("/"),
                    await client.get("/static/app.js"),
                    await client.get("/static/style.css"),
                    await client.get("/static/index.html"),
                    await client.get("/static/../security.py"),
                    await client.get("/api/fleet"),
                    await client.get("/api/fleet", headers={"origin": own}),
                    await client.get("/api/session"),
                    await client.get("/api/hosts/nosuch"),
                    await client.get("/api/history?limit=x"),
                    await client.get("/nothing-here"),
                    await client.post("/api/fleet"),
                ]
                rebinding = await client.get("/api/fleet", headers={"host": f"evil.example:{port}"})
                foreign = await client.get("/api/fleet", headers={"origin": "http://evil.example"})
                stream = await client.get("/api/events", headers={"origin": "http://evil.example"})
                async with client.stream("GET", "/api/events") as events:
                    stream_headers = events
                    assert events.status_code == 200
        statuses = [r.status_code for r in responses]
        assert statuses == [200, 200, 200, 404, 404, 200, 200, 200, 404, 400, 404, 405]
        for response in (*responses, rebinding, foreign, stream, stream_headers):
            secured(response)
        assert rebinding.status_code == 421
        assert "--allowed-host" in rebinding.json()["error"]
        assert foreign.status_code == 403 and stream.status_code == 403
        assert responses[0].headers["content-type"].startswith("text/html")
        assert stream_headers.headers["content-type"].startswith("text/event-stream")
        assert responses[7].json()["actions"] is False  # read-only: no login, no actions

    async def test_no_seed_in_any_page_or_event(self, fleet: Fleet) -> None:
        """No seed of any key (the dashboard's own included) is in a page, a body or an
        event: the read key stays in the process that connects with it."""
        with anyio.fail_after(LIMIT):
            async with (
                fleet.listeners(*TEST_HOSTS),
                serving(fleet.local) as dash,
                httpx.AsyncClient(base_url=dash.url) as client,
                reading(client) as events,
            ):
                await events.wait_for(refreshed({h: Tier.TEST for h in TEST_HOSTS}))
                proc = await fleet.cli("deploy", "deploy.test.web1")
                assert proc.returncode == 0
                await events.wait_for(lambda n, d: n == "deployment")
                bodies = [
                    (await client.get(path)).text
                    for path in (
                        "/",
                        "/static/app.js",
                        "/api/fleet",
                        "/api/hosts/web1",
                        "/api/history",
                        "/api/session",
                    )
                ]
        everything = "\n".join([*bodies, *(str(data) for _, _, data in events.seen)])
        for name in fleet.keys:
            secret = fleet.seed(name).reveal()
            assert secret not in everything, name
            assert secret[:20] not in everything, name
        assert "SUA" not in everything  # no NKey user seed of any key
