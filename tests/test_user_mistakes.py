"""What a new user's mistakes get back, through the real CLI (subprocesses) and a real MCP
client, against a real nats-server: the wrong key, a mistyped role or host, a bad flag with
``--json``, a seed whose public key is wanted again."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleet_mcp.reports.deployment import DeploymentReport

from .conftest import Fleet, scripts_dir
from .support import free_port, session, settings_for

pytestmark = pytest.mark.anyio

MCP_PAGE = (Path(__file__).resolve().parent.parent / "docs" / "mcp.md").read_text()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed fleet-deploy, for the commands that reach no server."""
    return subprocess.run(
        [str(scripts_dir() / "fleet-deploy"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def run_async(*args: str, fleet: Fleet) -> subprocess.CompletedProcess[str]:
    """The installed fleet-deploy beside a running fleet, without its FLEET_DEPLOY_* env."""
    with anyio.fail_after(30):
        proc = await anyio.run_process(
            [str(scripts_dir() / "fleet-deploy"), *args], check=False, env=fleet.cli_env()
        )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def one_error(proc: subprocess.CompletedProcess[Any]) -> dict[str, Any]:
    """The one JSON object ``--json`` prints on stdout for an exit-2 error, checked whole."""
    out = proc.stdout.decode() if isinstance(proc.stdout, bytes) else proc.stdout
    data: dict[str, Any] = json.loads(out)  # one object, nothing else on stdout
    assert proc.returncode == 2
    assert data["ok"] is False and data["exit_code"] == 2
    assert set(data["error"]) == {"code", "message", "what_to_do"}
    assert all(data["error"].values())
    return data["error"]  # type: ignore[no-any-return]


def errors(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    """stderr's lines: exactly one, the error, and no log line (JSON or otherwise)."""
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleet-deploy: error: "), lines
    return lines


class TestWrongKey:
    async def test_a_listener_key_deploying_is_told_it_is_no_deployer_key(
        self, fleet: Fleet
    ) -> None:
        """Not "the test deployer key reaches only deploy.test.>": the key is a listener's."""
        async with fleet.listeners("web1"):
            proc = await fleet.cli("deploy", "deploy.test.all", who="web1")
        (line,) = errors(proc)
        assert proc.returncode == 2
        assert fleet.seed("web1").public_key in line
        assert "this is no deployer key" in line and "listener's" in line
        assert "test-tier deployer" not in line
        assert fleet.runs() == []

    async def test_hosts_with_a_listener_key_says_so_without_a_log_line(self, fleet: Fleet) -> None:
        async with fleet.listeners("web1"):
            proc = await fleet.cli("hosts", who="web1")
        (line,) = errors(proc)
        assert proc.returncode == 2
        assert "this is no deployer key" in line
        assert proc.stdout == b""

    async def test_hosts_of_a_tier_the_key_may_not_read_says_so(self, fleet: Fleet) -> None:
        async with fleet.listeners("pweb1"):
            proc = await fleet.cli("hosts", "--tier", "prod")
        assert proc.returncode == 0
        assert proc.stdout.decode() == "no host shown: this key may not read the prod tier\n"
        assert "prod hosts are not shown" in proc.stderr.decode()

    async def test_the_test_key_on_prod_is_told_what_it_is(self, fleet: Fleet) -> None:
        async with fleet.listeners("pweb1"):
            proc = await fleet.cli("deploy", "deploy.prod.all", "--json")
        error = one_error(proc)
        assert error["code"] == "permission_denied"
        assert "it is a test-tier deployer key" in error["message"]
        assert error["what_to_do"].startswith("Production needs the admin key")
        assert fleet.runs() == []

    async def test_a_key_the_server_does_not_know_is_named(self, fleet: Fleet) -> None:
        proc = await fleet.cli("deploy", "deploy.test.all", "--json", who="stranger")
        error = one_error(proc)
        assert error["code"] == "connection_failed"
        assert f"refused key {fleet.seed('stranger').public_key}" in error["message"]

    async def test_mcp_with_a_listener_key_says_what_the_key_is(self, fleet: Fleet) -> None:
        async with fleet.listeners("web1"), session(settings_for(fleet, key="web1"), "auto") as s:
            listed = await s.error("list_hosts")
            deployed = await s.error("deploy", hostname="web1")
        for text in (listed, deployed):
            assert "this is no deployer key" in text, text
            assert "test deployer key reaches only" not in text
        assert fleet.runs() == []


class TestTypos:
    async def test_a_mistyped_role_names_the_roles_found(self, fleet: Fleet) -> None:
        async with fleet.listeners("web1", "web2", "db1"):
            proc = await fleet.cli("deploy", "deploy.test.role.wbe")
            as_json = await fleet.cli("deploy", "deploy.test.role.wbe", "--json")
        out = proc.stdout.decode()
        assert proc.returncode == 1
        assert "No host in the test tier has the role 'wbe'. Roles there: web." in out
        assert "Did you mean 'web'? Hosts there: db1, web1, web2." in out
        found = json.loads(as_json.stdout)["found_in_tier"]
        assert found == {"tier": "test", "hosts": ["db1", "web1", "web2"], "roles": ["web"]}
        assert fleet.runs() == []

    async def test_a_mistyped_host_names_the_hosts_found(self, fleet: Fleet) -> None:
        async with fleet.listeners("web1", "db1"):
            proc = await fleet.cli("deploy", "deploy.test.wbe1")
        out = proc.stdout.decode()
        assert proc.returncode == 1
        assert "No listener named 'wbe1' answers in the test tier." in out
        assert "Hosts there: db1, web1. Did you mean 'web1'?" in out

    async def test_a_host_that_answers_gets_no_directory(self, fleet: Fleet) -> None:
        async with fleet.listeners("web1"):
            proc = await fleet.cli("deploy", "deploy.test.web1", "--json")
        assert proc.returncode == 0
        assert json.loads(proc.stdout)["found_in_tier"] is None

    async def test_mcp_names_the_roles_and_hosts_found(self, fleet: Fleet) -> None:
        async with fleet.listeners("web1", "db1"), session(settings_for(fleet), "auto") as s:
            role = DeploymentReport.model_validate(
                (await s.call("deploy", role="wbe")).structured_content
            )
            host = DeploymentReport.model_validate(
                (await s.call("deploy", hostname="wbe1")).structured_content
            )
        assert "No host in the test tier has the role 'wbe'. Roles there: web." in role.summary
        assert "No listener named 'wbe1' answers in the test tier." in host.summary
        assert "Hosts there: db1, web1." in host.summary
        for report in (role, host):
            # No "did you mean": a model must not take another host for the one asked for.
            assert "Did you mean" not in report.summary
            assert report.next_step.startswith("Check the hostname or role with the user")
            assert "Never deploy to another host or role in its place" in report.next_step
        assert fleet.runs() == []


class TestJsonErrors:
    """``--json`` on exit 2: one JSON object on stdout (code, message, what to do), the
    message on stderr as without it, and no header line before it."""

    @pytest.mark.parametrize(
        ("args", "code", "said"),
        [
            (["deploy.bogus"], "usage", "is not a deploy subject"),
            (["deploy.test.all", "--branch", "a b"], "usage", "revision 'a b'"),
            (["deploy.test.all", "--timeout"], "usage", "expected one argument"),
            (["deploy.test.all", "--nkey-file", "/nonexistent.seed"], "key_file", "not exist"),
        ],
    )
    async def test_deploy_errors_before_any_connection(
        self, fleet: Fleet, args: list[str], code: str, said: str
    ) -> None:
        key = ["--nkey-file", str(fleet.keys["deployer"])] if "--nkey-file" not in args else []
        proc = await run_async(
            "deploy", *args, "--json", "--nats-url", fleet.url, *key, fleet=fleet
        )
        error = one_error(proc)
        assert error["code"] == code
        assert said in error["message"]
        assert said in proc.stderr

    @pytest.mark.parametrize("command", [["deploy", "deploy.test.all"], ["build", "nixos"]])
    async def test_an_unreachable_server_prints_no_header(
        self, fleet: Fleet, command: list[str]
    ) -> None:
        url = f"nats://127.0.0.1:{free_port()}"
        key = str(fleet.keys["deployer"])
        plain = await run_async(*command, "--nats-url", url, "--nkey-file", key, fleet=fleet)
        assert plain.returncode == 2
        assert plain.stdout == ""  # no "deploying …" / "building …" before the error
        assert f"cannot reach the NATS server at {url}" in plain.stderr
        error = one_error(
            await run_async(*command, "--json", "--nats-url", url, "--nkey-file", key, fleet=fleet)
        )
        assert error["code"] == "connection_failed"
        assert "nats-server is running" in error["what_to_do"]

    async def test_a_bad_revision_prints_no_header(self, fleet: Fleet) -> None:
        proc = await run_async(
            "deploy",
            "deploy.test.all",
            "--branch",
            "..",
            "--nats-url",
            fleet.url,
            "--nkey-file",
            str(fleet.keys["deployer"]),
            fleet=fleet,
        )
        assert proc.returncode == 2 and proc.stdout == ""


class TestPublicKey:
    def test_keygen_public_prints_the_key_keygen_printed(self, tmp_path: Path) -> None:
        made = run("keygen", "ci", "--dir", str(tmp_path))
        again = run("keygen", "--public", str(tmp_path / "ci.seed"))
        assert made.returncode == again.returncode == 0
        assert again.stdout == made.stdout and again.stdout.startswith("U")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ci.seed"]  # nothing written

    def test_keygen_public_refuses_a_seed_others_can_read(self, tmp_path: Path) -> None:
        run("keygen", "ci", "--dir", str(tmp_path))
        (tmp_path / "ci.seed").chmod(0o644)
        proc = run("keygen", "--public", str(tmp_path / "ci.seed"))
        assert proc.returncode == 2 and proc.stdout == ""
        assert "chmod 600" in proc.stderr

    def test_a_path_as_name_points_to_public(self, tmp_path: Path) -> None:
        seed = tmp_path / "ci.seed"
        run("keygen", "ci", "--dir", str(tmp_path))
        proc = run("keygen", str(seed))
        assert proc.returncode == 2
        assert f"use --public {seed}" in proc.stderr
        both = run("keygen", "ci", "--public", str(seed))
        assert both.returncode == 2 and "not both" in both.stderr


class TestDocumentedMcpScript:
    async def test_the_script_in_docs_mcp_runs_as_written(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """docs/mcp.md's "Without an editor" script, copied out of the page and run with
        the exports the sandbox prints, lists the tools and hosts and deploys the role."""
        found = re.search(r"<!-- example: try_mcp\.py -->\n```python\n(.*?)```", MCP_PAGE, re.S)
        assert found, "docs/mcp.md lost its try_mcp.py example"
        script = tmp_path / "try_mcp.py"
        await anyio.Path(script).write_text(found.group(1))
        env = fleet.cli_env(
            FLEET_DEPLOY_NATS_URL=fleet.url,
            FLEET_DEPLOY_NKEY_FILE=str(fleet.keys["deployer"]),
            PATH=f"{scripts_dir()}{os.pathsep}/usr/bin:/bin",  # the banner's export PATH=…
        )
        async with fleet.listeners("web1", "web2", "db1"):
            with anyio.fail_after(60):
                proc = await anyio.run_process(
                    [sys.executable, str(script)], check=False, env=env, cwd=tmp_path
                )
        out = proc.stdout.decode()
        assert proc.returncode == 0, proc.stderr.decode()
        assert out.startswith("tools: list_hosts, deploy, deployment_status, list_deployments")
        assert "3 host(s) of any tier answered" not in out
        assert "test of master to deploy.test.role.web finished OK: 2 completed" in out
        assert fleet.hosts_run() == ["web1", "web2"]
