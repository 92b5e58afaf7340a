"""Closure deploys at the deployer: which host is sent which system, and who is sent nothing
(pure: no I/O).

A closure deploy (docs/closures.md) sends each host the store path of a system the builder
built for it, on the host's own subject ``deploy.<tier>.<host>``, signed for that subject
with the path in the signed text. What each host gets comes from a build
(``closures_from_build``) or from a person (``--store-path``) as ``Closures``;
``plan_closures`` then decides, before anything is sent, for every host of the target:

- a host whose build failed (or that the build has no system of) is sent nothing and ends
  ``failed/build_failed`` with the build's own error: it must not switch to something else;
- a host that did not answer the deployment's discovery is sent nothing and ends
  ``missing``: nothing says its listener takes closure deploys;
- a host whose discovery answer lacks ``closures: true`` runs a listener from before closure
  deploys. It would ignore the store path and evaluate the revision instead — a system
  other than the one built — so it is sent nothing and ends ``failed/closures_unsupported``;
  so does one whose answer says it does not listen on its own subject, where its request
  would go (one host, misconfigured or hostile, never stops the others' deploy);
- every other host is sent its own path.

A build is used only when it ended (``completed``, or ``failed`` with some hosts built): a
build that is still running, was rejected, found no builder or was lost says nothing
certain about which commit each host would get, and is a ``BuildUnusable`` error before
anything is deployed. Every path a build reports is checked to be a system of the host it
is for (``protocol.closures.system_refusal``), so a builder's slip fails that host here
rather than on the host.

The messages name counts and hosts, never a whole fleet; the build's own error messages are
text from the builder, kept whole in a host's message (the report escapes them as it prints
any host text) and escaped (``protocol.text.printable``) in a ``BuildUnusable``, which the
command line prints as it is: a builder's words must not act on a terminal.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from fleet_core.build.protocol import (
    BUILD_PREFIX,
    BuildResult,
    HostBuild,
    HostBuildState,
    parse_build_status,
)
from fleet_core.build.tracker import BuildTracker
from fleet_core.errors import UsageError
from fleet_core.protocol.closures import (
    SYSTEM_PREFIX,
    is_store_path,
    store_base_name,
    system_refusal,
)
from fleet_core.protocol.messages import ErrorCode, HostInfo
from fleet_core.protocol.text import printable

__all__ = [
    "BUILD_FAILED",
    "CLOSURES_UNSUPPORTED",
    "BuildUnusable",
    "ClosurePlan",
    "Closures",
    "Ended",
    "build_from_statuses",
    "closures_from_build",
    "plan_closures",
    "single_closure",
]

BUILD_FAILED: Final = ErrorCode.BUILD_FAILED.value
# The deployer's own code for a host whose listener predates closure deploys (never sent).
CLOSURES_UNSUPPORTED: Final = "closures_unsupported"
# The build statuses a deploy may use: it ended, and said so.
_ENDED_BUILDS: Final = frozenset({"completed", "failed"})
_EMPTY: Mapping[str, str] = MappingProxyType({})
_HASH_CHARS: Final = 32  # of a store path's base name, before its dash
_COMMIT: Final = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # a git commit id, SHA-1 or SHA-256
_NOT_NIXOS: Final = frozenset({"darwin", "home-manager"})  # HostInfo.kind of hosts without one


class BuildUnusable(UsageError):
    """A build whose systems cannot be deployed: it found no builder, was refused or lost,
    is still running, or built nothing for the target. Nothing is deployed."""

    code = "build_unusable"
    advice = (
        "Check that `fleet-deploy builder` runs for the repository and build again, or "
        "deploy a build that ended (fleet-deploy deploy TARGET --from-build BUILD_ID)."
    )


@dataclass(frozen=True, slots=True)
class Closures:
    """What each target host is sent in a closure deploy."""

    paths: Mapping[str, str] = field(default_factory=lambda: _EMPTY)  # host -> its store path
    # host -> why its build failed (it is sent nothing)
    failed: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    build_id: str | None = None
    commit: str | None = None  # the commit every path was built from

    def __post_init__(self) -> None:
        for host, path in self.paths.items():
            if not is_store_path(path):
                raise UsageError(
                    f"{str(path)[:80]!r} (for {host}) is not a store path: "
                    "/nix/store/<32-character hash>-<name>"
                )
        object.__setattr__(self, "paths", MappingProxyType(dict(self.paths)))
        object.__setattr__(self, "failed", MappingProxyType(dict(self.failed)))

    def has(self, host: str) -> bool:
        """Whether the closures say anything of ``host``: a path, or why it has none."""
        return host in self.paths or host in self.failed


def single_closure(host: str, store_path: str, *, given_as: str = "--store-path") -> Closures:
    """One host's system, given by a person (``--store-path``; the MCP tools' ``store_path``,
    named by ``given_as`` so each error speaks the caller's words): checked as a store path
    and by its name as a system of ``host`` (the host checks both again)."""
    if not is_store_path(store_path):
        raise UsageError(
            f"{given_as} {store_path[:80]!r} is not a store path: /nix/store/<32-character "
            "hash>-<name>, as nix build --print-out-paths prints it"
        )
    refusal = system_refusal(store_path, [host])
    if refusal is not None:
        raise UsageError(f"{given_as}: {refusal}")
    return Closures(paths={host: store_path})


def closures_from_build(build: BuildResult, hosts: Collection[str] | None = None) -> Closures:
    """What each of ``hosts`` (every host of the build when None) is sent from ``build``.

    A host the build built gets its store path; one whose build failed, was lost, or that
    the build has no result of gets the build's error instead. Raises ``BuildUnusable``
    when the build did not end (no builder, rejected, lost, still running) or, for a
    target, built none of its hosts and failed as a whole (its error is the message)."""
    if build.status not in _ENDED_BUILDS:
        raise BuildUnusable(printable(_unusable(build)))
    by_name = {h.host: h for h in build.hosts}
    names = sorted(by_name) if hosts is None else sorted(set(hosts))
    paths: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name in names:
        built = by_name.get(name)
        path, why = _system_of(built, name, build)
        if path is not None:
            paths[name] = path
        else:
            failed[name] = why
    if build.status == "failed" and not paths and not by_name.keys() & set(names):
        # The build ended before any of these hosts (an evaluation error, an unknown host):
        # its own error is the whole story.
        raise BuildUnusable(
            printable(
                f"build {build.build_id} of {build.repo} at {build.revision} failed before "
                f"building any of the hosts: {build.error or 'failed'}: {build.message}"
            )
        )
    # A builder pins a commit id (build.protocol.parse_locked_commit); anything else in its
    # place is a broken or hostile builder's text, which would otherwise travel as the
    # requests' revision and be reported as "the commit" in a deployer's own voice.
    commit = build.commit if build.commit and _COMMIT.fullmatch(build.commit) else None
    return Closures(paths=paths, failed=failed, build_id=build.build_id, commit=commit)


def build_from_statuses(build_id: str, statuses: Iterable[bytes]) -> BuildResult | None:
    """A build as its recorded statuses tell it (the builds stream, oldest first), through
    the same ``BuildTracker`` that followed it live: the first builder to answer owns it,
    and a status of another request or builder is not believed. None when none is of it.

    A build whose end was not recorded stays ``running``: ``closures_from_build`` refuses it.
    """
    result: BuildResult | None = None
    tracker: BuildTracker | None = None
    first = 0.0  # the first status's time: the build's elapsed time runs from there
    for data in statuses:
        status = parse_build_status(data)
        if status is None or status.request_id != build_id:
            continue
        if tracker is None or result is None:
            first = status.timestamp or 0.0
            result = BuildResult(
                build_id=build_id,
                target=f"{BUILD_PREFIX}{status.repo}.{status.host or 'all'}",
                repo=status.repo,
                revision=status.revision or "",
            )
            tracker = BuildTracker(
                result, started_at=0.0, timeout=float("inf"), answer_within=0.0, silence_limit=0.0
            )
        tracker.feed(status, now=max(0.0, (status.timestamp or first) - first))
    if result is not None and not result.revision:
        result.revision = "?"
    return result


def _system_of(built: HostBuild | None, name: str, build: BuildResult) -> tuple[str | None, str]:
    """The host's store path from its part of the build, or why there is none."""
    label = f"build {build.build_id}"
    if built is None:
        return None, f"{label} has no system of {name} (it was not built)"
    if built.state is not HostBuildState.BUILT:
        error = built.error or built.state.value
        said = f": {built.message}" if built.message else ""
        return None, f"{label} failed for {name} ({error}){said}"
    if built.store_path is None or not is_store_path(built.store_path):
        return None, f"{label} reported no store path of {name}'s system"
    return built.store_path, ""  # whose system it is, by name, is judged per host (plan)


def _unusable(build: BuildResult) -> str:
    """Why a build that did not end cannot be deployed, in its own words."""
    what = f"build {build.build_id} of {build.repo} at {build.revision}"
    if build.status == "running":
        return (
            f"{what} has not ended (or its end was not recorded): deploy it once it has, "
            "or build again"
        )
    said = f": {build.message}" if build.message else ""
    # The builder's message may end a sentence itself ("… may it subscribe there?").
    end = " " if said.endswith((".", "?", "!")) else ". "
    return f"{what} ended {build.status}{said}{end}Nothing was deployed"


@dataclass(frozen=True, slots=True)
class Ended:
    """A host that ends before anything is sent: its final state, error and message."""

    host: str
    status: Literal["failed", "missing"]
    error: str | None
    message: str


@dataclass(frozen=True, slots=True)
class ClosurePlan:
    """A closure deploy, decided: each host to send its path, and each that ends unsent."""

    send: Mapping[str, str]  # host -> its store path, by host name
    ended: tuple[Ended, ...]

    @property
    def failed_first(self) -> tuple[str, ...]:
        """The hosts that ended failed before anything was sent: they count against a
        rollout's failure budget before its first batch."""
        return tuple(e.host for e in self.ended if e.status == "failed")


def plan_closures(
    hosts: Iterable[str],
    closures: Closures,
    found: Mapping[str, HostInfo],
    *,
    tier: str | None = None,
) -> ClosurePlan:
    """Which of ``hosts`` (the target's) are sent their system, and how the others end, from
    ``closures`` and the deployment's discovery answers (``found``, by host name); with the
    ``tier``, a host that says it does not listen on ``deploy.<tier>.<host>`` ends too."""
    send: dict[str, str] = {}
    ended: list[Ended] = []
    for name in sorted(set(hosts)):
        info = found.get(name)
        # A build names systems by configuration, which is the host name unless the host's
        # listener was given another (--configuration, e.g. web1.example.com).
        configuration = info.configuration if info is not None and info.configuration else name
        key = name if closures.has(name) or not closures.has(configuration) else configuration
        failure = closures.failed.get(key)
        path = closures.paths.get(key)
        # A build's system is judged here, per host: a builder's slip is never sent. A path
        # given by a person was judged as it was given (single_closure), and the host judges
        # every path again.
        judged = path is not None and closures.build_id is not None
        refusal = system_refusal(path, [name, configuration]) if judged and path else None
        if failure is not None or path is None:
            why = failure or _nothing_for(name, closures)
            ended.append(Ended(name, "failed", BUILD_FAILED, f"not deployed: {why}"))
        elif info is None:
            ended.append(
                Ended(
                    name,
                    "missing",
                    None,
                    "not deployed: the host did not answer discovery, so nothing says its "
                    "listener takes closure deploys",
                )
            )
        elif info.kind in _NOT_NIXOS:
            ended.append(
                Ended(
                    name,
                    "failed",
                    CLOSURES_UNSUPPORTED,
                    f"not deployed: it is a {info.kind} host, and a closure deploy activates a "
                    "NixOS system: deploy it by revision (without --build, --from-build or "
                    "--store-path)",
                )
            )
        elif info.closures is not True:
            version = f" ({info.version})" if info.version else ""
            ended.append(
                Ended(
                    name,
                    "failed",
                    CLOSURES_UNSUPPORTED,
                    f"not deployed: its listener{version} does not take closure deploys (it "
                    "would evaluate the flake instead of switching to the built system): "
                    "upgrade its fleet-deploy listener",
                )
            )
        elif refusal is not None:  # a builder's slip, or a path given for another host
            ended.append(
                Ended(
                    name,
                    "failed",
                    refusal.code,
                    f"not deployed: the system it was to be sent is not its own: {refusal}",
                )
            )
        elif (owner := _longer_owner(name, path, found)) is not None:
            # The host would take it: its name begins nixos-system-<name>-. But it is the
            # system of another host whose name only begins with this one's (web, web-db).
            ended.append(
                Ended(
                    name,
                    "failed",
                    ErrorCode.WRONG_HOST.value,
                    f"not deployed: {path} is the system of {owner}, not of {name}: each host "
                    "takes only its own system",
                )
            )
        elif (
            tier is not None
            and info.deploy_subjects
            and (own := f"deploy.{tier}.{name}") not in info.deploy_subjects
        ):
            # One host (misconfigured, or in hostile hands) must not stop the others'.
            ended.append(
                Ended(
                    name,
                    "failed",
                    CLOSURES_UNSUPPORTED,
                    f"not deployed: its listener does not listen on {own}, where a closure "
                    "deploy sends each host its own request (its --deploy-subject): let it hear "
                    "its own subject, as the default does",
                )
            )
        else:
            send[name] = path
    return ClosurePlan(send=MappingProxyType(send), ended=tuple(ended))


def _longer_owner(name: str, path: str, found: Mapping[str, HostInfo]) -> str | None:
    """Another known host whose system ``path`` is by name, though ``name``'s check would
    take it: ``nixos-system-web-db-…`` for ``web`` when ``web-db`` answered discovery too.
    A few set lookups per host (the words of the label), never a pass over the fleet."""
    rest = store_base_name(path)[_HASH_CHARS + 1 :].removeprefix(f"{SYSTEM_PREFIX}{name}-")
    words = rest.split("-")
    for count in range(len(words) - 1, 0, -1):  # the longest name first; a label remains
        other = f"{name}-{'-'.join(words[:count])}"
        if other in found:
            return other
    return None


def _nothing_for(name: str, closures: Closures) -> str:
    if closures.build_id is not None:
        return f"build {closures.build_id} has no system of {name}"
    return f"no store path was given for {name}"
