"""``fleet-deploy dashboard`` as a user runs it: flags and variables become settings, every
mistake is exit 2 with the flag named, ``--hash-password`` reads stdin, and the installed
command serves a real fleet, says where, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import httpx2 as httpx
import pytest

from fleet_core.config.resolve import dashboard_settings
from fleet_core.config.settings import DashboardSettings, PasswordHashSettings
from fleet_core.errors import UsageError
from fleet_core.testing import LocalFleet
from fleet_dashboard.auth import hash_password, verify_password
from fleet_dashboard.command import LISTENING_PREFIX

from .conftest import scripts_dir
from .dashboard_support import dashboard_fleet

pytestmark = pytest.mark.anyio

FLEET_DEPLOY = str(scripts_dir() / "fleet-deploy")
URL = "nats://127.0.0.1:4222"
START_LIMIT = 30.0


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any FLEET_DEPLOY_* or HOMELAB_DEPLOY_* variable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FLEET_DEPLOY_", "HOMELAB_DEPLOY_"))
    }
    return env | extra


def settings(flags: dict[str, object], environ: dict[str, str] | None = None) -> DashboardSettings:
    found = dashboard_settings(flags, environ=environ or {})
    assert isinstance(found, DashboardSettings)
    return found


class TestSettings:
    def test_defaults_bind_to_this_machine_read_only(self) -> None:
        """Without flags: 127.0.0.1:8420, a refresh every 30 s, no actions and no action file
        kept, even when one is named."""
        found = settings(
            {"nats_url": URL, "nkey_file": "dash.seed", "deploy_nkey_file": "admin.seed"}
        )
        assert found.listen == ("127.0.0.1", 8420)
        assert found.refresh == 30.0
        assert (found.allow_actions, found.deploy_nkey_file, found.password_file) == (
            False,
            None,
            None,
        )

    def test_variables_are_the_dashboards_own(self) -> None:
        """The FLEET_DEPLOY_DASHBOARD_* variables set every option; FLEET_DEPLOY_NKEY_FILE, a
        shell's deploying key, is not read: without the dashboard's own it is an error."""
        prefix = "FLEET_DEPLOY_DASHBOARD_"
        found = settings(
            {},
            {
                "FLEET_DEPLOY_NATS_URL": URL,
                "FLEET_DEPLOY_NKEY_FILE": "/keys/admin.seed",
                f"{prefix}NKEY_FILE": "/keys/dash.seed",
                f"{prefix}LISTEN": "[::1]:0",
                f"{prefix}ALLOWED_HOSTS": "Fleet.Example.org, fleet.example.org:8443",
                f"{prefix}REFRESH": "5",
                f"{prefix}ALLOW_ACTIONS": "true",
                f"{prefix}DEPLOY_NKEY_FILE": "/keys/ops.seed",
                f"{prefix}PASSWORD_FILE": "/etc/dash/password",
                f"{prefix}TOTP_SECRET_FILE": "/etc/dash/totp",
                f"{prefix}SESSION_KEY_FILE": "/etc/dash/session",
            },
        )
        assert found.connection.nkey_file == Path("/keys/dash.seed")
        assert found.listen == ("::1", 0)
        assert found.allowed_hosts == ("fleet.example.org", "fleet.example.org:8443")
        assert found.refresh == 5.0
        assert found.allow_actions
        assert (found.deploy_nkey_file, found.password_file) == (
            Path("/keys/ops.seed"),
            Path("/etc/dash/password"),
        )
        assert (found.totp_secret_file, found.session_key_file) == (
            Path("/etc/dash/totp"),
            Path("/etc/dash/session"),
        )
        with pytest.raises(UsageError, match="FLEET_DEPLOY_DASHBOARD_NKEY_FILE"):
            settings({}, {"FLEET_DEPLOY_NATS_URL": URL, "FLEET_DEPLOY_NKEY_FILE": "/keys/a.seed"})

    @pytest.mark.parametrize(
        ("flags", "message"),
        [
            ({"listen": "8420"}, "--listen '8420' must be HOST:PORT"),
            ({"listen": ":8420"}, "'' is not a host name or address"),
            ({"listen": "::1:8420"}, "an IPv6 address goes in brackets"),
            ({"listen": "127.0.0.1:65536"}, "the port must be 0 (any free one) to 65535"),
            ({"refresh": "0.5"}, "--refresh must be at least 1 second"),
            ({"refresh": "soon"}, "--refresh must be a number of seconds"),
            ({"allowed_host": ["fleet example"]}, "--allowed-host 'fleet example' is not"),
            ({"allowed_host": ["http://fleet"]}, "--allowed-host 'http://fleet' is not"),
            ({"allow_actions": True}, "--allow-actions needs --deploy-nkey-file PATH"),
            (
                {"allow_actions": True, "deploy_nkey_file": "ops.seed"},
                "--allow-actions needs --password-file PATH",
            ),
        ],
    )
    def test_mistakes_name_their_flag(self, flags: dict[str, object], message: str) -> None:
        """Each malformed or missing value is a UsageError that names the flag to fix."""
        with pytest.raises(UsageError) as raised:
            settings({"nats_url": URL, "nkey_file": "dash.seed", **flags})
        assert message in str(raised.value)

    def test_hash_password_needs_nothing_else(self) -> None:
        """--hash-password asks for no NATS URL and no key: it only hashes."""
        assert dashboard_settings({"hash_password": True}, environ={}) == PasswordHashSettings()


def run_cli(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLEET_DEPLOY, "dashboard", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=clean_env(**env),
        timeout=30,
        check=False,
    )


class TestTheCommand:
    def test_allow_actions_without_its_files_is_exit_2_naming_the_flag(
        self, tmp_path: Path
    ) -> None:
        """The installed command refuses --allow-actions without a password file (exit 2),
        naming --password-file and how to make one, before it connects anywhere."""
        result = run_cli(
            *("--nats-url", URL, "--nkey-file", str(tmp_path / "dash.seed")),
            *("--allow-actions", "--deploy-nkey-file", str(tmp_path / "ops.seed")),
        )
        assert result.returncode == 2, result.stderr
        assert "--allow-actions needs --password-file PATH" in result.stderr
        assert "--hash-password" in result.stderr
        assert result.stdout == ""

    def test_hash_password_reads_stdin_and_prints_a_line_that_verifies(self) -> None:
        """A password piped in becomes one scrypt line on stdout, which verifies against
        that password and no other; an empty one is refused (exit 2)."""
        result = run_cli("--hash-password", stdin="correct horse\n")
        assert result.returncode == 0, result.stderr
        [line] = result.stdout.splitlines()
        assert line.startswith("scrypt$")
        assert verify_password("correct horse", line)
        assert not verify_password("correct horse\n", line)
        empty = run_cli("--hash-password", stdin="\n")
        assert empty.returncode == 2
        assert "empty password" in empty.stderr
        short = run_cli("--hash-password", stdin="hunter2\n")
        assert short.returncode == 2 and not short.stdout
        assert "7 characters is too short" in short.stderr and "at least 12" in short.stderr

    def test_a_seed_others_can_read_is_refused_before_listening(self, tmp_path: Path) -> None:
        """The read key's file is checked as every seed is: mode 0644 is exit 2, with the
        chmod to run, and nothing is served."""
        seed = tmp_path / "dash.seed"
        seed.write_text("SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4\n")
        seed.chmod(0o644)
        result = run_cli("--nats-url", URL, "--nkey-file", str(seed), "--listen", "127.0.0.1:0")
        assert result.returncode == 2, result.stderr
        assert f"chmod 600 {seed}" in result.stderr
        assert LISTENING_PREFIX not in result.stdout

    def test_an_unreachable_nats_server_is_exit_2_before_listening(self, tmp_path: Path) -> None:
        """With no NATS server at the URL it stops at once, exit 2, naming the URL; no
        dashboard line was printed, so nothing ever served a page without a fleet."""
        seed = tmp_path / "dash.seed"
        made = subprocess.run(
            [FLEET_DEPLOY, "keygen", "dash", "--dir", str(tmp_path)],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=30,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        with socket.socket() as closed:  # a port nobody listens on once this is closed
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        url = f"nats://127.0.0.1:{port}"
        result = run_cli("--nats-url", url, "--nkey-file", str(seed), "--listen", "127.0.0.1:0")
        assert result.returncode == 2, result.stderr
        assert f"cannot reach the NATS server at {url}" in result.stderr
        assert LISTENING_PREFIX not in result.stdout


async def rest_of(stream: anyio.abc.ByteReceiveStream | None) -> str:
    """What is left to read of an exited process's stream."""
    assert stream is not None
    chunks = [chunk async for chunk in stream]
    return b"".join(chunks).decode(errors="replace")


class Served:
    """A ``fleet-deploy dashboard`` process and the URL it printed."""

    def __init__(self, process: anyio.abc.Process, url: str) -> None:
        self.process = process
        self.url = url


@asynccontextmanager
async def dashboard_process(local: LocalFleet, *args: str) -> AsyncIterator[Served]:
    """The installed command against ``local`` with the observer key, up to its URL line;
    killed at the end if it still runs."""
    argv = [
        FLEET_DEPLOY,
        "dashboard",
        *("--nats-url", local.url, "--nkey-file", str(local.key_path("dash"))),
        *("--listen", "127.0.0.1:0", "--log-level", "warning"),
        *args,
    ]
    process = await anyio.open_process(argv, env=clean_env())
    try:
        assert process.stdout is not None
        seen = b""
        with anyio.fail_after(START_LIMIT):
            async for chunk in process.stdout:
                seen += chunk
                if b"\n" in seen:
                    break
        line = seen.decode().splitlines()[0] if seen else ""
        assert line.startswith(LISTENING_PREFIX), seen
        yield Served(process, line.removeprefix(LISTENING_PREFIX))
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()


class TestServing:
    async def test_it_prints_its_url_serves_the_fleet_and_stops_on_sigterm(
        self, tmp_path: Path
    ) -> None:
        """With --listen 127.0.0.1:0 it prints `dashboard: http://127.0.0.1:PORT/` with the
        port the kernel chose, serves the page and /api/fleet there (read-only), and SIGTERM
        stops it with exit 0 and no traceback."""
        async with (
            dashboard_fleet(tmp_path) as local,
            local.listeners([local.listener_settings("web1"), local.listener_settings("pweb1")]),
            dashboard_process(local) as served,
        ):
            assert served.url.startswith("http://127.0.0.1:")
            assert not served.url.endswith(":0/")
            async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
                page = await client.get("/")
                body = (await client.get("/api/fleet")).json()
            assert page.status_code == 200
            assert 'id="fleet"' in page.text
            assert body["actions"] is False
            served.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                code = await served.process.wait()
                errors = await rest_of(served.process.stderr)
        assert code == 0, errors
        assert "Traceback" not in errors

    async def test_every_address_without_an_allowed_host_warns_at_start(
        self, tmp_path: Path
    ) -> None:
        """--listen 0.0.0.0 and no --allowed-host: it serves, and warns at start that only
        loopback names are admitted, naming --allowed-host (else the first sign is a 421)."""
        async with (
            dashboard_fleet(tmp_path) as local,
            dashboard_process(local, "--listen", "0.0.0.0:0") as served,
        ):
            served.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(15):
                code = await served.process.wait()
                errors = await rest_of(served.process.stderr)
        assert code == 0, errors
        lines = [json.loads(line) for line in errors.splitlines() if line.startswith("{")]
        warned = [line for line in lines if line["event"] == "dashboard_loopback_names_only"]
        assert len(warned) == 1, errors
        assert warned[0]["level"] == "warning"
        assert "--allowed-host NAME" in warned[0]["fix"]

    async def test_a_busy_port_is_exit_2_naming_listen(self, tmp_path: Path) -> None:
        """A port another program listens on: exit 2, the address and --listen named."""
        async with dashboard_fleet(tmp_path) as local:
            with socket.socket() as taken:
                taken.bind(("127.0.0.1", 0))
                taken.listen()
                port = taken.getsockname()[1]
                argv = [
                    FLEET_DEPLOY,
                    "dashboard",
                    *("--nats-url", local.url, "--nkey-file", str(local.key_path("dash"))),
                    *("--listen", f"127.0.0.1:{port}"),
                ]
                with anyio.fail_after(START_LIMIT):
                    result = await anyio.run_process(argv, env=clean_env(), check=False)
        stderr = result.stderr.decode()
        assert result.returncode == 2, stderr
        assert f"cannot listen on 127.0.0.1:{port}" in stderr
        assert "--listen HOST:PORT" in stderr
        assert LISTENING_PREFIX not in result.stdout.decode()

    async def test_with_actions_it_loads_the_login_and_says_so(self, tmp_path: Path) -> None:
        """--allow-actions with a deploy key and a password file (mode 0600) starts, and its
        /api/session says actions are on and nobody is logged in; the same password file
        readable by others is exit 2 naming --password-file."""
        password = tmp_path / "password"
        password.write_text(hash_password("s3cret-for-tests") + "\n")
        password.chmod(0o600)
        async with dashboard_fleet(tmp_path / "fleet") as local:
            flags = ("--allow-actions", "--deploy-nkey-file", str(local.key_path("admin")))
            async with (
                dashboard_process(local, *flags, "--password-file", str(password)) as x,
                httpx.AsyncClient(base_url=x.url, timeout=10) as client,
            ):
                session = (await client.get("/api/session")).json()
            password.chmod(0o644)
            argv = [
                FLEET_DEPLOY,
                "dashboard",
                *("--nats-url", local.url, "--nkey-file", str(local.key_path("dash"))),
                *flags,
                *("--password-file", str(password), "--listen", "127.0.0.1:0"),
            ]
            with anyio.fail_after(START_LIMIT):
                refused = await anyio.run_process(argv, env=clean_env(), check=False)
        assert (session["actions"], session["logged_in"]) == (True, False)
        assert refused.returncode == 2
        assert f"--password-file {password} is readable by others" in refused.stderr.decode()
        assert json.dumps(session).find("scrypt$") == -1
