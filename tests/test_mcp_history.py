"""The MCP server and the recorded history, through real MCP client sessions against a real
nats-server with JetStream: deployment_status answers for a deployment the server does not
know (it restarted) from the history; deployment_history lists recorded deployments, and the
test key's server sees the test tier only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet_core.testing import FleetHost, local_fleet
from fleet_mcp.reports.deployment import DeploymentReport
from fleet_mcp.reports.history import HistoryReport

from .conftest import DEPLOYERS, HOSTS, Fleet
from .support import session, settings_for, text_of

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    hosts = [FleetHost(name, tier, role) for name, (tier, role) in HOSTS.items()]
    async with local_fleet(hosts, DEPLOYERS, root=tmp_path, history=True) as local:
        yield Fleet(local=local, record=tmp_path / "runs.jsonl")


class TestAfterARestart:
    async def test_deployment_status_reads_a_forgotten_deployment_from_history(
        self, fleet: Fleet
    ) -> None:
        """A deployment started through one server is reported by a new one (the first
        forgot it when it stopped) from the history, each host's outcome included."""
        async with fleet.listeners("web1", "web2", sim={"web2": ("--sim-fail",)}):
            async with session(settings_for(fleet), "auto") as first:
                started = await first.deploy(all=True, branch="master")
            async with session(settings_for(fleet), "auto") as second:
                listed = await second.call("list_deployments")
                assert listed.structured_content is not None
                assert listed.structured_content["deployments"] == []  # it knows none itself
                result = await second.call("deployment_status", deployment_id=started.deployment_id)
        assert not result.is_error, text_of(result)
        report = DeploymentReport.model_validate(result.structured_content)
        assert report.deployment_id == started.deployment_id
        assert {h.hostname: h.status for h in report.hosts} == {
            "web1": "completed",
            "web2": "failed",
        }
        assert report.state == "finished"

    async def test_a_host_with_no_final_status_recorded_is_asked(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """A deployment still running when the server restarted: the history has no final
        status for its host, so the new server asks the host (a job query), and reports
        what it answered, marked recovered."""
        release = tmp_path / "release"
        async with fleet.listeners("web1", sim={"web1": ("--sim-wait-for", str(release))}):
            async with session(settings_for(fleet), "auto") as first:
                started = await first.call("deploy", hostname="web1", wait_seconds=0)
                deployment_id = DeploymentReport.model_validate(
                    started.structured_content
                ).deployment_id
                await first.call("deployment_status", wait_seconds=2)
            async with session(settings_for(fleet), "auto") as second:
                result = await second.call("deployment_status", deployment_id=deployment_id)
            release.touch()
        assert not result.is_error, text_of(result)
        report = DeploymentReport.model_validate(result.structured_content)
        (host,) = report.hosts
        assert (host.hostname, host.status, host.recovered) == ("web1", "started", True)
        assert report.state == "running"

    async def test_an_id_nobody_recorded_is_still_an_error(self, fleet: Fleet) -> None:
        """An id neither this server nor the history knows is a tool error saying so."""
        async with session(settings_for(fleet), "legacy") as s:
            message = await s.error("deployment_status", deployment_id="f" * 32)
        assert "nor recorded in the history of the test tier" in message


class TestDeploymentHistory:
    async def test_the_test_keys_server_lists_the_test_tier_only(self, fleet: Fleet) -> None:
        """With the test key, deployment_history lists test deployments only (from the test
        hosts' job records: the test key may use no JetStream API), and refuses to be asked
        for prod; with the admin key, both tiers from JetStream, with who signed each."""
        async with fleet.listeners("web1", "pweb1"):
            test = await fleet.deploy("deploy.test.web1")
            prod = await fleet.deploy("deploy.prod.pweb1", who="admin")
            async with session(settings_for(fleet), "auto") as s:
                result = await s.call("deployment_history")
                refused = await s.error("deployment_history", tier="prod")
        report = HistoryReport.model_validate(result.structured_content)
        assert [d.deployment_id for d in report.deployments] == [test.deployment_id]
        assert report.sources == {"test": "job_records"}
        assert report.deployments[0].counts == {"completed": 1}
        assert "test tier's history only" in refused
        async with session(settings_for(fleet, admin="admin"), "auto") as s:
            result = await s.call("deployment_history", hostname="pweb1")
            unmatched = await s.call("deployment_history", hostname="nosuch")
        # Deployments are recorded; none reached that host: say that, and what to check.
        none = HistoryReport.model_validate(unmatched.structured_content)
        assert none.deployments == []
        assert "reached that hostname" in none.summary
        assert "list_hosts" in none.next_step
        report = HistoryReport.model_validate(result.structured_content)
        assert [d.deployment_id for d in report.deployments] == [prod.deployment_id]
        assert report.sources == {"test": "jetstream", "prod": "jetstream"}
        assert report.deployments[0].signer == fleet.seed("admin").public_key
        assert report.deployments[0].signer_name == "this MCP server"
        assert "<<<BEGIN UNTRUSTED HOST OUTPUT>>>" in text_of(result)
