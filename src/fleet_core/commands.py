"""The commands behind the CLI: each takes its frozen settings and returns an exit code.

``cli.py`` parses; these run. They are the only place (besides ``cli.py``) that prints.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import TextIO

import anyio
import anyio.abc
import structlog

from fleet_core.bus import Bus
from fleet_core.deployer import Deployer
from fleet_core.errors import only_fleet_error
from fleet_core.keys import load_seed
from fleet_core.listener import Listener
from fleet_core.logging import configure_logging
from fleet_core.messages import HostInfo
from fleet_core.report import host_line, hosts_table, summary
from fleet_core.runner import ProcessRebuilder
from fleet_core.settings import DeploySettings, HostsSettings, ListenerSettings
from fleet_core.tracking import DeploymentResult, HostResult

__all__ = ["run_deploy", "run_hosts", "run_listener"]

log = structlog.get_logger("fleet.cli")


def run_listener(settings: ListenerSettings) -> int:
    """Serve until SIGTERM or SIGINT; then stop taking work, cancel a running job, exit 0."""
    configure_logging(settings.log_level)
    seed = load_seed(settings.nkey_file)

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_stop_on_signal, tasks.cancel_scope)
            bus = await Bus.connect(
                settings.nats_url,
                seed,
                name=f"fleet-listener {settings.hostname}",
                persistent=True,
            )
            try:
                await Listener(settings, ProcessRebuilder()).serve(bus)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await bus.close()

    try:
        anyio.run(main)
    except BaseExceptionGroup as group:  # the task group wraps what its tasks raise
        raise only_fleet_error(group) from None
    return 0


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("shutting_down", signal=signal.Signals(signum).name)
            scope.cancel()
            return


def run_deploy(settings: DeploySettings, *, out: TextIO = sys.stdout) -> int:
    """Deploy and print: live lines then a summary, or one JSON object with ``--json``."""
    configure_logging("warning")
    seed = load_seed(settings.connection.nkey_file)
    live = sys.stderr if settings.json else out

    def on_update(host: HostResult, _: DeploymentResult) -> None:
        print(host_line(host), file=live, flush=True)

    async def main() -> DeploymentResult:
        bus = await Bus.connect(settings.connection.nats_url, seed, name="fleet-deploy")
        try:
            return await Deployer(bus, timing=settings.timing).deploy(
                settings.target,
                revision=settings.revision,
                action=settings.action,
                timeout=settings.timeout,
                expect=settings.expect,
                on_update=on_update,
            )
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await bus.close()

    if not settings.json:
        print(
            f"deploying {settings.revision} ({settings.action.value}) to {settings.target}",
            file=out,
            flush=True,
        )
    result = anyio.run(main)
    if settings.json:
        print(result.model_dump_json(indent=2), file=out)
    else:
        print("\n" + summary(result), file=out)
    return 0 if result.ok else 1


def run_hosts(settings: HostsSettings, *, out: TextIO = sys.stdout) -> int:
    """Discover and print the hosts."""
    configure_logging("warning")
    seed = load_seed(settings.connection.nkey_file)

    async def main() -> list[HostInfo]:
        bus = await Bus.connect(settings.connection.nats_url, seed, name="fleet-deploy hosts")
        try:
            return await Deployer(bus, timing=settings.timing).discover(settings.tier)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await bus.close()

    found = anyio.run(main)
    if settings.json:
        print(json.dumps([h.model_dump(mode="json") for h in found], indent=2), file=out)
    else:
        print(hosts_table(found), file=out)
    return 0
