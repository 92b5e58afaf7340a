"""The commands behind the CLI: each takes its frozen settings and returns an exit code.

``cli.py`` parses; these run. They are the only place (with the setting-up commands and the
sandbox) that prints. Each runs through ``lifecycle.run_until_signal``, so SIGINT and
SIGTERM stop them the same way, and opens its ``Bus`` as a context manager, so the
connection is closed however the command ends.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Protocol, TextIO, TypeVar

from fleet_core.builds import BuildResult, HostBuild, HostBuildState
from fleet_core.bus import Bus
from fleet_core.deployer import Deployer
from fleet_core.keys import load_seed
from fleet_core.lifecycle import Finished, run_until_signal
from fleet_core.logging import configure_logging
from fleet_core.messages import HostInfo
from fleet_core.report import (
    build_line,
    build_summary,
    connection_line,
    host_line,
    hosts_table,
    summary,
)
from fleet_core.settings import BuildSettings, DeploySettings, HostsSettings
from fleet_core.tracking import DeploymentResult, HostResult, Outage

__all__ = ["run_build", "run_deploy", "run_hosts"]


def run_deploy(settings: DeploySettings, *, out: TextIO = sys.stdout) -> int:
    """Deploy and print: live lines then a summary, or one JSON object with ``--json``.

    Interrupted (Ctrl-C, SIGTERM) it stops waiting and exits 130; the hosts carry on.
    A dropped NATS connection is told in two live lines (lost, reconnected after N s), not
    in the connection's own warnings: only errors are logged.
    """
    configure_logging("error")
    seed = load_seed(settings.connection.nkey_file)
    live = sys.stderr if settings.json else out

    def on_update(host: HostResult, _: DeploymentResult) -> None:
        print(host_line(host), file=live, flush=True)

    def on_connection(outage: Outage, _: DeploymentResult) -> None:
        print(connection_line(outage), file=live, flush=True)

    async def main() -> DeploymentResult:
        urls = settings.connection.nats_urls
        async with await Bus.connect(urls, seed, name="fleet-deploy") as bus:
            return await Deployer(bus, timing=settings.timing, signer=seed).deploy(
                settings.target,
                revision=settings.revision,
                action=settings.action,
                timeout=settings.timeout,
                expect=settings.expect,
                on_update=on_update,
                on_connection=on_connection,
            )

    if not settings.json:
        print(
            f"deploying {settings.revision} ({settings.action.value}) to {settings.target}",
            file=out,
            flush=True,
        )
    return _report(
        run_until_signal(main),
        summary,
        json_out=settings.json,
        out=out,
        interrupted="the hosts carry on with the deploy",
    )


def run_hosts(settings: HostsSettings, *, out: TextIO = sys.stdout) -> int:
    """Discover and print the hosts; say on stderr which tiers this key may not read."""
    configure_logging("warning")
    seed = load_seed(settings.connection.nkey_file)
    hidden: list[str] = []

    async def main() -> list[HostInfo]:
        urls = settings.connection.nats_urls
        async with await Bus.connect(urls, seed, name="fleet-deploy hosts") as bus:
            deployer = Deployer(bus, timing=settings.timing)
            found = await deployer.discover(settings.tier)
            hidden.extend(t.value for t in sorted(deployer.unreadable_tiers))
            return found

    finished = run_until_signal(main)
    found = finished.value
    if found is None:
        return finished.exit_code
    for tier in hidden:
        print(f"{tier} hosts are not shown: this key may not read their answers", file=sys.stderr)
    if settings.json:
        print(json.dumps([h.model_dump(mode="json") for h in found], indent=2), file=out)
    else:
        print(hosts_table(found), file=out)
    return 0


def run_build(settings: BuildSettings, *, out: TextIO = sys.stdout) -> int:
    """Ask the builder for a build and print: a line per host as its state changes, then a
    summary (one JSON object with ``--json``). Interrupted it stops waiting and exits 130;
    the builder carries on."""
    configure_logging("error")
    seed = load_seed(settings.connection.nkey_file)
    live = sys.stderr if settings.json else out
    shown: dict[str, tuple[HostBuildState, str | None]] = {}

    def on_update(result: BuildResult) -> None:
        for host in result.hosts:
            seen = (host.state, host.phase)
            if shown.get(host.host) != seen and _worth_a_line(host):
                shown[host.host] = seen
                print(build_line(host), file=live, flush=True)

    async def main() -> BuildResult:
        urls = settings.connection.nats_urls
        async with await Bus.connect(urls, seed, name="fleet-deploy build") as bus:
            return await Deployer(bus, timing=settings.timing).build(
                settings.target,
                revision=settings.revision,
                timeout=settings.timeout,
                on_update=on_update,
            )

    if not settings.json:
        print(f"building {settings.target} at {settings.revision}", file=out, flush=True)
    return _report(
        run_until_signal(main),
        build_summary,
        json_out=settings.json,
        out=out,
        interrupted="the builder carries on with the build",
    )


class _Outcome(Protocol):
    """A deployment's or a build's result, as far as printing it goes."""

    @property
    def ok(self) -> bool: ...

    def model_dump_json(self, *, indent: int | None = None) -> str: ...


R = TypeVar("R", bound=_Outcome)


def _report(
    finished: Finished[R],
    summarize: Callable[[R], str],
    *,
    json_out: bool,
    out: TextIO,
    interrupted: str,
) -> int:
    """Print a deploy's or build's result (a summary, or JSON) and return its exit status:
    0 ok, 1 not, 128+N when a signal cut the wait short (what was asked for goes on)."""
    result = finished.value
    if result is None:
        print(f"fleet-deploy: interrupted; {interrupted}", file=sys.stderr)
        return finished.exit_code
    if json_out:
        print(result.model_dump_json(indent=2), file=out)
    else:
        print("\n" + summarize(result), file=out)
    return 0 if result.ok else 1


def _worth_a_line(host: HostBuild) -> bool:
    """A host is shown when it starts and when it ends, not at every progress line."""
    return host.state is not HostBuildState.WAITING
