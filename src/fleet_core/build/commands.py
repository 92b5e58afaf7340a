"""``fleet-deploy build``: ask the builder for a build, print it, and exit as it ended."""

from __future__ import annotations

import sys
from typing import TextIO

from fleet_core.build.client import BuildClient
from fleet_core.build.protocol import BuildResult, HostBuild, HostBuildState
from fleet_core.build.report import build_line, build_summary
from fleet_core.bus import Bus
from fleet_core.config.settings import BuildSettings
from fleet_core.deploy.commands import finish
from fleet_core.keys import load_seed
from fleet_core.lifecycle import run_until_signal
from fleet_core.logging import configure_logging

__all__ = ["run_build"]


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
            if not settings.json:  # once connected: a bad flag or server is told alone
                print(f"building {settings.target} at {settings.revision}", file=out, flush=True)
            return await BuildClient(bus, timing=settings.timing).build(
                settings.target,
                revision=settings.revision,
                timeout=settings.timeout,
                on_update=on_update,
            )

    return finish(
        run_until_signal(main),
        build_summary,
        json_out=settings.json,
        out=out,
        interrupted="the builder carries on with the build",
    )


def _worth_a_line(host: HostBuild) -> bool:
    """A host is shown when it starts and when it ends, not at every progress line."""
    return host.state is not HostBuildState.WAITING
