"""Trust, round 2: the attacks an outside review ran against the previous release, each
against a real nats-server with the generated (bound) permissions, real keys and listeners
running their real job runners.

The hosts trust deployer keys as docs/security.md recommends: the test hosts the admin's
and the test key (the assistant's), the prod hosts the admin's alone. The attacker holds the
test key: it may deploy the test tier, and read the test tier's statuses, which carry every
deployment's id.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from fleet_core.bus import Bus, Message
from fleet_core.config.settings import ListenerSettings
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.results import DeploymentResult
from fleet_core.errors import PermissionDenied
from fleet_core.keys import Seed
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import Status, parse_status
from fleet_core.protocol.signing import sign_request
from fleet_core.protocol.subjects import Tier, parse_target
from fleet_core.testing import FLAKE_URL, local_fleet, simulated_rebuild_command

from .conftest import FAST, Fleet

pytestmark = pytest.mark.anyio


def trusted(fleet: Fleet, host: str) -> tuple[str, ...]:
    """The keys ``host`` trusts: the admin's everywhere, the test key on test hosts."""
    admin, test = fleet.seed("admin").public_key, fleet.seed("deployer").public_key
    return (admin,) if host.startswith("p") else (admin, test)


@asynccontextmanager
async def hosts(fleet: Fleet, sims: Mapping[str, tuple[str, ...]]) -> AsyncIterator[dict[str, Any]]:
    """Listeners for ``sims`` (host -> its rebuild stand-in's --sim-* options), each trusting
    the keys ``trusted`` names."""
    chosen = [
        fleet.settings(host, *sim, trusted_deployer_keys=trusted(fleet, host))
        for host, sim in sims.items()
    ]
    async with fleet.local.listeners(chosen) as running:
        yield running


def signed(seed: Seed, subject: str, request_id: str, **body: Any) -> bytes:
    """A deploy request with ``request_id``, signed by ``seed`` for ``subject``."""
    action, revision = body.get("action", "switch"), body.get("revision", "master")
    signature = sign_request(
        seed.reveal(),
        request_id=request_id,
        subject=subject,
        action=action,
        revision=revision,
        now=time.time(),
    )
    return json.dumps(
        {
            "action": action,
            "revision": revision,
            "reply_to": f"deploy.responses.{request_id}",
            "id": request_id,
            "bind": True,
            "signer": signature.signer,
            "signed_at": signature.signed_at,
            "signature": signature.signature,
            **body,
        }
    ).encode()


class Watch:
    """The test key's view of the test tier's statuses (``deploy.responses.*.test.*``)."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, Status]] = []
        self._changed = anyio.Event()

    async def deliver(self, msg: Message) -> None:
        status = parse_status(msg.data)
        if status is not None:
            self.statuses.append((msg.subject, status))
            self._changed.set()
            self._changed = anyio.Event()

    async def until(self, check: Callable[[list[tuple[str, Status]]], bool]) -> None:
        with anyio.fail_after(20):
            while not check(self.statuses):
                await self._changed.wait()


@asynccontextmanager
async def watching(bus: Bus) -> AsyncIterator[Watch]:
    watch = Watch()
    subscription = await bus.subscribe("deploy.responses.*.test.*", watch.deliver)
    await bus.flush()
    try:
        yield watch
    finally:
        await subscription.unsubscribe()


async def admin_deploy(fleet: Fleet, subject: str, into: list[DeploymentResult]) -> None:
    """The admin's deployment of ``subject``, signed with the admin key, its result kept."""
    async with await fleet.connect("admin") as bus:
        deployer = Deployer(bus, timing=FAST, signer=fleet.seed("admin"))
        into.append(
            await deployer.deploy(
                parse_target(subject), revision="master", action=Action.SWITCH, timeout=60
            )
        )


def noting(refused: list[str]) -> Callable[[PermissionDenied], bool]:
    """A denial watcher that notes each refused subject, as expected (logged at debug)."""

    def note(denial: PermissionDenied) -> bool:
        refused.append(str(denial.subject))
        return True

    return note


def ids_of(watch: Watch, host: str) -> set[str]:
    return {s.request_id for subject, s in watch.statuses if s.hostname == host and s.request_id}


class TestTheTestKeyCannotFalsifyAnAdminsResult:
    async def test_a_request_with_the_admins_id_gets_no_answer_in_its_place(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """The test key reads the admin's deployment id from web1's status and sends web1
        requests of its own with that id (signed by itself; unsigned with a bogus action).
        web1 answers neither — their answers would land among the admin's statuses — runs
        neither, and the admin's result is the truth: completed."""
        release = tmp_path / "release"
        results: list[DeploymentResult] = []
        async with (
            hosts(fleet, {"web1": ("--sim-wait-for", str(release))}),
            await fleet.connect("deployer") as attacker,
            watching(attacker) as watch,
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(admin_deploy, fleet, "deploy.test.web1", results)
            await watch.until(lambda seen: any(s.status == "started" for _, s in seen))
            (stolen,) = ids_of(watch, "web1")
            subject = "deploy.test.web1"
            await attacker.publish(subject, signed(fleet.seed("deployer"), subject, stolen))
            bogus = {"action": "rm-rf", "reply_to": f"deploy.responses.{stolen}", "id": stolen}
            await attacker.publish(subject, json.dumps(bogus).encode())
            # A request of the attacker's own, after those on the same subject: once it is
            # refused (web1 is busy), web1 has dealt with the two before it.
            own = uuid.uuid4().hex
            await attacker.publish(subject, signed(fleet.seed("deployer"), subject, own))
            await watch.until(lambda seen: own in ids_of(watch, "web1"))
            release.touch()
        (result,) = results
        assert [(h.hostname, h.status, h.error) for h in result.hosts] == [
            ("web1", "completed", None)
        ]
        assert result.ok and result.flagged_count == 0
        assert "rejected" not in {
            s.status.value for _, s in watch.statuses if s.request_id == stolen
        }
        assert len(fleet.runs()) == 1

    async def test_another_host_answering_the_admins_id_is_not_counted(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """The test key sends db1, a test host outside the admin's role deployment, its own
        request (a broken revision) under the admin's id: db1 may run it — the test key may
        deploy the test tier — but its failure answers a request the admin did not sign, so
        it is flagged, not counted, and the admin's deployment stays OK."""
        release = tmp_path / "release"
        results: list[DeploymentResult] = []
        sims = {
            "web1": ("--sim-wait-for", str(release)),
            "db1": ("--sim-fail-revision", "broken"),
        }
        async with (
            hosts(fleet, sims),
            await fleet.connect("deployer") as attacker,
            watching(attacker) as watch,
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(admin_deploy, fleet, "deploy.test.role.web", results)
            await watch.until(lambda seen: any(s.status == "started" for _, s in seen))
            (stolen,) = ids_of(watch, "web1")
            subject = "deploy.test.db1"
            forged = signed(fleet.seed("deployer"), subject, stolen, revision="broken")
            await attacker.publish(subject, forged)
            await watch.until(lambda seen: any(s.hostname == "db1" and s.is_final for _, s in seen))
            release.touch()
        (result,) = results
        assert [(h.hostname, h.status) for h in result.hosts] == [("web1", "completed")]
        assert result.ok
        assert result.flagged and {f.hostname for f in result.flagged} == {"db1"}
        assert all("not by this deployer" in f.reason for f in result.flagged)


class TestTheTestKeyCannotReachProdThroughDiscovery:
    async def test_a_flood_of_prod_job_queries_is_refused_and_prod_stays_visible(
        self, fleet: Fleet
    ) -> None:
        """10,000 prod-tier job queries from the test key, on the bare and on prod's
        discovery subject, are refused by the server: the prod listeners never see them, and
        the admin's discovery and prod deploy find both prod hosts at once."""
        flood = json.dumps(
            {"reply_to": "deploy.responses.flood", "tier": "prod", "job": "x" * 32, "bind": True}
        ).encode()
        async with (
            hosts(fleet, {"pweb1": (), "pdb1": ()}),
            await fleet.connect("deployer") as attacker,
            await fleet.connect("admin") as admin,
        ):
            refused: list[str] = []
            attacker.watch_denials(noting(refused))
            for index in range(10_000):
                subject = "deploy.discover" if index % 2 else "deploy.discover.prod"
                await attacker.publish(subject, flood)
            await attacker.flush()
            found = await Deployer(admin, timing=FAST).discover(Tier.PROD)
            result = await Deployer(admin, timing=FAST, signer=fleet.seed("admin")).deploy(
                parse_target("deploy.prod.all"),
                revision="master",
                action=Action.SWITCH,
                timeout=30,
            )
        assert sorted(h.hostname for h in found) == ["pdb1", "pweb1"]
        assert sorted((h.hostname, h.status) for h in result.hosts) == [
            ("pdb1", "completed"),
            ("pweb1", "completed"),
        ]
        assert {"deploy.discover", "deploy.discover.prod"} <= set(refused)

    async def test_a_flood_of_its_own_tier_is_shed_and_a_deploy_still_runs(
        self, fleet: Fleet
    ) -> None:
        """A flood on the test tier's own discovery subject (the test key may publish there)
        is shed by the test listener past its backlog, told in one log line, not one per
        message, and a deploy sent after it completes."""
        flood = json.dumps({"reply_to": "deploy.responses.flood", "bind": True}).encode()
        with capture_logs() as logs:
            async with (
                hosts(fleet, {"web1": ()}),
                await fleet.connect("deployer") as attacker,
            ):
                for _ in range(10_000):
                    await attacker.publish("deploy.discover.test", flood)
                await attacker.flush()
                result = await fleet.deploy("deploy.test.web1", who="admin")
        assert [(h.hostname, h.status) for h in result.hosts] == [("web1", "completed")]
        shed = [e for e in logs if e["event"] == "messages_shed"]
        assert shed and len(shed) < 10
        assert shed[0]["subject"] == "deploy.discover.test"


class TestProdNamesStayHidden:
    async def test_the_test_key_overhears_no_prod_job_query(self, fleet: Fleet) -> None:
        """The test key may not subscribe to the bare or prod discovery subject: an admin's
        prod job query (its id and host names) reaches only the prod listeners."""
        overheard: list[bytes] = []
        refused: list[str] = []

        async def record(msg: Message) -> None:
            overheard.append(msg.data)

        async with (
            hosts(fleet, {"pweb1": ()}),
            await fleet.connect("deployer") as spy,
            await fleet.connect("admin") as admin,
        ):
            spy.watch_denials(noting(refused))
            for subject in ("deploy.discover", "deploy.discover.prod", "deploy.discover.>"):
                await spy.subscribe(subject, record)
            await spy.flush()
            answers = await Deployer(admin, timing=FAST).query_job(
                uuid.uuid4().hex, hosts=["pweb1"], tier=Tier.PROD
            )
            await spy.flush()
        assert list(answers) == ["pweb1"]  # the query did go out, and was answered
        assert overheard == []
        assert set(refused) == {"deploy.discover", "deploy.discover.prod", "deploy.discover.>"}


# The previous release's bound layout, as its nats-config wrote it: a listener and the test
# key publish and subscribe the bare deploy.discover; no per-tier discovery subject exists.
PREVIOUS_LISTENER = {
    "publish": ["deploy.responses.*.test.{host}", "deploy.discover"],
    "subscribe": [
        "deploy.test.{host}",
        "deploy.test.all",
        "deploy.test.role.web",
        "deploy.discover",
    ],
}
PREVIOUS_TEST_KEY = {
    "publish": ["deploy.test.>", "deploy.discover"],
    "subscribe": ["deploy.responses.*", "deploy.responses.*.test.*", "deploy.discover"],
}


def previous_listener(host: str) -> dict[str, list[str]]:
    return {k: [s.format(host=host) for s in v] for k, v in PREVIOUS_LISTENER.items()}


@asynccontextmanager
async def previous_release_listener(bus: Bus, host: str) -> AsyncIterator[None]:
    """A listener of the previous release, on the wire: it hears the bare discovery subject
    only, answers bound, and its statuses name the request id but not the signer."""

    async def on_discover(msg: Message) -> None:
        request = json.loads(msg.data)
        info = {
            "hostname": host,
            "tier": "test",
            "role": "web",
            "version": "0.1.0",
            "deploy_subjects": [f"deploy.test.{host}", "deploy.test.all"],
        }
        await bus.publish(f"{request['reply_to']}.test.{host}", json.dumps(info).encode())

    async def on_deploy(msg: Message) -> None:
        request = json.loads(msg.data)
        for kind in ("accepted", "completed"):
            status = {
                "hostname": host,
                "status": kind,
                "error": None,
                "message": kind,
                "request_id": request["id"],
                "tier": "test",
            }
            await bus.publish(f"{request['reply_to']}.test.{host}", json.dumps(status).encode())

    await bus.subscribe("deploy.discover", on_discover)
    for subject in (f"deploy.test.{host}", "deploy.test.all"):
        await bus.subscribe(subject, on_deploy)
    await bus.flush()
    yield


class TestUpgradeFromThePreviousRelease:
    async def test_new_deployers_work_with_old_listeners_and_the_old_config(
        self, tmp_path: Path
    ) -> None:
        """Under the previous release's config, a deployer of this release (the test key, the
        admin) finds and deploys both a listener of the previous release (no signer in its
        statuses, bare discovery only) and one of this release (its per-tier discovery
        subscription refused by that config, the bare one kept): upgrade deployers, then
        listeners, then the config."""
        extra = {
            "web8": previous_listener("web8"),
            "web9": previous_listener("web9"),
            "assistant": PREVIOUS_TEST_KEY,
        }
        async with local_fleet([], {"ops": "admin"}, extra_users=extra, root=tmp_path) as local:
            web9 = ListenerSettings(
                hostname="web9",
                tier=Tier.TEST,
                role="web",
                nats_urls=local.urls,
                nkey_file=local.key_path("web9"),
                flake_url=FLAKE_URL,
                rebuild_command=simulated_rebuild_command(),
                state_dir=tmp_path / "state" / "web9",
            )
            async with (
                local.listeners([web9]),
                await local.connect("web8") as web8_bus,
                previous_release_listener(web8_bus, "web8"),
            ):
                results = {}
                for who in ("assistant", "ops"):
                    async with await local.connect(who) as bus:
                        deployer = Deployer(bus, timing=FAST, signer=local.seed(who))
                        found = await deployer.discover(Tier.TEST)
                        assert sorted(h.hostname for h in found) == ["web8", "web9"], who
                        results[who] = await deployer.deploy(
                            parse_target("deploy.test.all"),
                            revision="master",
                            action=Action.SWITCH,
                            timeout=30,
                        )
        for who, result in results.items():
            assert sorted((h.hostname, h.status) for h in result.hosts) == [
                ("web8", "completed"),
                ("web9", "completed"),
            ], who
            assert result.ok and result.flagged_count == 0
