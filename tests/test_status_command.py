"""``fleet-deploy status``: the installed console script as a real subprocess, against real
listeners on simulated system profiles and a real nats-server; exit codes 0, 1 and 2."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fleet_core.protocol.actions import Action
from fleet_core.testing import init_root, simulated_facts, simulated_rollback
from fleet_core.testing.simulated_system import (
    reboot,
)

from .conftest import Fleet

pytestmark = pytest.mark.anyio

WEB = ("web1", "web2")


@asynccontextmanager
async def hosts(
    fleet: Fleet, tmp_path: Path, *names: str, sim: tuple[str, ...] = ()
) -> AsyncIterator[dict[str, Path]]:
    """Listeners for ``names``, each on a simulated root of its own; yields the roots."""
    roots = {name: tmp_path / f"{name}-root" for name in names}
    for name, root in roots.items():
        init_root(root, name)
    chosen = [
        fleet.settings(
            name,
            "--sim-root",
            str(root),
            *sim,
            rollback=simulated_rollback(root),
            # Links looked at by every discovery: a simulated reboot leaves the listener
            # running (a real one restarts it, and it measures anew).
            facts=replace(simulated_facts(root), recheck_after=0.0),
        )
        for name, root in roots.items()
    ]
    async with fleet.local.listeners(chosen):
        yield roots


async def status(
    fleet: Fleet, *args: str, who: str = "deployer", url: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    return await fleet.cli(
        "status", *args, "--nats-url", url or fleet.url, "--nkey-file", str(fleet.keys[who])
    )


async def status_json(fleet: Fleet, *args: str, who: str = "deployer") -> tuple[int, Any]:
    done = await status(fleet, *args, "--json", who=who)
    return done.returncode, json.loads(done.stdout)


async def deploy(fleet: Fleet, subject: str, revision: str, action: Action = Action.SWITCH) -> None:
    result = await fleet.deploy(subject, revision=revision, action=action)
    assert result.ok, [h.message for h in result.hosts]


class TestExitCodes:
    async def test_every_host_at_the_last_deployed_revision_is_exit_0(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """After a deploy of v2 to the tier, status compares with v2 (and says so): 0."""
        async with hosts(fleet, tmp_path, *WEB):
            await deploy(fleet, "deploy.test.all", "v2")
            code, report = await status_json(fleet, "deploy.test.all")
            table = await status(fleet, "deploy.test.all")
        assert code == 0, report
        assert (report["revision"], report["revision_source"]) == ("v2", "last_deploy")
        assert [(h["hostname"], h["revision"], h["behind"]) for h in report["hosts"]] == [
            ("web1", "v2", False),
            ("web2", "v2", False),
        ]
        assert all(h["last_job"]["status"] == "completed" for h in report["hosts"])
        assert table.returncode == 0
        text = table.stdout.decode()
        assert "reference revision: v2 (the newest deploy on record" in text
        assert text.splitlines()[-1].startswith("ok: 2 hosts, 2 at the revision")

    async def test_a_host_behind_the_revision_asked_for_is_exit_1(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """--revision v3 when the hosts run v2: every host is behind, exit 1."""
        async with hosts(fleet, tmp_path, *WEB):
            await deploy(fleet, "deploy.test.all", "v2")
            code, report = await status_json(fleet, "deploy.test.all", "--revision", "v3")
            table = await status(fleet, "deploy.test.all", "--revision", "v3")
        assert code == 1
        assert report["revision_source"] == "flag"
        assert [h["behind"] for h in report["hosts"]] == [True, True]
        assert table.returncode == 1
        assert "BEHIND" in table.stdout.decode()
        assert table.stdout.decode().splitlines()[-1].startswith("NOT OK: 2 hosts, 0 at")

    async def test_one_host_behind_the_last_deploy_makes_the_group_exit_1(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """v3 went to web2 only: it is the newest deploy, and web1 (at v2) is behind."""
        async with hosts(fleet, tmp_path, *WEB):
            await deploy(fleet, "deploy.test.all", "v2")
            await deploy(fleet, "deploy.test.web2", "v3")
            code, report = await status_json(fleet, "deploy.test.all")
            alone, _ = await status_json(fleet, "deploy.test.web2")
        assert code == 1
        assert report["revision"] == "v3"
        assert {h["hostname"]: h["behind"] for h in report["hosts"]} == {
            "web1": True,
            "web2": False,
        }
        assert alone == 0  # web2 alone is at the revision last deployed to it

    async def test_a_pending_reboot_is_exit_1_until_the_reboot(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """A switch to another kernel needs a reboot: exit 1, and 0 once rebooted."""
        async with hosts(fleet, tmp_path, "web1", sim=("--sim-kernel", "6.12.1")) as roots:
            await deploy(fleet, "deploy.test.web1", "v2")
            before, report = await status_json(fleet, "deploy.test.web1", "--revision", "v2")
            reboot(roots["web1"])
            after, _ = await status_json(fleet, "deploy.test.web1", "--revision", "v2")
        assert (before, after) == (1, 0)
        [host] = report["hosts"]
        assert (host["needs_reboot"], host["behind"]) == (True, False)
        assert "needs a reboot" in host["problems"]

    async def test_a_failed_last_deploy_is_exit_1(self, fleet: Fleet, tmp_path: Path) -> None:
        """The last deploy failed to build: the host runs what it ran, and is not healthy."""
        async with hosts(fleet, tmp_path, "web1", sim=("--sim-fail-revision", "broken")):
            await deploy(fleet, "deploy.test.web1", "v2")
            await fleet.deploy("deploy.test.web1", revision="broken")
            code, report = await status_json(fleet, "deploy.test.web1")
            table = await status(fleet, "deploy.test.web1")
        assert code == 1
        [host] = report["hosts"]
        assert (report["revision"], host["revision"], host["behind"]) == ("broken", "v2", True)
        assert host["last_job"]["error"] == "build_failed"
        assert "failed (build_failed)" in table.stdout.decode()

    async def test_a_named_host_that_does_not_answer_is_exit_1(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """deploy.test.db1 with no db1 listening: a row that says so, and exit 1."""
        async with hosts(fleet, tmp_path, "web1"):
            code, report = await status_json(fleet, "deploy.test.db1")
        assert code == 1
        assert [(h["hostname"], h["answered"]) for h in report["hosts"]] == [("db1", False)]

    async def test_a_bad_revision_is_a_usage_error_exit_2(self, fleet: Fleet) -> None:
        """A revision that could never be deployed is refused before connecting: exit 2."""
        done = await status(fleet, "deploy.test.all", "--revision", "--upload-pack=x")
        assert done.returncode == 2
        assert b"revision" in done.stderr

    async def test_a_server_that_cannot_be_reached_is_exit_2(self, fleet: Fleet) -> None:
        """Nothing listens on the port: a connection error, exit 2."""
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        done = await status(fleet, url=f"nats://127.0.0.1:{port}")
        assert done.returncode == 2
        assert done.stderr


class TestTiers:
    async def test_the_test_key_sees_the_test_tier_only(self, fleet: Fleet, tmp_path: Path) -> None:
        """With a prod host listening, the test key's status lists the test host alone and
        says prod is not shown; the admin key sees both."""
        async with hosts(fleet, tmp_path, "web1", "pweb1"):
            code, report = await status_json(fleet)
            shown = await status(fleet)
            admin_code, admin = await status_json(fleet, who="admin")
        assert [h["hostname"] for h in report["hosts"]] == ["web1"]
        assert b"prod hosts are not shown" in shown.stderr
        assert [h["hostname"] for h in admin["hosts"]] == ["pweb1", "web1"]
        assert (code, admin_code) == (0, 0)  # fresh hosts, nothing deployed: nothing behind
