"""Deployment history in JetStream against a real nats-server: what a deploy leaves in its
tier's stream, read back by the admin and the test key; the test key refused every way of
reading prod's; the history across a restart of the deployer (separate CLI processes), of
the NATS server (JetStream on disk) and the loss of a node of a 3-node cluster; and the
fallback to the hosts' job records under homelab-deploy's layout."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from fleet_core.bus import Bus, Message
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.history import HistoryBook, read_reply_subject, stream_name
from fleet_core.deploy.history_reader import load_history, read_history
from fleet_core.errors import FleetError, PermissionDenied
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import Tier, parse_target
from fleet_core.testing import FleetHost, local_fleet
from fleet_core.testing.embedded_server import EmbeddedNatsServer

from .conftest import DEPLOYERS, FAST, HOSTS, Fleet
from .support import Denials

pytestmark = pytest.mark.anyio


def _hosts() -> list[FleetHost]:
    return [FleetHost(name, tier, role) for name, (tier, role) in HOSTS.items()]


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """The conftest fleet, with JetStream and the history streams."""
    async with local_fleet(
        _hosts(), DEPLOYERS, outsiders=["stranger"], root=tmp_path, history=True
    ) as local:
        yield Fleet(local=local, record=tmp_path / "runs.jsonl")


async def history(fleet: Fleet, tier: Tier, who: str = "admin") -> HistoryBook:
    book = HistoryBook()
    async with await fleet.connect(who) as bus:
        await read_history(bus, tier, book)
    return book


def cli_args(fleet: Fleet, who: str) -> list[str]:
    return ["--nats-url", fleet.url, "--nkey-file", str(fleet.keys[who])]


class TestRecorded:
    async def test_a_deploy_is_in_its_tiers_history_with_each_hosts_outcome(
        self, fleet: Fleet
    ) -> None:
        """A deploy of the test tier is one record: its signer, target, action, revision,
        each host's final status and a duration; prod's stream has nothing of it."""
        async with fleet.listeners("web1", "web2", sim={"web2": ("--sim-fail",)}):
            result = await fleet.deploy("deploy.test.role.web")
        records = (await history(fleet, Tier.TEST)).records()
        assert [r.id for r in records] == [result.deployment_id]
        record = records[0]
        assert record.targets == ["deploy.test.role.web"]
        assert record.action == "switch" and record.revision == "master"
        assert record.signer == fleet.seed("deployer").public_key
        assert record.signature == "verified"
        outcomes = {h.hostname: (h.status, h.final) for h in record.hosts}
        assert outcomes == {"web1": ("completed", True), "web2": ("failed", True)}
        assert any("undefined variable" in line for h in record.hosts for line in h.log_tail)
        assert record.duration_s is not None and record.duration_s >= 0
        assert (await history(fleet, Tier.PROD)).records() == []

    async def test_the_deployer_is_not_misled_by_the_streams(self, fleet: Fleet) -> None:
        """With the streams capturing requests, a deploy still completes with nothing flagged
        (no PubAck lands on its reply subject), and a host that does not listen ends
        missing within the answer window (the server's no-responders status is gone)."""
        async with fleet.listeners("web1"):
            result = await fleet.deploy("deploy.test.web1")
        assert result.ok and result.flagged_count == 0
        with anyio.fail_after(15):
            silent = await fleet.deploy("deploy.test.web3")
        assert [(h.hostname, h.status) for h in silent.hosts] == [("web3", "missing")]


class TestPastTheWindow:
    async def test_older_deployments_are_found_by_id_and_by_walking_back(
        self, fleet: Fleet
    ) -> None:
        """Discovery answers fill a stream: with a window of the newest few messages, which
        holds answers only, a deployment before them is still read whole by its id (``show``)
        and by walking back through the requests (``history --limit``), as a read of the
        whole stream reads it."""
        async with fleet.listeners("web1", "web2"):
            first = await fleet.deploy("deploy.test.web1")
            second = await fleet.deploy("deploy.test.role.web")
            async with await fleet.connect("admin") as bus:
                for _ in range(4):
                    assert len(await Deployer(bus, timing=FAST).discover(Tier.TEST)) == 2
        async with await fleet.connect("admin") as bus:

            async def read(**how: Any) -> list[Any]:
                book = HistoryBook()
                await read_history(bus, Tier.TEST, book, **how)
                return book.records()

            assert await read(scan=4) == []
            found = await read(scan=4, find=first.deployment_id)
            assert [r.id for r in found] == [first.deployment_id]
            assert found[0].request_recorded and found[0].targets == ["deploy.test.web1"]
            assert [(h.hostname, h.status) for h in found[0].hosts] == [("web1", "completed")]
            assert await read(scan=4, find=uuid.uuid4().hex) == []
            back = await read(scan=4, want=2)
            assert [r.id for r in back] == [second.deployment_id, first.deployment_id]
            assert back == await read()
            assert [r.id for r in await read(scan=4, want=1)] == [second.deployment_id]


class TestStatusReference:
    async def test_status_compares_with_the_recorded_deploy_where_its_key_may_read_it(
        self, fleet: Fleet
    ) -> None:
        """web1 was down when v2 went to its role. Its own last job still says v1, so the
        test key's status, which has only the hosts' word, compares with v1. The admin's
        reads the role's v2 request in the history and finds web1 behind."""
        async with fleet.listeners("web1", "web2"):
            await fleet.deploy("deploy.test.role.web", revision="v1")
        async with fleet.listeners("web2"):
            await fleet.deploy("deploy.test.role.web", revision="v2")
        async with fleet.listeners("web1"):
            admin = await fleet.cli(
                "status", "deploy.test.web1", "--json", *cli_args(fleet, "admin")
            )
            test = await fleet.cli(
                "status", "deploy.test.web1", "--json", *cli_args(fleet, "deployer")
            )
        seen, told = json.loads(admin.stdout), json.loads(test.stdout)
        assert (seen["revision"], seen["revision_source"]) == ("v2", "history")
        assert seen["revision_deployment"] is not None
        assert [h["behind"] for h in seen["hosts"]] == [True] and admin.returncode == 1
        assert (told["revision"], told["revision_source"]) == ("v1", "last_deploy")
        assert [h["behind"] for h in told["hosts"]] == [False]


class TestConfidentiality:
    async def test_the_test_key_reads_the_test_history_only(self, fleet: Fleet) -> None:
        """load_history with the test key: test deployments listed, from the test hosts' job
        records (it may use no JetStream API: tests/test_history_attacks.py), and said so;
        prod named unreadable."""
        async with fleet.listeners("web1", "pweb1"):
            test_deploy = await fleet.deploy("deploy.test.web1")
            await fleet.deploy("deploy.prod.pweb1", who="admin")
            second = await fleet.deploy("deploy.test.web1")
            async with await fleet.connect("deployer") as bus:
                view = await load_history(bus, (Tier.TEST, Tier.PROD))
                newest = await load_history(bus, (Tier.TEST,), want=1)
                # One deployment by its id: a job query, not every host's recent jobs.
                found = await load_history(bus, (Tier.TEST,), find=test_deploy.deployment_id)
        assert [r.id for r in newest.records] == [second.deployment_id]
        assert [r.id for r in found.records] == [test_deploy.deployment_id]
        assert [(h.hostname, h.status) for h in found.records[0].hosts] == [("web1", "completed")]
        assert [r.id for r in view.records] == [second.deployment_id, test_deploy.deployment_id]
        assert view.sources == {"test": "job_records"}
        assert any("job records" in note for note in view.notes())
        assert view.unreadable == ("prod",)
        async with await fleet.connect("admin") as bus:
            admin_view = await load_history(bus, (Tier.TEST, Tier.PROD))
        assert {r.tier for r in admin_view.records} == {"test", "prod"}

    async def test_the_test_key_is_refused_every_way_of_reading_prod_history(
        self, fleet: Fleet
    ) -> None:
        """Direct get, message get, stream info, a consumer, a mirror of its own, the
        captured subjects themselves: the server refuses each; and while the admin reads
        prod's history, the test key, listening on every reply subject it may, hears none
        of it."""
        async with fleet.listeners("pweb1"):
            await fleet.deploy("deploy.prod.pweb1", who="admin")
        prod = stream_name(Tier.PROD)
        denied = Denials()
        heard: list[Message] = []

        async def hear(message: Message) -> None:
            heard.append(message)

        async with await fleet.connect("deployer") as spy:
            spy.watch_denials(denied)
            # Every reply subject the test key may read: any answer to it would show here.
            for subject in (
                "deploy.responses.*",
                "deploy.responses.*.test.*",
                "deploy.responses.>",
            ):
                await spy.subscribe(subject, hear)
            attempts = {
                f"$JS.API.DIRECT.GET.{prod}": {"seq": 1, "batch": 10},
                f"$JS.API.STREAM.MSG.GET.{prod}": {"seq": 1},
                f"$JS.API.STREAM.INFO.{prod}": {},
                f"$JS.API.CONSUMER.CREATE.{prod}": {
                    "stream_name": prod,
                    "config": {"deliver_subject": "deploy.responses.x", "ack_policy": "none"},
                },
                "$JS.API.STREAM.CREATE.COPY": {
                    "name": "COPY",
                    "subjects": ["copy.x"],
                    "mirror": {"name": prod},
                },
                "$JS.API.STREAM.LIST": {},
            }
            for subject, payload in attempts.items():
                reply = "deploy.responses." + uuid.uuid4().hex
                await spy.publish(subject, json.dumps(payload).encode(), reply=reply)
            for subject in ("deploy.prod.>", "deploy.responses.*.prod.*", "$JS.API.>"):
                await spy.subscribe(subject, hear)
            await spy.flush()
            # The admin reads prod's history while the spy listens.
            async with await fleet.connect("admin") as admin:
                book = HistoryBook()
                await read_history(admin, Tier.PROD, book)
                await admin.flush()
            await spy.flush()
            await denied.wait_for(len(attempts) + 3)
        assert len(book.records()) == 1  # the admin did read it
        for subject in attempts:
            assert subject.lower() in denied, subject
        assert {"deploy.prod.>", "deploy.responses.*.prod.*", "$js.api.>"} <= set(denied)
        assert heard == [], [m.subject for m in heard]
        with pytest.raises(PermissionDenied):
            async with await fleet.connect("deployer") as bus:
                await read_history(bus, Tier.PROD, HistoryBook())

    async def test_prod_reads_answer_where_the_test_key_cannot_listen(self) -> None:
        """The reply subject of a prod read is past what the stream captures and under the
        test key's deny; a test read's is bare (the one the test key may read)."""
        prod = read_reply_subject(Tier.PROD, "abc")
        assert prod == "deploy.responses.abc.prod.history.read"
        assert read_reply_subject(Tier.TEST, "abc") == "deploy.responses.abc"


class TestSetup:
    async def test_setup_updates_the_retention_and_needs_the_admin_key(self, fleet: Fleet) -> None:
        """`history --setup` again with another limit updates both streams in place (what
        was recorded stays); the test key is refused, with exit status 2."""
        async with fleet.listeners("web1"):
            kept = await fleet.deploy("deploy.test.web1")
        again = await fleet.cli(
            "history", "--setup", "--max-msgs", "5000", *cli_args(fleet, "admin"), "--json"
        )
        assert again.returncode == 0, again.stderr.decode()
        assert json.loads(again.stdout)["streams"] == {
            "FLEET_HISTORY_TEST": "updated",
            "FLEET_HISTORY_PROD": "updated",
            "FLEET_BUILDS": "updated",
        }
        async with await fleet.connect("admin") as bus:
            info = await _stream_info(bus)
        assert info["config"]["max_msgs"] == 5000
        assert [r.id for r in (await history(fleet, Tier.TEST)).records()] == [kept.deployment_id]
        refused = await fleet.cli("history", "--setup", *cli_args(fleet, "deployer"))
        assert refused.returncode == 2
        # What to do, and the subject as JetStream spells it (not lowercased).
        assert b"may not set up the history streams" in refused.stderr
        assert b"with the admin key" in refused.stderr
        assert b"$JS.API.STREAM." in refused.stderr


class TestAcrossRestarts:
    async def test_history_outlives_the_deployer_process_and_names_its_key(
        self, fleet: Fleet
    ) -> None:
        """A deploy by one CLI process is listed by `history` and shown by `show` in later
        ones, with the key named from the seed files beside the reader's key."""
        async with fleet.listeners("web1"):
            await fleet.local.wait_for_listeners(["web1"])
            deployed = await fleet.cli("deploy", "deploy.test.web1", "--json")
            assert deployed.returncode == 0, deployed.stderr.decode()
        deployment_id = json.loads(deployed.stdout)["deployment_id"]
        listed = await fleet.cli("history", *cli_args(fleet, "admin"), "--json")
        assert listed.returncode == 0, listed.stderr.decode()
        found = json.loads(listed.stdout)
        assert [d["id"] for d in found["deployments"]] == [deployment_id]
        assert found["deployments"][0]["signer_name"] == "deployer"
        assert found["sources"] == {"test": "jetstream", "prod": "jetstream"}
        async with fleet.listeners("web1"):  # the test key's history: their job records
            await fleet.local.wait_for_listeners(["web1"])
            text = await fleet.cli("history", "deploy.test.web1", *cli_args(fleet, "deployer"))
        assert text.returncode == 0
        assert deployment_id in text.stdout.decode()
        assert b"test tier: no JetStream history" in text.stderr
        assert b"prod tier: this key may not read its history" in text.stderr
        shown = await fleet.cli("show", deployment_id, *cli_args(fleet, "admin"))
        assert shown.returncode == 0, shown.stderr.decode()
        assert b"web1  completed" in shown.stdout
        assert b"nixos-system-web1" in shown.stdout
        unknown = await fleet.cli("show", "no-such-deployment", *cli_args(fleet, "admin"))
        assert unknown.returncode == 1
        refused = await fleet.cli("history", *cli_args(fleet, "deployer"), "--limit", "0")
        assert refused.returncode == 2 and b"--limit" in refused.stderr

    async def test_history_outlives_a_restart_of_the_nats_server(self, fleet: Fleet) -> None:
        """JetStream keeps the streams on disk: after nats-server stops and a new one starts
        on the same config and store, the deployment is still there, and new ones are
        recorded."""
        async with fleet.listeners("web1"):
            before = await fleet.deploy("deploy.test.web1")
        port = int(fleet.url.rpartition(":")[2])
        config = fleet.server.config_path.read_text()
        await anyio.to_thread.run_sync(fleet.server.stop)
        again = EmbeddedNatsServer(fleet.root / "nats-again", config, port=port)
        try:
            await anyio.to_thread.run_sync(again.start)
            async with await Bus.connect(again.url, fleet.seed("admin"), name="reader") as bus:
                book = HistoryBook()
                # JetStream recovers its streams a moment after the server says it is ready.
                with anyio.fail_after(15):
                    while True:
                        try:
                            await read_history(bus, Tier.TEST, book)
                            break
                        except FleetError:  # not recovered yet; no event says when
                            book = HistoryBook()
                            await anyio.sleep(0.2)
            assert [r.id for r in book.records()] == [before.deployment_id]
            assert book.records()[0].hosts[0].status == "completed"
        finally:
            await anyio.to_thread.run_sync(again.stop)


class TestCluster:
    async def test_history_survives_the_loss_of_a_node(self, tmp_path: Path) -> None:
        """On 3 servers the streams have 3 replicas: after the node that leads the test
        stream is killed, a deploy recorded before is read from the others, and once a new
        leader is elected a new deploy is recorded too."""
        async with local_fleet(
            _hosts(), DEPLOYERS, root=tmp_path, history=True, cluster=3
        ) as local:
            fleet = Fleet(local=local, record=tmp_path / "runs.jsonl")
            async with await Bus.connect(local.urls, local.seed("admin"), name="info") as bus:
                info = await _stream_info(bus)
            assert info["config"]["num_replicas"] == 3
            leader = info["cluster"]["leader"]
            doomed = next(n for n in local.servers if _name_of(n) == leader)
            survivors = tuple(n.url for n in local.servers if n is not doomed)
            async with local.listeners(
                [local.listener_settings("web1", nats_urls=(survivors[0],))]
            ):
                before = await fleet.deploy("deploy.test.web1")
                await anyio.to_thread.run_sync(doomed.kill)
                async with await Bus.connect(survivors, local.seed("admin"), name="wait") as bus:
                    # Messages are recorded again once the survivors elect a new leader; no
                    # event tells when: poll the stream's info, within a deadline.
                    with anyio.fail_after(30):
                        while (await _leader(bus)) in (None, leader):  # noqa: ASYNC110
                            await anyio.sleep(0.2)
                async with await Bus.connect(survivors, local.seed("deployer"), name="d") as bus:
                    after = await Deployer(bus, timing=FAST, signer=local.seed("deployer")).deploy(
                        parse_target("deploy.test.web1"),
                        revision="master",
                        action=Action.SWITCH,
                        timeout=30,
                    )
                assert after.ok
            book = HistoryBook()
            async with await Bus.connect(survivors[1], local.seed("admin"), name="r") as bus:
                await read_history(bus, Tier.TEST, book)
        assert {r.id for r in book.records()} == {before.deployment_id, after.deployment_id}


def _name_of(node: EmbeddedNatsServer) -> str:
    """The server name a clustered node was started with, as its log says at start."""
    for line in node.log_text().splitlines():
        if "]   Name:" in line:
            return line.split("Name:", 1)[1].strip()
    return ""


async def _leader(bus: Bus) -> str | None:
    try:
        info = await _stream_info(bus)
    except FleetError:
        return None
    cluster = info.get("cluster")
    return cluster.get("leader") if isinstance(cluster, dict) else None


async def _stream_info(bus: Bus) -> dict[str, Any]:
    from fleet_core.deploy.history_reader import _api_answer, _exchange  # the raw answer

    return _api_answer(
        await _exchange(bus, f"$JS.API.STREAM.INFO.{stream_name(Tier.TEST)}", {}, Tier.TEST)
    )


class TestFallback:
    async def test_homelab_layout_history_comes_from_the_job_records_and_says_so(
        self, tmp_path: Path
    ) -> None:
        """Without JetStream, history lists the deployment from the hosts' job records and
        says on stderr (and in --json) where it came from."""
        async with local_fleet(_hosts(), DEPLOYERS, root=tmp_path, layout="homelab") as local:
            fleet = Fleet(local=local, record=tmp_path / "runs.jsonl")
            async with fleet.listeners("web1", "web2"):
                result = await fleet.deploy("deploy.test.all")
                listed = await fleet.cli(
                    "history", "--tier", "test", *cli_args(fleet, "admin"), "--json"
                )
                shown = await fleet.cli("show", result.deployment_id, *cli_args(fleet, "admin"))
        assert listed.returncode == 0, listed.stderr.decode()
        found = json.loads(listed.stdout)
        assert found["sources"] == {"test": "job_records"}
        assert "JetStream" in found["fallback_reasons"]["test"]
        assert b"job records" in listed.stderr
        (record,) = found["deployments"]
        assert record["id"] == result.deployment_id
        assert {h["hostname"]: h["status"] for h in record["hosts"]} == {
            "web1": "completed",
            "web2": "completed",
        }
        assert shown.returncode == 0 and b"[from its job record]" in shown.stdout
