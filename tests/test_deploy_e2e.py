"""End to end over a real nats-server: the right hosts run the right argv, nothing else runs."""

from __future__ import annotations

import json

import pytest

from fleet_core.bus import Message
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.protocol.actions import Action

from .conftest import HOSTS, TEST_HOSTS, Fleet, expected_argv

pytestmark = pytest.mark.anyio


class TestTargets:
    @pytest.mark.smoke  # ./scripts/test --quick runs this one real deploy
    async def test_one_host(self, fleet: Fleet) -> None:
        """Deploying deploy.test.web1 runs exactly web1's argv and nothing on any other host."""
        async with fleet.listeners(*HOSTS):
            result = await fleet.deploy("deploy.test.web1")
        assert result.ok and result.done
        assert [h.hostname for h in result.hosts] == ["web1"]
        assert fleet.runs() == [expected_argv("web1")]

    async def test_whole_tier(self, fleet: Fleet) -> None:
        """deploy.test.all reaches every test host and no prod host."""
        async with fleet.listeners(*HOSTS):
            result = await fleet.deploy("deploy.test.all")
        assert result.ok
        assert sorted(h.hostname for h in result.hosts) == TEST_HOSTS
        assert result.counts == {"completed": len(TEST_HOSTS)}
        assert fleet.hosts_run() == TEST_HOSTS

    async def test_role(self, fleet: Fleet) -> None:
        """deploy.test.role.web reaches the test web hosts only, not the prod web host."""
        async with fleet.listeners(*HOSTS):
            result = await fleet.deploy("deploy.test.role.web", revision="release/2024.11")
        assert result.ok
        assert fleet.hosts_run() == ["web1", "web2", "web3"]
        assert sorted(fleet.runs()) == sorted(
            expected_argv(h, "release/2024.11") for h in ("web1", "web2", "web3")
        )

    async def test_commit_and_action(self, fleet: Fleet) -> None:
        """A full commit hash is passed as rev=, and the requested action is used."""
        commit = "0123456789abcdef0123456789abcdef01234567"
        async with fleet.listeners("db1"):
            result = await fleet.deploy("deploy.test.db1", revision=commit, action=Action.BOOT)
        assert result.ok
        assert fleet.runs() == [expected_argv("db1", commit, "boot")]

    async def test_stream_with_intermediate_statuses_is_success(self, fleet: Fleet) -> None:
        """A deploy whose stream holds accepted, started and progress still counts as success."""
        seen: list[str] = []

        def on_update(host: HostResult, _: DeploymentResult) -> None:
            seen.append(host.status)

        async with fleet.listeners("web1"):
            result = await fleet.deploy("deploy.test.web1", on_update=on_update)
        assert result.ok
        assert seen[:2] == ["accepted", "started"]
        assert "progress" in seen
        assert seen[-1] == "completed"
        assert result.hosts[0].message.startswith("switch of master done: /nix/store/")


class TestHostileAnswers:
    async def test_garbage_from_a_listener_key_is_ignored(self, fleet: Fleet) -> None:
        """Junk answers to discovery and to the deploy (from a listener's key, on the subject
        bound to it) change nothing."""
        junk = (b"[" * 60000, b"not json", b'{"hostname": 5}', b"[]", b"{}")
        rogue = await fleet.connect("web2")  # it may publish on deploy.responses.*.test.web2

        async def answer(msg: Message) -> None:
            reply = json.loads(msg.data)["reply_to"]
            for body in junk:
                await rogue.publish(f"{reply}.test.web2", body)

        try:
            await rogue.subscribe("deploy.discover", answer)
            await rogue.subscribe("deploy.test.all", answer)
            await rogue.flush()
            async with fleet.listeners("web1"):
                result = await fleet.deploy("deploy.test.all")
        finally:
            await rogue.close()
        assert result.ok
        assert [(h.hostname, h.status) for h in result.hosts] == [("web1", "completed")]
