"""fleet-mcp driven over stdio by the official TypeScript MCP SDK, as Claude Desktop and most
clients built on that SDK drive it.

``tests/interop/client.mjs`` spawns the installed ``fleet-mcp`` with the SDK's
``StdioClientTransport``, makes the calls a scenario lists — every one under the SDK's default
60 s request timeout, which progress does not reset — and prints one JSON object per request;
the assertions are here. The fleet is real: a nats-server with the tiered permissions and
``fleet-deploy listener`` processes running the packaged stand-in rebuild.

Needs ``node`` and the SDK installed in ``tests/interop`` (``npm ci --prefix tests/interop``;
``./scripts/test`` runs it when node and npm are there, ``.ci/run`` always). Without them the
tests are skipped, saying what provides them; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from .conftest import Fleet, expected_argv, scripts_dir
from .support import Daemon, prod_witness
from .tools import missing_tool

pytestmark = pytest.mark.anyio

INTEROP = Path(__file__).resolve().parent / "interop"
SDK = INTEROP / "node_modules" / "@modelcontextprotocol" / "sdk"
BASE_TOOLS = {"list_hosts", "deploy", "deployment_status"}
SDK_TIMEOUT_S = 60.0  # the SDK's DEFAULT_REQUEST_TIMEOUT_MSEC, asserted from the SDK itself
# What a default wait must leave of the 60 s for the connection, the result's transfer and
# the client's own latency.
MARGIN_S = 10.0
# The slow rebuild: seven pauses of 13 s between its output lines (simulated_rebuild's
# --sim-delay) make a switch of 91 s, longer than one call may last.
SLOW = ("--sim-delay", "13")
LONG_DEPLOY_S = 90.0
LISTENER_START_S = 30.0


def _pinned() -> str:
    version: str = json.loads((INTEROP / "package.json").read_text())["dependencies"][
        "@modelcontextprotocol/sdk"
    ]
    return version


def node() -> str:
    """The node to run the client with, once the pinned SDK is installed beside it."""
    path = shutil.which("node")
    if path is None:
        missing_tool(
            "node is not installed",
            "apt-get install -y nodejs npm (Debian), then npm ci --prefix tests/interop, "
            "as .ci/run does",
        )
    manifest = SDK / "package.json"
    if not manifest.is_file():
        missing_tool(
            "the TypeScript MCP SDK is not installed in tests/interop",
            "npm ci --prefix tests/interop (./scripts/test runs it when node and npm are there)",
        )
    installed = json.loads(manifest.read_text())["version"]
    if installed != _pinned():
        missing_tool(
            f"tests/interop/node_modules holds @modelcontextprotocol/sdk {installed}, "
            f"package.json pins {_pinned()}",
            "npm ci --prefix tests/interop",
        )
    return path


@pytest.fixture(autouse=True)
def _node_and_the_sdk() -> None:
    """Skip (under CI: fail) before any fleet starts when the client cannot run."""
    node()


# -- the client ----------------------------------------------------------------------------------


@dataclass
class Call:
    """One request the TypeScript client made, as client.mjs printed it."""

    record: dict[str, Any]

    @property
    def error(self) -> dict[str, Any] | None:
        error: dict[str, Any] | None = self.record.get("error")
        return error

    @property
    def result(self) -> dict[str, Any]:
        assert self.error is None, f"{self.record.get('tool')}: the request failed: {self.error}"
        result: dict[str, Any] = self.record["result"]
        return result

    @property
    def report(self) -> dict[str, Any]:
        """The structured content of a tool call that succeeded."""
        result = self.result
        assert not result.get("isError"), self.text
        report: dict[str, Any] = result["structuredContent"]
        return report

    @property
    def text(self) -> str:
        blocks = self.record.get("result", {}).get("content", [])
        return "\n".join(block["text"] for block in blocks if block.get("type") == "text")

    @property
    def elapsed_s(self) -> float:
        return float(self.record["elapsed_ms"]) / 1000

    @property
    def ended_s(self) -> float:
        return float(self.record["started_ms"] + self.record["elapsed_ms"]) / 1000

    def tools(self) -> dict[str, dict[str, Any]]:
        return {tool["name"]: tool for tool in self.result["tools"]}


@dataclass
class Run:
    sdk: dict[str, Any]
    calls: list[Call]
    stderr: str

    def step(self, name: str) -> list[Call]:
        chosen = [c for c in self.calls if c.record["step"] == name]
        assert chosen, f"no request of step {name!r}; the client's stderr:\n{self.stderr}"
        return chosen

    def only(self, name: str) -> Call:
        [call] = self.step(name)
        return call


def fleet_mcp(fleet: Fleet, *, admin: bool = False) -> dict[str, Any]:
    """The installed fleet-mcp, with the test key (and the admin key when ``admin``)."""
    args = ["--nats-url", fleet.url, "--nkey-file", str(fleet.keys["deployer"])]
    if admin:
        args += ["--enable-admin", "--admin-nkey-file", str(fleet.keys["admin"])]
    return {"command": str(scripts_dir() / "fleet-mcp"), "args": args}


async def drive(
    fleet: Fleet, server: dict[str, Any], steps: Sequence[dict[str, Any]], limit: float
) -> Run:
    """Run client.mjs on one scenario; what it printed, once it exited 0 within ``limit``."""
    argv = [node(), str(INTEROP / "client.mjs"), json.dumps({"server": server, "steps": steps})]
    with anyio.fail_after(limit):
        done = await anyio.run_process(argv, check=False, cwd=INTEROP, env=fleet.cli_env())
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"client.mjs exited {done.returncode}:\n{stderr}"
    lines = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    assert lines and lines[-1] == {"done": True}, f"{lines}\n{stderr}"
    sdk: dict[str, Any] = lines[0]["sdk"]
    assert sdk["version"] == _pinned()
    assert sdk["default_timeout_ms"] == SDK_TIMEOUT_S * 1000
    return Run(sdk, [Call(line) for line in lines if "step" in line], stderr)


# -- real listeners ------------------------------------------------------------------------------


@asynccontextmanager
async def listeners(fleet: Fleet, hosts: Mapping[str, Sequence[str]]) -> AsyncIterator[None]:
    """Real listener processes for ``hosts`` (each with its stand-in rebuild's --sim flags),
    all listening when the block starts, stopped at its end."""
    running: list[Daemon] = []
    try:
        async with anyio.create_task_group() as tasks:
            for host, sim in hosts.items():
                argv = fleet.listener_argv(host, sim=sim)
                process = await anyio.open_process(argv, env=fleet.cli_env())
                running.append(Daemon(process))
                tasks.start_soon(running[-1].drain)
            for listener in running:
                await listener.wait_for('"event": "listening"', LISTENER_START_S)
            yield
            for listener in running:
                listener.process.terminate()
    finally:
        with anyio.CancelScope(shield=True):
            for listener in running:
                if listener.process.returncode is None:
                    listener.process.terminate()
                with anyio.move_on_after(10):
                    await listener.process.wait()
                if listener.process.returncode is None:
                    listener.process.kill()
                await listener.process.aclose()


# -- the scenario --------------------------------------------------------------------------------


class TestToolList:
    async def test_with_and_without_the_admin_key(self, fleet: Fleet) -> None:
        """tools/list: deploy_admin exactly when the server has --enable-admin and the admin
        key; deploy takes no tier; both waits leave a margin under the SDK's 60 s timeout."""
        steps = [{"step": "tools", "list_tools": True}]
        runs: dict[bool, Run] = {}

        async def listing(admin: bool) -> None:
            runs[admin] = await drive(fleet, fleet_mcp(fleet, admin=admin), steps, limit=60)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(listing, False)
            tasks.start_soon(listing, True)
        plain = runs[False].only("tools").tools()
        admin = runs[True].only("tools").tools()
        assert set(plain) >= BASE_TOOLS
        assert "deploy_admin" not in plain
        assert BASE_TOOLS | {"deploy_admin"} <= set(admin)
        assert set(admin) - set(plain) == {"deploy_admin"}
        assert "tier" not in plain["deploy"]["inputSchema"]["properties"]
        assert "tier" in admin["deploy_admin"]["inputSchema"]["required"]
        for tools in (plain, admin):
            assert tools["deploy"]["annotations"]["destructiveHint"] is True
            assert tools["list_hosts"]["annotations"]["readOnlyHint"] is True
            for name in ("deploy", "deployment_status"):
                wait = tools[name]["inputSchema"]["properties"]["wait_seconds"]["default"]
                assert wait <= SDK_TIMEOUT_S - MARGIN_S, (
                    f"{name}'s default wait_seconds ({wait} s) must end a call well within "
                    f"the TypeScript SDK's {SDK_TIMEOUT_S:g} s request timeout"
                )


class TestLongDeploy:
    @pytest.mark.long  # 90 s by design: the SDK's 60 s timeout is what is under test
    async def test_90s_deploy_under_the_60s_timeout(self, fleet: Fleet) -> None:
        """A 91 s rebuild, with the SDK's default 60 s timeout and no wait_seconds: deploy
        returns 'running' with the deployment id and says to call deployment_status, which
        (default wait too) is called until the deployment finished — no call timed out."""
        steps = [
            {"step": "tools", "list_tools": True},
            {"step": "deploy", "tool": "deploy", "arguments": {"hostname": "web1"}, "follow": 5},
        ]
        async with listeners(fleet, {"web1": SLOW}):
            run = await drive(fleet, fleet_mcp(fleet), steps, limit=LONG_DEPLOY_S + 90)
        wait = run.only("tools").tools()["deploy"]["inputSchema"]["properties"]["wait_seconds"]
        assert wait["default"] <= SDK_TIMEOUT_S - MARGIN_S, wait
        calls = run.step("deploy")
        for call in calls:
            assert call.error is None, (
                f"{call.record['tool']} failed after {call.elapsed_s:.1f} s: {call.error}\n"
                f"{run.stderr}"
            )
            assert call.elapsed_s < SDK_TIMEOUT_S - MARGIN_S / 2, call.record
        first, *rest = calls
        started = first.report
        assert started["state"] == "running"
        assert not started["ok"]
        assert "deployment_status" in started["next_step"]
        assert started["deployment_id"] in started["next_step"]
        assert first.record["progress"] > 0  # notes came, and did not keep the call open
        assert first.elapsed_s >= wait["default"] - 1  # it waited its whole default wait
        assert rest, "deploy finished within one call: the rebuild was not slow"
        assert [c.record["tool"] for c in rest] == ["deployment_status"] * len(rest)
        for call in rest:
            assert call.record["arguments"] == {"deployment_id": started["deployment_id"]}
            assert call.report["deployment_id"] == started["deployment_id"]
        final = rest[-1].report
        assert final["state"] == "finished", final["summary"]
        assert final["ok"], final["summary"]
        assert [c.report["state"] for c in rest[:-1]] == ["running"] * (len(rest) - 1)
        [host] = final["hosts"]
        assert (host["hostname"], host["status"]) == ("web1", "completed")
        assert host["duration_s"] >= LONG_DEPLOY_S, host
        assert rest[-1].ended_s - first.record["started_ms"] / 1000 >= LONG_DEPLOY_S
        assert fleet.runs() == [expected_argv("web1")]


class TestFailedBuild:
    async def test_the_failure_is_explained(self, fleet: Fleet) -> None:
        """web2's configuration has a nix evaluation error: the deploy result is not an error
        but ok=false, web2's message and log_tail carry nix's own words (fenced as host output
        in the text), and the summary names web2."""
        steps = [{"step": "deploy", "tool": "deploy", "arguments": {"role": "web"}, "follow": 3}]
        async with listeners(fleet, {"web1": (), "web2": ("--sim-fail",)}):
            run = await drive(fleet, fleet_mcp(fleet), steps, limit=90)
        last = run.step("deploy")[-1]
        report = last.report
        assert report["state"] == "finished"
        assert not report["ok"]
        assert report["counts"] == {"completed": 1, "failed": 1}
        hosts = {h["hostname"]: h for h in report["hosts"]}
        assert hosts["web1"]["status"] == "completed"
        web2 = hosts["web2"]
        assert (web2["status"], web2["error"]) == ("failed", "build_failed")
        assert "undefined variable 'webroot'" in web2["message"]
        assert any("error: undefined variable 'webroot'" in line for line in web2["log_tail"])
        assert "web2 failed" in report["summary"]
        # A client that shows the model only the text content shows it the cause too.
        assert "error: undefined variable 'webroot'" in last.text
        assert sorted(fleet.runs()) == sorted(expected_argv(h) for h in ("web1", "web2"))


class TestProductionRefused:
    async def test_the_test_key_cannot_reach_prod(self, fleet: Fleet) -> None:
        """With the test key: a tier passed to deploy is a tool error, a prod hostname reaches
        no host, list_hosts shows no prod host; nothing is published to deploy.prod.>."""
        steps = [
            {"step": "hosts", "tool": "list_hosts", "arguments": {}},
            {"step": "tier", "tool": "deploy", "arguments": {"hostname": "pweb1", "tier": "prod"}},
            {"step": "all-prod", "tool": "deploy", "arguments": {"all": True, "tier": "prod"}},
            {"step": "prod-host", "tool": "deploy", "arguments": {"hostname": "pweb1"}},
        ]
        async with (
            listeners(fleet, {"web1": (), "pweb1": (), "pdb1": ()}),
            prod_witness(fleet) as prod_subjects,
        ):
            run = await drive(fleet, fleet_mcp(fleet), steps, limit=90)
        assert [h["hostname"] for h in run.only("hosts").report["hosts"]] == ["web1"]
        for step in ("tier", "all-prod"):
            refused = run.only(step)
            assert refused.result["isError"] is True, refused.record
            assert "always targets the test tier" in refused.text
        report = run.only("prod-host").report
        assert report["subject"] == "deploy.test.pweb1"
        assert report["tier"] == "test"
        assert not report["ok"]
        assert [h["status"] for h in report["hosts"]] == ["missing"]
        assert prod_subjects == []
        assert fleet.runs() == []
