"""Secrets never leak (colmena's poison test): a recognisable token in the flake URL and seeds
whose values are known, through real processes, then a search for them everywhere we write.

The listeners are the installed ``fleet-deploy listener`` (two read the flake URL from a file,
one from its environment and starts rebuilds through a ``systemd-run`` stand-in); deploys,
discovery and a failing deploy go through the installed CLI; a job query through the core
deployer; the MCP tools through a real ``mcp.Client`` session with ``fleet-mcp`` over HTTP.
Then neither the token nor any seed may appear in a log line, a status or other message on
NATS, a file under the state directories, an MCP result or notification, or the command line
of a listener or job runner. The rebuild itself must get the token — it is nixos-rebuild's
argv, and the only place it belongs (docs/security.md says what that leaves visible).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import anyio
import anyio.abc
import mcp
import pytest

from fleet_core.bus import Message
from fleet_core.deploy.deployer import Deployer
from fleet_core.host.jobs.jobdir import ARGV_FILE, OUTPUT_LOG, RUNNER_FILE
from fleet_core.protocol.subjects import Tier

from .conftest import FAST, HOSTS, Fleet, scripts_dir
from .support import free_port

pytestmark = pytest.mark.anyio

POISON = f"POISON-{uuid.uuid4().hex}"
FLAKE = f"git+https://oauth2:{POISON}@git.example.invalid/fleet.git"
DEADLINE = 30.0


class Process:
    """A running program whose stdout and stderr are read to the end and kept."""

    def __init__(self, name: str, process: anyio.abc.Process) -> None:
        self.name = name
        self.process = process
        self.output = bytearray()
        self._grew = anyio.Event()

    async def drain(self, stream: anyio.abc.ByteReceiveStream) -> None:
        async for chunk in stream:
            self.output.extend(chunk)
            self._grew.set()
            self._grew = anyio.Event()

    async def wait_for(self, needle: bytes, limit: float = DEADLINE) -> None:
        with anyio.fail_after(limit):
            while needle not in self.output:
                await self._grew.wait()

    def cmdline(self) -> bytes:
        return Path(f"/proc/{self.process.pid}/cmdline").read_bytes()


@asynccontextmanager
async def running(name: str, argv: list[str], env: dict[str, str]) -> AsyncIterator[Process]:
    """``argv`` as a process for the block's length; SIGTERM at its end, with a deadline."""
    async with (
        await anyio.open_process(argv, env=env) as process,
        anyio.create_task_group() as tasks,
    ):
        watched = Process(name, process)
        assert process.stdout is not None and process.stderr is not None
        tasks.start_soon(watched.drain, process.stdout)
        tasks.start_soon(watched.drain, process.stderr)
        try:
            yield watched
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(DEADLINE):
                await process.wait()


def listener_argv(fleet: Fleet, host: str, *sim: str, extra: tuple[str, ...] = ()) -> list[str]:
    trusted = [fleet.seed("deployer").public_key, fleet.seed("admin").public_key]
    return [
        str(scripts_dir() / "fleet-deploy"),
        "listener",
        "--hostname",
        host,
        "--tier",
        "test",
        # Its own role only: a listener refused a subject of its own does not start.
        *(["--role", role] if (role := HOSTS[host][1]) else []),
        "--nats-url",
        fleet.url,
        "--nkey-file",
        str(fleet.keys[host]),
        "--rebuild-command",
        fleet.rebuild_command(*sim),
        "--state-dir",
        str(fleet.root / "state" / host),
        "--log-level",
        "debug",
        *(arg for key in trusted for arg in ("--trusted-deployer-key", key)),
        *extra,
    ]


def read(path: Path) -> bytes:
    return path.read_bytes()


def files_under(directory: Path) -> dict[Path, bytes]:
    """Every file under ``directory`` and its bytes."""
    return {path: path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def rebuild_pids(state: Path) -> dict[str, int] | None:
    """The runner.json of the job under ``state``, once it names the rebuild's pid."""
    for path in state.glob(f"jobs/*/{RUNNER_FILE}"):
        pids: dict[str, int] = json.loads(path.read_text())
        if "rebuild_pid" in pids:
            return pids
    return None


async def wait_for_rebuild(state: Path) -> dict[str, int]:
    """The pids of the rebuild held open under ``state``. The runner offers no event to
    wait on: poll, with a deadline."""
    with anyio.fail_after(DEADLINE):
        while (pids := rebuild_pids(state)) is None:  # noqa: ASYNC110 - no event to wait on
            await anyio.sleep(0.02)
    return pids


class Evidence:
    """Everything written or shown during the test, by where it came from."""

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}

    def add(self, where: str, data: bytes | str) -> None:
        self.items[where] = data.encode() if isinstance(data, str) else data

    def leaks(self, secrets: dict[str, str]) -> list[str]:
        return [
            f"{what} in {where}"
            for where, data in self.items.items()
            for what, secret in secrets.items()
            if secret.encode() in data
        ]


async def test_no_secret_reaches_a_log_a_message_a_file_or_a_command_line(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Through real listeners, the CLI, a job query and the MCP tools, the flake URL's token
    and the seeds appear nowhere but in the rebuild's own argv."""
    evidence = Evidence()
    flake_file = tmp_path / "flake-url"
    flake_file.write_text(FLAKE + "\n")
    flake_file.chmod(0o600)
    release = tmp_path / "release"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    systemd_calls = tmp_path / "systemd-run.jsonl"
    stand_in = bin_dir / "systemd-run"
    stand_in.write_text(
        f"#!/bin/sh\nexec {sys.executable} -m fleet_core.testing.simulated_systemd_run "
        f'--sim-record {systemd_calls} "$@"\n'
    )
    stand_in.chmod(0o755)
    from_file = ("--flake-url-file", str(flake_file))
    env = fleet.cli_env()
    env_with_url = fleet.cli_env(
        FLEET_DEPLOY_FLAKE_URL=FLAKE, PATH=f"{bin_dir}:{os.environ['PATH']}"
    )
    wire: list[Message] = []

    async def overhear(msg: Message) -> None:
        wire.append(msg)

    async with AsyncExitStack() as stack:
        admin = await stack.enter_async_context(await fleet.connect("admin"))
        await admin.subscribe("deploy.>", overhear)  # requests, statuses, discovery: all
        await admin.flush()
        listeners = [
            await stack.enter_async_context(
                running("listener web1", listener_argv(fleet, "web1", extra=from_file), env)
            ),
            await stack.enter_async_context(
                running(
                    "listener db1", listener_argv(fleet, "db1", "--sim-fail", extra=from_file), env
                )
            ),
            await stack.enter_async_context(
                running(
                    "listener web2",
                    listener_argv(
                        fleet,
                        "web2",
                        "--sim-wait-for",
                        str(release),
                        extra=("--rebuild-runner", "systemd"),
                    ),
                    env_with_url,
                )
            ),
        ]
        for listener in listeners:
            await listener.wait_for(b'"event": "listening"')

        # A deploy that completes, one that fails, and discovery, through the real CLI.
        done = await fleet.cli("deploy", "deploy.test.web1")
        assert done.returncode == 0, done.stderr.decode()
        failed = await fleet.cli("deploy", "deploy.test.db1", "--json")
        assert failed.returncode == 1, failed.stderr.decode()
        failure = json.loads(failed.stdout)
        assert any("***@" in line for line in failure["hosts"][0]["log_tail"]), failure
        found = await fleet.cli("hosts")
        assert found.returncode == 0, found.stderr.decode()
        for name, proc in (("deploy web1", done), ("deploy db1", failed), ("hosts", found)):
            evidence.add(f"CLI {name} stdout", proc.stdout)
            evidence.add(f"CLI {name} stderr", proc.stderr)

        # A rebuild held open: what every local user can read while it runs.
        held: dict[str, Any] = {}

        async def deploy_web2() -> None:
            held["proc"] = await fleet.cli("deploy", "deploy.test.web2", who="admin", limit=60)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(deploy_web2)
            state = fleet.root / "state" / "web2"
            pids = await wait_for_rebuild(state)
            for listener in listeners:
                evidence.add(f"cmdline of {listener.name}", listener.cmdline())
            runner = Path(f"/proc/{pids['pid']}")
            evidence.add("cmdline of the job runner", read(runner / "cmdline"))
            evidence.add("environment of the job runner", read(runner / "environ"))
            rebuild = read(Path(f"/proc/{pids['rebuild_pid']}/cmdline"))
            assert POISON.encode() in rebuild  # nixos-rebuild's own argv: documented
            running_files = files_under(state)
            for path, data in running_files.items():
                evidence.add(f"{path} while running", data)
            assert not [p for p in running_files if p.name == ARGV_FILE]  # read and gone
            release.touch()
        assert held["proc"].returncode == 0, held["proc"].stderr.decode()
        evidence.add("CLI deploy web2 stdout", held["proc"].stdout)
        evidence.add("CLI deploy web2 stderr", held["proc"].stderr)

        # A job query for the failed deploy.
        answers = await Deployer(admin, timing=FAST).query_job(
            failure["deployment_id"], hosts=["db1"], tier=Tier.TEST
        )
        job = answers["db1"].job
        assert job is not None and job.status == "failed" and job.log_tail, answers
        evidence.add("job query answer", answers["db1"].model_dump_json())

        await mcp_session(fleet, evidence, env)
        for listener in listeners:
            evidence.add(f"cmdline of {listener.name} at the end", listener.cmdline())

    for listener in listeners:
        evidence.add(f"output of {listener.name}", bytes(listener.output))
        assert b'"event": "request_accepted"' in listener.output, listener.name
    for index, msg in enumerate(wire):
        evidence.add(f"NATS message {index} on {msg.subject}", msg.data)
    for path, data in files_under(fleet.root / "state").items():
        evidence.add(str(path), data)
    evidence.add("systemd-run calls", read(systemd_calls))
    assert "FLEET_DEPLOY_FLAKE_URL" not in json.loads(systemd_calls.read_text())["setenv"]
    assert any(b"***@" in data for where, data in evidence.items.items() if OUTPUT_LOG in where)
    assert POISON in fleet.record.read_text()  # the rebuilds did get the real URL
    assert len(wire) > 20 and len(evidence.items) > 40, sorted(evidence.items)

    secrets = {"the token": POISON, **{f"seed {n}": fleet.seed(n).reveal() for n in fleet.keys}}
    leaks = evidence.leaks(secrets)
    assert not leaks, "\n".join(leaks)


async def mcp_session(fleet: Fleet, evidence: Evidence, env: dict[str, str]) -> None:
    """Every MCP tool over a real client session with fleet-mcp (admin enabled), on HTTP so
    that its stderr is ours to read; results, notifications and logs go into ``evidence``."""
    port = free_port()
    argv = [
        str(scripts_dir() / "fleet-mcp"),
        "--http",
        f"127.0.0.1:{port}",
        "--log-level",
        "debug",
        "--nats-url",
        fleet.url,
        "--nkey-file",
        str(fleet.keys["deployer"]),
        "--enable-admin",
        "--admin-nkey-file",
        str(fleet.keys["admin"]),
    ]
    heard: list[str] = []

    async def on_message(message: Any) -> None:
        heard.append(repr(message))

    async def on_log(params: Any) -> None:
        heard.append(repr(params))

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        heard.append(message or "")

    async with running("fleet-mcp", argv, env) as server:
        await server.wait_for(b"Uvicorn running on")
        client = mcp.Client(
            f"http://127.0.0.1:{port}/mcp",
            message_handler=on_message,
            logging_callback=on_log,
            log_level="debug",
        )
        async with client:
            calls: list[tuple[str, dict[str, Any]]] = [
                ("list_hosts", {}),
                ("deploy", {"hostname": "web1"}),
                ("deploy", {"hostname": "db1"}),
                ("deploy_admin", {"tier": "test", "hostname": "web1"}),
            ]
            with anyio.fail_after(90):
                for tool, arguments in calls:
                    result = await client.call_tool(tool, arguments, progress_callback=on_progress)
                    evidence.add(f"MCP {tool} {arguments}", result.model_dump_json())
                    if tool == "deploy" and arguments["hostname"] == "db1":
                        failed = result.structured_content or {}
                        assert failed.get("ok") is False, result
                        status = await client.call_tool(
                            "deployment_status",
                            {"deployment_id": failed["deployment_id"], "wait_seconds": 5},
                        )
                        evidence.add("MCP deployment_status", status.model_dump_json())
    evidence.add("MCP notifications", "\n".join(heard))
    evidence.add("output of fleet-mcp", bytes(server.output))


class TestTheJobRunnerKeepsTheTokenOut:
    """The job runner's own share: the argv in a private file, the output redacted."""

    SAMPLES = (
        "unpacking 'git+https://oauth2:glpat-SECRET@git.example.com/fleet.git?ref=main'",
        "fatal: could not read from https://user:p%40ss@host/r and ssh://git@host/r",
        "no url here, an @ sign and a :// alone",
        "two https://a:b@one/x https://c@two/y in a row",
    )

    @pytest.mark.parametrize("line", SAMPLES)
    def test_it_redacts_as_the_listener_does(self, line: str) -> None:
        """The runner's redaction (standard library only) gives rebuild.redact's answer."""
        from fleet_core.host.jobs.job_runner import redact_output
        from fleet_core.protocol.actions import redact

        assert redact_output(line.encode()).decode() == redact(line)

    def test_a_url_split_between_reads_is_redacted_whole(self, tmp_path: Path) -> None:
        """However the rebuild's output is cut into reads, a token never reaches output.log."""
        from fleet_core.host.jobs.job_runner import _HOLD, _Log

        log = _Log(tmp_path / OUTPUT_LOG)
        text = b"unpacking 'git+https://oauth2:SECRET-TOKEN@git.example.com/f.git' into cache\n"
        for cut in range(0, len(text), 7):  # every piece of seven bytes, as reads may come
            log.write(text[cut : cut + 7])
        log.write(b"no newline at the end: https://u:SECRET-TOKEN@h/r")
        log.note("fleet-deploy: a note of the runner's own")
        log.write(b"x" * (_HOLD + 10))  # an endless run without whitespace is written anyway
        log.close()
        kept = (tmp_path / OUTPUT_LOG).read_bytes()
        assert b"SECRET" not in kept
        assert kept.count(b"***@") == 2
        assert b"h/r\nfleet-deploy: a note of the runner's own\n" in kept
        assert kept.endswith(b"x" * (_HOLD + 10))

    def test_the_argv_file_is_private_and_gone_once_read(self, tmp_path: Path) -> None:
        """The argv waits in a 0600 file, which the runner deletes as it starts; without it
        the job ends with a start error instead of running anything."""
        import stat
        import subprocess

        from fleet_core.host.jobs.jobdir import EXIT_FILE, runner_argv, write_argv

        job = tmp_path / "job"
        job.mkdir()
        write_argv(job, [sys.executable, "-c", "print('ran')"])
        assert stat.S_IMODE((job / ARGV_FILE).stat().st_mode) == 0o600
        command = runner_argv(sys.executable, job, timeout=30, kill_grace=1)
        assert not any("print" in arg for arg in command)
        subprocess.run(command, check=True, timeout=60)
        assert not (job / ARGV_FILE).exists()
        assert json.loads((job / EXIT_FILE).read_text())["exit_code"] == 0
        assert (job / OUTPUT_LOG).read_text() == "ran\n"

        subprocess.run(command, check=True, timeout=60)  # again: the file is gone now
        again = json.loads((job / EXIT_FILE).read_text())
        assert again["exit_code"] is None
        assert f"cannot read the job's {ARGV_FILE}" in again["start_error"]


class TestTheFlakeUrlFile:
    """--flake-url-file: the URL from a file, read once at start, never shown in an error."""

    FLAGS: ClassVar[dict[str, object]] = {
        "hostname": "web1",
        "tier": "test",
        "nats_url": "nats://127.0.0.1:4222",
        "nkey_file": "/run/keys/web1.seed",
    }

    def test_the_url_comes_from_the_file(self, tmp_path: Path) -> None:
        """The file's one line is the flake URL; the settings' repr does not show it."""
        from fleet_core.config.resolve import listener_settings

        path = tmp_path / "flake-url"
        path.write_text(f"\n  {FLAKE}  \n")
        settings = listener_settings({**self.FLAGS, "flake_url_file": str(path)}, environ={})
        assert settings.flake_url == FLAKE
        assert POISON not in repr(settings)
        from_variable = listener_settings(
            self.FLAGS, environ={"FLEET_DEPLOY_FLAKE_URL_FILE": str(path)}
        )
        assert from_variable.flake_url == FLAKE

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (f"{FLAKE}\n{FLAKE}\n", "must hold the flake URL on one line, not 2 lines"),
            ("\n", "must hold the flake URL on one line, not 0 lines"),
            (f"{FLAKE}#web1\n", "invalid flake URL 'git+https://***@git.example.invalid"),
            (None, "cannot read"),
        ],
        ids=["two-lines", "empty", "with-a-host", "unreadable"],  # the token is random per run
    )
    def test_a_bad_file_is_refused_without_showing_the_token(
        self, tmp_path: Path, content: str | None, message: str
    ) -> None:
        """A file that is missing or does not hold one usable URL is a usage error whose
        message never holds the token."""
        from fleet_core.config.resolve import listener_settings
        from fleet_core.errors import UsageError

        path = tmp_path / "flake-url"
        if content is not None:
            path.write_text(content)
        with pytest.raises(UsageError) as refused:
            listener_settings({**self.FLAGS, "flake_url_file": str(path)}, environ={})
        assert message in str(refused.value)
        assert POISON not in str(refused.value)

    def test_one_of_url_and_file(self, tmp_path: Path) -> None:
        """Both a URL and a file, or neither, is a usage error naming the two ways."""
        from fleet_core.config.resolve import listener_settings
        from fleet_core.errors import UsageError

        path = tmp_path / "flake-url"
        path.write_text(FLAKE)
        both = {**self.FLAGS, "flake_url_file": str(path)}
        with pytest.raises(UsageError, match="give FLEET_DEPLOY_FLAKE_URL or --flake-url-file"):
            listener_settings(both, environ={"FLEET_DEPLOY_FLAKE_URL": FLAKE})
        with pytest.raises(UsageError, match=r"--flake-url is required .* --flake-url-file"):
            listener_settings(self.FLAGS, environ={})
