"""Signed requests, end to end: a real nats-server under a loose config, real keys, real
listeners and their job runners.

The server here is looser than ``nats-config`` writes it: an extra user, ``leaked``, may
publish and subscribe on all of ``deploy.>`` — a leaked listener key under homelab-style
permissions, or any config mistake. NATS permissions then stop nothing; what stops the
attacker is the prod host's trusted deployer keys (the admin's alone), while the test host
trusts the admin and the test-tier deployer.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from fleet_core.bus import Bus, Message
from fleet_core.config.resolve import listener_settings
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.errors import UsageError
from fleet_core.keys import Seed, generate_seed
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import ErrorCode, Status, parse_status
from fleet_core.protocol.signing import sign_request
from fleet_core.protocol.subjects import Target, Tier
from fleet_core.testing import FleetHost, local_fleet

from .conftest import FAST, FLAKE_URL, Fleet, expected_argv, scripts_dir

pytestmark = pytest.mark.anyio

LOOSE = {"publish": ["deploy.>"], "subscribe": ["deploy.>"]}
PROD_SUBJECTS = ("deploy.prod.pweb1", "deploy.prod.all", "deploy.prod.role.web")


@pytest.fixture
async def loose(tmp_path: Path) -> AsyncIterator[Fleet]:
    """A test host and a prod host, the usual deployers, and ``leaked`` with ``deploy.>``."""
    hosts = [FleetHost("web1", Tier.TEST, "web"), FleetHost("pweb1", Tier.PROD, "web")]
    deployers: dict[str, Any] = {"deployer": "test", "admin": "admin"}
    async with local_fleet(hosts, deployers, extra_users={"leaked": LOOSE}, root=tmp_path) as local:
        yield Fleet(local=local, record=tmp_path / "runs.jsonl")


def trusting(fleet: Fleet) -> dict[str, tuple[str, ...]]:
    """Each host's trusted deployer keys: the admin's everywhere, the test key on test hosts."""
    admin, test = fleet.seed("admin").public_key, fleet.seed("deployer").public_key
    return {"web1": (admin, test), "pweb1": (admin,)}


@asynccontextmanager
async def serving(fleet: Fleet, *hosts: str, trusted: bool = True) -> AsyncIterator[None]:
    """Listeners for ``hosts``, with their trusted keys unless ``trusted`` is false."""
    keys = trusting(fleet) if trusted else {}
    chosen = [fleet.settings(h, trusted_deployer_keys=keys.get(h, ())) for h in hosts]
    async with fleet.local.listeners(chosen):
        yield


def signed_body(
    seed: Seed,
    subject: str,
    *,
    revision: str = "master",
    action: str = "switch",
    now: float | None = None,
) -> dict[str, Any]:
    """A deploy request signed by ``seed`` for ``subject``, as the deployer builds one."""
    request_id = uuid.uuid4().hex
    signature = sign_request(
        seed.reveal(),
        request_id=request_id,
        subject=subject,
        action=action,
        revision=revision,
        now=time.time() if now is None else now,
    )
    return {
        "action": action,
        "revision": revision,
        "reply_to": f"deploy.responses.{request_id}",
        "id": request_id,
        "bind": True,
        "signer": signature.signer,
        "signed_at": signature.signed_at,
        "signature": signature.signature,
    }


async def final_statuses(
    bus: Bus, subject: str, payload: bytes, reply: str, *, count: int = 1
) -> list[Status]:
    """Publish ``payload`` on ``subject`` and return the first ``count`` final statuses that
    come back on ``reply`` (bare or bound to a host), within a deadline."""
    finals: list[Status] = []
    arrived = anyio.Event()

    async def deliver(msg: Message) -> None:
        status = parse_status(msg.data)
        if status is not None and status.is_final:
            finals.append(status)
            if len(finals) >= count:
                arrived.set()

    subscriptions = [await bus.subscribe(s, deliver) for s in (reply, f"{reply}.>")]
    try:
        await bus.flush()
        await bus.publish(subject, payload)
        with anyio.fail_after(10):
            await arrived.wait()
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()
    return finals


async def send(bus: Bus, subject: str, body: dict[str, Any], *, reply: str | None = None) -> Status:
    """``body`` published on ``subject`` (its ``reply_to`` replaced by ``reply``, if given);
    the one final status that comes back."""
    if reply is not None:
        body = {**body, "reply_to": reply}
    (status,) = await final_statuses(bus, subject, json.dumps(body).encode(), body["reply_to"])
    return status


async def unanswered(
    fleet: Fleet, bus: Bus, subject: str, bodies: Sequence[bytes], *, nothing_runs: bool = True
) -> list[Status]:
    """Publish each of ``bodies`` on ``subject``, then a request the host does answer (signed
    by the leaked key, which no host trusts: ``untrusted_signer``); return what came back on
    the reply subjects of ``bodies`` by the time that answer did. The host takes a subject's
    messages in order, so by then it has dealt with every one of ``bodies``."""
    heard: list[Status] = []

    async def deliver(msg: Message) -> None:
        status = parse_status(msg.data)
        if status is not None:
            heard.append(status)

    replies = {json.loads(body)["reply_to"] for body in bodies}
    subscriptions = [await bus.subscribe(f"{r}.>", deliver) for r in replies]
    subscriptions += [await bus.subscribe(r, deliver) for r in replies]
    try:
        await bus.flush()
        for body in bodies:
            await bus.publish(subject, body)
        probe = await send(bus, subject, signed_body(fleet.seed("leaked"), subject))
        assert (probe.status, probe.error) == ("rejected", ErrorCode.UNTRUSTED_SIGNER), probe
        await bus.flush()
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()
    return heard


@asynccontextmanager
async def sniffing(bus: Bus, subject: str) -> AsyncIterator[list[bytes]]:
    """The raw bytes of every message on ``subject`` while the block runs (the attacker's
    view under the loose config)."""
    seen: list[bytes] = []

    async def record(msg: Message) -> None:
        seen.append(msg.data)

    subscription = await bus.subscribe(subject, record)
    await bus.flush()
    try:
        yield seen
    finally:
        await subscription.unsubscribe()


async def deploy_as(
    fleet: Fleet, who: str, subject: Target, *, signer: Seed | None
) -> DeploymentResult:
    """A deployment through the core deployer on ``who``'s connection, signed by ``signer``."""
    async with await fleet.connect(who) as bus:
        return await Deployer(bus, timing=FAST, signer=signer).deploy(
            subject, revision="master", action=Action.SWITCH, timeout=30
        )


def outcome(result: DeploymentResult) -> list[tuple[str, str, str | None]]:
    return [(h.hostname, h.status, h.error) for h in result.hosts]


def events(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


class TestALeakedKeyCannotDeployProd:
    async def test_an_unsigned_request_is_refused_unanswered(self, loose: Fleet) -> None:
        """Unsigned requests the leaked key may publish anywhere are refused on every prod
        subject, nothing runs, and nothing is answered: nobody provably sent them, and the
        reply subject may be another deployment's. The host logs why."""
        with capture_logs() as logs:
            async with serving(loose, "pweb1"), await loose.connect("leaked") as bus:
                for subject in PROD_SUBJECTS:
                    request_id = uuid.uuid4().hex
                    body = {"id": request_id, "reply_to": f"deploy.responses.{request_id}"}
                    heard = await unanswered(loose, bus, subject, [json.dumps(body).encode()])
                    assert heard == [], heard
                result = await deploy_as(
                    loose, "leaked", Target.host(Tier.PROD, "pweb1"), signer=None
                )
        assert outcome(result) == [("pweb1", "missing", None)]
        assert "could not verify" in result.hosts[0].message
        refused = [e for e in events(logs, "request_rejected") if not e["answered"]]
        assert {e["error"] for e in refused} == {"unsigned_request"}
        assert len(refused) == len(PROD_SUBJECTS) + 1
        assert loose.runs() == []

    async def test_a_request_signed_with_the_listener_s_own_key_is_untrusted(
        self, loose: Fleet
    ) -> None:
        """Signed with the prod listener's own (leaked) key — or a listener key of the test
        tier — the request is rejected untrusted_signer: a host trusts deployers only."""
        async with serving(loose, "pweb1"):
            for stolen in ("pweb1", "web1"):
                result = await deploy_as(
                    loose, "leaked", Target.all(Tier.PROD), signer=loose.seed(stolen)
                )
                assert outcome(result) == [("pweb1", "rejected", "untrusted_signer")]
        assert loose.runs() == []

    async def test_the_test_key_cannot_sign_for_prod(self, loose: Fleet) -> None:
        """The test-tier deployer's key, trusted by the test host, is untrusted on prod even
        where the server would let it publish there."""
        async with serving(loose, "pweb1"):
            result = await deploy_as(
                loose, "leaked", Target.host(Tier.PROD, "pweb1"), signer=loose.seed("deployer")
            )
        assert outcome(result) == [("pweb1", "rejected", "untrusted_signer")]
        assert loose.runs() == []

    async def test_an_admin_signed_request_altered_or_moved_is_a_bad_signature(
        self, loose: Fleet
    ) -> None:
        """The admin's signed request for deploy.test.web1, sniffed and re-published with
        another revision or action, or on a prod subject, never runs: on web1 its id is
        known (ignored), elsewhere the signature, which covers the subject it arrived on,
        the action and the revision, does not verify (refused bad_signature, unanswered)."""
        async with serving(loose, "web1", "pweb1"), await loose.connect("leaked") as bus:
            async with sniffing(bus, "deploy.test.web1") as sniffed:
                legit = await deploy_as(
                    loose, "admin", Target.host(Tier.TEST, "web1"), signer=loose.seed("admin")
                )
            assert outcome(legit) == [("web1", "completed", None)]
            (captured,) = [json.loads(data) for data in sniffed]
            assert captured["signer"] == loose.seed("admin").public_key
            forgeries = [
                ("deploy.test.web1", {**captured, "revision": "evil"}, "web1"),
                ("deploy.test.web1", {**captured, "action": "boot"}, "web1"),
                ("deploy.test.web1", {**captured, "signed_at": time.time()}, "web1"),
                ("deploy.prod.pweb1", captured, "pweb1"),
                ("deploy.prod.all", captured, "pweb1"),
                ("deploy.test.all", captured, "web1"),
            ]
            with capture_logs() as logs:
                for subject, body, _ in forgeries:
                    heard = await unanswered(loose, bus, subject, [json.dumps(body).encode()])
                    assert heard == [], (subject, body)
        assert loose.runs() == [expected_argv("web1")]
        ignored = {(e["host"], e["request_id"]) for e in events(logs, "request_ignored")}
        assert ignored == {("web1", captured["id"])}
        refused = [e for e in events(logs, "request_rejected") if e["error"] == "bad_signature"]
        assert {e["host"] for e in refused} == {"pweb1"} and len(refused) == 2

    async def test_a_replayed_request_is_rejected_even_after_a_restart(self, loose: Fleet) -> None:
        """The admin's request to prod, sniffed and published again byte for byte, is
        ignored — by the same listener and by a restarted one — unanswered (the answer would
        land among the admin's statuses), and the rebuild ran once."""
        subject = "deploy.prod.pweb1"
        with capture_logs() as logs:
            async with await loose.connect("leaked") as bus:
                async with serving(loose, "pweb1"):
                    async with sniffing(bus, subject) as sniffed:
                        legit = await deploy_as(
                            loose,
                            "admin",
                            Target.host(Tier.PROD, "pweb1"),
                            signer=loose.seed("admin"),
                        )
                    assert outcome(legit) == [("pweb1", "completed", None)]
                    (raw,) = sniffed
                    assert await unanswered(loose, bus, subject, [raw]) == []
                async with serving(loose, "pweb1"):  # a new listener
                    assert await unanswered(loose, bus, subject, [raw]) == []
        ignored = [e["request_id"] for e in events(logs, "request_ignored")]
        assert ignored == [json.loads(raw)["id"]] * 2
        assert loose.runs() == [expected_argv("pweb1")]

    async def test_a_refused_request_stays_refused_after_a_restart(
        self, loose: Fleet, tmp_path: Path
    ) -> None:
        """The admin's request refused already_running (the host was busy), published again
        byte for byte after the listener restarted, still within its lifetime, is ignored:
        the host remembered it on disk before it answered the refusal. It never runs."""
        release = tmp_path / "release"
        subject = "deploy.prod.pweb1"
        admin = loose.seed("admin")
        target = Target.host(Tier.PROD, "pweb1")
        busy = loose.settings(
            "pweb1", "--sim-wait-for", str(release), trusted_deployer_keys=trusting(loose)["pweb1"]
        )
        running = anyio.Event()

        def on_update(host: HostResult, _: DeploymentResult) -> None:
            if host.status == "started":
                running.set()

        async def first() -> None:
            async with await loose.connect("admin") as admin_bus:
                deployer = Deployer(admin_bus, timing=FAST, signer=admin)
                result = await deployer.deploy(
                    target, revision="master", action=Action.SWITCH, timeout=30, on_update=on_update
                )
            assert outcome(result) == [("pweb1", "completed", None)]

        with capture_logs() as logs:
            async with await loose.connect("leaked") as bus:
                async with loose.local.listeners([busy]), anyio.create_task_group() as tasks:
                    tasks.start_soon(first)
                    with anyio.fail_after(20):
                        await running.wait()
                    async with sniffing(bus, subject) as sniffed:
                        refused = await deploy_as(loose, "admin", target, signer=admin)
                    assert outcome(refused) == [("pweb1", "rejected", "already_running")]
                    (raw,) = sniffed  # the refused request, as the admin sent it
                    release.touch()
                async with serving(loose, "pweb1"):  # restarted, within the request's lifetime
                    assert await unanswered(loose, bus, subject, [raw]) == []
        replayed = json.loads(raw)["id"]
        assert [e["request_id"] for e in events(logs, "request_ignored")] == [replayed]
        assert replayed not in [e["request_id"] for e in events(logs, "request_accepted")]
        assert loose.runs() == [expected_argv("pweb1")]

    async def test_an_old_or_future_request_is_expired(self, loose: Fleet) -> None:
        """A request the admin signed long ago (or, by a wrong clock, far ahead) is rejected
        expired_request; one within the clock skew is not."""
        admin = loose.seed("admin")
        async with serving(loose, "pweb1"), await loose.connect("leaked") as bus:
            subject = "deploy.prod.pweb1"
            for when in (time.time() - 3600, time.time() - 95, time.time() + 3600):
                status = await send(bus, subject, signed_body(admin, subject, now=when))
                assert (status.status, status.error) == ("rejected", "expired_request"), when
            assert loose.runs() == []
            slightly_ahead = signed_body(admin, subject, now=time.time() + 10)
            status = await send(bus, subject, slightly_ahead)
        assert (status.status, status.error) == ("completed", None)

    async def test_a_correctly_signed_request_runs(self, loose: Fleet) -> None:
        """The admin's signed deploy runs on prod, the test key's on the test host; each
        listener logs the signer's public key on every request, accepted or rejected."""
        with capture_logs() as logs:
            async with serving(loose, "web1", "pweb1"):
                prod = await loose.deploy("deploy.prod.pweb1", who="admin")
                test = await loose.deploy("deploy.test.web1", who="deployer")
                refused = await deploy_as(
                    loose, "leaked", Target.host(Tier.PROD, "pweb1"), signer=loose.seed("web1")
                )
        assert outcome(prod) == [("pweb1", "completed", None)]
        assert outcome(test) == [("web1", "completed", None)]
        assert outcome(refused) == [("pweb1", "rejected", "untrusted_signer")]
        accepted = {(e["host"], e["signer"]) for e in events(logs, "request_accepted")}
        assert accepted == {
            ("pweb1", loose.seed("admin").public_key),
            ("web1", loose.seed("deployer").public_key),
        }
        (rejected,) = events(logs, "request_rejected")
        assert rejected["signer"] == loose.seed("web1").public_key
        assert rejected["error"] == "untrusted_signer"
        assert sorted(loose.hosts_run()) == ["pweb1", "web1"]
        secrets = [loose.seed(name).reveal() for name in ("admin", "deployer", "web1")]
        assert not any(secret in repr(logs) for secret in secrets)

    async def test_a_malformed_request_logs_the_signer_it_claims(self, loose: Fleet) -> None:
        """A signed request that fails validation (a hostile revision) is refused before its
        signature is checked, unanswered (it cannot be verified), and the log still names
        the key it claims."""
        body = signed_body(loose.seed("admin"), "deploy.prod.pweb1")
        hostile = json.dumps({**body, "revision": "$(id)"}).encode()
        with capture_logs() as logs:
            async with serving(loose, "pweb1"), await loose.connect("leaked") as bus:
                assert await unanswered(loose, bus, "deploy.prod.pweb1", [hostile]) == []
        rejected = [e for e in events(logs, "request_rejected") if e["error"] == "invalid_revision"]
        assert [e["signer"] for e in rejected] == [loose.seed("admin").public_key]
        assert loose.runs() == []

    async def test_without_trusted_keys_an_unsigned_request_runs(self, loose: Fleet) -> None:
        """A listener with no trusted deployer keys accepts unsigned requests, as before."""
        async with serving(loose, "pweb1", trusted=False):
            result = await deploy_as(loose, "admin", Target.host(Tier.PROD, "pweb1"), signer=None)
        assert outcome(result) == [("pweb1", "completed", None)]
        assert loose.runs() == [expected_argv("pweb1")]


LISTENER_FLAGS: dict[str, object] = {
    "hostname": "web1",
    "tier": "test",
    "nats_url": "nats://127.0.0.1:4222",
    "nkey_file": "/run/keys/web1.seed",
    "flake_url": FLAKE_URL,
}


class TestSettings:
    def test_trusted_keys_from_flags_or_the_variable(self) -> None:
        """--trusted-deployer-key repeats; FLEET_DEPLOY_TRUSTED_DEPLOYER_KEY takes a comma-
        separated list; duplicates count once; --request-ttl defaults to 60 s."""
        admin, test = generate_seed().public_key, generate_seed().public_key
        flags = {**LISTENER_FLAGS, "trusted_deployer_key": [admin, test, admin]}
        assert listener_settings(flags, environ={}).trusted_deployer_keys == (admin, test)
        variable = {"FLEET_DEPLOY_TRUSTED_DEPLOYER_KEY": f" {test}, {admin},"}
        settings = listener_settings(LISTENER_FLAGS, environ=variable)
        assert settings.trusted_deployer_keys == (test, admin)
        assert settings.request_ttl == 60
        assert listener_settings(LISTENER_FLAGS, environ={}).trusted_deployer_keys == ()

    @pytest.mark.parametrize(
        ("key", "message"),
        [
            ("UNOTAKEY", "is not a user public key"),
            ("NOT BASE32!", "is not a base32 NKey"),
            ("listener", "is not a base32 NKey"),
        ],
    )
    def test_a_bad_trusted_key_is_a_usage_error(self, key: str, message: str) -> None:
        """Anything but a user public key is refused at start, saying what to give."""
        with pytest.raises(UsageError, match=message):
            listener_settings({**LISTENER_FLAGS, "trusted_deployer_key": [key]}, environ={})

    def test_a_seed_given_as_a_trusted_key_is_refused_without_repeating_it(self) -> None:
        """A seed pasted where a public key belongs is refused, and the error does not show
        it (errors reach the journal)."""
        seed = generate_seed().reveal()
        with pytest.raises(UsageError, match="that is an NKey seed") as refused:
            listener_settings({**LISTENER_FLAGS, "trusted_deployer_key": [seed]}, environ={})
        assert seed not in str(refused.value)

    def test_a_request_ttl_must_be_positive(self) -> None:
        """--request-ttl takes a positive number of seconds."""
        with pytest.raises(UsageError, match="--request-ttl must be a positive"):
            listener_settings({**LISTENER_FLAGS, "request_ttl": "0"}, environ={})
        assert (
            listener_settings({**LISTENER_FLAGS, "request_ttl": "5"}, environ={}).request_ttl == 5
        )

    async def test_the_listener_refuses_to_trust_its_own_key(self, loose: Fleet) -> None:
        """fleet-deploy listener exits 2 when told to trust its own key: a leaked listener key
        must never be able to deploy."""
        argv = [
            str(scripts_dir() / "fleet-deploy"),
            "listener",
            "--hostname",
            "web1",
            "--tier",
            "test",
            "--nats-url",
            loose.url,
            "--nkey-file",
            str(loose.keys["web1"]),
            "--flake-url",
            FLAKE_URL,
            "--state-dir",
            str(loose.root / "state" / "web1"),
            "--trusted-deployer-key",
            loose.seed("web1").public_key,
        ]
        with anyio.fail_after(30):
            done = await anyio.run_process(argv, check=False, env=loose.cli_env())
        assert done.returncode == 2
        assert "is this listener's own key" in done.stderr.decode()


class TestWire:
    def test_an_unsigned_request_keeps_homelab_s_shape(self) -> None:
        """A request without a signer carries no signing fields at all, as homelab-deploy's."""
        from fleet_core.protocol.messages import DeployRequest, encode

        request = DeployRequest(reply_to="deploy.responses.x", id="x")
        assert set(json.loads(encode(request))) == {"action", "revision", "reply_to", "id"}

    @pytest.mark.parametrize(
        "fields",
        [
            {"signer": "U"},
            {"signer": "U", "signature": "s"},
            {"signer": "U", "signed_at": "1", "signature": "s"},
            {"signer": "U", "signed_at": True, "signature": "s"},
            {"signer": 1, "signed_at": 1.0, "signature": "s"},
            {"signer": "U", "signed_at": 1.0, "signature": "s" * 500},
        ],
    )
    def test_partial_or_malformed_signing_fields_are_invalid(self, fields: dict[str, Any]) -> None:
        """The three signing fields come together, with the right types, or the request is
        invalid_request."""
        from fleet_core.protocol.messages import InvalidRequest, parse_deploy_request

        body = {"reply_to": "deploy.responses.x", "id": "x", **fields}
        with pytest.raises(InvalidRequest) as rejected:
            parse_deploy_request(json.dumps(body).encode())
        assert rejected.value.code == ErrorCode.INVALID_REQUEST

    def test_a_non_finite_time_is_invalid(self) -> None:
        """NaN or infinity (which Python's JSON reads) can never pass as a signing time."""
        from fleet_core.protocol.messages import InvalidRequest, parse_deploy_request

        for bad in (b"NaN", b"Infinity"):
            data = (
                b'{"reply_to": "deploy.responses.x", "id": "x", "signer": "U", '
                b'"signature": "s", "signed_at": ' + bad + b"}"
            )
            with pytest.raises(InvalidRequest):
                parse_deploy_request(data)

    def test_every_signing_code_is_a_wire_error_code(self) -> None:
        """The codes fleet_core.protocol.signing raises are all in messages.ErrorCode."""
        codes = {
            "unsigned_request",
            "untrusted_signer",
            "bad_signature",
            "expired_request",
            "replayed_request",
        }
        assert codes <= {code.value for code in ErrorCode}


def test_settings_are_not_shown_with_the_flake_url() -> None:
    """A listener's settings never show the flake URL in their repr (it may hold a token)."""
    flags = {**LISTENER_FLAGS, "flake_url": "git+https://oauth2:SECRET@git.example/r.git"}
    settings = listener_settings(flags, environ={})
    assert "SECRET" not in repr(settings)
    assert "SECRET" not in repr(replace(settings, role="web"))
