"""Rollouts end to end: canary, batches and the failure budget, through the real command line,
a real MCP session and the core deployer, against a real nats-server and real listeners.

The test tier's hosts are db1, web1, web2 and web3: by name, db1 is the canary. Every
simulated rebuild really run is recorded (``fleet.runs()``), so "skipped" is checked as
"never invoked", not only as a word in the result.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

from fleet_core.config.settings import RolloutSettings
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.results import DeploymentResult, HostResult, Outage, RolloutStep
from fleet_core.deploy.rollout import ordered
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import Target, Tier

from .conftest import FAST, TEST_HOSTS, Fleet
from .support import session, settings_for, spy_final_statuses, successor_server

pytestmark = pytest.mark.anyio

LIMIT = 60.0  # no scenario here may take longer (seconds)


def text(proc: subprocess.CompletedProcess[bytes]) -> tuple[str, str]:
    return proc.stdout.decode(), proc.stderr.decode()


def batches_of(result: dict[str, Any]) -> dict[str, int]:
    return {h["hostname"]: h["batch"] for h in result["hosts"]}


def statuses_of(result: dict[str, Any]) -> dict[str, str]:
    return {h["hostname"]: h["status"] for h in result["hosts"]}


def run_order(fleet: Fleet) -> list[str]:
    """The hosts whose rebuild ran, in the order they were invoked."""
    return [argv[2].rpartition("#")[2] for argv in fleet.runs()]


class TestCommandLine:
    async def test_canary_then_batches_in_name_order(self, fleet: Fleet) -> None:
        """--canary 1 --batch 2 deploys db1 alone, then web1 and web2, then web3; each batch
        goes out only once the one before is final; --json records every host's batch."""
        async with fleet.listeners(*TEST_HOSTS):
            proc = await fleet.cli(
                "deploy", "deploy.test.all", "--canary", "1", "--batch", "2", "--json"
            )
        out, err = text(proc)
        assert proc.returncode == 0, err
        result = json.loads(out)
        assert batches_of(result) == {"db1": 0, "web1": 1, "web2": 1, "web3": 2}
        assert result["counts"] == {"completed": 4}
        rollout = result["rollout"]
        assert rollout["canary"] == 1 and rollout["batch_size"] == "2"
        assert (rollout["max_failures"], rollout["seed"], rollout["stopped"]) == (0, None, None)
        assert (rollout["batches"], rollout["current"], rollout["failed_count"]) == (2, 2, 0)
        order = run_order(fleet)
        assert order[0] == "db1" and sorted(order[1:3]) == ["web1", "web2"] and order[3] == "web3"
        # The live lines (stderr with --json): a batch line only after the batch before it
        # is final.
        lines = err.splitlines()
        assert "canary: db1" in lines
        first, second = lines.index("batch 1/2: web1, web2"), lines.index("batch 2/2: web3")
        assert lines.index("canary: db1") < _final_line(lines, "db1") < first
        assert max(_final_line(lines, "web1"), _final_line(lines, "web2")) < second

    async def test_a_failing_canary_skips_every_other_host(self, fleet: Fleet) -> None:
        """The canary fails: nothing else is invoked; the other three end skipped, counted,
        and the command exits 1 saying the budget was spent by the canary."""
        async with fleet.listeners(*TEST_HOSTS, sim={"db1": ["--sim-fail"]}):
            proc = await fleet.cli(
                "deploy", "deploy.test.all", "--canary", "1", "--batch", "2", "--json"
            )
        out, err = text(proc)
        assert proc.returncode == 1, err
        result = json.loads(out)
        assert statuses_of(result) == {
            "db1": "failed",
            "web1": "skipped",
            "web2": "skipped",
            "web3": "skipped",
        }
        assert result["counts"] == {"failed": 1, "skipped": 3}
        assert result["ok"] is False
        assert fleet.hosts_run() == ["db1"]
        reason = "the failure budget (0) was spent by db1 in the canary batch"
        assert result["rollout"]["stopped"] == reason
        assert result["rollout"]["failed"] == ["db1"]
        skipped = [h for h in result["hosts"] if h["status"] == "skipped"]
        assert all(
            h["message"] == f"not deployed: no further batch started, as {reason}" for h in skipped
        )
        assert f"no further batch: {reason}. Skipped (3): web1, web2, web3" in err.splitlines()
        assert not re.search(r"^  web\d +skipped", err, re.M)  # one line for them all

    async def test_the_budget_stops_a_later_batch(self, fleet: Fleet) -> None:
        """--batch 1 --max-failures 1: db1's failure is within the budget, web2's spends it,
        so web3 is never invoked; the failures of every batch so far count together."""
        sim = {"db1": ["--sim-fail"], "web2": ["--sim-fail"]}
        async with fleet.listeners(*TEST_HOSTS, sim=sim):
            proc = await fleet.cli(
                "deploy", "deploy.test.all", "--batch", "1", "--max-failures", "1", "--json"
            )
        out, err = text(proc)
        assert proc.returncode == 1, err
        result = json.loads(out)
        assert statuses_of(result) == {
            "db1": "failed",
            "web1": "completed",
            "web2": "failed",
            "web3": "skipped",
        }
        assert batches_of(result) == {"db1": 1, "web1": 2, "web2": 3, "web3": 4}
        assert run_order(fleet) == ["db1", "web1", "web2"]
        rollout = result["rollout"]
        assert rollout["stopped"] == (
            "the failure budget (1) was spent by db1 in batch 1; web2 in batch 3"
        )
        assert (rollout["failed"], rollout["failed_count"], rollout["current"]) == (
            ["db1", "web2"],
            2,
            3,
        )

    async def test_a_percentage_batch(self, fleet: Fleet) -> None:
        """--batch 50% of four hosts is two per batch, by name: no canary, batches 1 and 2."""
        async with fleet.listeners(*TEST_HOSTS):
            proc = await fleet.cli("deploy", "deploy.test.all", "--batch", "50%", "--json")
        out, err = text(proc)
        assert proc.returncode == 0, err
        result = json.loads(out)
        assert batches_of(result) == {"db1": 1, "web1": 1, "web2": 2, "web3": 2}
        assert result["rollout"]["batch_size"] == "50%"
        assert "batch 1/2: db1, web1" in err.splitlines()

    async def test_a_role_with_a_failing_host_in_words(self, fleet: Fleet) -> None:
        """Without --json: a live line per batch, one for the stop, and a summary with a
        BATCH column, the rollout's paragraph and the skipped count in the verdict."""
        async with fleet.listeners(*TEST_HOSTS, sim={"web1": ["--sim-fail"]}):
            proc = await fleet.cli("deploy", "deploy.test.all", "--canary", "1", "--batch", "2")
        out, err = text(proc)
        assert proc.returncode == 1, out + err
        assert err == ""
        lines = out.splitlines()
        reason = "the failure budget (0) was spent by web1 in batch 1"
        for line in (
            "canary: db1",
            "batch 1/2: web1, web2",
            f"no further batch: {reason}. Skipped (1): web3",
        ):
            assert line in lines, out
        assert re.search(r"^  HOST +BATCH +STATUS +TIME +MESSAGE$", out, re.M)
        assert re.search(r"^  db1 +canary +completed ", out, re.M)
        assert re.search(r"^  web3 +2 +skipped +- +not deployed: ", out, re.M)
        assert (
            "Rollout (canary 1, batches of 2, failure budget 0, by name): 2 of 3 batches "
            f"started; no further batch, as {reason}. Skipped, never sent a request (1): web3."
        ) in lines
        assert out.rstrip().endswith("NOT OK: 2 completed, 1 failed, 1 skipped")
        assert fleet.hosts_run() == ["db1", "web1", "web2"]

    async def test_shuffle_records_its_seed(self, fleet: Fleet) -> None:
        """--shuffle draws a seed and records it; the order it gave is the one the seed gives."""
        async with fleet.listeners(*TEST_HOSTS):
            proc = await fleet.cli(
                "deploy", "deploy.test.all", "--batch", "1", "--shuffle", "--json"
            )
        out, err = text(proc)
        assert proc.returncode == 0, err
        result = json.loads(out)
        seed = result["rollout"]["seed"]
        assert isinstance(seed, int)
        batches = batches_of(result)
        assert sorted(batches, key=lambda h: batches[h]) == ordered(TEST_HOSTS, seed)
        assert run_order(fleet) == ordered(TEST_HOSTS, seed)

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (
                ["deploy.test.web1", "--canary", "1"],
                "--canary and --batch deploy a group in steps, and deploy.test.web1 is one host",
            ),
            (["deploy.test.all", "--batch", "0"], "--batch must be at least 1 host, not 0"),
            (
                ["deploy.test.all", "--batch", "150%"],
                "--batch 150% is more than all the hosts: use 1% to 100%",
            ),
            (
                ["deploy.test.all", "--batch", "two"],
                "--batch must be a number of hosts (N) or a percentage",
            ),
            (
                ["deploy.test.all", "--max-failures", "1"],
                "give --canary K or --batch N (or N%) with them",
            ),
        ],
        ids=["canary-on-one-host", "batch-0", "batch-150%", "batch-words", "budget-alone"],
    )
    async def test_usage_errors(self, fleet: Fleet, args: list[str], message: str) -> None:
        """A rollout that cannot be is refused before anything connects: exit 2, one JSON
        error object with --json, and no rebuild."""
        async with fleet.listeners("web1"):
            proc = await fleet.cli("deploy", *args, "--json", limit=15)
        out, err = text(proc)
        assert proc.returncode == 2, out + err
        assert message in err
        error = json.loads(out)["error"]
        assert error["code"] == "usage" and message in error["message"]
        assert fleet.runs() == []

    async def test_the_test_key_on_prod_is_a_permission_error(self, fleet: Fleet) -> None:
        """A rollout of prod with the test key, which may not even read prod's answers, is
        the same immediate permission error as a plain deploy, not "no host answered"."""
        async with fleet.listeners("pweb1", "pdb1"):
            proc = await fleet.cli("deploy", "deploy.prod.all", "--canary", "1", limit=15)
        _, err = text(proc)
        assert proc.returncode == 2
        assert "it is a test-tier deployer key" in err
        assert "Production needs the admin key" in err
        assert fleet.runs() == []


class TestWhatARolloutBelieves:
    async def test_a_status_claiming_a_host_not_yet_asked_is_flagged(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """While the canary runs, web3's own key publishes "completed" for web3 on its bound
        reply subject: no request went to web3 yet, so it is flagged, not counted — web3
        is deployed in its turn and really runs."""
        release = tmp_path / "release"
        deployment_id = "f" * 32
        running = anyio.Event()

        def on_update(host: HostResult, _: DeploymentResult) -> None:
            if host.hostname == "db1" and host.status in ("started", "progress"):
                running.set()

        result: DeploymentResult | None = None
        with anyio.fail_after(LIMIT):
            async with (
                fleet.listeners(*TEST_HOSTS, sim={"db1": ["--sim-wait-for", str(release)]}),
                await fleet.connect() as bus,
                await fleet.connect("web3") as web3,
                anyio.create_task_group() as tasks,
            ):

                async def run() -> None:
                    nonlocal result
                    deployer = Deployer(bus, timing=FAST, signer=fleet.seed("deployer"))
                    result = await deployer.deploy(
                        Target.all(Tier.TEST),
                        revision="master",
                        action=Action.SWITCH,
                        timeout=45,
                        deployment_id=deployment_id,
                        rollout=RolloutSettings(canary=1),
                        on_update=on_update,
                    )

                tasks.start_soon(run)
                await running.wait()
                forged = {
                    "hostname": "web3",
                    "status": "completed",
                    "tier": "test",
                    "request_id": deployment_id,
                    "message": "switch of master done",
                }
                subject = f"deploy.responses.{deployment_id}.test.web3"
                await web3.publish(subject, json.dumps(forged).encode())
                await web3.flush()
                release.touch()
        assert result is not None and result.ok, result
        [flagged] = result.flagged
        assert (flagged.hostname, flagged.claim) == ("web3", "completed")
        assert flagged.reason.startswith("its batch has not gone out")
        assert sorted(fleet.hosts_run()) == TEST_HOSTS  # web3 really ran, in its batch

    async def test_a_rollout_that_reaches_no_host_says_what_there_is(self, fleet: Fleet) -> None:
        """A mistyped role in steps: nothing is published, and the hint names the roles."""
        async with fleet.listeners(*TEST_HOSTS):
            proc = await fleet.cli("deploy", "deploy.test.role.wbe", "--canary", "1")
        out, err = text(proc)
        assert proc.returncode == 1, out + err
        assert "No host in the test tier has the role 'wbe'. Roles there: web." in out
        assert out.rstrip().endswith("NOT OK: no host answered")
        assert fleet.runs() == []


def _final_line(lines: list[str], host: str) -> int:
    return next(
        i for i, line in enumerate(lines) if re.match(rf"  {host} +(completed|failed) ", line)
    )


# -- the deployer's own outage ------------------------------------------------------------------


class Steps:
    """What one rollout told, in order: its steps and its connection's drops and returns."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.running: dict[str, anyio.Event] = {}
        self.dropped = anyio.Event()
        self.back = anyio.Event()

    def is_running(self, host: str) -> anyio.Event:
        return self.running.setdefault(host, anyio.Event())

    def on_update(self, host: HostResult, _: DeploymentResult) -> None:
        if host.status in ("started", "progress"):
            self.is_running(host.hostname).set()

    def on_connection(self, outage: Outage, _: DeploymentResult) -> None:
        self.events.append("dropped" if outage.duration_s is None else "back")
        (self.dropped if outage.duration_s is None else self.back).set()

    def on_rollout(self, step: RolloutStep, _: DeploymentResult) -> None:
        self.events.append(f"{step.kind} {step.batch}")


class TestAHostStillResubscribing:
    async def test_its_request_goes_out_once_more_before_nobody_listens_counts(
        self, fleet: Fleet
    ) -> None:
        """The server says nobody listens on web2's subject as the batch goes out (as after
        a NATS restart the deployer came back from before web2's listener): the deployer
        sends web2 its request once more a moment later, and web2, subscribed by then,
        completes; the budget is not spent by a host that was only late."""
        # Time for web2's listener to start, within the hosts' answer window.
        timing = replace(FAST, resend_after=4.0, answer_within=15.0)
        result: DeploymentResult | None = None
        done = anyio.Event()
        with structlog.testing.capture_logs() as logs, anyio.fail_after(LIMIT):
            async with (
                fleet.listeners("web1"),
                await fleet.connect() as bus,
                anyio.create_task_group() as tasks,
            ):

                async def run() -> None:
                    nonlocal result
                    deployer = Deployer(bus, timing=timing, signer=fleet.seed("deployer"))
                    result = await deployer.deploy(
                        Target.all(Tier.TEST),
                        revision="master",
                        action=Action.SWITCH,
                        timeout=30,
                        expect=["web2"],
                        rollout=RolloutSettings(batch=2),
                    )
                    done.set()

                tasks.start_soon(run)
                # The deployer's log line is the only trace of the server's "no responders".
                due = "no_responders_resend_due"
                while not done.is_set() and not any(e["event"] == due for e in logs):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
                async with fleet.listeners("web2"):
                    await done.wait()
        assert result is not None
        assert {h.hostname: h.status for h in result.hosts} == {
            "web1": "completed",
            "web2": "completed",
        }, result
        assert result.ok and result.rollout is not None and result.rollout.failed_count == 0
        resent = [e for e in logs if e["event"] == "no_responders_resent"]
        assert [(e["hosts"], e["first"]) for e in resent] == [(1, ["web2"])]


class TestAcrossANatsRestart:
    @pytest.mark.parametrize(
        ("sim", "outcome"), [((), "completed"), (("--sim-fail",), "failed")], ids=["ok", "fails"]
    )
    async def test_the_rollout_pauses_and_the_outage_spends_no_budget(
        self,
        fleet: Fleet,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        sim: tuple[str, ...],
        outcome: str,
    ) -> None:
        """NATS restarts while the canary rebuilds, whose final status goes out into the
        outage. No batch goes out while the deployer is away; once it is back, the canary's
        true outcome (its status, or its job record) decides: a completed canary lets the
        rollout go on and finish OK — the outage spent nothing — and a failed one spends
        the budget, so the rest are skipped, never invoked."""
        finals = spy_final_statuses(monkeypatch)
        release = tmp_path / "release"
        steps = Steps()
        held = {"db1": ["--sim-wait-for", str(release), *sim]}
        result: DeploymentResult | None = None
        with anyio.fail_after(LIMIT), successor_server(fleet) as again:
            async with (
                fleet.listeners(*TEST_HOSTS, sim=held),
                await fleet.connect() as bus,
                anyio.create_task_group() as tasks,
            ):

                async def run() -> None:
                    nonlocal result
                    result = await Deployer(bus, timing=FAST, signer=fleet.seed("deployer")).deploy(
                        Target.all(Tier.TEST),
                        revision="master",
                        action=Action.SWITCH,
                        timeout=45,
                        rollout=RolloutSettings(canary=1, batch=2),
                        on_update=steps.on_update,
                        on_connection=steps.on_connection,
                        on_rollout=steps.on_rollout,
                    )

                tasks.start_soon(run)
                await steps.is_running("db1").wait()
                fleet.server.stop()
                await steps.dropped.wait()
                release.touch()
                await finals.of("db1").wait()  # into the outage
                await anyio.to_thread.run_sync(again.start)
        assert result is not None
        statuses = {h.hostname: h.status for h in result.hosts}
        assert statuses["db1"] == outcome
        [outage] = result.outages
        assert outage.duration_s is not None
        assert result.rollout is not None
        if outcome == "completed":
            assert result.ok, result
            assert steps.events == ["batch 0", "dropped", "back", "batch 1", "batch 2"]
            assert (result.rollout.failed_count, result.rollout.stopped) == (0, None)
            assert sorted(fleet.hosts_run()) == TEST_HOSTS
        else:
            assert statuses == {
                "db1": "failed",
                "web1": "skipped",
                "web2": "skipped",
                "web3": "skipped",
            }
            assert steps.events == ["batch 0", "dropped", "back", "stopped 0"]
            assert result.rollout.failed == ["db1"]
            assert fleet.hosts_run() == ["db1"]


# -- the MCP server -----------------------------------------------------------------------------


@pytest.fixture(params=["auto", "legacy"], ids=["modern", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestMcp:
    async def test_deploy_in_steps_names_the_skipped_hosts(self, fleet: Fleet, mode: str) -> None:
        """deploy(all=true, canary=1, batch_size=2) with web1 failing: web3 is skipped and
        never invoked; the summary names it and why, the next step says what to do, the
        notes tell each batch, and each host carries its batch."""
        async with (
            fleet.listeners(*TEST_HOSTS, sim={"web1": ["--sim-fail"]}),
            session(settings_for(fleet), mode) as s,
        ):
            report = await s.deploy(all=True, canary=1, batch_size=2, wait_seconds=45)
        assert report.state == "finished" and not report.ok
        assert {h.hostname: (h.status, h.batch) for h in report.hosts} == {
            "db1": ("completed", 0),
            "web1": ("failed", 1),
            "web2": ("completed", 1),
            "web3": ("skipped", 2),
        }
        assert fleet.hosts_run() == ["db1", "web1", "web2"]
        assert report.counts == {"completed": 2, "failed": 1, "skipped": 1}
        assert report.rollout is not None and report.rollout.failed == ["web1"]
        assert "web1 failed (build_failed)" in report.summary
        assert (
            "Rollout (canary 1, batches of 2, failure budget 0): no batch started after batch 1 "
            "of 2, as the failure budget (0) was spent: 1 host(s) failed (web1); 1 host(s) "
            "were skipped, never deployed: web3."
        ) in report.summary
        assert "never sent a request" in report.next_step
        assert "deploy again in steps" in report.next_step
        notes = s.messages()
        prefix = f"deployment {report.deployment_id}: "
        assert prefix + "canary batch went out to 1 host(s): db1" in notes
        assert prefix + "batch 1 of 2 went out to 2 host(s): web1, web2" in notes
        assert any(n.startswith(prefix + "no further batch, as the failure budget") for n in notes)

    async def test_deploy_admin_rolls_out_to_prod(self, fleet: Fleet, mode: str) -> None:
        """deploy_admin takes the same arguments: prod's hosts go one by one, by name."""
        async with (
            fleet.listeners("pweb1", "pdb1"),
            session(settings_for(fleet, admin="admin"), mode) as s,
        ):
            report = await s.deploy(
                "deploy_admin", tier="prod", all=True, batch_percent=50, max_failures=1
            )
        assert report.ok, report.summary
        assert {h.hostname: h.batch for h in report.hosts} == {"pdb1": 1, "pweb1": 2}
        assert report.rollout is not None and report.rollout.batch_size == "50%"

    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            (
                {"all": True, "batch_percent": 150},
                "deploy: batch_percent must be a whole number from 1 to 100 (hosts per batch "
                "as a percentage of the target's hosts, rounded up) or be left out; 150 is too "
                "large.",
            ),
            (
                {"all": True, "canary": -1},
                "deploy: canary must be a whole number of at least 0",
            ),
            (
                {"all": True, "batch_size": "2"},
                "deploy: batch_size must be a whole number of at least 1",
            ),
            (
                {"hostname": "web1", "canary": 1},
                "canary, batch_size and batch_percent deploy a group in steps",
            ),
            ({"all": True, "batch_size": 1, "batch_percent": 50}, "not both"),
            ({"role": "web", "max_failures": 2}, "max_failures is the failure budget"),
        ],
        ids=["percent-150", "canary-negative", "batch-string", "one-host", "both", "budget-alone"],
    )
    async def test_argument_mistakes(
        self, fleet: Fleet, mode: str, arguments: dict[str, object], message: str
    ) -> None:
        """A rollout's argument mistakes are tool errors in plain words; nothing is deployed."""
        async with fleet.listeners("web1"), session(settings_for(fleet), mode) as s:
            error = await s.error("deploy", **arguments)
        assert message in error
        assert fleet.runs() == []
