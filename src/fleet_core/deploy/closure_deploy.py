"""Where a closure deploy's systems come from: a build asked for now, or one recorded (I/O).

``fleet-deploy deploy TARGET --build REPO`` first finds the target's hosts and the flake
configuration each builds (a discovery, as any group deploy's), then asks the builder for
exactly those configurations from one pinned commit (``build_for_deploy``), and deploys what
it built
(``Deployer.deploy(closures=…)``). ``--from-build BUILD_ID`` reads a build a previous
command ran from the builds stream (``load_build``). The decisions — which build can be
used, which host gets what — are ``fleet_core.deploy.closures``'; this module only asks.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from fleet_core.build.client import BuildClient, OnBuildUpdate
from fleet_core.build.protocol import BuildResult, is_buildable_name, parse_build_target
from fleet_core.bus import Bus
from fleet_core.deploy.closures import (
    BuildUnusable,
    Closures,
    build_from_statuses,
    closures_from_build,
)
from fleet_core.deploy.deployer import Deployer, listens_to
from fleet_core.deploy.history_reader import read_build
from fleet_core.deploy.rollout import MAX_NAMED
from fleet_core.errors import HistoryUnavailable, PermissionDenied
from fleet_core.protocol.messages import HostInfo
from fleet_core.protocol.subjects import Target, is_token

__all__ = ["build_for_deploy", "load_build", "target_configurations"]

log = structlog.get_logger("fleet.deployer")


async def target_configurations(
    deployer: Deployer, target: Target, expect: Iterable[str] = ()
) -> dict[str, str]:
    """The hosts a deploy to ``target`` reaches, each with the flake configuration it builds
    (its discovery answer's; the host name when it does not say, or did not answer): a
    single host, or the group's hosts that answer discovery (and ``expect``), as the
    deployment itself will find them."""
    names = {name for name in expect if is_token(name)}
    if not target.is_group:
        assert target.name is not None  # a single-host target names its host
        names.add(target.name)
    found = await deployer.discover(target.tier)
    if target.is_group:
        names |= {h.hostname for h in found if is_token(h.hostname) and listens_to(h, target)}
    answers = {h.hostname: h for h in found if h.hostname in names}
    return {name: _configuration(answers[name]) if name in answers else name for name in names}


def _configuration(host: HostInfo) -> str:
    named = host.configuration
    return named if named is not None and is_buildable_name(named) else host.hostname


async def build_for_deploy(
    deployer: Deployer,
    target: Target,
    *,
    repo: str,
    revision: str,
    timeout: float,
    expect: Iterable[str] = (),
    build_id: str | None = None,
    on_update: OnBuildUpdate | None = None,
) -> tuple[Closures, BuildResult | None]:
    """Ask the builder of ``repo`` for the systems of ``target``'s hosts at ``revision``, all
    from the one commit it pins, and return what each host is to be sent, with the build.

    A target that reaches no host builds nothing (no build: None); the deployment then says
    who there is. Raises ``BuildUnusable`` when no builder answered, the build was refused
    or lost, or it failed before building any of them: nothing is deployed then."""
    configurations = await target_configurations(deployer, target, expect)
    hosts = set(configurations.values())
    bound = log.bind(subject=target.subject, repo=repo, revision=revision)
    if not hosts:
        bound.info("closure_build_skipped", reason="no host")
        return Closures(), None
    bound.info("closure_build", hosts=len(hosts), first=sorted(hosts)[:MAX_NAMED])
    client = BuildClient(deployer.bus, timing=deployer.timing)
    result = await client.build(
        parse_build_target(repo),
        revision=revision,
        timeout=timeout,
        build_id=build_id,
        on_update=on_update,
        hosts=hosts,
    )
    return closures_from_build(result, hosts), result


async def load_build(bus: Bus, build_id: str) -> BuildResult:
    """The build ``build_id`` as the builds stream recorded it (``history --setup`` creates
    the stream; only the admin key may read it).

    Raises ``BuildUnusable`` when the stream holds no status of it, ``PermissionDenied``
    for a key without JetStream (the test key has none, by design) and
    ``HistoryUnavailable`` when there is no stream to read."""
    try:
        statuses = await read_build(bus, build_id)
    except PermissionDenied as exc:
        refused = f"{exc.operation or 'use'} on {exc.subject}" if exc.subject else "it"
        raise PermissionDenied(
            "this key may not read recorded builds: they are kept in JetStream, which only "
            "the admin key may use (docs/history.md). With this key, deploy with --build "
            "REPO (it builds again), or give one host its system with --store-path PATH "
            f"(the NATS server refused this key {refused})",
            subject=exc.subject,
            operation=exc.operation,
            fix="use the admin key for --from-build, or build again with --build REPO",
        ) from exc
    except HistoryUnavailable as exc:
        raise HistoryUnavailable(
            f"cannot read build {build_id}: {exc}",
            reason=exc.reason,
            fix="create the builds stream once with the admin key (fleet-deploy history "
            "--setup); builds run before it was created are not recorded",
        ) from exc
    result = build_from_statuses(build_id, statuses)
    if result is None:
        raise BuildUnusable(
            f"no build {build_id} is recorded in the builds stream: check the id (build "
            "prints it), and that the build ran after the stream was created and is younger "
            "than its retention",
            fix="check the build id (fleet-deploy build and deploy --build print it), or "
            "build again: fleet-deploy deploy TARGET --build REPO",
        )
    return result
