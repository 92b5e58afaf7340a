"""``fleet-deploy sandbox`` as a user runs it: a real subprocess, driven through the real CLI.

Readiness is the line the sandbox prints once every listener is subscribed; every wait has a
deadline and waits for an event (a line, a process exit, a pidfd turning readable), never a
fixed time. "No process left behind" is checked on the sandbox's whole process tree, taken
from /proc while it runs: a pidfd per process, opened before the signal, must become readable
(the process ended) once the sandbox has exited.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx2 as httpx
import pytest

from fleet_core.config.options import DEFAULT_SANDBOX_HOSTS
from fleet_core.config.resolve import sandbox_settings
from fleet_core.errors import UsageError
from fleet_core.keys import load_seed
from fleet_core.protocol.subjects import Tier
from fleet_core.testing.sandbox import (
    ADMIN,
    DASHBOARD,
    LOG_FILE,
    READY_LINE,
    TEST_DEPLOYER,
    host_root,
    plan_hosts,
)
from fleet_core.testing.simulated_system import current, profile

from .conftest import scripts_dir

FLEET_DEPLOY = str(scripts_dir() / "fleet-deploy")
ROOT = Path(__file__).resolve().parent.parent
_URL = re.compile(r"nats://127\.0\.0\.1:\d+(?:,nats://127\.0\.0\.1:\d+)*")  # one or a list
_DIRECTORY = re.compile(r"^\s+directory\s+(\S+)")
FRESH_PATH = "/usr/bin:/bin"  # a new terminal's PATH: no virtualenv of ours on it


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLEET_DEPLOY_")}


class Lines:
    """A process's stdout, line by line, read by a thread so that waits can have deadlines."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, limit: float = 30.0) -> re.Match[str]:
        """The first new line matching ``pattern``; fails at the deadline or at end of output."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + limit
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(0.0, remaining))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {limit} s:\n" + self.text())
            if line is None:
                pytest.fail(f"output ended without {pattern!r}:\n" + self.text())
            self.seen.append(line)
            match = compiled.search(line)
            if match:
                return match

    def rest(self, limit: float = 10.0) -> str:
        """Everything up to the end of the output."""
        self._thread.join(limit)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return self.text()

    def text(self) -> str:
        return "\n".join(self.seen)


class RunningSandbox:
    """A ``fleet-deploy sandbox`` subprocess in a session of its own, up to its ready line."""

    def __init__(
        self,
        tmp_path: Path,
        *args: str,
        env: dict[str, str] | None = None,
        program: tuple[str, ...] = (FLEET_DEPLOY, "sandbox"),
    ) -> None:
        self.stderr_path = tmp_path / f"sandbox-{time.monotonic_ns()}.err"
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                [*program, "--port", "0", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=clean_env() if env is None else env,
                start_new_session=True,
            )
        assert self.process.stdout is not None
        self.lines = Lines(self.process.stdout)
        self.lines.wait_for(READY_LINE)
        banner = self.lines.text()
        match = _URL.search(banner)
        assert match, banner
        self.url = match.group(0)
        self.directory = next(
            Path(m.group(1)) for line in self.lines.seen if (m := _DIRECTORY.match(line))
        )

    def key(self, name: str) -> Path:
        return self.directory / "keys" / f"{name}.seed"

    def cli(self, *args: str, key: str = TEST_DEPLOYER) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FLEET_DEPLOY, *args, "--nats-url", self.url, "--nkey-file", str(self.key(key))],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
            check=False,
        )

    def popen_cli(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                FLEET_DEPLOY,
                *args,
                "--nats-url",
                self.url,
                "--nkey-file",
                str(self.key(TEST_DEPLOYER)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=clean_env(),
        )

    def tree(self) -> dict[int, str]:
        """Every live process descended from the sandbox: pid → command line."""
        return descendants(self.process.pid)

    def stop(self, signum: signal.Signals, *, group: bool = False, limit: float = 20.0) -> int:
        if group:
            os.killpg(self.process.pid, signum)  # what Ctrl-C in its terminal does
        else:
            self.process.send_signal(signum)  # what kill(1) or systemd does
        code = self.process.wait(limit)
        self.lines.rest()
        return code

    def errors(self) -> str:
        return self.stderr_path.read_text()

    def cleanup(self) -> None:
        """After a failed test: kill whatever is left, so one failure does not leak processes."""
        if self.process.poll() is None:
            for pid in self.tree():
                _kill(pid)
            self.process.kill()
            self.process.wait(10)
        self.lines.rest(2)
        assert self.process.stdout is not None
        self.process.stdout.close()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, signal.SIGKILL)


def descendants(root: int) -> dict[int, str]:
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # it ended while we looked
            continue
        pid = int(entry.name)
        fields = stat.rpartition(")")[2].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(pid)
        commands[pid] = command.replace(b"\0", b" ").decode(errors="replace").strip()
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = commands[child]
            todo.append(child)
    return found


class PidWatch:
    """pidfds opened on processes while they run; ``still_running`` waits for them to end."""

    def __init__(self, pids: dict[int, str]) -> None:
        self.fds: dict[int, tuple[int, str]] = {}
        for pid, command in pids.items():
            try:
                self.fds[pid] = (os.pidfd_open(pid), command)
            except ProcessLookupError:  # already gone: nothing to wait for
                continue

    def still_running(self, limit: float = 10.0) -> list[str]:
        deadline = time.monotonic() + limit
        pending = dict(self.fds)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([fd for fd, _ in pending.values()], [], [], remaining)
            pending = {pid: v for pid, v in pending.items() if v[0] not in ready}
        return [f"{pid} {command}" for pid, (_, command) in pending.items()]

    def close(self) -> None:
        """Close the pidfds, killing first whatever still runs (after a failed assertion)."""
        for fd, _ in self.fds.values():
            with contextlib.suppress(ProcessLookupError):  # it ended, as it should have
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)


@pytest.fixture
def start_sandbox(tmp_path: Path) -> Iterator[type[RunningSandbox]]:
    started: list[RunningSandbox] = []

    class Tracked(RunningSandbox):
        def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None) -> None:
            super().__init__(tmp, *args, env=env)
            started.append(self)

    yield Tracked
    for sandbox in started:
        sandbox.cleanup()


def wait_until_hosts_run(deploy: subprocess.Popen[str], hosts: set[str]) -> Lines:
    """Read a deploy's live lines until each of ``hosts`` reported rebuild output."""
    assert deploy.stdout is not None
    lines = Lines(deploy.stdout)
    running: set[str] = set()
    while running != hosts:
        running.add(lines.wait_for(r"^\s+(\S+)\s+progress\s").group(1))
    return lines


TEST_HOSTS = {h.name for h in plan_hosts(DEFAULT_SANDBOX_HOSTS) if h.tier is Tier.TEST}


def try_it_block(banner: list[str]) -> list[str]:
    """The lines under "Try it from another terminal:", as a user copies them: from the blank
    line after that heading up to the next blank line."""
    start = banner.index("Try it from another terminal:") + 2
    return [line.strip() for line in banner[start : banner.index("", start)]]


def is_log_line(line: str) -> bool:
    """Whether ``line`` is one of structlog's JSON lines (the banner's MCP config is not)."""
    try:
        parsed = json.loads(line)
    except ValueError:
        return False
    return isinstance(parsed, dict) and "event" in parsed


class TestPlanAndSettings:
    def test_default_plan_tells_the_whole_story(self) -> None:
        """Six hosts: both tiers, a role shared by two hosts of a tier, exactly one that fails."""
        plan = plan_hosts(DEFAULT_SANDBOX_HOSTS)
        assert len(plan) == 6
        assert {h.tier for h in plan} == {Tier.TEST, Tier.PROD}
        web_test = [h.name for h in plan if h.tier is Tier.TEST and h.role == "web"]
        assert len(web_test) == 2
        failing = [h for h in plan if h.fails]
        assert len(failing) == 1 and failing[0].tier is Tier.TEST

    def test_larger_plans_have_unique_names(self) -> None:
        """Any size up to the maximum gets distinct hostnames in both tiers."""
        plan = plan_hosts(50)
        assert len({h.name for h in plan}) == 50
        assert {h.tier for h in plan[6:]} == {Tier.TEST, Tier.PROD}

    @pytest.mark.parametrize(
        ("flags", "message"),
        [
            ({"hosts": "2"}, "--hosts must be 3 to 50"),
            ({"hosts": "many"}, "--hosts must be a whole number"),
            ({"port": "70000"}, "--port must be 0"),
            ({"sim_delay": "-1"}, "--sim-delay must be 0 to 60"),
            ({"cluster": "0"}, "--cluster must be 1 (a single nats-server) to 5, not 0"),
            ({"cluster": "6"}, "--cluster must be 1 (a single nats-server) to 5, not 6"),
            ({"cluster": "three"}, "--cluster must be a whole number"),
            ({"dashboard_port": "65536"}, "--dashboard-port must be 0 (any free port) to 65535"),
        ],
    )
    def test_bad_flags_are_usage_errors(self, flags: dict[str, str], message: str) -> None:
        """Out-of-range or malformed flags raise a UsageError that names the flag."""
        with pytest.raises(UsageError, match=re.escape(message)):
            sandbox_settings(flags)

    def test_tour_defaults_to_a_free_port(self) -> None:
        """--once picks free ports by default (NATS and the dashboard); the long-lived
        sandbox defaults to 4222 and the dashboard to 8420."""
        once = sandbox_settings({"once": True})
        assert (once.port, once.dashboard_port) == (0, 0)
        assert (sandbox_settings({}).port, sandbox_settings({}).dashboard_port) == (4222, 8420)

    def test_one_server_unless_a_cluster_is_asked_for(self) -> None:
        """--cluster defaults to 1, a single nats-server; 3 asks for a cluster of three."""
        assert sandbox_settings({}).cluster == 1
        assert sandbox_settings({"cluster": "3"}).cluster == 3


class TestSandbox:
    def test_serves_discovery_and_a_deploy_then_sigterm_stops_everything(
        self, tmp_path: Path, start_sandbox: type[RunningSandbox]
    ) -> None:
        """The CLI discovers all six hosts with the admin key (the test tier's with the test
        key) and deploys the test tier (web2 fails with its nix error); SIGTERM then ends the
        sandbox with 0, leaving no process and keeping --dir."""
        sandbox = start_sandbox(tmp_path, "--dir", str(tmp_path / "sbx"))
        assert sandbox.directory == tmp_path / "sbx"
        assert "mcpServers" in sandbox.lines.text()

        hosts = sandbox.cli("hosts", "--json", key=ADMIN)
        assert hosts.returncode == 0, hosts.stderr
        found = {h["hostname"]: h["tier"] for h in json.loads(hosts.stdout)}
        assert found == {h.name: h.tier.value for h in plan_hosts(DEFAULT_SANDBOX_HOSTS)}
        test_key = sandbox.cli("hosts", "--json")
        assert {h["hostname"] for h in json.loads(test_key.stdout)} == TEST_HOSTS

        deploy = sandbox.cli("deploy", "deploy.test.all", "--json")
        assert deploy.returncode == 1, deploy.stderr
        result = json.loads(deploy.stdout)
        statuses = {h["hostname"]: (h["status"], h["error"]) for h in result["hosts"]}
        assert statuses == {
            "web1": ("completed", None),
            "db1": ("failed", "rolled_back"),  # its new system cut its network
            "web2": ("failed", "build_failed"),
        }
        web2 = next(h for h in result["hosts"] if h["hostname"] == "web2")
        assert "undefined variable 'webroot'" in web2["message"]
        # db1 went back by itself, to the exact system it ran before: its links say so.
        db1_root = host_root(sandbox.directory, "db1")
        running = current(db1_root)
        assert running is not None and running == profile(db1_root)
        assert running.name.endswith("-initial")
        assert any("hosts/web2/nginx.nix" in line for line in web2["log_tail"])

        build = sandbox.cli("build", "fleet", "all", "--json")
        assert build.returncode == 1, build.stderr  # web2's configuration fails to build
        built = json.loads(build.stdout)
        states = {h["host"]: h["state"] for h in built["hosts"]}
        assert states == {
            h.name: "failed" if h.name == "web2" else "built"
            for h in plan_hosts(DEFAULT_SANDBOX_HOSTS)
        }
        cached = {  # a signed narinfo: its StorePath line names the path
            line.removeprefix("StorePath: ")
            for p in (sandbox.directory / "cache").glob("*.narinfo")
            for line in p.read_text().splitlines()
            if line.startswith("StorePath: ")
        }
        assert cached == {h["store_path"] for h in built["hosts"] if h["state"] == "built"}

        watch = PidWatch(sandbox.tree())
        try:
            assert any("nats-server" in command for _, command in watch.fds.values())
            assert sandbox.stop(signal.SIGTERM) == 0, sandbox.errors()
            assert watch.still_running() == []
        finally:
            watch.close()
        assert "sandbox stopped (SIGTERM)" in sandbox.lines.text()
        assert load_seed(sandbox.key(TEST_DEPLOYER)).public_key  # kept, still 0600
        assert "Traceback" not in sandbox.errors()

    def test_sigterm_to_the_demo_script_stops_the_sandbox(self, tmp_path: Path) -> None:
        """``./scripts/demo --stay`` becomes the sandbox: a kill of the script's pid (what a
        user or a service manager sends) stops everything, nothing is left holding the port."""
        demo = (sys.executable, str(ROOT / "scripts" / "demo"), "--stay")
        sandbox = RunningSandbox(tmp_path, "--dir", str(tmp_path / "sbx"), program=demo)
        try:
            watch = PidWatch(sandbox.tree())
            try:
                assert any("nats-server" in command for _, command in watch.fds.values())
                assert sandbox.stop(signal.SIGTERM) == 0, sandbox.errors()
                assert watch.still_running() == []
            finally:
                watch.close()
            assert "sandbox stopped (SIGTERM)" in sandbox.lines.text()
        finally:
            sandbox.cleanup()

    def test_ctrl_c_during_a_deploy_ends_every_process_and_removes_the_directory(
        self, tmp_path: Path, start_sandbox: type[RunningSandbox]
    ) -> None:
        """SIGINT to the sandbox's process group (Ctrl-C) while three rebuilds run: it exits
        0, no rebuild, no nats-server is left, and its temporary directory is gone."""
        sandbox = start_sandbox(tmp_path, "--sim-delay", "5")
        deploy = sandbox.popen_cli("deploy", "deploy.test.all")
        try:
            wait_until_hosts_run(deploy, TEST_HOSTS)
            tree = sandbox.tree()
            # The job runner's argv names the rebuild too: count the rebuilds themselves.
            rebuilds = [c for c in tree.values() if "nixos-rebuild" in c and "job_runner" not in c]
            assert len(rebuilds) == len(TEST_HOSTS), tree
            watch = PidWatch(tree)
            try:
                assert sandbox.stop(signal.SIGINT, group=True) == 0, sandbox.errors()
                assert watch.still_running() == []
            finally:
                watch.close()
        finally:
            deploy.kill()  # its server is gone: it would wait for the hosts to go silent
            deploy.wait(10)
            assert deploy.stdout is not None
            deploy.stdout.close()
        assert "sandbox stopped (SIGINT)" in sandbox.lines.text()
        assert not sandbox.directory.exists()
        assert "Traceback" not in sandbox.errors()

    def test_sigterm_during_a_deploy_tells_the_deployer_cancelled(
        self, tmp_path: Path, start_sandbox: type[RunningSandbox]
    ) -> None:
        """SIGTERM to the sandbox alone while rebuilds run: each host reports failed/cancelled
        to the waiting deployer before the server stops, and no process is left."""
        sandbox = start_sandbox(tmp_path, "--sim-delay", "5")
        deploy = sandbox.popen_cli("deploy", "deploy.test.all")
        assert deploy.stdout is not None
        try:
            lines = wait_until_hosts_run(deploy, TEST_HOSTS)
            watch = PidWatch(sandbox.tree())
            try:
                assert sandbox.stop(signal.SIGTERM) == 0, sandbox.errors()
                assert watch.still_running() == []
            finally:
                watch.close()
            assert deploy.wait(30) == 1
            output = lines.rest()
        finally:
            if deploy.poll() is None:
                deploy.kill()
                deploy.wait(10)
            deploy.stdout.close()
        for host in TEST_HOSTS:
            assert re.search(rf"^\s+{host}\s+failed\s+cancelled:", output, re.M), output
        assert not sandbox.directory.exists()

    def test_nats_config_reproduces_the_sandbox_server_config(
        self, tmp_path: Path, start_sandbox: type[RunningSandbox]
    ) -> None:
        """`nats-config` on the sandbox's saved inventory writes the config its server runs."""
        sandbox = start_sandbox(tmp_path, "--dir", str(tmp_path / "sbx"), "--hosts", "3")
        try:
            inventory = sandbox.directory / "inventory.toml"
            store = sandbox.directory / "nats" / "jetstream"  # the sandbox keeps its history
            rendered = subprocess.run(
                [FLEET_DEPLOY, "nats-config", str(inventory), "--jetstream-dir", str(store)],
                capture_output=True,
                text=True,
                env=clean_env(),
                timeout=30,
                check=True,
            )
            running = (sandbox.directory / "nats" / "nats-server.conf").read_text()
            assert rendered.stdout == running
            assert inventory.read_text().count("[hosts.") == 3
        finally:
            assert sandbox.stop(signal.SIGINT) == 0

    def test_second_sandbox_in_same_dir_is_refused_and_keys_are_reused(
        self, tmp_path: Path, start_sandbox: type[RunningSandbox]
    ) -> None:
        """While one sandbox runs in a --dir another is refused (exit 2); the next one there
        reuses its keys, so a pasted MCP config keeps working."""
        directory = tmp_path / "sbx"
        first = start_sandbox(tmp_path, "--dir", str(directory), "--hosts", "3")
        admin_key = load_seed(first.key(ADMIN)).public_key
        second = subprocess.run(
            [FLEET_DEPLOY, "sandbox", "--port", "0", "--dir", str(directory)],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=30,
            check=False,
        )
        assert second.returncode == 2
        assert "another sandbox is running" in second.stderr
        assert first.stop(signal.SIGINT) == 0
        third = start_sandbox(tmp_path, "--dir", str(directory), "--hosts", "3")
        try:
            assert load_seed(third.key(ADMIN)).public_key == admin_key
            assert third.cli("hosts", key=ADMIN).returncode == 0
        finally:
            assert third.stop(signal.SIGTERM) == 0

    def test_a_cluster_serves_the_cli_on_the_printed_urls(
        self, tmp_path: Path, start_sandbox: type[RunningSandbox]
    ) -> None:
        """--cluster 3 prints three comma-separated URLs; the CLI given them discovers every
        host (with the admin key); SIGTERM then ends all three nats-servers and every other
        process."""
        sandbox = start_sandbox(tmp_path, "--cluster", "3", "--hosts", "3")
        assert len(sandbox.url.split(",")) == 3
        assert "a cluster of 3 nats-servers" in sandbox.lines.text()
        assert f"FLEET_DEPLOY_NATS_URL={sandbox.url}" in sandbox.lines.text()
        hosts = sandbox.cli("hosts", "--json", key=ADMIN)
        assert hosts.returncode == 0, hosts.stderr
        assert {h["hostname"] for h in json.loads(hosts.stdout)} == {"web1", "web2", "pweb1"}
        watch = PidWatch(sandbox.tree())
        try:
            servers = [c for _, c in watch.fds.values() if "nats-server" in c]
            assert len(servers) == 3, servers
            assert sandbox.stop(signal.SIGTERM) == 0, sandbox.errors()
            assert watch.still_running() == []
        finally:
            watch.close()
        assert "Traceback" not in sandbox.errors()

    def test_the_printed_commands_work_pasted_into_a_fresh_terminal(
        self, tmp_path: Path, start_sandbox: type[RunningSandbox]
    ) -> None:
        """Started with no virtualenv on PATH (as ./scripts/demo's PATH is not a new
        terminal's), the banner puts this install's scripts on PATH and then types the bare
        fleet-deploy; each command, pasted into a new bash with only the system's PATH, runs
        and ends as the banner says: web2 fails, the test key is refused prod (exit 2)."""
        bash = shutil.which("bash")
        assert bash is not None, "a terminal to paste into: bash (every machine .ci/run runs on)"
        fresh = {"PATH": FRESH_PATH, "HOME": str(tmp_path)}
        sandbox = start_sandbox(tmp_path, "--hosts", "4", "--sim-delay", "0.02", env=fresh)
        block = try_it_block(sandbox.lines.seen)
        exports = [line for line in block if line.startswith("export ")]
        assert exports[0] == f'export PATH={shlex.quote(str(Path(FLEET_DEPLOY).parent))}:"$PATH"'
        admin_key = str(sandbox.key(ADMIN))
        ran: dict[str, subprocess.CompletedProcess[str]] = {}
        for command in (line for line in block if not line.startswith("export ")):
            words = shlex.split(command, comments=True)
            assert words[0] == "fleet-deploy", command  # bare, as README shows it
            pasted = "\n".join([*exports, command])
            ran[" ".join("ADMIN" if w == admin_key else w for w in words[1:])] = subprocess.run(
                [bash, "--noprofile", "--norc", "-e", "-c", pasted],
                capture_output=True,
                text=True,
                env=fresh,
                cwd=tmp_path,
                timeout=60,
                check=False,
            )
        outputs = {command: done.stdout + done.stderr for command, done in ran.items()}
        assert {command: done.returncode for command, done in ran.items()} == {
            "hosts": 0,
            "deploy deploy.test.all": 1,
            "status": 1,  # the failing host's last deploy failed, and it is behind master
            "history": 0,
            "deploy deploy.test.role.web --branch feature/login --action test": 1,
            "deploy deploy.prod.all": 2,
            "deploy deploy.prod.all --nkey-file ADMIN": 0,
            "build fleet all": 1,
            "deploy deploy.test.all --build fleet": 1,  # web2's build fails: it is sent nothing
        }, outputs
        assert "command not found" not in "".join(outputs.values())
        found = set(re.findall(r"^(\S+)\s+test\s", ran["hosts"].stdout, re.M))
        assert found == {"web1", "web2", "db1"}, outputs["hosts"]
        web = outputs["deploy deploy.test.role.web --branch feature/login --action test"]
        assert re.search(r"^\s+web1\s+completed\s+test of feature/login done", web, re.M), web
        assert "permission to publish to 'deploy.prod.all'" in outputs["deploy deploy.prod.all"]
        closure = outputs["deploy deploy.test.all --build fleet"]  # the system built for web1
        built_for_web1 = r"^\s+web1\s+completed\s+\S+\s+switch of /nix/store/\S+-nixos-system-web1-"
        assert re.search(built_for_web1, closure, re.M), closure
        status = outputs["status"]  # measured on each host's simulated system
        assert status.startswith("reference revision: master (the newest deploy on record"), status
        assert re.search(r"^web1\s+test\s+web\s+master\s+no\s+no\s+switch master", status, re.M)
        assert "prod hosts are not shown" in status
        history = ran["history"].stdout  # the deploy to deploy.test.all above
        assert re.search(
            r"^[0-9a-f]{32}\s.*\sswitch\s+master\s+1 completed, 2 failed", history, re.M
        )
        assert sandbox.stop(signal.SIGTERM) == 0, sandbox.errors()

    def test_logs_go_to_the_directory_not_the_terminal(
        self, tmp_path: Path, start_sandbox: type[RunningSandbox]
    ) -> None:
        """The listeners and the builder log JSON lines to <dir>/logs/sandbox.log, which the
        banner names: their "listening" events and a deploy's events, host by host, are
        there, and neither stdout nor stderr carries a single log line."""
        sandbox = start_sandbox(tmp_path, "--dir", str(tmp_path / "sbx"), "--hosts", "3")
        log = sandbox.directory / LOG_FILE
        assert re.search(
            rf"^\s+logs\s+{re.escape(str(log))}\s.*tail -f", sandbox.lines.text(), re.M
        )
        deploy = sandbox.cli("deploy", "deploy.test.all", "--json")
        assert deploy.returncode == 1, deploy.stderr  # web2's rebuild fails
        deployment = json.loads(deploy.stdout)["deployment_id"]
        assert sandbox.stop(signal.SIGTERM) == 0, sandbox.errors()

        terminal = [*sandbox.lines.seen, *sandbox.errors().splitlines()]
        assert [line for line in terminal if is_log_line(line)] == []
        events = [json.loads(line) for line in log.read_text().splitlines()]
        listening = {e.get("host", e.get("builder")) for e in events if e["event"] == "listening"}
        assert listening == {"web1", "web2", "pweb1", "buildbox"}
        ours = {(e["event"], e["host"]) for e in events if e.get("request_id") == deployment}
        for host in ("web1", "web2"):
            assert {("request_accepted", host), ("job_finished", host)} <= ours, ours
        # The listeners' shutdown is logged there too: the file outlives them.
        stopped = {e.get("host", e.get("builder")) for e in events if e["event"] == "stopped"}
        assert stopped == {"web1", "web2", "pweb1", "buildbox"}

    def test_busy_port_is_a_clear_usage_error(self, tmp_path: Path) -> None:
        """A port another program listens on gives exit 2 and a message naming the port."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = subprocess.run(
                [FLEET_DEPLOY, "sandbox", "--port", str(port), "--dir", str(tmp_path / "sbx")],
                capture_output=True,
                text=True,
                env=clean_env(),
                timeout=30,
                check=False,
            )
        assert result.returncode == 2, result.stderr
        assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
        assert "--port 0" in result.stderr


class TestTour:
    def test_once_runs_the_tour_and_exits_0(self) -> None:
        """--once discovers, deploys the test tier with live lines, explains web2's failure,
        shows the test key refused on prod and the admin key allowed, exits 0 and cleans up."""
        result = subprocess.run(
            [FLEET_DEPLOY, "sandbox", "--once"],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        for expected in (
            "1. Who is listening?",
            "web1  test  web",
            "keeps prod's answers from the test key",
            "web1                 progress",
            "web2                 failed     build_failed: nixos-rebuild failed (exit 1): "
            "undefined variable 'webroot'",
            "--- last output of web2 ---",
            "refused at once by the NATS server",
            "permission to publish to 'deploy.prod.all'",
            "OK: 2 completed",
            "6. Build every host's system once, for the binary cache",
            "web2                 failed         ",
            "failed: 1 of 6 hosts failed: web2 (build_failed)",
            "a build finds it before any host switches",
            "Tour complete.",
        ):
            assert expected in out, out
        assert re.search(r"^  dashboard http://127\.0\.0\.1:\d+/   read-only, ", out, re.M), out
        directory = next(Path(m.group(1)) for m in re.finditer(r"directory (\S+)", out))
        assert not directory.exists()

    def test_once_on_a_cluster_of_three(self, tmp_path: Path) -> None:
        """--once --cluster 3 runs the whole tour on three routed nats-servers, exits 0,
        and leaves none of them, nor any other process, running."""
        stderr_path = tmp_path / "tour.err"
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen(
                [FLEET_DEPLOY, "sandbox", "--once", "--cluster", "3"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=clean_env(),
                start_new_session=True,
            )
        assert process.stdout is not None
        lines = Lines(process.stdout)
        watch: PidWatch | None = None
        try:
            lines.wait_for(READY_LINE)  # printed once every listener serves, before the tour
            watch = PidWatch(descendants(process.pid))
            servers = [c for _, c in watch.fds.values() if "nats-server" in c]
            assert len(servers) == 3, servers
            assert process.wait(60) == 0, lines.rest() + stderr_path.read_text()
            assert watch.still_running() == []
        finally:
            if watch is not None:
                watch.close()
            if process.poll() is None:
                process.kill()
                process.wait(10)
            out = lines.rest()
            process.stdout.close()
        urls = _URL.search(out)
        assert urls is not None and len(urls.group(0).split(",")) == 3, out
        assert "(a cluster of 3 nats-servers, pids " in out
        assert "Tour complete." in out, out
        directory = next(Path(m.group(1)) for m in re.finditer(r"directory (\S+)", out))
        assert not directory.exists()


def sse_fleet_bodies(url: str, limit: float = 20.0) -> Iterator[dict[str, Any]]:
    """The ``fleet`` events of a dashboard's /api/events stream, as they come, until
    ``limit`` seconds have passed (each read waits at most that long)."""
    deadline = time.monotonic() + limit
    with httpx.stream("GET", url + "api/events", timeout=limit) as response:
        assert response.status_code == 200, response.status_code
        name, data = "", []
        for line in response.iter_lines():
            if time.monotonic() > deadline:
                pytest.fail(f"no expected fleet event from {url} within {limit} s")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif not line and data:
                if name == "fleet":
                    yield json.loads("\n".join(data))
                name, data = "", []


class TestDashboard:
    def test_it_serves_the_fleet_read_only_on_a_free_port_when_its_own_is_busy(
        self, tmp_path: Path, start_sandbox: type[RunningSandbox]
    ) -> None:
        """With --dashboard-port taken by another program, the sandbox still starts: the
        banner names the free port it took instead, and the page and the whole fleet (both
        tiers, through the observer key) are served there. The banner's dashboard key is an
        observer's: the server refuses it a deploy."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = taken.getsockname()[1]
            sandbox = start_sandbox(tmp_path, "--dashboard-port", str(busy))
            banner = sandbox.lines.text()
            line = re.search(
                r"^  dashboard\s+(http://127\.0\.0\.1:(\d+)/)   read-only, with the observer key "
                r"(\S+); port (\d+) was busy$",
                banner,
                re.M,
            )
            assert line is not None, banner
            url, port, key, said_busy = line.groups()
            assert int(said_busy) == busy
            assert int(port) != busy
            assert Path(key) == sandbox.key(DASHBOARD)
            page = httpx.get(url, timeout=10)
            assert page.status_code == 200
            assert 'id="fleet"' in page.text
            plan = {h.name: h.tier.value for h in plan_hosts(DEFAULT_SANDBOX_HOSTS)}
            for body in sse_fleet_bodies(url):
                listed = {row["hostname"]: row["tier"] for row in body["hosts"]}
                if listed == plan:
                    break
            assert body["tiers_hidden"] == []
            assert body["actions"] is False
        refused = sandbox.cli("deploy", "deploy.test.web1", key=DASHBOARD)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "deploy.test.web1" in refused.stderr
