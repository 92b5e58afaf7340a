"""The dashboard's login and actions, end to end: the real ``fleet-deploy dashboard
--allow-actions`` process against a real nats-server with an observer read key, real
listeners running the simulated rebuild, and HTTP over a real socket.

What must hold: nothing acts without a session, a CSRF token and this dashboard's Origin;
wrong passwords and codes are refused, then rate-limited; a deploy, a health check and a
cancel sent from the page reach the hosts and end as they should; prod needs its name typed
again, and a deploy key that may not reach prod gets a 502, not a silent nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import httpx2 as httpx
import pytest

from fleet_core.bus import Bus, Message
from fleet_core.deploy.deployer import Deployer
from fleet_core.protocol.messages import Status, parse_status
from fleet_core.protocol.subjects import Tier
from fleet_core.testing import FleetHost, local_fleet
from fleet_dashboard.auth import totp_code

from .conftest import DEPLOYERS, FAST, HOSTS, Fleet
from .dashboard_support import PASSWORD, TOTP_KEY, dashboard, running_dashboard

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """The test fleet plus ``dash``, an observer key: what the dashboard reads with."""
    hosts = [FleetHost(name, tier, role) for name, (tier, role) in HOSTS.items()]
    async with local_fleet(hosts, {**DEPLOYERS, "dash": "observer"}, root=tmp_path) as local:
        yield Fleet(local=local, record=tmp_path / "runs.jsonl")


class Witness:
    """Every status on ``deploy.responses.>``, heard with the admin key: what the hosts
    answered to the deployments the dashboard sent, whatever their ids."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Status]] = []
        self._changed = anyio.Event()

    async def deliver(self, msg: Message) -> None:
        status = parse_status(msg.data)
        if status is not None:
            self.seen.append((msg.subject, status))
            self._changed.set()
            self._changed = anyio.Event()

    def of(self, deployment_id: str) -> list[Status]:
        prefix = f"deploy.responses.{deployment_id}"
        return [s for subject, s in self.seen if subject.startswith(prefix)]

    def finals(self, deployment_id: str) -> dict[str, Status]:
        return {s.hostname: s for s in self.of(deployment_id) if s.is_final}

    async def wait_for(
        self, deployment_id: str, ok: Callable[[list[Status]], bool], limit: float = 30
    ) -> list[Status]:
        with anyio.fail_after(limit):
            while not ok(self.of(deployment_id)):
                await self._changed.wait()
        return self.of(deployment_id)

    async def finished(self, deployment_id: str, hosts: set[str]) -> dict[str, Status]:
        await self.wait_for(deployment_id, lambda _: set(self.finals(deployment_id)) >= hosts)
        return self.finals(deployment_id)


@asynccontextmanager
async def witness(fleet: Fleet) -> AsyncIterator[tuple[Witness, Bus]]:
    async with await fleet.connect("admin") as bus:
        seen = Witness()
        await bus.subscribe("deploy.responses.>", seen.deliver)
        await bus.flush()
        yield seen, bus


class TestLogin:
    async def test_without_a_session_nothing_acts(self, fleet: Fleet, tmp_path: Path) -> None:
        """The session says actions exist but nobody is logged in; an action is 401."""
        async with dashboard(fleet, tmp_path) as dash:
            session = (await dash.client.get("/api/session")).json()
            assert session == {
                "actions": True,
                "logged_in": False,
                "user": None,
                "csrf": None,
                "totp": False,
            }
            refused = await dash.act("deploy", {"target": "deploy.test.web1"}, csrf="x")
            assert refused.status_code == 401
            assert "log in" in refused.json()["error"]
        assert fleet.runs() == []

    async def test_wrong_passwords_are_refused_then_limited(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """Five wrong passwords get 401; the sixth attempt, even the right one, 429 with a
        Retry-After."""
        async with dashboard(fleet, tmp_path) as dash:
            for _ in range(5):
                wrong = await dash.login("hunter2")
                assert wrong.status_code == 401
                assert wrong.json() == {"error": "wrong password or one-time code"}
                assert "set-cookie" not in wrong.headers
            limited = await dash.login()
            assert limited.status_code == 429
            assert 290 <= int(limited.headers["retry-after"]) <= 300
            assert "too many failed logins" in limited.json()["error"]
            assert not (await dash.client.get("/api/session")).json()["logged_in"]

    async def test_guesses_sent_at_once_are_limited_all_the_same(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """Twelve wrong passwords sent together: five are checked (401), the rest refused
        unchecked (429), as if they had come one after another."""
        async with dashboard(fleet, tmp_path) as dash:
            codes: list[int] = []

            async def guess(n: int) -> None:
                codes.append((await dash.login(f"guess-{n}")).status_code)

            async with anyio.create_task_group() as tasks:
                for n in range(12):
                    tasks.start_soon(guess, n)
        assert sorted(codes) == [401] * 5 + [429] * 7

    async def test_the_session_cookie_and_its_flags(self, fleet: Fleet, tmp_path: Path) -> None:
        """A login sets fleet_session HttpOnly, SameSite=Strict, Path=/ (not Secure over
        plain http), and the session then carries a CSRF token."""
        async with dashboard(fleet, tmp_path) as dash:
            ok = await dash.login()
            assert ok.status_code == 200, ok.text
            cookie = ok.headers["set-cookie"]
            flags = {part.strip().split("=")[0].lower(): part for part in cookie.split(";")}
            assert cookie.startswith("fleet_session=")
            assert {"httponly", "samesite", "path"} <= set(flags)
            assert flags["samesite"].strip().lower() == "samesite=strict"
            assert flags["path"].strip() == "Path=/"
            assert "secure" not in flags
            assert ok.headers["cache-control"] == "no-store"
            session = (await dash.client.get("/api/session")).json()
            assert session["logged_in"] and session["user"] == "admin"
            assert session["csrf"] == ok.json()["csrf"] and len(session["csrf"]) >= 32
            assert PASSWORD not in ok.text and PASSWORD not in cookie

    async def test_totp_is_required_and_checked(self, fleet: Fleet, tmp_path: Path) -> None:
        """With a TOTP secret: the password alone or with a wrong code is refused, the
        right code logs in, and the same code is refused a second time."""
        async with dashboard(fleet, tmp_path, totp=True) as dash:
            assert (await dash.client.get("/api/session")).json()["totp"] is True
            assert (await dash.login()).status_code == 401
            code = totp_code(TOTP_KEY, int(time.time() // 30))
            wrong = f"{(int(code) + 1) % 10**6:06d}"
            assert (await dash.login(totp=wrong)).status_code == 401
            assert (await dash.login("hunter2", totp=code)).status_code == 401
            assert (await dash.login(totp=code)).status_code == 200
            dash.client.cookies.clear()
            again = await dash.login(totp=code)
            assert again.status_code == 401  # used once: a code seen is no key
            assert (await dash.client.get("/api/session")).json()["logged_in"] is False

    async def test_logout_ends_the_session(self, fleet: Fleet, tmp_path: Path) -> None:
        """After a logout the old cookie, replayed, is refused: no session, no action."""
        async with dashboard(fleet, tmp_path) as dash:
            assert (await dash.login()).status_code == 200
            csrf = await dash.csrf()
            old = dict(dash.client.cookies)
            out = await dash.client.post(
                "/logout", headers={"Origin": dash.origin, "X-CSRF-Token": csrf}
            )
            assert out.status_code == 200
            assert 'fleet_session=""' in out.headers["set-cookie"]
            dash.client.cookies.clear()
            dash.client.cookies.update(old)  # the copied cookie, sent again
            assert (await dash.client.get("/api/session")).json()["logged_in"] is False
            refused = await dash.act("deploy", {"target": "deploy.test.web1"}, csrf=csrf)
            assert refused.status_code == 401


class TestRequestForgery:
    async def test_csrf_token_and_origin_are_required(self, fleet: Fleet, tmp_path: Path) -> None:
        """Logged in, an action without the CSRF header, with a wrong one, from another
        Origin or with none is refused 403, and nothing is deployed."""
        async with dashboard(fleet, tmp_path) as dash:
            assert (await dash.login()).status_code == 200
            csrf = await dash.csrf()
            body = {"target": "deploy.test.web1"}
            no_token = await dash.client.post(
                "/api/actions/deploy", json=body, headers={"Origin": dash.origin}
            )
            assert no_token.status_code == 403
            assert "X-CSRF-Token" in no_token.json()["error"]
            assert (await dash.act("deploy", body, csrf=csrf[:-1] + "x")).status_code == 403
            foreign = await dash.act("deploy", body, csrf=csrf, Origin="https://evil.example")
            assert foreign.status_code == 403
            no_origin = await dash.client.post(
                "/api/actions/deploy", json=body, headers={"X-CSRF-Token": csrf}
            )
            assert no_origin.status_code == 403
            assert "Origin" in no_origin.json()["error"]
            login_elsewhere = await dash.client.post(
                "/login", json={"password": PASSWORD}, headers={"Origin": "http://evil.example"}
            )
            assert login_elsewhere.status_code == 403
            form = await dash.client.post(
                "/login",
                content=b"password=" + PASSWORD.encode(),
                headers={
                    "Origin": dash.origin,
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            )
            assert form.status_code == 400  # what a cross-site form could send: not JSON
        assert fleet.runs() == []

    async def test_bad_input_is_a_clear_400(self, fleet: Fleet, tmp_path: Path) -> None:
        """A bad target, action, revision or id is 400 with a sentence; the dashboard goes on."""
        async with dashboard(fleet, tmp_path) as dash:
            assert (await dash.login()).status_code == 200
            csrf = await dash.csrf()
            for what, body, says in [
                ("deploy", {"target": "deploy.staging.web1"}, "tiers are 'test' and 'prod'"),
                ("deploy", {"target": "deploy.test.web1", "action": "cancel"}, "action must"),
                ("deploy", {"target": "deploy.test.web1", "revision": "../x"}, "revision"),
                ("deploy", {}, "target is missing"),
                ("cancel", {"deployment_id": "a b"}, "deployment_id"),
                ("check", {"target": 3}, "target must be a string"),
            ]:
                refused = await dash.act(what, body, csrf=csrf)  # type: ignore[arg-type]
                assert refused.status_code == 400, (what, body, refused.text)
                assert says in refused.json()["error"], refused.json()
            assert (await dash.client.get("/api/session")).json()["logged_in"]
        assert fleet.runs() == []


class TestActions:
    async def test_a_deploy_to_test_runs_on_the_hosts(self, fleet: Fleet, tmp_path: Path) -> None:
        """A deploy of deploy.test.all returns its id at once (202); each host ends
        completed, signed by the dashboard's deploy key, and its job record says so."""
        async with (
            fleet.listeners("web1", "web2"),
            witness(fleet) as (seen, bus),
            dashboard(fleet, tmp_path) as dash,
        ):
            assert (await dash.login()).status_code == 200
            started = await dash.act(
                "deploy", {"target": "deploy.test.all", "revision": "main", "action": "test"}
            )
            assert started.status_code == 202, started.text
            deployment_id = started.json()["deployment_id"]
            finals = await seen.finished(deployment_id, {"web1", "web2"})
            jobs = await Deployer(bus, timing=FAST).query_job(
                deployment_id, hosts=["web1", "web2"], tier=Tier.TEST
            )
        assert {h: s.status.value for h, s in finals.items()} == {
            "web1": "completed",
            "web2": "completed",
        }
        admin = fleet.seed("admin").public_key
        assert {s.signer for s in finals.values()} == {admin}
        assert {h: (j.job and j.job.status) for h, j in jobs.items()} == {
            "web1": "completed",
            "web2": "completed",
        }
        assert sorted(argv[0] for argv in fleet.runs()) == ["test", "test"]

    async def test_prod_needs_its_name_typed_again(self, fleet: Fleet, tmp_path: Path) -> None:
        """A prod deploy without confirm, or with a wrong one, is 403 and sends nothing;
        with the target typed again it runs (the admin key may)."""
        async with (
            fleet.listeners("pweb1"),
            witness(fleet) as (seen, _),
            dashboard(fleet, tmp_path) as dash,
        ):
            assert (await dash.login()).status_code == 200
            target = {"target": "deploy.prod.pweb1"}
            for confirm in ({}, {"confirm": "pweb1"}, {"confirm": "deploy.prod.all"}):
                refused = await dash.act("deploy", target | confirm)
                assert refused.status_code == 403
                assert "type the target deploy.prod.pweb1 again" in refused.json()["error"]
            assert seen.seen == [] and fleet.runs() == []
            started = await dash.act("deploy", target | {"confirm": "deploy.prod.pweb1"})
            assert started.status_code == 202, started.text
            finals = await seen.finished(started.json()["deployment_id"], {"pweb1"})
        assert finals["pweb1"].status.value == "completed"

    async def test_a_deploy_key_that_may_not_reach_prod_gets_502(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """With the test deployer key as the dashboard's deploy key, a confirmed prod
        deploy is refused by the NATS server: 502 with a sentence; test still works."""
        async with (
            fleet.listeners("web1", "pweb1"),
            witness(fleet) as (seen, _),
            dashboard(fleet, tmp_path, deploy_key="deployer") as dash,
        ):
            assert (await dash.login()).status_code == 200
            refused = await dash.act(
                "deploy", {"target": "deploy.prod.pweb1", "confirm": "deploy.prod.pweb1"}
            )
            assert refused.status_code == 502, refused.text
            error = refused.json()["error"]
            assert error.startswith("the NATS server refused the dashboard's deploy key")
            # The fix names the dashboard's flag, not the CLI's (the read key's, here).
            assert "--deploy-nkey-file" in error and "--nkey-file or" not in error, error
            started = await dash.act("deploy", {"target": "deploy.test.web1"})
            assert started.status_code == 202, started.text
            finals = await seen.finished(started.json()["deployment_id"], {"web1"})
        assert finals["web1"].status.value == "completed"
        assert fleet.hosts_run() == ["web1"]  # pweb1 never rebuilt

    async def test_cancel_stops_a_running_deploy(self, fleet: Fleet, tmp_path: Path) -> None:
        """A deploy held in its build is cancelled from the page: the host answers stopped
        and the deployment ends failed/cancelled."""
        gate = tmp_path / "gate"
        async with (
            fleet.listeners("web1", sim={"web1": ["--sim-wait-for", str(gate)]}),
            witness(fleet) as (seen, _),
            dashboard(fleet, tmp_path) as dash,
        ):
            assert (await dash.login()).status_code == 200
            started = await dash.act("deploy", {"target": "deploy.test.web1"})
            assert started.status_code == 202, started.text
            deployment_id = started.json()["deployment_id"]
            await seen.wait_for(
                deployment_id, lambda s: any(x.status.value == "progress" for x in s)
            )
            await dash.sees(deployment_id)  # seen on the test tier: no id to type again
            cancelled = await dash.act("cancel", {"deployment_id": deployment_id})
            assert cancelled.status_code == 202, cancelled.text
            answer = cancelled.json()
            finals = await seen.finished(deployment_id, {"web1"})
        assert answer["deployment_id"] == deployment_id
        assert [(a["hostname"], a["outcome"]) for a in answer["answers"]] == [("web1", "stopped")]
        assert (finals["web1"].status.value, finals["web1"].error) == ("failed", "cancelled")

    async def test_a_cancel_that_may_reach_prod_needs_its_id_typed_again(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """A deployment this dashboard has not seen on the test tier may be prod's: its
        cancel is refused until its id is typed again, then goes to both tiers."""
        async with fleet.listeners("web1", "pweb1"), dashboard(fleet, tmp_path) as dash:
            assert (await dash.login()).status_code == 200
            refused = await dash.act("cancel", {"deployment_id": "unseen-1"})
            wrong = await dash.act("cancel", {"deployment_id": "unseen-1", "confirm": "unseen"})
            sent = await dash.act("cancel", {"deployment_id": "unseen-1", "confirm": "unseen-1"})
        assert (refused.status_code, wrong.status_code) == (403, 403), refused.text
        assert "type its id again" in refused.json()["error"]
        assert sent.status_code == 202, sent.text
        assert sent.json()["refused_tiers"] == []  # the admin deploy key reached both tiers

    async def test_stopping_the_dashboard_leaves_the_hosts_deploying(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """SIGTERM while a deploy it started is held in its build: the dashboard exits 0 at
        once (the deployment's task is cancelled with it), and the host carries on to
        completed, as after a Ctrl-C of fleet-deploy deploy."""
        gate = tmp_path / "gate"
        async with (
            fleet.listeners("web1", sim={"web1": ["--sim-wait-for", str(gate)]}),
            witness(fleet) as (seen, _),
        ):
            async with dashboard(fleet, tmp_path) as dash:
                assert (await dash.login()).status_code == 200
                started = await dash.act("deploy", {"target": "deploy.test.web1"})
                assert started.status_code == 202, started.text
                deployment_id = started.json()["deployment_id"]
                await seen.wait_for(
                    deployment_id, lambda s: any(x.status.value == "progress" for x in s)
                )
            # Out of the block: SIGTERM sent, exit status 0 checked.
            gate.touch()
            finals = await seen.finished(deployment_id, {"web1"})
        assert finals["web1"].status.value == "completed"

    async def test_a_health_check_runs(self, fleet: Fleet, tmp_path: Path) -> None:
        """A check of deploy.test.web1 is sent as the check action and completes, rebuilding
        nothing; one of prod without confirm is refused."""
        async with (
            fleet.listeners("web1"),
            witness(fleet) as (seen, _),
            dashboard(fleet, tmp_path) as dash,
        ):
            assert (await dash.login()).status_code == 200
            prod = await dash.act("check", {"target": "deploy.prod.pweb1"})
            assert prod.status_code == 403  # a prod check is an action on prod: confirm it
            started = await dash.act("check", {"target": "deploy.test.web1"})
            assert started.status_code == 202, started.text
            finals = await seen.finished(started.json()["deployment_id"], {"web1"})
        assert finals["web1"].status.value == "completed"
        assert finals["web1"].action == "check"
        assert fleet.runs() == []


async def test_a_read_only_dashboard_has_no_login(fleet: Fleet) -> None:
    """Without --allow-actions the session says so and the login and action routes do not
    exist (404), whatever is sent."""
    async with (
        running_dashboard(fleet) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        session = (await client.get("/api/session")).json()
        assert session["actions"] is False and session["logged_in"] is False
        origin = {"Origin": url.rstrip("/")}
        for path in ("/login", "/logout", "/api/actions/deploy", "/api/actions/cancel"):
            response = await client.post(path, json={"password": PASSWORD}, headers=origin)
            assert response.status_code == 404, (path, response.status_code)
