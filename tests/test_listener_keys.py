"""A listener whose key may not hear its own deploy subjects or send its own statuses does not
start: it exits 2, naming the key, the host it was told it is and the refused subject, and
runs no rebuild (``fleet_core.host.preflight``).

Real nats-server, real keys, and the installed ``fleet-deploy listener`` as a subprocess:
each test waits for the process to exit (or to log that it listens) within a deadline. While
a refused listener starts, a deployer publishes ``deploy.test.all`` again and again, each
after the server confirmed the last (a flush), until the listener has exited.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from fleet_core.bus import Bus, Message
from fleet_core.errors import PermissionDenied
from fleet_core.host.listener import Listener
from fleet_core.host.preflight import PROBE_PREFIX

from .conftest import Fleet
from .support import running_daemon

pytestmark = pytest.mark.anyio

BOTH_LAYOUTS = pytest.mark.parametrize("fleet", ["bound", "homelab"], indirect=True)
EXIT_LIMIT = 30.0  # a refused listener exits within this (Python's start-up included)


def argv_as(fleet: Fleet, hostname: str, key: str, *extra: str, state: Path) -> list[str]:
    """``fleet-deploy listener`` with ``key``'s seed, tier and role, told it is ``hostname``."""
    argv = fleet.listener_argv(key, "--rebuild-runner", "session", *extra, state=state)
    argv[argv.index("--hostname") + 1] = hostname
    return argv


async def deploy_test_all(bus: Bus) -> None:
    """Publish one unsigned ``deploy.test.all`` (the listeners here trust no key, so they
    would take it) and wait until the server has handled it."""
    request_id = uuid.uuid4().hex
    body = {
        "action": "switch",
        "revision": "master",
        "reply_to": f"deploy.responses.{request_id}",
        "id": request_id,
        "bind": True,
    }
    await bus.publish("deploy.test.all", json.dumps(body).encode())
    await bus.flush()


async def refused_start(fleet: Fleet, argv: list[str]) -> tuple[int, str, int]:
    """Start ``argv`` and deploy ``deploy.test.all`` until it exits: its exit status, its
    stderr, and how many requests were sent meanwhile."""
    sent = 0

    async def keep_deploying() -> None:
        nonlocal sent
        async with await fleet.connect("deployer") as bus:
            while True:
                await deploy_test_all(bus)
                sent += 1
                # Bus.flush waits for the server shielded, so this is where a cancel lands.
                await anyio.lowlevel.checkpoint()

    async with (
        running_daemon(argv, fleet.cli_env()) as daemon,
        anyio.create_task_group() as deploying,
    ):
        deploying.start_soon(keep_deploying)
        code = await daemon.exit_code(EXIT_LIMIT)
        deploying.cancel_scope.cancel()
    return code, daemon.log.decode(errors="replace"), sent


def assert_nothing_ran(fleet: Fleet, state: Path) -> None:
    jobs = state / "jobs"
    assert not jobs.exists() or not any(jobs.iterdir()), "a job was taken"
    assert fleet.runs() == []


class TestAnotherHostsKey:
    async def test_web9_with_web1s_seed_exits_2_and_runs_nothing(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """As web9 with web1's seed: exit 2 naming key, host and both subjects; no rebuild."""
        state = tmp_path / "web9"
        code, log, sent = await refused_start(fleet, argv_as(fleet, "web9", "web1", state=state))
        assert code == 2, log
        assert sent > 0
        assert fleet.seed("web1").public_key in log
        assert "fleet-deploy: error:" in log
        assert "as web9 (tier test)" in log
        assert "subscribe to 'deploy.test.web9'" in log
        assert "publish its statuses to 'deploy.responses.*.test.web9'" in log
        assert '"event": "listening"' not in log
        assert_nothing_ran(fleet, state)

    @pytest.mark.parametrize("fleet", ["homelab"], indirect=True)
    async def test_under_homelab_layout_the_refused_subscription_alone_stops_it(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """Under homelab's layout web9 with web1's seed exits 2 for deploy.test.web9 alone."""
        # There any listener key may publish deploy.responses.>: only the subscription fails.
        state = tmp_path / "web9"
        code, log, _ = await refused_start(fleet, argv_as(fleet, "web9", "web1", state=state))
        assert code == 2, log
        assert fleet.seed("web1").public_key in log
        assert "subscribe to 'deploy.test.web9'" in log
        assert "publish its statuses" not in log
        assert_nothing_ran(fleet, state)

    async def test_refused_statuses_alone_stop_it(self, fleet: Fleet, tmp_path: Path) -> None:
        """Hearing web1's subjects but answering as web9: exit 2 for the statuses alone."""
        # The only "publish refused, subscribe allowed" case of the generated config: a
        # listener's publish permission follows its tier and hostname, and so does its
        # deploy.<tier>.<hostname> subscription, so with the default subjects a refused
        # publish always comes with a refused subscription; --deploy-subject separates them.
        state = tmp_path / "web9"
        subjects = (
            "--deploy-subject",
            "deploy.<tier>.web1",
            "--deploy-subject",
            "deploy.<tier>.all",
        )
        argv = argv_as(fleet, "web9", "web1", *subjects, state=state)
        code, log, _ = await refused_start(fleet, argv)
        assert code == 2, log
        assert fleet.seed("web1").public_key in log
        assert "as web9 (tier test)" in log
        assert "publish its statuses to 'deploy.responses.*.test.web9'" in log
        assert "subscribe to" not in log
        assert_nothing_ran(fleet, state)

    async def test_a_refused_role_subject_alone_stops_it(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """web1 with its own seed but a wrong --role exits 2 naming deploy.test.role.db."""
        state = tmp_path / "web1"
        argv = argv_as(fleet, "web1", "web1", "--role", "db", state=state)
        code, log, _ = await refused_start(fleet, argv)
        assert code == 2, log
        assert fleet.seed("web1").public_key in log
        assert "subscribe to 'deploy.test.role.db'" in log
        assert "publish its statuses" not in log
        assert_nothing_ran(fleet, state)

    async def test_listener_serve_refuses_before_taking_any_job(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """Listener.serve as web9 on web1's connection raises PermissionDenied, takes no job."""
        settings = fleet.settings("web1", hostname="web9", state_dir=tmp_path / "web9")
        listener = Listener(settings)
        async with await fleet.connect("web1") as bus:
            with pytest.raises(PermissionDenied) as refused, anyio.fail_after(10):
                await listener.serve(bus)
        assert fleet.seed("web1").public_key in str(refused.value)
        assert refused.value.subject == "deploy.test.web9"
        assert listener.jobs.active == []
        assert_nothing_ran(fleet, tmp_path / "web9")


class TestTheRightKey:
    @BOTH_LAYOUTS
    async def test_a_correctly_keyed_listener_starts_and_deploys(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """web1 with its own seed starts under either layout, and a deploy to it completes."""
        argv = argv_as(fleet, "web1", "web1", state=tmp_path / "web1")
        async with running_daemon(argv, fleet.cli_env()) as daemon:
            await daemon.wait_for('"event": "listening"')
            result = await fleet.deploy("deploy.test.web1")
        assert [(h.hostname, h.status) for h in result.hosts] == [("web1", "completed")]
        assert fleet.hosts_run() == ["web1"]

    async def test_the_start_up_probe_is_an_empty_message_on_a_fresh_bound_subject(
        self, fleet: Fleet
    ) -> None:
        """A starting listener's one message: empty, on deploy.responses.probe-<hex>.test.web1."""
        seen: list[Message] = []
        arrived = anyio.Event()

        async def record(msg: Message) -> None:
            seen.append(msg)
            arrived.set()

        async with await fleet.connect("admin") as admin:
            await admin.subscribe("deploy.responses.>", record)
            await admin.flush()
            async with fleet.listeners("web1"):
                with anyio.fail_after(10):
                    await arrived.wait()
        (probe,) = seen
        assert re.fullmatch(re.escape(PROBE_PREFIX) + r"[0-9a-f]{32}\.test\.web1", probe.subject)
        assert probe.data == b""
