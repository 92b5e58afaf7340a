"""Prometheus metrics: the listener's counts, scraped over HTTP from a real listener process
after real deploys; the label sets at zero; the deployer-side counters; and prometheus_client
never loaded by a listener that has metrics off."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleet_core import __version__
from fleet_core.errors import UsageError
from fleet_core.host.status_reporter import StatusReporter
from fleet_core.metrics import (
    DEPLOYMENT_OUTCOMES,
    FINAL_ERRORS,
    UNCOUNTED_ERRORS,
    UNPARSED_ERRORS,
    DeployerMetrics,
    ListenerMetrics,
    serve_metrics,
)
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import FINAL_STATUSES, ErrorCode, Status, StatusKind
from fleet_core.protocol.subjects import Tier

from .conftest import Fleet
from .support import Series, free_port, read_until, scrape, series, value

pytestmark = pytest.mark.anyio

ACTIONS = [action.value for action in Action]


def deployments(found: Series) -> dict[tuple[str, str, str], float]:
    """fleet_deploy_deployments_total by (status, action, error_code)."""
    return {
        (labels["status"], labels["action"], labels["error_code"]): value
        for (name, pairs), value in found.items()
        if name == "fleet_deploy_deployments_total"
        for labels in [dict(pairs)]
    }


def durations(found: Series) -> dict[tuple[str, str], float]:
    """fleet_deploy_deployment_duration_seconds_count by (action, success)."""
    return {
        (labels["action"], labels["success"]): value
        for (name, pairs), value in found.items()
        if name == "fleet_deploy_deployment_duration_seconds_count"
        for labels in [dict(pairs)]
    }


def zero_deployments() -> dict[tuple[str, str, str], float]:
    """Every label set a listener starts with, at zero."""
    zeros = {
        (status.value, action, code): 0.0
        for status, codes in FINAL_ERRORS.items()
        for action in ACTIONS
        for code in codes
    }
    zeros.update({("rejected", "", code): 0.0 for code in UNPARSED_ERRORS})
    return zeros


def status(kind: StatusKind, action: str | None = "switch", **fields: object) -> Status:
    return Status.model_validate(
        {"hostname": "web1", "status": kind, "action": action, "tier": "test", **fields}
    )


class TestListenerMetrics:
    def test_every_final_status_and_error_code_has_its_label_sets(self) -> None:
        """FINAL_ERRORS names each final status (one added later must be added there), and
        every error code is expected somewhere: a new one must be placed."""
        assert set(FINAL_ERRORS) == set(FINAL_STATUSES)
        placed = {code for codes in FINAL_ERRORS.values() for code in codes}
        placed |= set(UNPARSED_ERRORS) | set(UNCOUNTED_ERRORS)
        assert {code.value for code in ErrorCode} <= placed
        assert FINAL_ERRORS[StatusKind.COMPLETED] == ("",)

    def test_everything_starts_at_zero(self) -> None:
        """Before any deploy every label set is there at zero, and info is 1."""
        metrics = ListenerMetrics(hostname="web1", tier="test", role=None, version="9.9")
        metrics.count_in_progress(lambda: 0)
        found = series(metrics.exposition().decode())
        assert deployments(found) == zero_deployments()
        assert durations(found) == {(a, s): 0.0 for a in ACTIONS for s in ("true", "false")}
        assert value(found, "fleet_deploy_deployment_in_progress") == 0
        assert (
            value(found, "fleet_deploy_info", hostname="web1", tier="test", role="", version="9.9")
            == 1
        )
        assert not any(name.endswith("_created") for name, _ in found)

    def test_final_statuses_are_counted_and_timed(self) -> None:
        """Completed and failed count and are timed; rejected counts, untimed; an unreadable
        request's rejection counts with action ""; other statuses are not counted."""
        metrics = ListenerMetrics(hostname="web1", tier="test", role="web", version="1")
        jobs = [1]
        metrics.count_in_progress(lambda: jobs[0])
        metrics.final_status(status(StatusKind.PROGRESS, duration_s=1.0))
        metrics.final_status(status(StatusKind.COMPLETED, duration_s=12.5))
        metrics.final_status(status(StatusKind.FAILED, "boot", error="timeout", duration_s=600))
        metrics.final_status(status(StatusKind.REJECTED, error="already_running"))
        metrics.final_status(status(StatusKind.REJECTED, None, error="invalid_action"))
        found = series(metrics.exposition().decode())
        assert deployments(found) == zero_deployments() | {
            ("completed", "switch", ""): 1.0,
            ("failed", "boot", "timeout"): 1.0,
            ("rejected", "switch", "already_running"): 1.0,
            ("rejected", "", "invalid_action"): 1.0,
        }
        assert {k: v for k, v in durations(found).items() if v} == {
            ("switch", "true"): 1.0,
            ("boot", "false"): 1.0,
        }
        sums = "fleet_deploy_deployment_duration_seconds_sum"
        assert value(found, sums, action="boot", success="false") == 600
        assert value(found, "fleet_deploy_deployment_in_progress") == 1

    async def test_a_reporter_counts_its_first_final_status_once(self, fleet: Fleet) -> None:
        """A final status sent again (a stop while reporting) is not counted again, and the
        count happens before the publish."""
        heard: list[Status] = []
        async with await fleet.connect("admin") as bus:
            reporter = StatusReporter(
                bus, hostname="web1", tier="test", reply_to="deploy.responses.x1",
                on_final=heard.append,
            )  # fmt: skip
            await reporter.send(StatusKind.PROGRESS, message="building")
            await reporter.send(StatusKind.FAILED, error="build_failed")
            await reporter.send(StatusKind.FAILED, error="build_failed")
        assert [(s.status, s.error) for s in heard] == [(StatusKind.FAILED, "build_failed")]


class TestServer:
    async def test_serves_on_every_address_and_stops(self) -> None:
        """ ":PORT" (host "") answers on 127.0.0.1; after the block the thread is gone and
        nothing listens there any more."""
        metrics = DeployerMetrics()
        port = free_port()
        with serve_metrics(metrics.registry, ("", port)) as url:
            assert url.endswith(f":{port}/metrics")
            text = await anyio.to_thread.run_sync(scrape, port)
        assert "fleet_deploy_mcp_deployments_total" in text
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

    def test_a_busy_address_is_a_usage_error(self) -> None:
        """An address that cannot be bound is refused at once, naming it."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with (
                pytest.raises(UsageError, match=rf"--metrics-addr 127.0.0.1:{port}: cannot serve"),
                serve_metrics(DeployerMetrics().registry, ("127.0.0.1", port)),
            ):
                pass


class TestDeployerMetrics:
    def test_counts_from_zero(self) -> None:
        """Tool calls and deployments start at zero for every tier, action and outcome, and
        count what they are told."""
        metrics = DeployerMetrics(tools=("list_hosts", "deploy"))
        metrics.tool_called("deploy")
        metrics.tool_called("deploy")
        metrics.deployment_finished(tier="test", action="switch", outcome="completed")
        metrics.deployment_finished(tier="prod", action="boot", outcome="error")
        body, content_type = metrics.exposition()
        assert content_type.startswith("text/plain")
        found = series(body.decode())
        calls = "fleet_deploy_mcp_tool_calls_total"
        assert value(found, calls, tool="deploy") == 2
        assert value(found, calls, tool="list_hosts") == 0
        counted = {
            (labels["tier"], labels["action"], labels["outcome"]): v
            for (name, pairs), v in found.items()
            if name == "fleet_deploy_mcp_deployments_total"
            for labels in [dict(pairs)]
        }
        zeros = {(t.value, a, o): 0.0 for t in Tier for a in ACTIONS for o in DEPLOYMENT_OUTCOMES}
        assert counted == zeros | {
            ("test", "switch", "completed"): 1.0,
            ("prod", "boot", "error"): 1.0,
        }

    def test_an_unknown_outcome_is_refused(self) -> None:
        """Only the declared outcomes become label values."""
        with pytest.raises(ValueError, match="unknown deployment outcome"):
            DeployerMetrics().deployment_finished(tier="test", action="switch", outcome="ok")  # type: ignore[arg-type]  # the point of the test

    async def test_the_asgi_app_serves_the_registry(self) -> None:
        """asgi_app() answers a GET with these metrics (for /metrics of the MCP HTTP app)."""
        metrics = DeployerMetrics(tools=("deploy",))
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/metrics", "headers": [],
                 "query_string": b""}  # fmt: skip
        await metrics.asgi_app()(scope, receive, send)
        assert sent[0]["status"] == 200
        body = b"".join(m.get("body", b"") for m in sent[1:])
        assert b'fleet_deploy_mcp_tool_calls_total{tool="deploy"} 0.0' in body


class TestListenerProcess:
    async def test_scrape_after_deploys(self, fleet: Fleet) -> None:
        """A real listener with --metrics-enabled counts two completed deploys, one failed
        build and one rejected signer, times the finished ones, is no longer in progress,
        and says who it is; every count is there as soon as each deploy's result is."""
        port = free_port()
        argv = fleet.listener_argv(
            "web1",
            "--metrics-enabled",
            "--metrics-addr", f"127.0.0.1:{port}",
            "--trusted-deployer-key", fleet.seed("admin").public_key,
            sim=["--sim-fail-revision", "broken"],
        )  # fmt: skip
        async with await anyio.open_process(argv, env=fleet.cli_env()) as process:
            await read_until(process, b'"event": "listening"')
            before = series(await anyio.to_thread.run_sync(scrape, port))
            assert deployments(before) == zero_deployments()
            results = [
                await fleet.deploy("deploy.test.web1", who="admin"),
                await fleet.deploy("deploy.test.web1", who="admin", action=Action.BOOT),
                await fleet.deploy("deploy.test.web1", who="admin", revision="broken"),
                await fleet.deploy("deploy.test.web1", who="deployer"),  # not a trusted key
            ]
            after = series(await anyio.to_thread.run_sync(scrape, port))
            process.terminate()
            with anyio.fail_after(10):
                assert await process.wait() == 0
        assert [(h.status, h.error) for r in results for h in r.hosts] == [
            ("completed", None),
            ("completed", None),
            ("failed", "build_failed"),
            ("rejected", "untrusted_signer"),
        ]
        assert deployments(after) == zero_deployments() | {
            ("completed", "switch", ""): 1.0,
            ("completed", "boot", ""): 1.0,
            ("failed", "switch", "build_failed"): 1.0,
            ("rejected", "switch", "untrusted_signer"): 1.0,
        }
        assert {k: v for k, v in durations(after).items() if v} == {
            ("switch", "true"): 1.0,
            ("boot", "true"): 1.0,
            ("switch", "false"): 1.0,
        }
        assert value(after, "fleet_deploy_deployment_in_progress") == 0
        info = value(
            after, "fleet_deploy_info", hostname="web1", tier="test", role="web",
            version=__version__,
        )  # fmt: skip
        assert info == 1

    async def test_a_busy_metrics_address_stops_the_start(self, fleet: Fleet) -> None:
        """A metrics address that is taken is an error at start (exit 2), naming it."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            argv = fleet.listener_argv(
                "web1", "--metrics-enabled", "--metrics-addr", f"127.0.0.1:{port}"
            )
            proc = await anyio.run_process(argv, check=False, env=fleet.cli_env())
        assert proc.returncode == 2
        assert (
            f"--metrics-addr 127.0.0.1:{port}: cannot serve metrics there" in proc.stderr.decode()
        )

    @pytest.mark.parametrize("enabled", [False, True])
    async def test_prometheus_client_is_loaded_only_with_metrics(
        self, fleet: Fleet, tmp_path: Path, enabled: bool
    ) -> None:
        """An idle listener process with metrics off never imports prometheus_client (its
        memory stays as it was); with them on it does. Python's -X importtime names every
        module as the process imports it, for the whole life of the process."""
        argv = fleet.listener_argv("web1")
        argv[:2] = [sys.executable, "-X", "importtime", "-m", "fleet_core", "listener"]
        if enabled:
            argv += ["--metrics-enabled", "--metrics-addr", f"127.0.0.1:{free_port()}"]
        async with await anyio.open_process(argv, env=fleet.cli_env()) as process:
            seen = await read_until(process, b'"event": "listening"')
            process.terminate()
            assert process.stderr is not None
            with anyio.fail_after(10):
                async for chunk in process.stderr:
                    seen += chunk
                assert await process.wait() == 0
        imported = {
            line.rpartition("|")[2].strip()
            for line in seen.decode().splitlines()
            if line.startswith("import time:")
        }
        assert "fleet_core.host.listener" in imported
        assert ("prometheus_client" in imported) is enabled
