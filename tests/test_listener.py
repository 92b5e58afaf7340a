"""The listener against hostile, malformed and concurrent input, over a real nats-server."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from fleet_core.bus import Bus
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.host.jobs.jobdir import OUTPUT_LOG, RECORD_FILE
from fleet_core.host.jobs.launch import ProcessRebuilder
from fleet_core.host.jobs.manager import Pacing
from fleet_core.host.jobs.store import JobPhase, JobRecord, JobStore
from fleet_core.host.listener import Listener
from fleet_core.host.status_reporter import StatusReporter
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import (
    MAX_STATUS_BYTES,
    DeployRequest,
    StatusKind,
)
from fleet_core.protocol.subjects import Target, Tier
from fleet_core.protocol.trust import bound_reply

from .conftest import FAST, Fleet, expected_argv
from .support import process_gone, replies_on

pytestmark = pytest.mark.anyio


def new_reply() -> str:
    return f"deploy.responses.{uuid.uuid4().hex}"


def bound(reply: str, host: str = "web1") -> str:
    """Where test host ``host`` answers a request that asked for ``bind``."""
    return bound_reply(reply, "test", host)


async def valid_deploy_completes(bus: Bus, host: str = "web1") -> None:
    result = await Deployer(bus, timing=FAST).deploy(
        Target.host(Tier.TEST, host), revision="master", action=Action.SWITCH, timeout=30
    )
    assert result.ok, result


HOSTILE_REVISIONS: list[Any] = [
    "--option",
    "; rm -rf /",
    "$(id)",
    "../x",
    "main#x",
    "main?rev=1",
    "",
    "a" * 300,
    42,
    "main branch",
    "main\nnext",
    "-rf",
    "`id`",
    "main&rev=0",
    None,
]


class TestHostileInput:
    @pytest.mark.parametrize("revision", HOSTILE_REVISIONS, ids=repr)
    async def test_hostile_revision_is_rejected(self, fleet: Fleet, revision: Any) -> None:
        """A hostile revision is rejected (invalid_revision), nothing runs, the host serves on."""
        bus = await fleet.connect()
        try:
            async with fleet.listeners("web1"):
                reply = new_reply()
                async with replies_on(bus, bound(reply)) as replies:
                    body = {
                        "action": "switch",
                        "revision": revision,
                        "reply_to": reply,
                        "bind": True,
                    }
                    await bus.publish("deploy.test.web1", json.dumps(body).encode())
                    await replies.wait_for(bool)
                assert [(s.status, s.error) for s in replies.statuses] == [
                    ("rejected", "invalid_revision")
                ]
                assert fleet.runs() == []
                await valid_deploy_completes(bus)
            assert fleet.runs() == [expected_argv("web1")]
        finally:
            await bus.close()

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            (b'{"action": "reboot", "revision": "master", "reply_to": "%s"}', "invalid_action"),
            (b'{"action": ["switch"], "reply_to": "%s"}', "invalid_action"),
            (b'{"revision": "master", "reply_to": "%s", "id": "../../etc"}', "invalid_request"),
            (b"this is not json %s", "invalid_request"),
            (b'["switch", "master", "%s"]', "invalid_request"),
            (b"\xff\xfe%s", "invalid_request"),
            (b'{"padding": "%s' + b"x" * (1024 * 1024 - 200) + b'"}', "invalid_request"),
            (b"[" * 60000 + b"%s", "invalid_request"),
        ],
        ids=[
            "unknown-action",
            "action-not-a-string",
            "bad-id",
            "not-json",
            "json-array",
            "not-utf8",
            "one-mebibyte",
            "nested-too-deep",
        ],
    )
    @pytest.mark.parametrize("fleet", ["homelab"], indirect=True)
    async def test_malformed_request_is_rejected(
        self, fleet: Fleet, body: bytes, code: str
    ) -> None:
        """Malformed bodies are rejected with the right code (via the NATS reply subject too).

        A body that cannot be read cannot ask for ``bind``: its refusal goes to the bare reply
        subject, which only homelab-deploy's layout lets a listener publish to."""
        bus = await fleet.connect()
        try:
            async with fleet.listeners("web1"):
                reply = new_reply()
                async with replies_on(bus, reply) as replies:
                    await bus.publish(
                        "deploy.test.web1", body.replace(b"%s", reply.encode()), reply=reply
                    )
                    await replies.wait_for(bool)
                assert [(s.hostname, s.status, s.error) for s in replies.statuses] == [
                    ("web1", "rejected", code)
                ]
                assert fleet.runs() == []
                await valid_deploy_completes(bus)
        finally:
            await bus.close()

    @pytest.mark.parametrize(
        "reply_to",
        [
            "_INBOX.abc",
            "deploy.prod.pweb1",
            "deploy.responses",
            "deploy.responses.*",
            "deploy.responses.>",
            "deploy.responses.a b",
            7,
        ],
    )
    async def test_reply_outside_responses_is_only_logged(
        self, fleet: Fleet, reply_to: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A reply_to outside deploy.responses. is logged, never published to, and nothing runs."""
        published: list[str] = []
        real_publish = Bus.publish

        async def recording(
            self: Bus, subject: str, payload: bytes, *, reply: str | None = None
        ) -> None:
            published.append(subject)
            await real_publish(self, subject, payload, reply=reply)

        monkeypatch.setattr(Bus, "publish", recording)
        bus = await fleet.connect()
        try:
            with capture_logs() as logs:
                async with fleet.listeners("web1"):
                    body = {"action": "switch", "revision": "master", "reply_to": reply_to}
                    await bus.publish("deploy.test.web1", json.dumps(body).encode())
                    await valid_deploy_completes(bus)
        finally:
            await bus.close()
        rejected = [e for e in logs if e["event"] == "request_rejected"]
        assert len(rejected) == 1 and rejected[0]["error"] == "invalid_request"
        assert rejected[0]["reply_to"] is None
        # Every publish was one of the two requests or a status of the valid deploy.
        assert published.count("deploy.test.web1") == 2
        assert all(
            s == "deploy.test.web1" or s.startswith("deploy.responses.") for s in published
        ), published
        assert fleet.runs() == [expected_argv("web1")]

    async def test_no_reply_at_all_is_logged(self, fleet: Fleet) -> None:
        """A request with neither reply_to nor a NATS reply is logged and dropped."""
        bus = await fleet.connect()
        try:
            with capture_logs() as logs:
                async with fleet.listeners("web1"):
                    await bus.publish("deploy.test.web1", b'{"action": "switch"}')
                    await valid_deploy_completes(bus)
        finally:
            await bus.close()
        assert [e["reason"] for e in logs if e["event"] == "request_rejected"] == [
            "request has no reply_to"
        ]
        assert len(fleet.runs()) == 1

    async def test_malformed_discovery_is_ignored(self, fleet: Fleet) -> None:
        """Garbage on deploy.discover is ignored; the next discovery is answered."""
        bus = await fleet.connect()
        try:
            async with fleet.listeners("web1"):
                for junk in (b"", b"[]", b"{}", b'{"reply_to": "_INBOX.x"}', b'{"reply_to": 5}'):
                    await bus.publish("deploy.discover", junk)
                hosts = await Deployer(bus, timing=FAST).discover()
        finally:
            await bus.close()
        assert [h.hostname for h in hosts] == ["web1"]


class TestOneJobAtATime:
    async def test_twenty_simultaneous_requests(self, fleet: Fleet, tmp_path: Path) -> None:
        """20 requests at once: exactly one rebuild runs, the other 19 get already_running."""
        release = tmp_path / "release"
        bus = await fleet.connect()
        try:
            async with fleet.listeners("web1", sim={"web1": ["--sim-wait-for", str(release)]}):
                reply = new_reply()
                async with replies_on(bus, bound(reply)) as replies:
                    for _ in range(20):
                        # No id: one names its own reply subject, and these share one.
                        body = {"revision": "master", "reply_to": reply, "bind": True}
                        await bus.publish("deploy.test.web1", json.dumps(body).encode())
                    await bus.flush()
                    await replies.wait_for(
                        lambda s: (
                            sum(x.status == "rejected" for x in s) == 19
                            and any(x.status == "started" for x in s)
                        )
                    )
                    release.touch()
                    await replies.wait_for(lambda s: len([x for x in s if x.is_final]) == 20)
        finally:
            await bus.close()
        final = replies.final()
        assert (
            sorted((s.status, s.error) for s in final)
            == [("completed", None)] + [("rejected", "already_running")] * 19
        )
        winner = next(s.request_id for s in final if s.status == "completed")
        assert len({s.request_id for s in final}) == 20  # each refusal names its own request
        assert all(s.request_id == winner for s in replies.statuses if s.status == "started")
        assert len(fleet.runs()) == 1

    async def test_discovery_while_busy(self, fleet: Fleet, tmp_path: Path) -> None:
        """Discovery is answered mid-deploy, and lists the deploying host as busy."""
        release = tmp_path / "release"
        started = anyio.Event()

        def on_update(host: HostResult, _: DeploymentResult) -> None:
            if host.status == "started":
                started.set()

        bus = await fleet.connect()
        try:
            async with fleet.listeners(
                "web1", "web2", sim={"web1": ["--sim-wait-for", str(release)]}
            ):
                deployer = Deployer(bus, timing=FAST)
                results: list[DeploymentResult] = []

                async def deploy() -> None:
                    results.append(
                        await deployer.deploy(
                            Target.host(Tier.TEST, "web1"),
                            revision="master",
                            action=Action.SWITCH,
                            timeout=30,
                            on_update=on_update,
                        )
                    )

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(deploy)
                    with anyio.fail_after(10):
                        await started.wait()
                    hosts = await deployer.discover(Tier.TEST)
                    release.touch()
        finally:
            await bus.close()
        assert {h.hostname: h.busy for h in hosts} == {"web1": True, "web2": False}
        assert results[0].ok


class TestJobQueries:
    async def test_a_host_answers_for_its_running_then_finished_job(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """A job query gets the job's phase while it runs and its final status after."""
        release = tmp_path / "release"
        started = anyio.Event()

        def on_update(host: HostResult, _: DeploymentResult) -> None:
            if host.status in ("started", "progress"):
                started.set()

        async with (
            await fleet.connect() as bus,
            fleet.listeners("web1", "web2", sim={"web1": ["--sim-wait-for", str(release)]}),
        ):
            deployer = Deployer(bus, timing=FAST)
            results: list[DeploymentResult] = []

            async def deploy() -> None:
                results.append(
                    await deployer.deploy(
                        Target.host(Tier.TEST, "web1"),
                        revision="master",
                        action=Action.SWITCH,
                        timeout=30,
                        deployment_id="job-under-query",
                        on_update=on_update,
                    )
                )

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(deploy)
                with anyio.fail_after(10):
                    await started.wait()
                during = await deployer.query_job("job-under-query", hosts=["web1", "web2"])
                release.touch()
            after = await deployer.query_job("job-under-query", hosts=["web1"], tier=Tier.TEST)
        assert results[0].ok
        running = during["web1"]
        assert running.busy and running.running_job == "job-under-query"
        assert running.job is not None and running.job.phase == "running"
        assert during["web2"].job is not None and during["web2"].job.phase == "unknown"
        assert not during["web2"].busy and during["web2"].running_job is None
        [(name, info)] = after.items()
        assert name == "web1" and info.job is not None
        assert (info.job.phase, info.job.status, info.job.exit_code) == ("finished", "completed", 0)
        assert info.job.message is not None and info.job.message.startswith("switch of master")

    async def test_a_failed_job_answers_with_its_error_and_tail(self, fleet: Fleet) -> None:
        """The record of a failed rebuild carries the error code, message and log tail."""
        async with fleet.listeners("web1", sim={"web1": ["--sim-fail"]}):
            result = await fleet.deploy("deploy.test.web1")
            async with await fleet.connect() as bus:
                answers = await Deployer(bus, timing=FAST).query_job(
                    result.deployment_id, hosts=["web1"]
                )
        job = answers["web1"].job
        assert job is not None
        assert (job.phase, job.status, job.error) == ("finished", "failed", "build_failed")
        assert job.log_tail and any("undefined variable" in line for line in job.log_tail)

    async def test_only_the_named_hosts_answer(self, fleet: Fleet) -> None:
        """Hosts not named in a job query stay silent; a query returns once all named did."""
        slow = replace(FAST, discovery_first=30, discovery_quiet=30, discovery_cap=60)
        async with fleet.listeners("web1", "web2", "db1"), await fleet.connect() as bus:
            deployer = Deployer(bus, timing=slow)
            started = time.monotonic()
            answers = await deployer.query_job("0" * 32, hosts=["web2"])
            took = time.monotonic() - started
        assert list(answers) == ["web2"]
        assert took < 15, "it returns once the named hosts answered, not after a 30 s window"


class TestRebuildOutcomes:
    async def test_timeout_kills_the_whole_process_group(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """A rebuild that hangs with a grandchild ends failed/timeout and leaves no process."""
        grandchild = tmp_path / "grandchild.pid"
        async with fleet.listeners(
            "web1",
            sim={"web1": ["--sim-hang", "--sim-grandchild-pid", str(grandchild)]},
            timeout=1.0,
            kill_grace=1.0,
        ):
            result = await fleet.deploy("deploy.test.web1")
        host = result.hosts[0]
        assert (host.status, host.error) == ("failed", "timeout")
        assert "deadline" in host.log_tail[-1]
        rebuild_pid = json.loads(fleet.record.read_text().splitlines()[0])["pid"]
        assert process_gone(int(grandchild.read_text()), 5)
        assert process_gone(rebuild_pid, 5)

    async def test_failing_rebuild_reports_its_output(self, fleet: Fleet) -> None:
        """A failing rebuild ends failed/build_failed with nix's error in message and log tail."""
        async with fleet.listeners("db1", sim={"db1": ["--sim-fail"]}):
            result = await fleet.deploy("deploy.test.db1")
        host = result.hosts[0]
        assert not result.ok
        assert (host.status, host.error) == ("failed", "build_failed")
        assert "undefined variable 'webroot'" in host.message
        assert any("error: undefined variable 'webroot'" in line for line in host.log_tail)

    async def test_missing_rebuild_program_fails_cleanly(self, fleet: Fleet) -> None:
        """A rebuild command that does not exist fails the job with a clear message."""
        async with fleet.listeners("db1", rebuild_command=("/nonexistent/nixos-rebuild",)):
            result = await fleet.deploy("deploy.test.db1")
        host = result.hosts[0]
        assert (host.status, host.error) == ("failed", "build_failed")
        assert "cannot start '/nonexistent/nixos-rebuild'" in host.message

    async def test_the_job_record_follows_the_phases(self, fleet: Fleet, tmp_path: Path) -> None:
        """The record says running when `started` arrives, and holds the final status after."""
        release = tmp_path / "release"
        store = JobStore(fleet.root / "state" / "web1")
        while_started: list[JobRecord | None] = []

        def on_update(host: HostResult, _: DeploymentResult) -> None:
            if host.status == "started":
                while_started.append(store.latest())
                release.touch()

        async with fleet.listeners("web1", sim={"web1": ["--sim-wait-for", str(release)]}):
            result = await fleet.deploy("deploy.test.web1", on_update=on_update)
        assert result.ok
        (running,) = while_started
        assert running is not None and running.phase is JobPhase.RUNNING
        finished = store.load(result.deployment_id)
        assert finished is not None and finished == store.latest()
        assert (finished.phase, finished.status, finished.error, finished.exit_code) == (
            JobPhase.FINISHED,
            StatusKind.COMPLETED,
            None,
            0,
        )
        assert finished.message == result.hosts[0].message
        assert list(finished.argv[-4:]) == expected_argv("web1")
        assert finished.request.reply_to == f"deploy.responses.{result.deployment_id}"
        (job,) = store.jobs.iterdir()
        assert "Done. The new configuration is" in (job / OUTPUT_LOG).read_text()


class TestListenerLifecycle:
    async def test_a_silent_rebuild_sends_heartbeats(self, fleet: Fleet, tmp_path: Path) -> None:
        """A rebuild that prints nothing still yields progress statuses, one heartbeat after
        another, until it ends."""
        release = tmp_path / "release"
        stamps: list[float] = []
        enough = anyio.Event()

        def on_update(host: HostResult, _: DeploymentResult) -> None:
            if host.status == "progress":
                stamps.append(time.monotonic())
                if len(stamps) >= 6:
                    enough.set()

        async with (
            fleet.listeners(
                "web1",
                sim={"web1": ["--sim-wait-for", str(release)]},
                heartbeat_interval=0.8,
                progress_interval=0.8,
            ),
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(lambda: fleet.deploy("deploy.test.web1", on_update=on_update))
            with anyio.fail_after(20):
                await enough.wait()
            release.touch()
        # Six heartbeats arrived while the rebuild printed nothing; how far apart is the
        # pacing rule's, tested on its own clock in TestPacing.
        assert len(stamps) >= 6

    async def test_stopping_while_reporting_keeps_the_true_result(
        self, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A stop that lands while `completed` is being sent re-sends it, and the record agrees."""
        stalled = anyio.Event()
        real_publish = Bus.publish

        async def stall_first_completed(
            self: Bus, subject: str, payload: bytes, *, reply: str | None = None
        ) -> None:
            if b'"status":"completed"' in payload and not stalled.is_set():
                stalled.set()
                await anyio.sleep_forever()
            await real_publish(self, subject, payload, reply=reply)

        monkeypatch.setattr(Bus, "publish", stall_first_completed)
        results: list[DeploymentResult] = []
        host_bus = await fleet.connect("web1")
        try:
            async with anyio.create_task_group() as outer:

                async def deploy() -> None:
                    results.append(await fleet.deploy("deploy.test.web1"))

                async with anyio.create_task_group() as hosting:
                    listener = Listener(fleet.settings("web1"), ProcessRebuilder())
                    await hosting.start(listener.serve, host_bus)
                    outer.start_soon(deploy)
                    with anyio.fail_after(10):
                        await stalled.wait()
                    hosting.cancel_scope.cancel()
        finally:
            await host_bus.close()
        host = results[0].hosts[0]
        assert (host.status, host.error) == ("completed", None)
        record = JobStore(fleet.root / "state" / "web1").latest()
        assert record is not None and (record.status, record.error) == (StatusKind.COMPLETED, None)

    async def test_credentials_in_the_flake_url_stay_on_the_host(self, fleet: Fleet) -> None:
        """A token in the flake URL reaches the rebuild's argv, never a status or job file."""
        secret_url = "git+https://oauth2:s3cr3t-T0KEN@git.example.invalid/fleet.git"  # noqa: S105 - a fake token to look for
        with capture_logs() as logs:
            async with fleet.listeners("db1", sim={"db1": ["--sim-fail"]}, flake_url=secret_url):
                seen: list[HostResult] = []
                result = await fleet.deploy(
                    "deploy.test.db1", on_update=lambda host, _: seen.append(host)
                )
        assert "s3cr3t-T0KEN" in fleet.runs()[0][2]  # the rebuild itself needs it
        shown = json.dumps([h.model_dump() for h in seen]) + result.model_dump_json()
        assert "git+https://***@git.example.invalid/fleet.git?ref=master#db1" in shown
        assert "s3cr3t" not in shown
        assert "s3cr3t" not in json.dumps(logs, default=str)
        (job,) = (fleet.root / "state" / "db1" / "jobs").iterdir()
        assert "git+https://***@git.example.invalid" in (job / RECORD_FILE).read_text()
        assert "s3cr3t" not in (job / RECORD_FILE).read_text()


class TestStatusReporter:
    async def test_redacts_and_bounds_what_it_sends(self, fleet: Fleet) -> None:
        """A status with a token and a huge tail arrives redacted, within the size limit."""
        url = "git+https://oauth2:s3cr3t-T0KEN@git.example.invalid/fleet.git"
        reply = new_reply()
        request_id = reply.removeprefix("deploy.responses.")  # an id names its reply subject
        request = DeployRequest(revision="main", reply_to=reply, id=request_id)
        host_bus, bus = await fleet.connect("web1"), await fleet.connect()
        try:
            async with replies_on(bus, bound(reply)) as replies:
                reporter = StatusReporter(
                    host_bus,
                    hostname="web1",
                    tier="test",
                    reply_to=bound(reply),
                    request=request,
                    request_id=request_id,
                )
                await reporter.send(
                    StatusKind.FAILED,
                    error="build_failed",
                    message="x" * 1972 + url,  # cut inside the token if cut before redacting
                    log_tail=[f"unpacking '{url}' " + "y" * 1000] * 100,
                    duration_s=1.23456,
                )
                await replies.wait_for(bool)
        finally:
            await host_bus.close()
            await bus.close()
        (status,) = replies.statuses
        assert "s3cr3t" not in status.model_dump_json()
        assert len(status.model_dump_json()) <= MAX_STATUS_BYTES
        assert status.log_tail and "***@git.example.invalid" in status.log_tail[-1]
        assert (status.request_id, status.action, status.revision, status.duration_s) == (
            request_id,
            "switch",
            "main",
            1.235,
        )

    async def test_a_failed_publish_is_logged_not_raised(self, fleet: Fleet) -> None:
        """Sending on a closed connection costs that status and a log line, nothing more."""
        bus = await fleet.connect("web1")
        await bus.close()
        reporter = StatusReporter(bus, hostname="web1", tier="test", reply_to=new_reply())
        with capture_logs() as logs:
            await reporter.send(StatusKind.REJECTED, error="invalid_request", message="bad")
        assert [(e["event"], e["status"]) for e in logs] == [("status_not_sent", "rejected")]


class TestPacing:
    """When progress is due, on an explicit clock (fleet_core.host.jobs.manager.Pacing)."""

    def test_silence_is_told_one_heartbeat_after_the_last_status(self) -> None:
        """With nothing new, the next status is due a heartbeat after the last one sent."""
        pacing = Pacing(heartbeat=10.0, rate_limit=1.0)
        pacing.start(100.0)
        assert pacing.wait(100.0) == 10.0
        assert pacing.wait(104.0) == 6.0
        pacing.sent(110.0)
        assert pacing.wait(110.0) == 10.0

    def test_a_rate_limit_pause_is_part_of_the_wait(self) -> None:
        """The pause after a status counts toward the next heartbeat: with a pause as long as
        the heartbeat, the next status is due at once, not a heartbeat later."""
        pacing = Pacing(heartbeat=0.8, rate_limit=0.8)
        pacing.start(0.0)
        pacing.sent(5.0)
        assert pacing.pause == 0.8
        assert pacing.wait(5.0 + pacing.pause) == 0.0

    def test_the_pause_never_exceeds_a_heartbeat(self) -> None:
        """A rate limit longer than the heartbeat would break the heartbeat promise."""
        assert Pacing(heartbeat=2.0, rate_limit=5.0).pause == 2.0

    def test_a_resumed_job_speaks_at_once(self) -> None:
        """A listener that re-attached to a job sends its first progress without waiting."""
        pacing = Pacing(heartbeat=10.0, rate_limit=1.0)
        pacing.start(50.0, resumed=True)
        assert pacing.wait(50.0) == 0.0
