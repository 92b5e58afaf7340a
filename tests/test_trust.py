"""Trusted results: a host speaks only for itself, and the test key sees only the test tier.

Every attack runs with real keys against a real nats-server: a raw ``Bus`` on web1's listener
key reads what web1 may read (``deploy.test.all``, ``deploy.discover``) and forges statuses
and discovery answers for other hosts, for prod and for invented hosts; the test deployer key
tries to read prod's statuses and to steer a test listener into a prod deployment.

Under the layout ``nats-config`` writes (``bound``) the server refuses what a key may not
publish or read, and the deployer drops what contradicts the subject it came on. Under
homelab-deploy's published layout the server refuses nothing of the sort, and the deployer
flags what it can tell (a body claiming another host than its subject, another request id,
an unexpected host or tier on the bare reply subject, a host that answers bound speaking on
the bare one) instead of counting it. One forgery it cannot tell there: a listener key
publishing on another host's bound subject in that host's name — only the bound layout stops
that, so it is forged here only under ``bound``.

Synchronisation: the honest host whose build fails (web2) waits for a file that the forger
creates once the server has processed its forgeries (after a flush), so every forgery
reaches the deployer before the truth would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from fleet_core.bus import Bus, Message
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.gathering import Gathering
from fleet_core.deploy.inbox import JobAnswers
from fleet_core.deploy.report import summary
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.deploy.tracker import DeploymentTracker
from fleet_core.errors import PermissionDenied
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import (
    InvalidRequest,
    JobPhase,
    JobSummary,
    Status,
    StatusKind,
    parse_deploy_request,
    parse_discover_request,
)
from fleet_core.protocol.subjects import Target, Tier
from fleet_core.protocol.trust import (
    MAX_FLAGGED,
    Flagged,
    ReplyOrigin,
    judge_status,
    plainly_believed,
    reply_origin,
)
from fleet_mcp.reports.deployment import deployment_report

from .conftest import FAST, TEST_HOSTS, Fleet

pytestmark = pytest.mark.anyio

HOMELAB = pytest.mark.parametrize("fleet", ["homelab"], indirect=True)
Forgery = tuple[str, dict[str, Any]]  # subject, body


def status(
    host: str, kind: str, request_id: str | None, tier: str | None = "test"
) -> dict[str, Any]:
    return {
        "hostname": host,
        "status": kind,
        "error": None,
        "message": f"forged {kind}",
        "request_id": request_id,
        "tier": tier,
    }


def signed_status(signer: str | None) -> dict[str, Any]:
    """web1's completed status for request d, naming who signed the request it answers."""
    return {**status("web1", "completed", "d"), "signer": signer}


def host_info(host: str, tier: str = "test") -> dict[str, Any]:
    return {
        "hostname": host,
        "tier": tier,
        "role": "web",
        "version": "forged",
        "deploy_subjects": [f"deploy.{tier}.{host}", f"deploy.{tier}.all"],
    }


@dataclass
class Forger:
    """A listener key on a connection of its own: every request it reads on ``subject`` it
    answers with ``forge(reply_to, request_id)``, flushes, then creates ``release``."""

    bus: Bus
    denied: list[str] = field(default_factory=list)  # what the server refused it


@asynccontextmanager
async def forging(
    fleet: Fleet,
    subject: str,
    forge: Callable[[str, str | None], Sequence[Forgery]],
    *,
    key: str = "web1",
    release: Path | None = None,
) -> AsyncIterator[Forger]:
    bus = await fleet.connect(key)
    forger = Forger(bus)
    bus.watch_denials(lambda exc: forger.denied.append(str(exc.subject)))

    async def on_request(msg: Message) -> None:
        request = json.loads(msg.data)
        for target, body in forge(request["reply_to"], request.get("id")):
            await bus.publish(target, json.dumps(body).encode())
        await bus.flush()  # the server has routed (or refused) every forgery by now
        if release is not None:
            await anyio.Path(release).touch()

    try:
        await bus.subscribe(subject, on_request)
        await bus.flush()
        yield forger
    finally:
        await bus.close()


@asynccontextmanager
async def homelab_listener(fleet: Fleet, name: str = "web3") -> AsyncIterator[list[dict[str, Any]]]:
    """A listener speaking homelab-deploy's protocol: it ignores ``bind`` and answers on the
    bare ``reply_to`` with no request id (a deploy: accepted, then completed at once)."""
    bus = await fleet.connect(name)
    requests: list[dict[str, Any]] = []

    async def on_deploy(msg: Message) -> None:
        request = json.loads(msg.data)
        requests.append(request)
        for kind in ("accepted", "completed"):
            body = {"hostname": name, "status": kind, "error": None, "message": kind}
            await bus.publish(request["reply_to"], json.dumps(body).encode())

    async def on_discover(msg: Message) -> None:
        request = json.loads(msg.data)
        await bus.publish(request["reply_to"], json.dumps(host_info(name)).encode())

    try:
        for subject in (f"deploy.test.{name}", "deploy.test.all", "deploy.test.role.web"):
            await bus.subscribe(subject, on_deploy)
        await bus.subscribe("deploy.discover", on_discover)
        await bus.flush()
        yield requests
    finally:
        await bus.close()


def outcomes(result: dict[str, Any] | DeploymentResult) -> dict[str, str]:
    hosts = result["hosts"] if isinstance(result, dict) else [h.model_dump() for h in result.hosts]
    return {h["hostname"]: h["status"] for h in hosts}


def reasons(result: dict[str, Any] | DeploymentResult) -> list[str]:
    flagged = (
        result["flagged"] if isinstance(result, dict) else [f.model_dump() for f in result.flagged]
    )
    return [f"{f['hostname']} {f['claim']}: {f['reason']}" for f in flagged]


# -- the wire and the pure judgement ---------------------------------------------------------


class TestPure:
    @pytest.mark.parametrize(
        ("subject", "origin"),
        [
            ("deploy.responses.r1", ReplyOrigin()),
            ("deploy.responses.r1.test.web1", ReplyOrigin("test", "web1")),
            ("deploy.responses.r1.prod.pweb1", ReplyOrigin("prod", "pweb1")),
            ("deploy.responses.r1.test", None),
            ("deploy.responses.r1.test.web1.x", None),
            ("deploy.responses.r10.test.web1", None),
            ("deploy.responses.r2", None),
            ("deploy.responses.r1..web1", None),
            ("deploy.responses.r1.test.", None),
            ("deploy.responses.r1.", None),
            ("deploy.responses", None),
            ("xdeploy.responses.r1.test.web1", None),
        ],
    )
    def test_reply_origin(self, subject: str, origin: ReplyOrigin | None) -> None:
        """A subject is the bare reply, <reply>.<tier>.<host>, or none of this reply's."""
        assert reply_origin("deploy.responses.r1", subject) == origin

    @pytest.mark.parametrize(
        ("origin", "body", "facts", "why"),
        [
            (ReplyOrigin("test", "web1"), status("web1", "completed", "d"), {}, None),
            (ReplyOrigin("test", "web1"), status("web2", "completed", "d"), {}, "claims host web2"),
            (ReplyOrigin("test", "web1"), status("web1", "completed", "d", "prod"), {}, "tier"),
            (ReplyOrigin("test", "web1"), status("web1", "completed", "x"), {}, "request id"),
            (ReplyOrigin("prod", "pweb1"), status("pweb1", "completed", "d", "prod"), {}, "tier"),
            (ReplyOrigin("test", "web9"), status("web9", "completed", "d"), {}, None),
            (
                ReplyOrigin("test", "web9"),
                status("web9", "completed", "d"),
                {"group": False, "expected": False},
                "not addressed",
            ),
            (ReplyOrigin(), status("web1", "completed", None, None), {}, None),
            (ReplyOrigin(), status("web1", "completed", "d"), {"speaks_bound": True}, "own reply"),
            (
                ReplyOrigin(),
                status("web9", "completed", "d"),
                {"expected": False},
                "did not expect",
            ),
            (ReplyOrigin(), status("web1", "completed", "d", "prod"), {}, "claims tier"),
            (ReplyOrigin("test", "\x1b[2J"), status("\x1b[2J", "completed", "d"), {}, "not a"),
            # A fleet-deploy listener names the request it answers, and who signed it.
            (ReplyOrigin("test", "web1"), status("web1", "rejected", None), {}, "no request id"),
            (ReplyOrigin("test", "web1"), signed_status("UMINE"), {}, None),
            (ReplyOrigin("test", "web1"), signed_status("UTHEIRS"), {}, "signed by key UTHEIRS"),
            (ReplyOrigin("test", "web1"), signed_status(None), {}, "signed by no verified key"),
            (ReplyOrigin(), signed_status("UTHEIRS"), {}, "not by this deployer"),
        ],
    )
    def test_judge_status(
        self, origin: ReplyOrigin, body: dict[str, Any], facts: dict[str, bool], why: str | None
    ) -> None:
        """A status counts only when its body agrees with its subject, it is this
        deployment's (its id, and a request signed by this deployer when it names a signer),
        and — on the bare subject — it is from an expected host of the tier that never
        answered bound."""
        given = {"expected": True, "group": True, "speaks_bound": False} | facts
        reason = judge_status(
            Status.model_validate(body),
            origin,
            deployment_id="d",
            tier="test",
            expected=given["expected"],
            group=given["group"],
            speaks_bound=given["speaks_bound"],
            signer="UMINE",  # the deployer's own key
        )
        assert (reason is None) == (why is None), reason
        assert why is None or (reason is not None and why in reason)
        # The deployer's fast path believes only what judge_status believes.
        plain = plainly_believed(
            Status.model_validate(body),
            origin,
            deployment_id="d",
            tier="test",
            expected=given["expected"],
            signer="UMINE",
        )
        assert not plain or reason is None

    def test_the_common_status_is_plainly_believed(self) -> None:
        """An expected host's status for this deployment, on its own subject, signed by this
        deployer or naming no signer: the deployer believes it without the full judgement;
        change any one fact and it is judged in full."""
        origin = ReplyOrigin("test", "web1")
        common = Status.model_validate(signed_status("UMINE"))
        facts: dict[str, Any] = {"deployment_id": "d", "tier": "test", "expected": True}
        assert plainly_believed(common, origin, signer="UMINE", **facts)
        unsigned = Status.model_validate(status("web1", "completed", "d"))
        assert plainly_believed(unsigned, origin, signer="UMINE", **facts)
        assert not plainly_believed(common, origin, signer="UOTHER", **facts)
        assert not plainly_believed(common, ReplyOrigin(), signer="UMINE", **facts)
        assert not plainly_believed(common, ReplyOrigin("prod", "web1"), signer="UMINE", **facts)
        assert not plainly_believed(common, origin, signer="UMINE", **(facts | {"expected": False}))
        assert not plainly_believed(
            common, origin, signer="UMINE", **(facts | {"deployment_id": "e"})
        )

    def test_bind_must_be_a_boolean(self) -> None:
        """A listener refuses a request whose bind is not true or false (a string is no yes)."""
        body = b'{"reply_to": "deploy.responses.r1", "bind": "yes"}'
        with pytest.raises(InvalidRequest, match="bind must be true or false"):
            parse_deploy_request(body)
        with pytest.raises(InvalidRequest, match="bind must be true or false"):
            parse_discover_request(body)
        assert parse_deploy_request(body.replace(b'"yes"', b"true")).bind is True

    def test_flagged_are_listed_up_to_a_cap_and_counted(self) -> None:
        """A flood of forgeries costs a bounded list and a count; bare statuses that counted
        make the result not server-verified."""
        tracker = DeploymentTracker(
            ["web1"], started_at=0.0, timeout=10, answer_within=5, silence_limit=5
        )
        for index in range(MAX_FLAGGED + 7):
            tracker.flag(Flagged.of("deploy.responses.r1", f"ghost{index}", "completed", "why"))
        tracker.observe(Status.model_validate(status("web1", "completed", "d")), 1.0, bound=False)
        result = tracker.result(
            deployment_id="d",
            subject="deploy.test.web1",
            tier="test",
            action="switch",
            revision="master",
            now=1.0,
        )
        assert (len(result.flagged), result.flagged_count) == (MAX_FLAGGED, MAX_FLAGGED + 7)
        assert (result.ok, result.server_verified, result.unverified) == (True, False, ["web1"])

    def test_a_bare_job_answer_cannot_speak_for_a_bound_host(self) -> None:
        """Asked about two silent hosts, a bare job answer `finished/completed` is dropped for
        web2, which spoke bound (it ends lost, as unanswered), and taken for web3, which never
        did (a homelab-deploy listener): recovered, but not server-verified."""
        tracker = DeploymentTracker(
            ["web2", "web3"], started_at=0.0, timeout=100, answer_within=5, silence_limit=10
        )
        gathering = Gathering(
            tracker,
            reply="deploy.responses.d",
            deployment_id="d",
            target=Target.all(Tier.TEST),
            action=Action.SWITCH,
            revision="master",
            log=structlog.get_logger("test"),
            on_update=None,
            on_connection=None,
        )
        tracker.observe(Status.model_validate(status("web2", "started", "d")), 1.0)
        tracker.observe(Status.model_validate(status("web3", "started", None)), 1.0, bound=False)
        tracker.expire(20.0)
        assert tracker.due_queries(20.0) == ["web2", "web3"]
        done = JobSummary(request_id="d", phase=JobPhase.FINISHED, status=StatusKind.COMPLETED)
        answers = JobAnswers(
            {"web2": done, "web3": done},
            bare=frozenset({"web2", "web3"}),
            reply="deploy.responses.q",
        )
        changed = {h.hostname: (h.status, h.recovered) for h in gathering.take(answers, 20.0)}
        assert changed == {"web2": ("lost", False), "web3": ("completed", True)}
        result = gathering.snapshot(20.0)
        assert [(f.subject, f.hostname, f.claim) for f in result.flagged] == [
            ("deploy.responses.q", "web2", "job answer")
        ]
        assert result.unverified == ["web3"]

    def test_reports_say_what_was_not_believed(self) -> None:
        """The CLI summary and the MCP report list flagged messages and unverified hosts;
        a hostile hostname is shown quoted, never raw."""
        result = DeploymentResult(
            deployment_id="d",
            subject="deploy.test.all",
            tier="test",
            action="switch",
            revision="master",
            ok=True,
            done=True,
            counts={"completed": 1},
            hosts=[HostResult(hostname="web3", status="completed", final=True)],
            duration_s=1.0,
            server_verified=False,
            unverified=["web3"],
            flagged=[Flagged.of("deploy.responses.d", "\x1b[2Jweb2", "completed", "its body …")],
            flagged_count=1,
        )
        text = summary(result)
        assert "Not believed, so not counted (1):" in text
        assert "\x1b" not in text and '"\\u001b[2Jweb2"' in text
        assert "Not server-verified: web3 answered on the bare reply subject" in text
        assert text.endswith("OK (not server-verified): 1 completed")
        report = deployment_report(result, finished=True, test_only=True)
        assert report.flagged_count == 1 and report.unverified == ["web3"]
        assert "were not believed and not counted" in report.summary
        assert "Not server-verified: web3" in report.summary


# -- the layout nats-config writes -----------------------------------------------------------


class TestBoundLayout:
    async def test_a_listener_key_cannot_forge_results(self, fleet: Fleet, tmp_path: Path) -> None:
        """web1's key reads an admin deployment's reply subject on deploy.test.all and forges
        `completed` for web2 (whose build fails) and prod's pweb1: on their bound subjects
        and on the bare one the server refuses it; on its own subject, in their names, the
        deployer drops it. The admin CLI reports web2 failed with its nix error, exit 1."""
        release = tmp_path / "release"

        def forge(reply: str, request_id: str | None) -> list[Forgery]:
            return [
                (f"{reply}.test.web2", status("web2", "completed", request_id)),
                (f"{reply}.prod.pweb1", status("pweb1", "completed", request_id, "prod")),
                (reply, status("web2", "completed", request_id)),
                (reply, status("pweb1", "completed", request_id, "prod")),
                (f"{reply}.test.web1", status("web2", "completed", request_id)),
                (f"{reply}.test.web1", status("pweb1", "completed", request_id, "prod")),
                (f"{reply}.test.web1", status("web1", "failed", "another-deployment")),
            ]

        sim = {"web2": ["--sim-wait-for", str(release), "--sim-fail"]}
        async with (
            fleet.listeners("web1", "web2", "pweb1", sim=sim),
            forging(fleet, "deploy.test.all", forge, release=release) as forger,
        ):
            done = await fleet.cli("deploy", "deploy.test.all", "--json", who="admin")
        assert done.returncode == 1, done.stderr
        result = json.loads(done.stdout)
        assert outcomes(result) == {"web1": "completed", "web2": "failed"}
        web2 = next(h for h in result["hosts"] if h["hostname"] == "web2")
        assert web2["error"] == "build_failed"
        assert "undefined variable 'webroot'" in web2["message"]
        assert result["ok"] is False and result["server_verified"] is True
        reply = f"deploy.responses.{result['deployment_id']}"
        assert sorted(forger.denied) == sorted(
            [f"{reply}.test.web2", f"{reply}.prod.pweb1", reply, reply]
        )
        assert reasons(result) == [
            "web2 completed: its body claims host web2 on the reply subject of web1",
            "pweb1 completed: its body claims host pweb1 on the reply subject of web1",
            "web1 failed: request id another-deployment is not this deployment's",
        ]

    async def test_invented_hosts_are_not_discovered_nor_waited_for(self, fleet: Fleet) -> None:
        """web1's key answers discovery for invented hosts: refused on their bound subjects
        and the bare one, dropped on its own. `hosts` lists only real listeners, and a deploy
        to the tier neither waits for them nor counts them."""

        def forge(reply: str, _: str | None) -> list[Forgery]:
            return [
                (f"{reply}.test.ghost", host_info("ghost")),
                (f"{reply}.prod.phantom", host_info("phantom", "prod")),
                (reply, host_info("ghost2")),
                (f"{reply}.test.web1", host_info("ghost3")),
                (f"{reply}.test.web1", host_info("web1", "prod")),
            ]

        async with (
            fleet.listeners("web1", "web2", "pweb1"),
            forging(fleet, "deploy.discover.test", forge) as forger,
        ):
            listed = await fleet.cli("hosts", "--json", who="admin")
            started = anyio.current_time()
            result = await fleet.deploy("deploy.test.all", who="admin")
            took = anyio.current_time() - started
        assert listed.returncode == 0, listed.stderr
        assert sorted(h["hostname"] for h in json.loads(listed.stdout)) == [
            "pweb1",
            "web1",
            "web2",
        ]
        assert outcomes(result) == {"web1": "completed", "web2": "completed"}
        assert result.ok and took < FAST.answer_within  # nobody waited for a ghost
        assert reasons(result) == [
            "ghost3 discovery: its body claims host ghost3 on the reply subject of web1",
            "web1 discovery: its body claims tier prod on a reply subject of tier test",
        ]
        assert {s.rpartition(".")[2] for s in forger.denied} >= {"ghost", "phantom"}

    async def test_the_test_key_reads_no_prod_status(self, fleet: Fleet, tmp_path: Path) -> None:
        """While an admin deploys pweb1, the test key may not subscribe to prod's replies;
        its deploy.responses.> (which deploy.responses.* admits) gets no prod status; and a
        test listener it steers into that deployment's reply subject — bound, bare, or on
        pweb1's own — reaches nothing: the deployment ends OK, flagged nothing."""
        release = tmp_path / "release"
        prod_id = uuid.uuid4().hex  # the worst case: the attacker knows the reply subject
        prod_reply = f"deploy.responses.{prod_id}"
        seen: list[str] = []
        marker = "deploy.responses.marker.test.web1"
        marked = anyio.Event()
        steered: list[Status] = []
        steered_final = anyio.Event()
        pweb1_started = anyio.Event()

        async def see(msg: Message) -> None:
            seen.append(msg.subject)
            if msg.subject == marker:
                marked.set()

        async def hear(msg: Message) -> None:
            heard = Status.model_validate_json(msg.data)
            steered.append(heard)
            if heard.is_final:
                steered_final.set()

        def on_update(host: HostResult, _: DeploymentResult) -> None:
            if host.status == "started":
                pweb1_started.set()

        async def admin_deploy() -> DeploymentResult:
            async with await fleet.connect("admin") as bus:
                return await Deployer(bus, timing=FAST).deploy(
                    Target.host(Tier.PROD, "pweb1"),
                    revision="master",
                    action=Action.SWITCH,
                    timeout=30,
                    deployment_id=prod_id,
                    on_update=on_update,
                )

        test_key = await fleet.connect("deployer")
        denied: list[str] = []
        test_key.watch_denials(lambda exc: denied.append(str(exc.subject)))
        results: list[DeploymentResult] = []
        try:
            async with fleet.listeners(
                "web1", "pweb1", sim={"pweb1": ["--sim-wait-for", str(release)]}
            ):
                await test_key.subscribe("deploy.responses.>", see)
                await test_key.subscribe(f"{prod_reply}.prod.*", see)
                await test_key.subscribe(f"{prod_reply}.test.web1", hear)
                await test_key.flush()
                assert denied == [f"{prod_reply}.prod.*"]
                async with anyio.create_task_group() as tasks:

                    async def run() -> None:
                        results.append(await admin_deploy())

                    tasks.start_soon(run)
                    with anyio.fail_after(10):
                        await pweb1_started.wait()
                    for body in (
                        {"reply_to": prod_reply, "id": prod_id, "bind": True},
                        {"reply_to": prod_reply, "id": prod_id},
                        {"reply_to": f"{prod_reply}.prod.pweb1", "id": prod_id},
                    ):
                        await test_key.publish("deploy.test.web1", json.dumps(body).encode())
                    await test_key.flush()
                    with anyio.fail_after(10):
                        await steered_final.wait()  # web1 answered where it may: .test.web1
                    release.touch()
                # The admin's result is in; a marker after it: whatever the server would have
                # delivered to the test key before, it has.
                async with await fleet.connect("admin") as admin:
                    await admin.publish(marker, b"{}")
                    await admin.flush()
                with anyio.fail_after(5):
                    await marked.wait()
        finally:
            await test_key.close()
        (result,) = results
        assert outcomes(result) == {"pweb1": "completed"}
        assert result.ok and result.server_verified and result.flagged_count == 0
        assert [s.hostname for s in steered] and {s.hostname for s in steered} == {"web1"}
        assert not any(".prod." in subject for subject in seen), seen
        assert prod_reply not in seen

    async def test_hosts_with_the_test_key_lists_no_prod_host(self, fleet: Fleet) -> None:
        """`fleet-deploy hosts` with the test key lists the test hosts and no prod host, even
        asked for prod: the server keeps prod's answers from it. It is no error, and a
        line on stderr says so without naming a prod host."""
        async with fleet.listeners(*TEST_HOSTS, "pweb1", "pdb1"):
            table = await fleet.cli("hosts")
            prod = await fleet.cli("hosts", "--tier", "prod", "--json")
        assert table.returncode == 0 and prod.returncode == 0, table.stderr + prod.stderr
        listed = [line.split()[0] for line in table.stdout.decode().splitlines()[1:]]
        assert sorted(listed) == TEST_HOSTS
        assert json.loads(prod.stdout) == []
        for stderr in (table.stderr, prod.stderr):
            assert (
                stderr.decode() == "prod hosts are not shown: this key may not read their answers\n"
            )

    async def test_a_test_key_deploy_to_prod_is_refused_at_once(self, fleet: Fleet) -> None:
        """A test key's deploy to a prod host is refused as the publish it is, not a wait."""
        async with fleet.listeners("pweb1"):
            with anyio.fail_after(3), pytest.raises(PermissionDenied, match="publish to"):
                await fleet.deploy("deploy.prod.pweb1")

    async def test_a_homelab_listener_cannot_answer_under_it(self, fleet: Fleet) -> None:
        """A listener that ignores bind publishes to the bare reply subject, which the bound
        layout refuses every listener key: discovery does not find it, and addressed by name
        it ends missing though it ran the request (so migrate the listeners first)."""
        async with (
            fleet.listeners("web1"),
            homelab_listener(fleet, "web3") as requests,
            await fleet.connect("admin") as bus,
        ):
            deployer = Deployer(bus, timing=replace(FAST, answer_within=1.0))
            found = await deployer.discover()
            result = await deployer.deploy(
                Target.host(Tier.TEST, "web3"), revision="master", action=Action.SWITCH, timeout=10
            )
        assert [h.hostname for h in found] == ["web1"]
        assert requests and outcomes(result) == {"web3": "missing"}


# -- homelab-deploy's published layout --------------------------------------------------------


class TestHomelabLayout:
    @HOMELAB
    async def test_forgeries_are_flagged_not_counted(self, fleet: Fleet, tmp_path: Path) -> None:
        """The server lets web1's key publish anywhere under deploy.responses.>; what the
        deployer can tell is flagged and listed in the CLI summary, and web2's true failure
        stands (exit 1)."""
        release = tmp_path / "release"

        def forge(reply: str, request_id: str | None) -> list[Forgery]:
            return [
                (f"{reply}.test.web1", status("web2", "completed", request_id)),
                (f"{reply}.test.web1", status("pweb1", "completed", request_id, "prod")),
                (reply, status("web2", "completed", request_id)),
                (reply, status("pweb1", "completed", request_id, "prod")),
                (reply, status("ghost", "completed", request_id)),
                (f"{reply}.test.web1", status("web1", "failed", "another-deployment")),
                (f"{reply}.prod.pweb1", status("pweb1", "completed", request_id, "prod")),
            ]

        sim = {"web2": ["--sim-wait-for", str(release), "--sim-fail"]}
        async with (
            fleet.listeners("web1", "web2", "pweb1", sim=sim),
            forging(fleet, "deploy.test.all", forge, release=release) as forger,
        ):
            done = await fleet.cli("deploy", "deploy.test.all", who="admin")
        out = done.stdout.decode()
        assert done.returncode == 1, out + done.stderr.decode()
        assert forger.denied == []  # nothing is refused under this layout
        assert "Not believed, so not counted (6):" in out
        for line in (
            "its body claims host web2 on the reply subject of web1",
            "its body claims host pweb1 on the reply subject of web1",
            "but web2 answers on its own reply subject",
            "it claims tier prod for a deployment to tier test",
            "for ghost, a host this deployment did not expect",
            "request id another-deployment is not this deployment's",
        ):
            assert line in out, out
        table = out.split("  HOST ")[1].split("\n\n")[0].splitlines()[1:]
        assert {row.split()[0]: row.split()[1] for row in table} == {
            "web1": "completed",
            "web2": "failed",
        }
        assert out.rstrip().endswith("NOT OK: 1 completed, 1 failed")

    @HOMELAB
    async def test_honest_deploys_with_both_kinds_of_listener(self, fleet: Fleet) -> None:
        """A fleet-deploy listener (bound) and a homelab-deploy one (bare, no request id) both
        complete with the test key; the result counts them and says web3 is unverified."""
        async with fleet.listeners("web1"), homelab_listener(fleet, "web3") as requests:
            result = await fleet.deploy("deploy.test.all")
            listed = await Deployer(await fleet.connect(), timing=FAST).discover()
        assert requests and requests[0]["bind"] is True  # asked, and ignored
        assert outcomes(result) == {"web1": "completed", "web3": "completed"}
        assert result.ok and result.flagged_count == 0
        assert (result.server_verified, result.unverified) == (False, ["web3"])
        assert sorted(h.hostname for h in listed) == ["web1", "web3"]

    @HOMELAB
    async def test_the_test_key_still_reads_prod_there(self, fleet: Fleet) -> None:
        """homelab-deploy's layout gives the test key every reply: it discovers prod hosts.
        (The bound layout is what keeps them from it.)"""
        async with fleet.listeners("web1", "pweb1"):
            hosts = await Deployer(await fleet.connect(), timing=FAST).discover()
        assert sorted(h.hostname for h in hosts) == ["pweb1", "web1"]
