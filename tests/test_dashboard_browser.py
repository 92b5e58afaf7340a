"""The dashboard in a real browser: Debian's chromium, driven by Playwright.

Everything behind the page is real: ``fleet-deploy sandbox`` as a subprocess (a nats-server
with the tiered permissions, listeners running the simulated rebuild) and the dashboard it
starts with its observer key, or a ``fleet-deploy dashboard`` subprocess; deploys are
started with the ``fleet-deploy`` CLI, as a person would. The 1,000-host test answers
discovery and deploys with ``bench/_responders.py`` (bare hosts, many to a connection).

The page is watched for console errors, which is where chromium reports a Content Security
Policy violation: a page that needed inline script or style would show one.

``scripts/screenshot`` runs the live-deploy test with ``DASHBOARD_SCREENSHOT`` set to
``docs/dashboard.png``; otherwise the picture goes into the test's temporary directory.
Without chromium the tests are skipped, saying how to install it; under ``CI=true`` they fail.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from playwright.async_api import Browser, FloatRect, Page, expect

from fleet_core.bus import Bus, Message
from fleet_core.config.options import DEFAULT_SANDBOX_HOSTS
from fleet_core.keys import load_seed
from fleet_core.testing import local_fleet
from fleet_core.testing.sandbox import ADMIN, TEST_DEPLOYER, plan_hosts

from .browser import (
    FLEET_DEPLOY,
    Console,
    chromium,
    clean_env,
    cli,
    dashboard,
    launched,
    new_page,
    sandbox,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
PLAN = plan_hosts(DEFAULT_SANDBOX_HOSTS)
OBSERVER = "dashboard"  # the sandbox's observer key, which its dashboard reads with
WAIT_MS = 30_000.0  # Playwright's deadline for anything the fleet must do first
LIVE_WITHIN_S = 1.0  # a status on NATS is on the page within this (issue 23)
SCREENSHOT_ENV = "DASHBOARD_SCREENSHOT"  # scripts/screenshot: where the README's picture goes
# 1,000 hosts: what a load may take, from navigation to the last row in the table (the median
# of LOADS loads), and the longest the page may be busy at a stretch while a deploy to all of
# them streams in. Measured on the 2-core CI machine (docs/dashboard.md#tested-in-a-browser):
# a load took 0.5-0.9 s and the longest task 0.1-0.25 s; the budgets leave room for a busy
# machine, and catch a page that renders row by row or rebuilds the table per event.
MANY = 1000
LOADS = 3
LOAD_BUDGET_S = 3.0
LONGEST_TASK_BUDGET_MS = 1000.0
RESPONDERS = "responders"
# bench/_responders.py's key: the test tier's requests and discovery, every bound reply.
RESPONDER_PERMISSIONS = {
    "publish": ["deploy.responses.>"],
    "subscribe": ["deploy.test.>", "deploy.discover.test"],
}
PASSWORD = "correct horse battery staple"  # noqa: S105 (the test's own login)
_STARTED = re.compile(r"^started \w+$")  # the actions panel, once a deploy is accepted


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Chromium, or the test is skipped (under CI: failed) before any fleet starts."""
    chromium()
    async with launched() as started:
        yield started


def _expected_outcomes() -> dict[str, str]:
    """What ``deploy.test.all`` ends with on the sandbox: its plan says who fails."""
    return {
        host.name: "failed" if host.fails or host.cuts_network else "completed"
        for host in PLAN
        if host.tier.value == "test"
    }


async def _visible_hosts(page: Page) -> list[str]:
    names: list[str] = await page.locator("#fleet tbody tr[data-host]:visible").evaluate_all(
        "rows => rows.map(row => row.dataset.host)"
    )
    return sorted(names)


def _quiet(console: Console, *allowed: str) -> list[str]:
    """The page's errors, but for those containing one of ``allowed``."""
    return [e for e in console.errors if not any(a in e for a in allowed)]


class FinalStatuses:
    """The time each host's final status of a deployment reached NATS (the admin key hears
    every reply): what the page's times are measured against."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str], float] = {}

    async def deliver(self, msg: Message) -> None:
        try:
            status = json.loads(msg.data)
        except ValueError:
            return
        if not isinstance(status, dict) or status.get("status") not in ("completed", "failed"):
            return
        deployment = msg.subject.split(".")[2]
        self.at.setdefault((deployment, str(status.get("hostname"))), time.time())


# Installed into the page: each time a host's status text in #deployments changes, when
# (wall clock, as time.time() on the same machine). Only reads the DOM.
_RECORD_STATUS_CHANGES = """
() => {
  window.statusSeen = [];
  const last = new Map();
  const scan = () => {
    const now = (performance.timeOrigin + performance.now()) / 1000;
    for (const item of document.querySelectorAll('#deployments [data-deployment] [data-host]')) {
      const id = item.closest('[data-deployment]').dataset.deployment;
      const key = id + ' ' + item.dataset.host;
      const status = item.querySelector('.status').textContent;
      if (last.get(key) !== status) {
        last.set(key, status);
        window.statusSeen.push([id, item.dataset.host, status, now]);
      }
    }
  };
  new MutationObserver(scan).observe(document.querySelector('#deployments'),
    {subtree: true, childList: true, characterData: true});
  scan();
}
"""


class TestAgainstTheSandbox:
    async def test_a_cli_deploy_shows_live_and_ends_with_each_hosts_outcome(
        self, browser: Browser, tmp_path: Path
    ) -> None:
        """The sandbox's read-only page lists every host; a deploy started from the CLI shows
        running, each host's status arrives within a second of NATS, and it ends with the
        outcome the CLI reports for every host; its page draws a timeline lane per host."""
        # Slower output lines than the sandbox's default, so that each phase lasts a while.
        async with sandbox(tmp_path, "--sim-delay", "0.5") as fleet:
            page, console = await new_page(browser)
            await page.goto(fleet.dashboard_url)
            rows = page.locator("#fleet tbody tr[data-host]")
            await expect(rows).to_have_count(len(PLAN), timeout=WAIT_MS)
            assert await _visible_hosts(page) == sorted(h.name for h in PLAN)
            # Read-only: no login, no actions, and the page says so.
            await expect(page.locator("#login")).to_be_hidden()
            await expect(page.locator("#actions")).to_be_hidden()
            await expect(page.locator("#user")).to_have_text("read-only")
            await expect(page.locator("#connection")).to_have_text("live")
            await page.evaluate(_RECORD_STATUS_CHANGES)

            finals = FinalStatuses()
            seed = load_seed(fleet.key(ADMIN))
            async with await Bus.connect(fleet.nats_url, seed, name="test: replies") as bus:
                await bus.subscribe("deploy.responses.>", finals.deliver)
                await bus.flush()
                result: dict[str, Any] = {}
                async with anyio.create_task_group() as tasks:

                    async def deploy() -> None:
                        out = await cli(fleet, TEST_DEPLOYER, "deploy", "deploy.test.all", "--json")
                        result.update(json.loads(out))

                    tasks.start_soon(deploy)
                    running_now = page.locator("#deployments [data-deployment][data-ended=false]")
                    await running_now.wait_for(timeout=WAIT_MS)
                    # Mid-deploy: a host is building, and says what.
                    building = running_now.locator('[data-host]:has(.phase:text-is("building"))')
                    await building.first.wait_for(timeout=WAIT_MS)
                    assert await building.first.locator(".line").text_content()
                    # A row changes at once, a deployment's block at most four times a
                    # second: the picture waits for web2's failure in both.
                    failed = running_now.locator('[data-host="web2"] .status')
                    await expect(failed).to_have_text("failed", timeout=WAIT_MS)
                    picture = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "dashboard.png")
                    table = await page.locator("#fleet").bounding_box()
                    assert table is not None
                    bottom = table["y"] + table["height"] + 16  # the page down to the table
                    clip = FloatRect(x=0.0, y=0.0, width=1280.0, height=bottom)
                    await page.screenshot(path=str(picture), clip=clip)
                    assert (await anyio.Path(picture).read_bytes())[:8] == b"\x89PNG\r\n\x1a\n"

            ident = result["deployment_id"]
            outcomes = {h["hostname"]: h["status"] for h in result["hosts"]}
            assert outcomes == _expected_outcomes()
            block = page.locator(f'#deployments [data-deployment="{ident}"]')
            await expect(block).to_have_attribute("data-ended", "true", timeout=WAIT_MS)
            for host, status in outcomes.items():
                await expect(block.locator(f'[data-host="{host}"] .status')).to_have_text(status)
            # Within a second of each final status reaching NATS, the page showed it.
            seen: list[list[Any]] = await page.evaluate("() => window.statusSeen")
            shown = {(i, h): at for i, h, status, at in seen if status in ("completed", "failed")}
            late = {
                host: round(shown[(ident, host)] - finals.at[(ident, host)], 3) for host in outcomes
            }
            print(f"final status on the page, seconds after NATS: {late}")
            assert all(delay < LIVE_WITHIN_S for delay in late.values()), late

            await page.goto(f"{fleet.dashboard_url}#/deployment/{ident}")
            lanes = page.locator("#timeline .lane")
            await expect(lanes).to_have_count(len(outcomes), timeout=WAIT_MS)
            for host, status in outcomes.items():
                lane = page.locator(f'#timeline .lane[data-host="{host}"]')
                await expect(lane.locator(".lane-end")).to_have_text(status)
                assert await lane.locator(".bar").count() >= 2  # a start, and an end
            assert _quiet(console) == [], console.errors
            assert console.csp_violations() == []

    async def test_filters_history_and_a_failed_hosts_log_tail(
        self, browser: Browser, tmp_path: Path
    ) -> None:
        """After a deploy, the search box and the tier, role and state filters show just the
        hosts they name; of four ended deployments the newest three stay above the hosts;
        the failed host's page shows why it failed and its log tail, opened at its end; and
        the history lists the deployment."""
        async with sandbox(tmp_path) as fleet:
            result = json.loads(
                await cli(fleet, TEST_DEPLOYER, "deploy", "deploy.test.all", "--json")
            )
            failed = {h["hostname"]: h for h in result["hosts"] if h["status"] == "failed"}
            assert set(failed) == {h for h, s in _expected_outcomes().items() if s == "failed"}
            page, console = await new_page(browser)
            await page.goto(fleet.dashboard_url)
            await expect(page.locator("#fleet tbody tr[data-host]")).to_have_count(
                len(PLAN), timeout=WAIT_MS
            )

            await page.fill("#filter", "pweb")
            assert await _visible_hosts(page) == sorted(h.name for h in PLAN if "pweb" in h.name)
            await page.fill("#filter", "")
            await page.select_option("#filter-tier", "prod")
            assert await _visible_hosts(page) == sorted(
                h.name for h in PLAN if h.tier.value == "prod"
            )
            await page.select_option("#filter-role", "db")
            assert await _visible_hosts(page) == sorted(
                h.name for h in PLAN if h.tier.value == "prod" and h.role == "db"
            )
            await page.select_option("#filter-tier", "")
            await page.select_option("#filter-role", "")
            # The rows learn of the failures at the dashboard's next discovery.
            await page.select_option("#filter-state", "failed")
            failed_rows = page.locator("#fleet tbody tr[data-host]:visible")
            await expect(failed_rows).to_have_count(len(failed), timeout=WAIT_MS)
            assert await _visible_hosts(page) == sorted(failed)

            # Three health checks end after the deploy: four ended deployments, and only
            # the newest three keep their place above the hosts.
            for _ in range(3):
                await cli(fleet, TEST_DEPLOYER, "check", "deploy.test.all")
            ended = page.locator("#deployments [data-deployment][data-ended=true]")
            await expect(ended).to_have_count(4, timeout=WAIT_MS)
            await expect(page.locator("#deployments [data-deployment]:visible")).to_have_count(3)
            deploy_block = page.locator(f'[data-deployment="{result["deployment_id"]}"]')
            await expect(deploy_block).to_be_hidden()

            build_failure = next(h for h in failed.values() if h["error"] == "build_failed")
            await page.goto(f"{fleet.dashboard_url}#/host/{build_failure['hostname']}")
            tail = page.locator("#host-detail .job pre.log-tail").first
            await tail.wait_for(timeout=WAIT_MS)
            assert build_failure["log_tail"], build_failure
            assert build_failure["log_tail"][-1].strip() in (await tail.text_content() or "")
            at_end = "pre => pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 1"
            assert await tail.evaluate(at_end)
            why = page.locator(f'#host-detail .job[data-job="{result["deployment_id"]}"] .message')
            assert build_failure["message"] in (await why.text_content() or "")

            await page.goto(f"{fleet.dashboard_url}#/history")
            await page.locator(
                f'#history tr[data-deployment="{result["deployment_id"]}"]'
            ).wait_for(timeout=WAIT_MS)
            assert _quiet(console) == [], console.errors


class TestActions:
    async def test_actions_need_a_login_and_refuse_what_they_should(
        self, browser: Browser, tmp_path: Path
    ) -> None:
        """With --allow-actions the page offers a login and no actions; a wrong password is
        refused; after the right one a deploy from the page runs, and a prod one is refused
        until its target is typed again; a POST from another origin, or without the
        session's CSRF token, is refused with 403."""
        async with sandbox(tmp_path) as fleet:
            hashed = await anyio.run_process(
                [FLEET_DEPLOY, "dashboard", "--hash-password"],
                input=f"{PASSWORD}\n".encode(),
                env=clean_env(),
            )
            password_file = tmp_path / "password"
            password_file.write_bytes(hashed.stdout)
            password_file.chmod(0o600)
            async with dashboard(
                tmp_path,
                fleet.nats_url,
                fleet.key(OBSERVER),
                *("--allow-actions", "--deploy-nkey-file", str(fleet.key(TEST_DEPLOYER))),
                *("--password-file", str(password_file)),
            ) as (_, url):
                page, console = await new_page(browser)
                await page.goto(url)
                login = page.locator("#login")
                await expect(login).to_be_visible(timeout=WAIT_MS)
                await expect(page.locator("#actions")).to_be_hidden()

                await page.fill("#login input[name=password]", "not the password")
                await page.click("#login button[type=submit]")
                await expect(page.locator("#login-error")).not_to_be_empty(timeout=WAIT_MS)
                await expect(page.locator("#actions")).to_be_hidden()

                await page.fill("#login input[name=password]", PASSWORD)
                await page.click("#login button[type=submit]")
                await expect(page.locator("#actions")).to_be_visible(timeout=WAIT_MS)
                await expect(login).to_be_hidden()

                # A deploy from the page: started, then live, and web1 completes.
                form = page.locator("#action-deploy")
                await form.locator("input[name=target]").fill("deploy.test.web1")
                await form.locator("button[type=submit]").click()
                started = page.locator("#action-result")
                await expect(started).to_have_text(_STARTED, timeout=WAIT_MS)
                ident = (await started.text_content() or "").split()[-1]
                item = page.locator(f'[data-deployment="{ident}"] [data-host="web1"] .status')
                await expect(item).to_have_text("completed", timeout=WAIT_MS)

                # A prod target asks for its name typed again, and is refused without it.
                await form.locator("input[name=target]").fill("deploy.prod.pweb1")
                await expect(form.locator(".confirm")).to_be_visible()
                await form.locator("button[type=submit]").click()
                await expect(started).to_have_class("error", timeout=WAIT_MS)
                await expect(started).to_contain_text("confirm")

                # The same session, refused from elsewhere or without its CSRF token.
                session = await page.context.request.get(f"{url}api/session")
                csrf = (await session.json())["csrf"]
                assert csrf
                origin = url.rstrip("/")
                check = f"{url}api/actions/check"
                body = {"target": "deploy.test.web1"}
                foreign = await page.context.request.post(
                    check,
                    data=body,
                    headers={"Origin": "http://evil.example", "X-CSRF-Token": csrf},
                )
                assert foreign.status == 403, await foreign.text()
                no_token = await page.context.request.post(
                    check, data=body, headers={"Origin": origin}
                )
                assert no_token.status == 403, await no_token.text()
                # And a login from another origin, with the right password.
                elsewhere = await page.context.request.post(
                    f"{url}login",
                    data={"password": PASSWORD, "totp": ""},
                    headers={"Origin": "http://evil.example"},
                )
                assert elsewhere.status == 403, await elsewhere.text()
                # The console errors are the refusals asked for: the password's 401, prod's 403.
                refusals = ("status of 401", "status of 403")
                assert _quiet(console, *refusals) == [], console.errors


class TestManyHosts:
    async def test_a_thousand_hosts_load_within_budget_and_update_without_freezing(
        self, browser: Browser, tmp_path: Path
    ) -> None:
        """1,000 hosts: the table fills within LOAD_BUDGET_S (median of LOADS fresh loads),
        and a deploy to all of them streams in with no task longer than
        LONGEST_TASK_BUDGET_MS, ending with 1,000 completed."""
        async with (
            local_fleet(
                (),
                {OBSERVER: "observer", TEST_DEPLOYER: "test"},
                extra_users={RESPONDERS: RESPONDER_PERMISSIONS},
                root=tmp_path / "fleet",
            ) as fleet,
            _responders(fleet.url, fleet.key_path(RESPONDERS), tmp_path) as _,
            dashboard(tmp_path, fleet.url, fleet.key_path(OBSERVER)) as (_, url),
        ):
            rows = "#fleet tbody tr[data-host]"
            # The first load waits for the dashboard's first discovery of all of them.
            page, console = await new_page(browser)
            await page.goto(url)
            await page.locator(rows).nth(MANY - 1).wait_for(state="attached", timeout=60_000)
            await page.close()
            loads = []
            for _ in range(LOADS):
                page, console = await new_page(browser)
                started = time.perf_counter()
                await page.goto(url)
                await page.locator(rows).nth(MANY - 1).wait_for(state="attached", timeout=WAIT_MS)
                loads.append(time.perf_counter() - started)
                assert await page.locator(rows).count() == MANY
                await page.close()
            median = statistics.median(loads)
            print(f"{MANY} hosts: loads {[round(s, 3) for s in loads]} s, median {median:.3f} s")
            assert median < LOAD_BUDGET_S, loads

            page, console = await new_page(browser)
            await page.goto(url)
            await page.locator(rows).nth(MANY - 1).wait_for(state="attached", timeout=WAIT_MS)
            await page.evaluate(_RECORD_LONG_TASKS)
            argv = [FLEET_DEPLOY, "deploy", "deploy.test.all", "--json"]
            argv += ["--nats-url", fleet.url, "--nkey-file", str(fleet.key_path(TEST_DEPLOYER))]
            with anyio.fail_after(120):
                done = await anyio.run_process(argv, env=clean_env(), check=False)
            result = json.loads(done.stdout)
            assert result["counts"] == {"completed": MANY}, result["counts"]
            ident = result["deployment_id"]
            # One element to wait on: a selector over 1,000 items would run in the page's
            # own thread, and be counted among its long tasks.
            counts = page.locator(f'[data-deployment="{ident}"] summary .counts')
            await expect(counts).to_have_text(f"{MANY} completed", timeout=WAIT_MS)
            tasks: list[float] = await page.evaluate("() => window.longTasks")
            statuses = page.locator(f'[data-deployment="{ident}"] [data-host] .status')
            assert set(await statuses.all_text_contents()) == {"completed"}
            assert await statuses.count() == MANY
            longest = max(tasks, default=0.0)
            print(f"{MANY} hosts: tasks over 50 ms during the deploy {[round(t) for t in tasks]}")
            assert longest < LONGEST_TASK_BUDGET_MS, tasks
            assert _quiet(console) == [], console.errors


_RECORD_LONG_TASKS = """
() => {
  window.longTasks = [];
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.longTasks.push(entry.duration);
  }).observe({type: 'longtask'});
}
"""


@asynccontextmanager
async def _responders(url: str, seed_file: Path, tmp_path: Path) -> AsyncIterator[None]:
    """``bench/_responders.py`` answering for h00000 … h00999 until the block ends (its stdin
    closes), up to its ``ready`` line."""
    argv = [sys.executable, str(ROOT / "bench" / "_responders.py"), "--url", url]
    argv += ["--seed-file", str(seed_file), "--first", "0", "--count", str(MANY)]
    with (tmp_path / "responders.err").open("wb") as err:
        process = await anyio.open_process(argv, stdin=subprocess.PIPE, stderr=err)
    async with process:
        assert process.stdout is not None and process.stdin is not None
        with anyio.fail_after(60):
            said = await process.stdout.receive()
        assert said.strip() == b"ready", said
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await process.stdin.aclose()
                with anyio.move_on_after(20):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
