"""The observer key (the dashboard's) against a real nats-server with the permissions
``nats-config`` writes and JetStream on: it sees the whole fleet, both tiers, and can change
nothing. Every refusal here is the server's, met by the observer key trying.

What it may: discover every host of both tiers, ask them for their recent jobs (a failed
prod host's log tail included), and hear every tier's statuses while someone else deploys.
What it may not: publish on a deploy subject (deploy, cancel, a whole log), ask for a build,
or use JetStream's API, whose answers go wherever a request says (docs/security.md).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from fleet_core.bus import Message
from fleet_core.deploy.cancel import cancel_deployment
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.history import stream_name
from fleet_core.deploy.history_reader import load_history
from fleet_core.errors import PermissionDenied
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import Tier, parse_target
from fleet_core.setup.nats_config import (
    deployer_permissions,
    observer_permissions,
    parse_inventory,
)
from fleet_core.testing import FleetHost, local_fleet

from .conftest import DEPLOYERS, FAST, HOSTS, Fleet
from .support import Denials, wait_for_file

pytestmark = pytest.mark.anyio

OBSERVER = "dash"


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """The test fleet with an observer key beside the test and admin deployers, and the
    history streams on, so that a JetStream request is one the server could answer."""
    hosts = [FleetHost(name, tier, role) for name, (tier, role) in HOSTS.items()]
    deployers = {**DEPLOYERS, OBSERVER: "observer"}
    async with local_fleet(hosts, deployers, root=tmp_path, history=True) as local:
        yield Fleet(local=local, record=tmp_path / "runs.jsonl")


class TestWhatTheObserverSees:
    async def test_it_discovers_both_tiers_and_their_recent_jobs(self, fleet: Fleet) -> None:
        """After a prod deploy fails on pweb1 and a test deploy completes on web1, the
        observer's discovery finds hosts of both tiers (no tier hidden) and their recent
        jobs, and a job query gets the failed prod job's log tail."""
        async with fleet.listeners("web1", "pweb1", "pdb1", sim={"pweb1": ("--sim-fail",)}):
            failed = await fleet.deploy("deploy.prod.pweb1", who="admin")
            done = await fleet.deploy("deploy.test.web1")
            assert ([h.status for h in failed.hosts], [h.status for h in done.hosts]) == (
                ["failed"],
                ["completed"],
            )
            async with await fleet.connect(OBSERVER) as bus:
                deployer = Deployer(bus, timing=FAST)
                found = await deployer.discover(recent_jobs=5)
                hidden = deployer.unreadable_tiers
                queried = await deployer.query_job(
                    failed.deployment_id, hosts=["pweb1"], tier=Tier.PROD
                )
        by_name = {info.hostname: info for info in found}
        assert sorted(by_name) == ["pdb1", "pweb1", "web1"]
        assert hidden == frozenset()
        assert (by_name["pweb1"].tier, by_name["web1"].tier) == ("prod", "test")
        prod_jobs = by_name["pweb1"].recent_jobs or []
        assert [(job.request_id, job.status) for job in prod_jobs] == [
            (failed.deployment_id, "failed")
        ]
        job = queried["pweb1"].job
        assert job is not None
        assert job.log_tail, "the failed job's log tail comes with a job query"
        assert [job.status for job in by_name["web1"].recent_jobs or []] == ["completed"]

    async def test_it_hears_every_tiers_statuses_while_the_admin_deploys(
        self, fleet: Fleet
    ) -> None:
        """Subscribed to deploy.responses.>, the observer hears pweb1's and web1's statuses
        of the admin's deploys, each on its host's bound reply subject, up to the final."""
        heard: list[Message] = []
        finals: set[str] = set()
        both_final = anyio.Event()

        async def note(msg: Message) -> None:
            heard.append(msg)
            status = json.loads(msg.data)
            if status.get("status") in ("completed", "failed"):
                finals.add(msg.subject.rsplit(".", 2)[1])
                if finals == {"test", "prod"}:
                    both_final.set()

        async with fleet.listeners("web1", "pweb1"), await fleet.connect(OBSERVER) as bus:
            await bus.subscribe("deploy.responses.>", note)
            await bus.flush()
            await fleet.deploy("deploy.prod.pweb1", who="admin")
            await fleet.deploy("deploy.test.web1", who="admin")
            with anyio.fail_after(10):
                await both_final.wait()
        hosts = {msg.subject.rsplit(".", 1)[1] for msg in heard}
        assert hosts == {"pweb1", "web1"}

    async def test_it_reads_both_tiers_history_from_the_hosts_job_records(
        self, fleet: Fleet
    ) -> None:
        """The observer may not use JetStream, so ``load_history`` falls back to the hosts'
        job records for each tier, and still lists the prod deployment and the test one."""
        async with fleet.listeners("web1", "pweb1"):
            prod = await fleet.deploy("deploy.prod.pweb1", who="admin")
            test = await fleet.deploy("deploy.test.web1")
            async with await fleet.connect(OBSERVER) as bus:
                view = await load_history(bus, list(Tier), timing=FAST)
        assert {r.id for r in view.records} == {prod.deployment_id, test.deployment_id}
        assert view.sources == {"test": "job_records", "prod": "job_records"}
        assert view.unreadable == ()


class TestWhatTheObserverCannotDo:
    async def test_the_server_refuses_every_deploy_build_and_jetstream_subject(
        self, fleet: Fleet
    ) -> None:
        """The observer key publishes a deploy to a test host, a prod host and the prod tier,
        a build, bare discovery (homelab-deploy's subject, not its layout), and JetStream
        requests (a stream's info, a direct get, a delete); it subscribes to the deploy
        subjects and the prod discovery subject to overhear the admin. The server refuses
        each, and no listener ran anything."""
        token = uuid.uuid4().hex
        request = json.dumps(
            {"action": "switch", "revision": "master", "reply_to": f"deploy.responses.{token}"}
        ).encode()
        publishes = {
            "deploy.test.web1": request,
            "deploy.prod.pweb1": request,
            "deploy.prod.all": request,
            "build.nixos.all": b"{}",
            "deploy.discover": request,
            f"$JS.API.STREAM.INFO.{stream_name(Tier.PROD)}": b"{}",
            f"$JS.API.DIRECT.GET.{stream_name(Tier.TEST)}": b'{"seq": 1}',
            f"$JS.API.STREAM.DELETE.{stream_name(Tier.PROD)}": b"",
        }
        subscribes = ("deploy.test.>", "deploy.discover.prod", "build.responses.x")
        denied = Denials()

        async def ignore(_: Message) -> None:
            return None

        async with fleet.listeners("web1", "pweb1"), await fleet.connect(OBSERVER) as bus:
            bus.watch_denials(denied)
            for subject in subscribes:
                await bus.subscribe(subject, ignore)
            for subject, body in publishes.items():
                await bus.publish(subject, body, reply=f"deploy.responses.{token}")
            await bus.flush()
            await denied.wait_for(len(publishes) + len(subscribes))
            async with await fleet.connect("admin") as admin:
                answers = await Deployer(admin, timing=FAST).discover(recent_jobs=5)
        assert set(denied) == {s.lower() for s in (*publishes, *subscribes)}
        assert fleet.runs() == []
        assert {info.hostname: info.recent_jobs for info in answers} == {"web1": [], "pweb1": []}

    async def test_a_deploy_and_a_cancel_with_the_observer_key_are_refused_at_once(
        self, fleet: Fleet
    ) -> None:
        """The deployer with the observer key raises PermissionDenied for a deploy of either
        tier, and a cancel of a running deployment is refused on every tier: the admin's
        deployment runs on and completes."""
        hold = fleet.root / "hold"
        async with (
            fleet.listeners("web1", sim={"web1": ("--sim-wait-for", str(hold))}),
            await fleet.connect(OBSERVER) as bus,
        ):
            deployer = Deployer(bus, timing=FAST, signer=fleet.seed(OBSERVER))
            for subject in ("deploy.test.web1", "deploy.prod.all"):
                with anyio.fail_after(5), pytest.raises(PermissionDenied):
                    await deployer.deploy(
                        parse_target(subject), revision="master", action=Action.SWITCH, timeout=30
                    )
            async with anyio.create_task_group() as tasks:
                outcome: dict[str, str] = {}

                async def admin_deploy() -> None:
                    result = await fleet.deploy("deploy.test.web1", who="admin")
                    outcome.update({h.hostname: h.status for h in result.hosts})

                tasks.start_soon(admin_deploy)
                await wait_for_file(fleet.record)  # the stand-in records its start
                running = (await Deployer(bus, timing=FAST).discover(Tier.TEST))[0]
                assert running.busy
                assert running.running_job is not None
                with anyio.fail_after(10), pytest.raises(PermissionDenied):
                    await cancel_deployment(
                        bus,
                        running.running_job,
                        tiers=(Tier.TEST, Tier.PROD),
                        signer=fleet.seed(OBSERVER),
                        timing=FAST,
                    )
                hold.touch()
        assert outcome == {"web1": "completed"}


class TestUnderHomelabDeploysLayout:
    async def test_the_observer_discovers_both_tiers_and_may_not_deploy(
        self, tmp_path: Path
    ) -> None:
        """Under homelab-deploy's layout the observer asks on the bare deploy.discover and
        still finds both tiers' hosts; a deploy of either tier is refused by the server."""
        hosts = [FleetHost(name, tier, role) for name, (tier, role) in HOSTS.items()]
        deployers = {**DEPLOYERS, OBSERVER: "observer"}
        async with local_fleet(hosts, deployers, root=tmp_path, layout="homelab") as local:
            fleet = Fleet(local=local, record=tmp_path / "runs.jsonl")
            async with fleet.listeners("web1", "pweb1"), await fleet.connect(OBSERVER) as bus:
                deployer = Deployer(bus, timing=FAST, signer=fleet.seed(OBSERVER))
                found = await deployer.discover()
                for subject in ("deploy.test.web1", "deploy.prod.pweb1"):
                    with anyio.fail_after(5), pytest.raises(PermissionDenied):
                        await deployer.deploy(
                            parse_target(subject),
                            revision="master",
                            action=Action.SWITCH,
                            timeout=30,
                        )
            assert fleet.runs() == []
        assert sorted(info.hostname for info in found) == ["pweb1", "web1"]


class TestTheObserverInTheConfig:
    def test_the_inventory_takes_observer_access(self) -> None:
        """``access = "observer"`` parses, and another word is refused naming all three."""
        key = "U" + "A" * 55
        inventory = parse_inventory(f'[deployers.dash]\naccess = "observer"\nnkey = "{key}"\n')
        assert inventory.deployers[0].access == "observer"
        with pytest.raises(Exception, match="'observer'"):
            parse_inventory(f'[deployers.dash]\naccess = "viewer"\nnkey = "{key}"\n')

    def test_its_permissions_hold_no_deploy_build_or_jetstream_subject(self) -> None:
        """Under both layouts the observer publishes discovery only and reads replies only."""
        bound = deployer_permissions("observer")
        assert bound == observer_permissions("bound")
        assert bound.publish == ("deploy.discover.test", "deploy.discover.prod")
        assert bound.subscribe == ("deploy.responses.>",)
        homelab = observer_permissions("homelab")
        assert homelab.publish == ("deploy.discover",)
        assert homelab.subscribe == ("deploy.responses.>",)
        for permissions in (bound, homelab):
            subjects = (*permissions.publish, *permissions.subscribe)
            assert not [s for s in subjects if s.startswith(("build.", "$JS", "deploy.test"))]
