"""What a new user reads when `status`, `history` and `show` cannot answer: the installed CLI
as real subprocesses and the MCP server through a real client session, against a real
nats-server with JetStream and the tiered permissions.

A key that may read none of the tiers asked for (the test key on prod) learnt nothing: that
is a permission error, exit status 2, naming the key to use, never "no deployment recorded"
(exit 0) or "no host answered" (exit 1). An id that is not recorded says where it was looked
for and what to check; a filter that matches nothing does not claim nothing is recorded;
`history --setup` prints its limits in units a person reads.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet_core.testing import FleetHost, local_fleet
from fleet_mcp.reports.fleet_status import FleetStatusReport

from .conftest import DEPLOYERS, HOSTS, Fleet
from .support import session, settings_for

pytestmark = pytest.mark.anyio

PROD_REFUSED = b"this key may not read the prod tier"


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """The conftest fleet, with JetStream and the history streams."""
    hosts = [FleetHost(name, tier, role) for name, (tier, role) in HOSTS.items()]
    async with local_fleet(hosts, DEPLOYERS, root=tmp_path, history=True) as local:
        yield Fleet(local=local, record=tmp_path / "runs.jsonl")


def key(fleet: Fleet, who: str) -> list[str]:
    return ["--nats-url", fleet.url, "--nkey-file", str(fleet.keys[who])]


async def test_the_test_key_asking_for_prod_is_told_to_use_the_admin_key(fleet: Fleet) -> None:
    """With a prod host listening and a prod deployment recorded, the test key's `status`
    of prod, `history --tier prod` and `show ID --tier prod` each exit 2 with a message
    naming the admin key; with --json the error object says permission_denied."""
    async with fleet.listeners("pweb1"):
        await fleet.local.wait_for_listeners(["pweb1"])
        prod = await fleet.deploy("deploy.prod.pweb1", who="admin")
        status = await fleet.cli("status", "deploy.prod.all", *key(fleet, "deployer"))
        one = await fleet.cli("status", "deploy.prod.pweb1", *key(fleet, "deployer"))
    listed = await fleet.cli("history", "--tier", "prod", *key(fleet, "deployer"))
    listed_json = await fleet.cli("history", "--tier", "prod", "--json", *key(fleet, "deployer"))
    shown = await fleet.cli("show", prod.deployment_id, "--tier", "prod", *key(fleet, "deployer"))
    for done in (status, one, listed, listed_json, shown):
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert PROD_REFUSED in done.stderr
        assert b"admin key" in done.stderr
    # Not "did not answer": the host answered, the server kept its answer from this key.
    assert b"did not answer" not in one.stdout
    assert json.loads(listed_json.stdout)["error"]["code"] == "permission_denied"
    admin = await fleet.cli("show", prod.deployment_id, *key(fleet, "admin"))
    assert admin.returncode == 0, admin.stderr.decode()
    # The tail is a few lines: the way to the whole log, pasteable (a prod host's tier too).
    whole = f"fleet-deploy logs {prod.deployment_id} --host HOST --tier prod"
    assert whole.encode() in admin.stdout


async def test_misses_say_where_they_looked_and_what_to_check(fleet: Fleet) -> None:
    """An id nobody recorded exits 1 naming the history read and `fleet-deploy history`; a
    --host that no deployment reached is no claim that nothing is recorded."""
    async with fleet.listeners("web1"):
        await fleet.local.wait_for_listeners(["web1"])
        await fleet.deploy("deploy.test.web1")
    unknown = await fleet.cli("show", "f" * 32, *key(fleet, "admin"))
    assert unknown.returncode == 1
    assert b"in the test and prod history" in unknown.stdout
    assert b"'fleet-deploy history' lists" in unknown.stdout
    malformed = await fleet.cli("show", "x y", *key(fleet, "admin"))  # as `logs` says it
    assert malformed.returncode == 2
    assert b"'x y' is not a deployment id" in malformed.stderr
    unmatched = await fleet.cli("history", "--host", "nosuch", *key(fleet, "admin"))
    assert unmatched.returncode == 0
    assert unmatched.stdout.startswith(b"no deployment that reached nosuch recorded in")
    listed = await fleet.cli("history", *key(fleet, "admin"))
    assert b"deploy.test.web1" in listed.stdout


async def test_fleet_status_says_what_to_check_for_a_host_that_did_not_answer(
    fleet: Fleet,
) -> None:
    """fleet_status for a hostname nobody answers to: its next step names list_hosts, not
    a bare "look at the problems"."""
    async with session(settings_for(fleet), "auto") as s:
        result = await s.call("fleet_status", hostname="nosuch")
    report = FleetStatusReport.model_validate(result.structured_content)
    assert [h.answered for h in report.hosts] == [False]
    assert "list_hosts" in report.next_step


async def test_setup_prints_its_limits_in_plain_units(fleet: Fleet) -> None:
    """`history --setup` says each stream's limits as a person reads them: the seconds and
    bytes given, with days and GiB, never "7.776e+06 s"."""
    done = await fleet.cli("history", "--setup", *key(fleet, "admin"))
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().splitlines() == [
        f"{stream}: updated (max age 7776000 s (90 days), 1000000 messages, "
        "1073741824 bytes (1 GiB), 1 replica)"
        for stream in ("FLEET_HISTORY_TEST", "FLEET_HISTORY_PROD", "FLEET_BUILDS")
    ]
