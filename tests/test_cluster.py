"""More than one NATS server: ``--nats-url`` lists, a local three-node cluster, and deploys
that outlive the server their deployer was connected to."""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from fleet_core.bus import Bus
from fleet_core.config.parsers import parse_nats_urls
from fleet_core.config.resolve import deploy_settings, listener_settings, mcp_settings
from fleet_core.config.settings import ListenerSettings
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.errors import ConnectionFailed, PermissionDenied, UsageError
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import Tier, parse_target
from fleet_core.setup.nats_config import nats_config
from fleet_core.testing import (
    FLAKE_URL,
    FleetHost,
    InstantRebuilder,
    LocalFleet,
    local_fleet,
    simulated_rebuild_command,
)
from fleet_mcp.link import NatsLink

from .conftest import DEPLOYERS, FAST, scripts_dir
from .support import free_port, read_until

pytestmark = pytest.mark.anyio

HOSTS = [
    FleetHost("web1", Tier.TEST, "web"),
    FleetHost("web2", Tier.TEST, "web"),
    FleetHost("web3", Tier.TEST, "web"),
    FleetHost("pweb1", Tier.PROD, "web"),
]
TEST_HOSTS = ["web1", "web2", "web3"]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalFleet]:
    """A fleet on three routed nats-servers, all routes up."""
    async with local_fleet(HOSTS, DEPLOYERS, root=tmp_path, cluster=3) as fleet:
        yield fleet


def dead_url() -> str:
    return f"nats://127.0.0.1:{free_port()}"


async def deploy(bus: Bus, subject: str = "deploy.test.all") -> DeploymentResult:
    return await Deployer(bus, timing=FAST).deploy(
        parse_target(subject), revision="master", action=Action.SWITCH, timeout=30
    )


def outcomes(result: DeploymentResult) -> dict[str, tuple[str, str | None]]:
    return {h.hostname: (h.status, h.error) for h in result.hosts}


class TestNatsUrls:
    @pytest.mark.parametrize(
        ("text", "urls"),
        [
            ("nats://a:4222", ("nats://a:4222",)),
            ("nats://a:4222,nats://b:4222", ("nats://a:4222", "nats://b:4222")),
            (" nats://a:1 , tls://b:2 ", ("nats://a:1", "tls://b:2")),
            ("a:4222,b", ("nats://a:4222", "nats://b")),
            ("NATS://a:1", ("nats://a:1",)),
            ("nats://[::1]:4222,nats://a:4222/", ("nats://[::1]:4222", "nats://a:4222")),
        ],
    )
    def test_one_or_several_urls(self, text: str, urls: tuple[str, ...]) -> None:
        """Comma-separated nats://, tls:// and bare HOST[:PORT] items become nats URLs."""
        assert parse_nats_urls(text) == urls

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("nats://a:1,,nats://b:2", "--nats-url 'nats://a:1,,nats://b:2' has an empty item"),
            ("nats://a:1,", "has an empty item"),
            ("", "has an empty item"),
            ("http://a:80", "--nats-url: 'http://a:80' is not a NATS URL"),
            ("ws://a:80", "is not a NATS URL"),
            ("nats://a:99999", "with a port from 1 to 65535"),
            ("nats://a:0", "with a port from 1 to 65535"),
            ("nats://a:x", "with a port from 1 to 65535"),
            ("nats://:4222", "is not a NATS URL"),
            ("nats://a:1/path", "is not a NATS URL"),
            ("nats://a:1,nats://a:1", "--nats-url names nats://a:1 twice"),
        ],
    )
    def test_bad_lists_are_usage_errors(self, text: str, message: str) -> None:
        """An empty item, another scheme, a bad port or a repeat is a UsageError saying so."""
        with pytest.raises(UsageError, match=re.escape(message)):
            parse_nats_urls(text)

    def test_credentials_are_refused_and_not_repeated(self) -> None:
        """A URL with a user and password is refused, and the message does not repeat them."""
        with pytest.raises(UsageError) as refused:
            parse_nats_urls("nats://a:1,nats://ops:hunter2@b:4222")
        message = str(refused.value)
        assert "nats://…@b:4222 carries credentials" in message
        assert "hunter2" not in message and "ops" not in message

    def test_every_command_takes_a_list_from_flag_or_variable(self) -> None:
        """listener, deploy and mcp read the list from --nats-url or FLEET_DEPLOY_NATS_URL,
        and an error names the variable when the variable gave it."""
        both = ("nats://a:1", "nats://b:2")
        environ = {"FLEET_DEPLOY_NATS_URL": "nats://a:1,nats://b:2"}
        flags = {"target": "deploy.test.all", "nkey_file": "k"}
        assert deploy_settings(flags, environ=environ).connection.nats_urls == both
        assert mcp_settings({"nkey_file": "k"}, environ=environ).connection.nats_urls == both
        listener = {
            "hostname": "web1",
            "tier": "test",
            "nkey_file": "k",
            "flake_url": FLAKE_URL,
            "nats_url": "a:1,b:2",
        }
        assert listener_settings(listener, environ={}).nats_urls == both
        with pytest.raises(UsageError) as refused:
            deploy_settings(flags, environ={"FLEET_DEPLOY_NATS_URL": "a:1,"})
        assert str(refused.value).startswith("FLEET_DEPLOY_NATS_URL 'a:1,' has an empty item")


class TestLocalCluster:
    async def test_three_servers_one_config_routed_and_enforced(self, cluster: LocalFleet) -> None:
        """Three servers share the nats-config of the inventory; the route password is in
        0600 files only; a deployer on one server deploys to listeners on the other two,
        and the test key is refused prod there too."""
        servers = cluster.servers
        assert len(set(cluster.urls)) == 3 and cluster.url == ",".join(cluster.urls)
        expected = nats_config(cluster.inventory, source=str(cluster.root / "inventory.toml"))
        assert {s.config_path.read_text() for s in servers} == {expected}
        for index in (1, 2, 3):
            route_config = cluster.root / "nats" / f"fleet-{index}.conf"
            assert stat.S_IMODE(route_config.stat().st_mode) == 0o600
        on = [
            cluster.listener_settings(h, nats_urls=(servers[i].url,))
            for i, h in enumerate(["web1", "web2"])
        ]
        async with (
            cluster.listeners(on, rebuilder=InstantRebuilder()),
            await cluster.connect("deployer", servers=servers[2].url) as bus,
        ):
            result = await deploy(bus, "deploy.test.role.web")
            assert outcomes(result) == {"web1": ("completed", None), "web2": ("completed", None)}
            with pytest.raises(PermissionDenied):
                await deploy(bus, "deploy.prod.all")

    async def test_nothing_is_left_after_the_block(self) -> None:
        """When the block ends, every one of the three servers has exited."""
        async with local_fleet(HOSTS, DEPLOYERS, cluster=3) as fleet:
            pids = fleet.cluster.pids
            root = fleet.root
        assert len(pids) == 3
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert not root.exists()


class TestFailover:
    async def test_a_deploy_outlives_the_server_its_deployer_is_on(
        self, cluster: LocalFleet, tmp_path: Path
    ) -> None:
        """Listeners on three different servers; the deployer, given all three URLs, on one
        of them. Mid-deploy (every rebuild held open) that server is SIGKILLed and the
        rebuilds are released at once, while the deployer is still failing over: every
        host's true outcome arrives (live, or read back with a job query), web2's build
        error included."""
        release = tmp_path / "release"
        servers = cluster.servers

        def held(host: str, index: int) -> ListenerSettings:
            sim = ["--sim-wait-for", str(release), *(["--sim-fail"] if host == "web2" else [])]
            return cluster.listener_settings(
                host,
                nats_urls=(servers[index].url,),  # the others are learnt from the cluster
                rebuild_command=simulated_rebuild_command(*sim),
                progress_interval=0.05,
                heartbeat_interval=1.0,
            )

        running = anyio.Event()
        seen: dict[str, str] = {}

        def on_update(host: HostResult, _: DeploymentResult) -> None:
            seen[host.hostname] = host.status
            if all(seen.get(h) in ("started", "progress") for h in TEST_HOSTS):
                running.set()

        settings = [held(host, index) for index, host in enumerate(TEST_HOSTS)]
        results: list[DeploymentResult] = []
        async with (
            cluster.listeners(settings),
            await cluster.connect("deployer", servers=cluster.urls) as bus,
        ):

            async def run_deploy() -> None:
                results.append(
                    await Deployer(bus, timing=FAST).deploy(
                        parse_target("deploy.test.all"),
                        revision="master",
                        action=Action.SWITCH,
                        timeout=60,
                        on_update=on_update,
                    )
                )

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(run_deploy)
                    await running.wait()
                    assert bus.connected_url is not None
                    killed = cluster.cluster.node_at(bus.connected_url)
                    killed.kill()
                    release.touch()
            assert bus.connected_url not in (None, killed.url)
        (result,) = results
        assert outcomes(result) == {
            "web1": ("completed", None),
            "web2": ("failed", "build_failed"),
            "web3": ("completed", None),
        }
        web2 = next(h for h in result.hosts if h.hostname == "web2")
        assert "undefined variable 'webroot'" in web2.message

    async def test_a_server_down_first_in_the_list_is_skipped(self, cluster: LocalFleet) -> None:
        """Given a dead server first (and tried first), a deployer and a listener-style
        connection both end up on the next one."""
        urls = (dead_url(), *cluster.urls[1:])
        seed = cluster.seed("deployer")
        for persistent in (False, True):
            async with await Bus.connect(
                urls, seed, name="t", persistent=persistent, randomize=False
            ) as bus:
                assert bus.connected_url == urls[1]
                await bus.flush()

    async def test_every_server_down_names_them_all(self, cluster: LocalFleet) -> None:
        """With no server of the list reachable, the error names each URL."""
        urls = (dead_url(), dead_url())
        with pytest.raises(ConnectionFailed) as failed:
            await Bus.connect(urls, cluster.seed("deployer"), name="t")
        assert f"cannot reach the NATS servers at {urls[0]}, {urls[1]}" in str(failed.value)
        assert "are the URLs right?" in str(failed.value)

    async def test_the_mcp_link_takes_a_list_and_names_it(self, cluster: LocalFleet) -> None:
        """The MCP server's connection, given a dead server and two live ones, connects and
        discovers; given only dead ones, its error names every one."""
        live = NatsLink(
            (dead_url(), *cluster.urls[1:]), cluster.seed("deployer"), name="t", timing=FAST
        )
        dead = (dead_url(), dead_url())
        down = NatsLink(dead, cluster.seed("deployer"), name="t", timing=FAST)
        assert down.url == ",".join(dead)  # what the tool errors show after --nats-url
        async with (
            cluster.listeners(["web1"], rebuilder=InstantRebuilder()),
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(live.run)
            tasks.start_soon(down.run)
            found = await (await live.deployer(wait=10)).discover()
            assert [h.hostname for h in found] == ["web1"]
            with pytest.raises(ConnectionFailed) as failed:
                await down.deployer(wait=10)
            tasks.cancel_scope.cancel()
        assert f"cannot reach the NATS servers at {dead[0]}, {dead[1]}" in str(failed.value)

    async def test_listener_command_with_the_first_url_down(self, cluster: LocalFleet) -> None:
        """fleet-deploy listener --nats-url DEAD,B,C serves, and fleet-deploy deploy given
        the same three URLs reaches it."""
        cluster.servers[0].kill()
        urls = ",".join((cluster.servers[0].url, *cluster.urls[1:]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_DEPLOY_")}
        fleet_deploy = str(scripts_dir() / "fleet-deploy")
        argv = [
            fleet_deploy,
            "listener",
            "--hostname",
            "web1",
            "--tier",
            "test",
            "--nats-url",
            urls,
            "--nkey-file",
            str(cluster.key_path("web1")),
            "--flake-url",
            FLAKE_URL,
            "--rebuild-command",
            shlex.join(simulated_rebuild_command()),
            "--state-dir",
            str(cluster.state_dir("web1")),
        ]
        async with await anyio.open_process(argv, env=env) as listener:
            try:
                await read_until(listener, b'"event": "listening"', limit=30)
                await cluster.wait_for_listeners(["web1"])  # every server knows it now
                with anyio.fail_after(60):
                    deployed = await anyio.run_process(
                        [
                            fleet_deploy,
                            "deploy",
                            "deploy.test.web1",
                            "--nats-url",
                            urls,
                            "--nkey-file",
                            str(cluster.key_path("deployer")),
                        ],
                        check=False,
                        env=env,
                    )
                assert deployed.returncode == 0, deployed.stderr.decode()
            finally:
                listener.terminate()
                with anyio.fail_after(10):
                    await listener.wait()
