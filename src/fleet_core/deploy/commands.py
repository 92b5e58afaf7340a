"""``fleet-deploy deploy`` and ``hosts``: each takes its frozen settings and returns an exit code.

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

from fleet_core.build.protocol import BuildResult, HostBuildState
from fleet_core.build.report import build_line
from fleet_core.bus import Bus
from fleet_core.config.settings import (
    CancelSettings,
    DeploySettings,
    HostsSettings,
    RolloutSettings,
)
from fleet_core.deploy.cancel import cancel_deployment
from fleet_core.deploy.cancellation import CancelResult
from fleet_core.deploy.closure_deploy import build_for_deploy, load_build
from fleet_core.deploy.closures import Closures, closures_from_build, single_closure
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.report import (
    cancel_summary,
    connection_line,
    host_line,
    hosts_table,
    rollout_line,
    summary,
)
from fleet_core.deploy.results import DeploymentResult, HostResult, Outage, RolloutStep
from fleet_core.keys import load_seed
from fleet_core.lifecycle import Finished, run_until_signal
from fleet_core.logging import configure_logging
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import HostInfo
from fleet_core.protocol.text import escaped_json, printable

__all__ = ["finish", "run_cancel", "run_deploy", "run_hosts"]


def run_deploy(settings: DeploySettings, *, out: TextIO = sys.stdout) -> int:
    """Deploy and print: live lines then a summary, or one JSON object with ``--json``.

    Interrupted (Ctrl-C, SIGTERM) it stops waiting and exits 130; the hosts carry on.
    A dropped NATS connection is told in two live lines (lost, reconnected after N s), not
    in the connection's own warnings: only errors are logged. A rollout adds a line as each
    batch goes out, and one when it stops, naming the skipped hosts (they get no line each).
    """
    configure_logging("error")
    seed = load_seed(settings.connection.nkey_file)
    live = sys.stderr if settings.json else out

    def on_update(host: HostResult, _: DeploymentResult) -> None:
        if host.status != "skipped":  # the rollout's stop line names them all at once
            print(host_line(host), file=live, flush=True)

    def on_connection(outage: Outage, _: DeploymentResult) -> None:
        print(connection_line(outage), file=live, flush=True)

    def on_rollout(step: RolloutStep, current: DeploymentResult) -> None:
        print(rollout_line(step, current.rollout), file=live, flush=True)

    async def main() -> DeploymentResult:
        urls = settings.connection.nats_urls
        async with await Bus.connect(urls, seed, name="fleet-deploy") as bus:
            deployer = Deployer(bus, timing=settings.timing, signer=seed)
            closures = None
            if settings.closures is not None:
                closures = await _closures(deployer, settings, out=out, live=live)
            elif not settings.json:  # once connected: a bad flag or server is told alone
                print(
                    (
                        f"checking the health of {settings.target}"
                        if settings.action is Action.CHECK
                        else f"deploying {settings.revision} ({settings.action.value}) to "
                        f"{settings.target}"
                    )
                    + _in_steps(settings.rollout),
                    file=out,
                    flush=True,
                )
            return await deployer.deploy(
                settings.target,
                revision=settings.revision,
                action=settings.action,
                timeout=settings.timeout,
                expect=settings.expect,
                on_update=on_update,
                on_connection=on_connection,
                rollout=settings.rollout,
                on_rollout=on_rollout,
                no_rollback=settings.no_rollback,
                closures=closures,
            )

    return finish(
        run_until_signal(main),
        summary,
        json_out=settings.json,
        out=out,
        interrupted="the hosts carry on with the deploy",
    )


async def _closures(
    deployer: Deployer, settings: DeploySettings, *, out: TextIO, live: TextIO
) -> Closures:
    """The systems a closure deploy sends (``settings.closures`` says from where): built now
    for the target's hosts (each host's build shown as it starts and ends), read from the
    builds stream, or the one given. Says which on ``out`` unless the output is JSON."""
    source = settings.closures
    assert source is not None
    target, action = settings.target, settings.action.value
    steps = _in_steps(settings.rollout)

    def say(text: str) -> None:
        if not settings.json:
            print(text, file=out, flush=True)

    if source.store_path is not None:
        assert target.name is not None  # settings refuse --store-path for a group
        say(f"deploying {source.store_path} ({action}) to {target}")
        return single_closure(target.name, source.store_path)
    if source.from_build is not None:
        recorded = await load_build(deployer.bus, source.from_build)
        say(f"deploying the systems of {_built(recorded)} ({action}) to {target}{steps}")
        return closures_from_build(recorded)
    assert source.build_repo is not None
    say(f"building the hosts of {target} with {source.build_repo} at {settings.revision}")
    shown: dict[str, HostBuildState] = {}

    def on_build(result: BuildResult) -> None:
        for host in result.hosts:
            if host.state is not HostBuildState.WAITING and shown.get(host.host) != host.state:
                shown[host.host] = host.state
                print(build_line(host), file=live, flush=True)

    closures, build = await build_for_deploy(
        deployer,
        target,
        repo=source.build_repo,
        revision=settings.revision,
        timeout=source.build_timeout,
        expect=settings.expect,
        on_update=on_build,
    )
    if build is not None:
        say(f"deploying the systems of {_built(build)} ({action}) to {target}{steps}")
    return closures


def _built(build: BuildResult) -> str:
    """A build in a sentence: "build <id> of nixos at main (commit 0123456789ab)"."""
    commit = f" (commit {printable(build.commit[:12])})" if build.commit else ""
    return (
        f"build {build.build_id} of {printable(build.repo)} at {printable(build.revision)}{commit}"
    )


def _in_steps(rollout: RolloutSettings | None) -> str:
    """What the first line says of a rollout: "" for a deploy at once."""
    if rollout is None:
        return ""
    steps = [f"canary {rollout.canary}"] if rollout.canary else []
    steps.append(f"batches of {rollout.batch_text}" if rollout.batch_text else "then the rest")
    steps.append(f"failure budget {rollout.max_failures}")
    if rollout.shuffle:
        steps.append("shuffled")
    return f" in steps: {', '.join(steps)}"


def run_cancel(settings: CancelSettings, *, out: TextIO = sys.stdout) -> int:
    """Cancel a deployment and print each host's answer (one JSON object with ``--json``);
    0 when every host that answered stopped its job or will refuse the deployment."""
    configure_logging("error")
    seed = load_seed(settings.connection.nkey_file)

    async def main() -> CancelResult:
        urls = settings.connection.nats_urls
        async with await Bus.connect(urls, seed, name="fleet-deploy cancel") as bus:
            return await cancel_deployment(
                bus,
                settings.deployment_id,
                tiers=settings.tiers,
                signer=seed,
                host=settings.host,
                timing=settings.timing,
            )

    finished = run_until_signal(main)
    result = finished.value
    if result is None:
        print("fleet-deploy: interrupted", file=sys.stderr)
        return finished.exit_code
    if settings.json:
        print(escaped_json(result.model_dump_json(indent=2)), file=out)
        return 0 if result.ok else 1
    print(cancel_summary(result), file=out)
    return 0 if result.ok else 1


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
    if settings.json:  # ensure_ascii: every control and bidi character as an escape
        print(json.dumps([h.model_dump(mode="json") for h in found], indent=2), file=out)
    elif not found and hidden:  # not "nobody answered": nobody this key may hear did
        print(f"no host shown: this key may not read the {' or '.join(hidden)} tier", file=out)
    else:
        print(hosts_table(found), file=out)
    return 0


class _Outcome(Protocol):
    """A deployment's or a build's result, as far as printing it goes."""

    @property
    def ok(self) -> bool: ...

    def model_dump_json(self, *, indent: int | None = None) -> str: ...


R = TypeVar("R", bound=_Outcome)


def finish(
    finished: Finished[R],
    summarize: Callable[[R], str],
    *,
    json_out: bool,
    out: TextIO,
    interrupted: str,
) -> int:
    """Print a deploy's (or a build's) result, a summary or JSON, and decide the command's
    exit status: 0 when every host ended as asked, 1 when any did not, 128+N when signal N
    cut the wait short (what was asked for goes on). Usage, key and connection errors are
    2, from ``cli.main``.

    The JSON is pydantic's, exact; ``escaped_json`` writes the few characters JSON leaves
    raw (C1 controls, bidi overrides) as escapes, so that no host's text acts on a terminal
    even there, and every string still parses back to what the host sent."""
    result = finished.value
    if result is None:
        print(f"fleet-deploy: interrupted; {interrupted}", file=sys.stderr)
        return finished.exit_code
    if json_out:
        print(escaped_json(result.model_dump_json(indent=2)), file=out)
    else:
        print("\n" + summarize(result), file=out)
    return 0 if result.ok else 1
