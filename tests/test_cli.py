"""The fleet-deploy command line, run as real subprocesses against a real nats-server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from fleet_core.deploy.deployer import Deployer
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import Target, Tier

from .conftest import FAST, Fleet, expected_argv, scripts_dir
from .support import free_port, read_until

pytestmark = pytest.mark.anyio


def text(proc: subprocess.CompletedProcess[bytes]) -> tuple[str, str]:
    return proc.stdout.decode(), proc.stderr.decode()


class TestDeployCommand:
    async def test_success_prints_live_lines_and_a_summary(self, fleet: Fleet) -> None:
        """A deploy to one host exits 0, shows accepted/started/completed and an OK verdict."""
        async with fleet.listeners("web1"):
            proc = await fleet.cli("deploy", "deploy.test.web1", "--branch", "main")
        out, err = text(proc)
        assert proc.returncode == 0, err
        assert "web1" in out and "accepted" in out and "started" in out
        assert out.rstrip().endswith("OK: 1 completed")
        assert fleet.runs() == [expected_argv("web1", "main")]

    async def test_json_output(self, fleet: Fleet) -> None:
        """--json prints exactly one JSON object with the per-host result."""
        async with fleet.listeners("web1", "db1", sim={"db1": ["--sim-fail"]}):
            proc = await fleet.cli("deploy", "deploy.test.all", "--json")
        result = json.loads(proc.stdout)
        assert proc.returncode == 1
        assert result["ok"] is False
        assert result["counts"] == {"completed": 1, "failed": 1}
        failed = next(h for h in result["hosts"] if h["hostname"] == "db1")
        assert failed["error"] == "build_failed"
        assert any("undefined variable" in line for line in failed["log_tail"])

    async def test_failure_summary_shows_the_log_tail(self, fleet: Fleet) -> None:
        """A failed host's last output lines are printed under the summary; exit 1."""
        async with fleet.listeners("db1", sim={"db1": ["--sim-fail"]}):
            proc = await fleet.cli("deploy", "deploy.test.db1")
        out, _ = text(proc)
        assert proc.returncode == 1
        assert "--- last output of db1 ---" in out
        assert "error: undefined variable 'webroot'" in out
        assert "NOT OK: 1 failed" in out

    async def test_test_key_on_prod_is_a_permission_error(self, fleet: Fleet) -> None:
        """The test key deploying to deploy.prod.x exits 2 at once and names the permission."""
        async with fleet.listeners("pweb1"):
            proc = await fleet.cli("deploy", "deploy.prod.pweb1", "--timeout", "600", limit=10)
        _, err = text(proc)
        assert proc.returncode == 2
        assert "permission to publish to 'deploy.prod.pweb1': it is a test-tier deployer key" in err
        assert fleet.runs() == []

    async def test_permission_error_is_immediate_in_process(self, fleet: Fleet) -> None:
        """In process, the refusal arrives well within two seconds, not at the timeout."""
        from fleet_core.errors import PermissionDenied

        bus = await fleet.connect("deployer")
        try:
            with anyio.fail_after(2), pytest.raises(PermissionDenied, match=r"deploy\.prod\.all"):
                await Deployer(bus, timing=FAST).deploy(
                    Target.all(Tier.PROD), revision="master", action=Action.SWITCH, timeout=600
                )
        finally:
            await bus.close()

    async def test_offline_single_host_is_missing_at_once(self, fleet: Fleet) -> None:
        """A single host nobody listens for is reported missing within seconds; exit 1."""
        started = time.monotonic()
        proc = await fleet.cli("deploy", "deploy.test.db1", "--json", "--timeout", "600", limit=10)
        result = json.loads(proc.stdout)
        assert proc.returncode == 1
        assert [(h["hostname"], h["status"]) for h in result["hosts"]] == [("db1", "missing")]
        # Known at once from the server's no-responders status, not after the answer window.
        assert result["hosts"][0]["message"] == "no listener is subscribed to the subject"
        assert time.monotonic() - started < 10

    async def test_role_with_an_offline_host(self, fleet: Fleet) -> None:
        """A role of three where one is offline: two completed, one missing, exit 1."""
        async with fleet.listeners("web1", "web2", "pweb1"):
            proc = await fleet.cli(
                "deploy", "deploy.test.role.web", "--expect", "web1,web2,web3", "--json"
            )
        result = json.loads(proc.stdout)
        assert proc.returncode == 1
        assert {h["hostname"]: h["status"] for h in result["hosts"]} == {
            "web1": "completed",
            "web2": "completed",
            "web3": "missing",
        }
        assert fleet.hosts_run() == ["web1", "web2"]

    @pytest.mark.parametrize("prefix", ["FLEET_DEPLOY_", "HOMELAB_DEPLOY_"])
    async def test_alias_and_environment(self, fleet: Fleet, prefix: str) -> None:
        """Flags can come from FLEET_DEPLOY_* variables and a target from an alias — and a
        homelab-deploy user's HOMELAB_DEPLOY_* variables alone work unchanged."""
        variables = {
            "NATS_URL": fleet.url,
            "NKEY_FILE": str(fleet.keys["deployer"]),
            "BRANCH": "v1.2.3",
            "ACTION": "boot",
            "TIMEOUT": "120",
            "ALIAS_WEB_HOSTS": "deploy.test.role.web",
        }
        async with fleet.listeners("web1", "web2", "web3", "db1"):
            proc = await anyio.run_process(
                [str(scripts_dir() / "fleet-deploy"), "deploy", "web-hosts"],
                check=False,
                env=fleet.cli_env(**{prefix + name: value for name, value in variables.items()}),
            )
        assert proc.returncode == 0, proc.stderr.decode()
        assert sorted(fleet.runs()) == [
            expected_argv(h, "v1.2.3", "boot") for h in ("web1", "web2", "web3")
        ]

    async def test_fleet_deploy_variables_win_over_homelab_deploy_ones(self, fleet: Fleet) -> None:
        """Where both are set, FLEET_DEPLOY_* wins (a broken HOMELAB_DEPLOY_* beside it is
        never read); a bad value that is read is reported under the variable it came from."""
        base = {
            "HOMELAB_DEPLOY_NATS_URL": "nats://127.0.0.1:1",
            "FLEET_DEPLOY_NATS_URL": fleet.url,
            "HOMELAB_DEPLOY_NKEY_FILE": str(fleet.keys["deployer"]),
            "HOMELAB_DEPLOY_ALIAS_WEB": "deploy.test.web2",
            "FLEET_DEPLOY_ALIAS_WEB": "deploy.test.web1",
        }
        argv = [str(scripts_dir() / "fleet-deploy"), "deploy", "web"]
        async with fleet.listeners("web1", "web2"):
            proc = await anyio.run_process(argv, check=False, env=fleet.cli_env(**base))
            bad = await anyio.run_process(
                argv, check=False, env=fleet.cli_env(**base, HOMELAB_DEPLOY_TIMEOUT="soon")
            )
        assert proc.returncode == 0, proc.stderr.decode()
        assert fleet.runs() == [expected_argv("web1")]
        assert bad.returncode == 2
        assert "HOMELAB_DEPLOY_TIMEOUT must be a number of seconds, not 'soon'" in (
            bad.stderr.decode()
        )

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["deploy.test.web1", "--branch", "; rm -rf /"], "not a branch, tag or full commit"),
            (["deploy.test.web1", "--branch=--option"], "not a branch, tag or full commit"),
            (["deploy.staging.web1"], "tiers are 'test' and 'prod'"),
            (["deploy.test.*"], "invalid hostname"),
            (["nosuchalias"], "FLEET_DEPLOY_ALIAS_NOSUCHALIAS"),
            (["deploy.test.web1", "--timeout", "soon"], "--timeout must be a number"),
        ],
    )
    async def test_usage_errors_exit_2(self, fleet: Fleet, args: list[str], message: str) -> None:
        """Bad targets, revisions and flags exit 2 with a message saying what to use."""
        proc = await fleet.cli("deploy", *args)
        assert proc.returncode == 2
        assert message in proc.stderr.decode()
        assert fleet.runs() == []

    async def test_unknown_action_is_a_usage_error(self, fleet: Fleet) -> None:
        """--action reboot is refused by the parser with exit 2."""
        proc = await fleet.cli("deploy", "deploy.test.web1", "--action", "reboot")
        assert proc.returncode == 2
        assert "invalid choice: 'reboot'" in proc.stderr.decode()

    async def test_world_readable_key_is_refused(self, fleet: Fleet) -> None:
        """A seed file others can read is refused (exit 2) with the chmod to run."""
        fleet.keys["deployer"].chmod(0o644)
        proc = await fleet.cli("deploy", "deploy.test.web1")
        assert proc.returncode == 2
        assert f"run `chmod 600 {fleet.keys['deployer']}`" in proc.stderr.decode()

    async def test_server_down_exits_2(self, fleet: Fleet) -> None:
        """An unreachable server exits 2 quickly, naming the URL."""
        url = f"nats://127.0.0.1:{free_port()}"
        proc = await anyio.run_process(
            [
                str(scripts_dir() / "fleet-deploy"),
                "deploy",
                "deploy.test.web1",
                "--nats-url",
                url,
                "--nkey-file",
                str(fleet.keys["deployer"]),
            ],
            check=False,
            env=fleet.cli_env(),
        )
        assert proc.returncode == 2
        assert f"cannot reach the NATS server at {url}" in proc.stderr.decode()

    async def test_missing_flags_name_their_variables(self, fleet: Fleet) -> None:
        """Without --nats-url the error names the flag, its environment variable and what
        it is for, as --help says it (`logs` without --host: which host)."""
        proc = await anyio.run_process(
            [str(scripts_dir() / "fleet-deploy"), "deploy", "deploy.test.web1"],
            check=False,
            env=fleet.cli_env(),
        )
        assert proc.returncode == 2
        assert "--nats-url is required (or set FLEET_DEPLOY_NATS_URL): NATS server URL" in (
            proc.stderr.decode()
        )
        logs = await anyio.run_process(
            [str(scripts_dir() / "fleet-deploy"), "logs", "f" * 32],
            check=False,
            env=fleet.cli_env(
                FLEET_DEPLOY_NATS_URL=fleet.url,
                FLEET_DEPLOY_NKEY_FILE=str(fleet.keys["deployer"]),
            ),
        )
        assert logs.returncode == 2
        assert "--host is required: the host whose job to read" in logs.stderr.decode()


class TestHostsCommand:
    async def test_table_and_json(self, fleet: Fleet) -> None:
        """hosts lists every listener the key may read of (the admin's: every one); --tier
        filters; --json is machine-readable."""
        async with fleet.listeners("web1", "db1", "pweb1"):
            table = await fleet.cli("hosts", who="admin")
            as_json = await fleet.cli("hosts", "--tier", "prod", "--json", who="admin")
        lines = table.stdout.decode().splitlines()
        assert lines[0].split() == ["HOST", "TIER", "ROLE", "STATE", "VERSION"]
        assert sorted(line.split()[0] for line in lines[1:]) == ["db1", "pweb1", "web1"]
        hosts = json.loads(as_json.stdout)
        assert [(h["hostname"], h["tier"], h["role"], h["busy"]) for h in hosts] == [
            ("pweb1", "prod", "web", False)
        ]


class TestListenerCommand:
    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    async def test_serves_then_stops_on_signal(self, fleet: Fleet, signum: signal.Signals) -> None:
        """The real daemon logs JSON, serves a deploy, and exits 0 on SIGTERM or SIGINT."""
        async with await anyio.open_process(
            fleet.listener_argv("web2"), env=fleet.cli_env()
        ) as process:
            log = await read_until(process, b'"event": "listening"')
            first = json.loads(log.splitlines()[0])
            assert first["host"] == "web2" and first["level"] == "info"
            proc = await fleet.cli("deploy", "deploy.test.web2")
            assert proc.returncode == 0, proc.stderr.decode()
            process.send_signal(signum)
            with anyio.fail_after(10):
                assert await process.wait() == 0
        assert fleet.runs() == [expected_argv("web2")]

    async def test_refuses_a_group_readable_key(self, fleet: Fleet) -> None:
        """The daemon will not start with a seed file the group can read."""
        fleet.keys["web2"].chmod(0o640)
        proc = await anyio.run_process(
            fleet.listener_argv("web2"), check=False, env=fleet.cli_env()
        )
        assert proc.returncode == 2
        assert "is readable by others (mode 0640)" in proc.stderr.decode()

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            (["--flake-url", "github:o/r#web2"], "without '#<host>'"),
            (["--timeout", "-5"], "--timeout must be a positive"),
            (["--deploy-subject", "deploy.<tier>.<nope>"], "unknown placeholder"),
        ],
    )
    async def test_bad_settings_exit_2(self, fleet: Fleet, extra: list[str], message: str) -> None:
        """Bad listener settings are refused at start with a message saying what to change."""
        proc = await anyio.run_process(
            fleet.listener_argv("web2", *extra), check=False, env=fleet.cli_env()
        )
        assert proc.returncode == 2
        assert message in proc.stderr.decode()

    async def test_waits_for_a_server_that_is_not_up_yet(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """Started before NATS, the daemon keeps trying and serves once the server is there."""
        from fleet_core.testing.embedded_server import EmbeddedNatsServer

        port = free_port()
        url = f"nats://127.0.0.1:{port}"
        argv = fleet.listener_argv("web2")
        argv[argv.index(fleet.url)] = url
        async with await anyio.open_process(argv, env=fleet.cli_env()) as process:
            await read_until(process, b"nats_connect_failed")
            config = fleet.server.config_path.read_text()
            with EmbeddedNatsServer(tmp_path / "late", config, port=port):
                await read_until(process, b'"event": "listening"', limit=30)
                proc = await anyio.run_process(
                    [
                        str(scripts_dir() / "fleet-deploy"),
                        "deploy",
                        "deploy.test.web2",
                        "--nats-url",
                        url,
                        "--nkey-file",
                        str(fleet.keys["deployer"]),
                    ],
                    check=False,
                    env=fleet.cli_env(),
                )
                assert proc.returncode == 0, proc.stderr.decode()
                process.terminate()
                with anyio.fail_after(10):
                    await process.wait()


def test_help_is_fast_and_mcp_free() -> None:
    """fleet-deploy --help works and importing the CLI and listener never loads mcp, nor
    the dashboard and its web stack."""
    proc = subprocess.run(
        [str(scripts_dir() / "fleet-deploy"), "--help"], capture_output=True, check=False
    )
    assert proc.returncode == 0
    for command in ("listener", "deploy", "hosts", "mcp", "dashboard"):
        assert command in proc.stdout.decode()
    heavy = ("mcp", "fleet_dashboard", "starlette", "uvicorn", "sse_starlette")
    probe = (
        "import sys, fleet_core.cli, fleet_core.deploy.commands, fleet_core.host.daemon,"
        " fleet_core.host.listener;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True)
    assert out.stdout.decode().strip() == "[]"
