"""Prometheus metrics: the listener's, and the deployer-side counters of the MCP server.

The listener's are homelab-deploy's metrics under the ``fleet_deploy_`` prefix, so its
dashboards and alerts carry over with a rename:

    fleet_deploy_deployments_total{status,action,error_code}    counter of final statuses
    fleet_deploy_deployment_duration_seconds{action,success}    histogram of finished jobs
    fleet_deploy_deployment_in_progress                         gauge: jobs without a result
    fleet_deploy_info{hostname,tier,role,version}               gauge, always 1

Every label set a listener can produce starts at zero (``FINAL_ERRORS``), so a rate or an
alert has a series to work on before the first deploy. The MCP server's counters
(``DeployerMetrics``) are ``fleet_deploy_mcp_deployments_total{tier,action,outcome}`` and
``fleet_deploy_mcp_tool_calls_total{tool}``.

``prometheus_client`` is imported only inside the functions that build metrics, which run
only when metrics are on: a listener without ``--metrics-enabled`` never loads it, and its
idle memory stays what it was (``bench/listener_rss.py``; ``tests/test_metrics.py`` checks
the import). Each set of metrics has a ``CollectorRegistry`` of its own, not the library's
global one, so nothing else in the process adds to it or is served with it.

What is counted is read from the wire model alone: ``ListenerMetrics.final_status`` takes the
final ``Status`` the listener sends for a request — ``StatusReporter`` calls it once per
request, before publishing, so a requester that heard a final status finds it counted.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Literal

import structlog

from fleet_core.errors import UsageError
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import FINAL_STATUSES, ErrorCode, Status, StatusKind
from fleet_core.protocol.subjects import Tier

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

    from fleet_core.config.settings import ListenerSettings

__all__ = [
    "DEPLOYMENT_OUTCOMES",
    "DURATION_BUCKETS",
    "FINAL_ERRORS",
    "UNCOUNTED_ERRORS",
    "UNPARSED_ERRORS",
    "DeployerMetrics",
    "DeploymentOutcome",
    "ListenerMetrics",
    "serve_listener_metrics",
    "serve_metrics",
]

log = structlog.get_logger("fleet.metrics")

PREFIX: Final = "fleet_deploy_"
ACTIONS: Final = tuple(action.value for action in Action)
# The error codes each final status comes with. completed: none. failed: what
# outcome.decide and host_jobs give a job. rejected: what the listener refuses a request
# with once it has parsed it, so the action is known. A request it could not parse is
# rejected with UNPARSED_ERRORS and its action unknown: the label is "" then.
FINAL_ERRORS: Final[Mapping[StatusKind, tuple[str, ...]]] = {
    StatusKind.COMPLETED: ("",),
    StatusKind.FAILED: (
        ErrorCode.BUILD_FAILED.value,
        ErrorCode.TIMEOUT.value,
        ErrorCode.CANCELLED.value,
        ErrorCode.ROLLED_BACK.value,
        ErrorCode.ROLLBACK_FAILED.value,
        ErrorCode.CHECK_FAILED.value,
        ErrorCode.CLOSURE_UNAVAILABLE.value,  # a closure deploy's fetch failed
        ErrorCode.NOT_A_SYSTEM.value,  # what it fetched is no system
    ),
    StatusKind.REJECTED: (
        ErrorCode.ALREADY_RUNNING.value,
        ErrorCode.CANCELLED.value,  # shutting down, or its deployment was cancelled
        ErrorCode.ALREADY_ACTIVATING.value,  # a cancel that came too late to stop a job
        ErrorCode.ALREADY_FINISHED.value,  # a cancel of a job that is over
        ErrorCode.UNSIGNED_REQUEST.value,
        ErrorCode.UNTRUSTED_SIGNER.value,
        ErrorCode.BAD_SIGNATURE.value,
        ErrorCode.EXPIRED_REQUEST.value,
        ErrorCode.REPLAYED_REQUEST.value,
        ErrorCode.WRONG_HOST.value,  # a closure deploy of another host's system, by name
        ErrorCode.NOT_A_SYSTEM.value,  # of a path named like no system
    ),
}
UNPARSED_ERRORS: Final = (
    ErrorCode.INVALID_REQUEST.value,
    ErrorCode.INVALID_ACTION.value,
    ErrorCode.INVALID_REVISION.value,
)
# Codes no counted status carries: the refusals of log requests (fleet_core.host.logs),
# which read a job's output and are no deploy, so no deployment counter hears them.
UNCOUNTED_ERRORS: Final = (ErrorCode.UNKNOWN_JOB.value,)
# Seconds: a failed evaluation takes a few, a switch that builds a kernel most of an hour.
DURATION_BUCKETS: Final = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0)

_NO_IPV6: Final = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})

DeploymentOutcome = Literal["completed", "failed", "error"]
# completed: every host completed; failed: a host did not (failed, rejected, missing, lost,
# timeout); error: the deployment never reached a host (refused permission, no connection).
DEPLOYMENT_OUTCOMES: Final[tuple[DeploymentOutcome, ...]] = ("completed", "failed", "error")


def _prometheus() -> Any:
    """prometheus_client, imported now; without the ``_created`` series it adds to every
    counter and histogram, which homelab-deploy's (Go's client) does not have. That switch is
    the library's, for the process: only fleet-deploy's metrics live in these processes."""
    import prometheus_client

    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated there
    return prometheus_client


class ListenerMetrics:
    """The listener's metrics, in a registry of their own (``registry``), all at zero."""

    def __init__(self, *, hostname: str, tier: str, role: str | None, version: str) -> None:
        prom = _prometheus()
        self.registry: CollectorRegistry = prom.CollectorRegistry(auto_describe=True)
        self._deployments = prom.Counter(
            f"{PREFIX}deployments",  # the client appends _total
            "Final statuses this listener sent: completed, failed or rejected, by action and "
            "error code (empty when there is none, and the action when it was unreadable)",
            ("status", "action", "error_code"),
            registry=self.registry,
        )
        self._duration = prom.Histogram(
            f"{PREFIX}deployment_duration_seconds",
            "How long each finished deploy (completed or failed) took, from its request",
            ("action", "success"),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._in_progress = prom.Gauge(
            f"{PREFIX}deployment_in_progress",
            "Deploys this listener runs or follows that have no final status yet",
            registry=self.registry,
        )
        info = prom.Gauge(
            f"{PREFIX}info",
            "This listener: host, tier, role (empty when none) and fleet-deploy version",
            ("hostname", "tier", "role", "version"),
            registry=self.registry,
        )
        info.labels(hostname, tier, role or "", version).set(1)
        for status, codes in FINAL_ERRORS.items():
            for action in ACTIONS:
                for code in codes:
                    self._deployments.labels(status.value, action, code)
        for code in UNPARSED_ERRORS:
            self._deployments.labels(StatusKind.REJECTED.value, "", code)
        for action in ACTIONS:
            for success in ("true", "false"):
                self._duration.labels(action, success)

    def final_status(self, status: Status) -> None:
        """Count one final status (any other is ignored); a finished job's duration too."""
        if status.status not in FINAL_STATUSES:
            return
        action = status.action or ""
        self._deployments.labels(status.status.value, action, status.error or "").inc()
        if status.status is not StatusKind.REJECTED and status.duration_s is not None:
            success = "true" if status.status is StatusKind.COMPLETED else "false"
            self._duration.labels(action, success).observe(status.duration_s)

    def count_in_progress(self, jobs: Callable[[], int]) -> None:
        """Read the in-progress gauge from ``jobs`` at each scrape (from the server's thread),
        so it cannot drift from what the listener holds."""
        self._in_progress.set_function(lambda: float(jobs()))

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format, as ``/metrics`` serves them."""
        body: bytes = _prometheus().generate_latest(self.registry)
        return body


@contextmanager
def serve_metrics(registry: CollectorRegistry, address: tuple[str, int]) -> Iterator[str]:
    """Serve ``registry`` at ``http://HOST:PORT/metrics`` until the block ends; yields that
    URL. prometheus_client's own HTTP server runs in a thread it starts; this owns it, and
    shuts it down and joins it on the way out (within a deadline).

    Host ``""`` is every address of this host: IPv6 and IPv4 (``::``), or IPv4 alone where
    the host has no IPv6, as Go's ``:9972`` is. An address that cannot be bound is a
    ``UsageError`` naming it, raised before anything else starts.
    """
    host, port = address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        server, thread = _start_server(registry, host, port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UsageError(f"--metrics-addr {shown}: cannot serve metrics there: {reason}") from None
    bound: tuple[str, int] = server.socket.getsockname()[:2]
    url = f"http://{f'[{bound[0]}]' if ':' in bound[0] else bound[0]}:{bound[1]}"
    try:
        yield f"{url}/metrics"
    finally:
        server.shutdown()  # returns once serve_forever has stopped (it polls every 0.5 s)
        server.server_close()
        thread.join(timeout=5)


def _start_server(
    registry: CollectorRegistry, host: str, port: int
) -> tuple[WSGIServer, threading.Thread]:
    start = _prometheus().start_http_server
    started: tuple[WSGIServer, threading.Thread]
    if host:
        started = start(port, addr=host, registry=registry)
        return started
    try:
        started = start(port, addr="::", registry=registry)
    except OSError as exc:  # a host without IPv6: every IPv4 address, then
        if exc.errno not in _NO_IPV6:
            raise
        started = start(port, addr="0.0.0.0", registry=registry)  # noqa: S104 - ":PORT" asks for it
    return started


@contextmanager
def serve_listener_metrics(
    settings: ListenerSettings, version: str
) -> Iterator[ListenerMetrics | None]:
    """The listener's metrics, served at ``settings.metrics_addr`` for the block's length;
    None (and prometheus_client never imported) when metrics are off."""
    if settings.metrics_addr is None:
        yield None
        return
    metrics = ListenerMetrics(
        hostname=settings.hostname,
        tier=settings.tier.value,
        role=settings.role,
        version=version,
    )
    with serve_metrics(metrics.registry, settings.metrics_addr) as url:
        log.info("metrics_serving", host=settings.hostname, url=url)
        yield metrics


class DeployerMetrics:
    """The MCP server's counters, in a registry of their own (``registry``), all at zero.

    ``tool_called(tool)`` counts one call of an MCP tool; ``deployment_finished(...)`` counts
    one deployment the server started, once it is over. Serve ``exposition()`` (body and
    content type) or mount ``asgi_app()`` at ``/metrics`` of the server's HTTP app.
    """

    def __init__(self, tools: Iterable[str] = ()) -> None:
        prom = _prometheus()
        self.registry: CollectorRegistry = prom.CollectorRegistry(auto_describe=True)
        self._deployments = prom.Counter(
            f"{PREFIX}mcp_deployments",
            "Deployments this MCP server started, once over: completed (every host "
            "completed), failed (a host did not) or error (no host was reached)",
            ("tier", "action", "outcome"),
            registry=self.registry,
        )
        self._tool_calls = prom.Counter(
            f"{PREFIX}mcp_tool_calls",
            "Calls of each MCP tool that reached it, whatever their result (arguments the SDK "
            "refuses by type never reach a tool)",
            ("tool",),
            registry=self.registry,
        )
        for tier in Tier:
            for action in ACTIONS:
                for outcome in DEPLOYMENT_OUTCOMES:
                    self._deployments.labels(tier.value, action, outcome)
        for tool in tools:
            self._tool_calls.labels(tool)

    def tool_called(self, tool: str) -> None:
        """Count one call of ``tool`` (give only registered tool names: each is a series)."""
        self._tool_calls.labels(tool).inc()

    def deployment_finished(self, *, tier: str, action: str, outcome: DeploymentOutcome) -> None:
        """Count one deployment of ``action`` to ``tier`` that ended with ``outcome``."""
        if outcome not in DEPLOYMENT_OUTCOMES:
            raise ValueError(f"unknown deployment outcome {outcome!r}")
        self._deployments.labels(tier, action, outcome).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and the content type to serve them with."""
        prom = _prometheus()
        body: bytes = prom.generate_latest(self.registry)
        content_type: str = prom.CONTENT_TYPE_LATEST
        return body, content_type

    def asgi_app(self) -> Callable[..., Any]:
        """An ASGI app serving these metrics (prometheus_client's), to mount at /metrics."""
        app: Callable[..., Any] = _prometheus().make_asgi_app(self.registry)
        return app
