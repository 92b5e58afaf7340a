"""The progress notes sent while a deploy or build call waits: one line each, so that a
client shows them as they come and a model can tell a live call from a stuck one.

A deployment's note starts with ``deployment <id>:`` and a build's with ``build <id>:``, so
a client that shows the notes of several calls side by side can tell them apart.
``Deployment.follow`` and ``Build.follow`` decide when each note is sent; these say what.

A note is the server speaking, and a progress notification has no field to fence host
output in: so a note holds none (``reports.untrusted``). It names a host, its state and
phase, and an error code this server knows; what the host said — its message, a store
path, nix's output — is in the result, labelled as host output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from fleet_core.build.protocol import BuildResult, HostBuild, HostBuildState
from fleet_core.deploy.results import DeploymentResult, HostResult, Outage
from fleet_mcp.reports.build import BUILD_CODES
from fleet_mcp.reports.deployment import ERROR_CODES
from fleet_mcp.reports.untrusted import is_commit, known, named, plain
from fleet_mcp.reports.wording import clock, counted

__all__ = [
    "batch_note",
    "build_accepted_note",
    "build_batch_note",
    "build_end_note",
    "build_heartbeat_note",
    "build_host_note",
    "build_opening_note",
    "connection_note",
    "heartbeat_note",
    "host_note",
    "opening_note",
]

_DONE_BUILDS = (HostBuildState.BUILT, HostBuildState.FAILED, HostBuildState.LOST)


# -- deployments -----------------------------------------------------------------------------


def opening_note(result: DeploymentResult) -> str:
    """The first note of every wait: which deployment this is, so a model can follow it up."""
    return (
        f"deployment {result.deployment_id}: {result.action} of {result.revision} to "
        f"{result.subject}"
    )


def host_note(deployment_id: str, host: HostResult) -> str:
    """One host's new state, with its error code when this server knows it; its message is
    host output, left to the result."""
    details = [_code(host.error, ERROR_CODES)]
    if host.recovered:
        details.append("recovered from its job record")
    detail = "; ".join(part for part in details if part)
    return f"deployment {deployment_id}: {named(host.hostname)} {host.status}" + (
        f" — {detail}" if detail else ""
    )


def _code(error: str | None, codes: frozenset[str]) -> str:
    """An error code for a note: itself when known, else said to be unknown; "" for none."""
    if not error:
        return ""
    return known(error, codes) or "an error code this server does not know"


def connection_note(deployment_id: str, outage: Outage) -> str:
    """This server's NATS connection dropped (no duration yet) or came back."""
    if outage.duration_s is None:
        return (
            f"deployment {deployment_id}: the MCP server lost its NATS connection at "
            f"{clock(outage.started_at)}; the hosts may still be deploying — waiting for it "
            "to come back"
        )
    return (
        f"deployment {deployment_id}: the MCP server's NATS connection is back after "
        f"{outage.duration_s:.1f} s; asking the hosts what happened meanwhile"
    )


def _final(result: DeploymentResult) -> str:
    return f"{sum(1 for h in result.hosts if h.final)}/{len(result.hosts)} hosts final"


def batch_note(batch: Sequence[HostResult], result: DeploymentResult) -> str:
    """Many changes at once, as counts: a note per host would flood a client at 1000 hosts."""
    return (
        f"deployment {result.deployment_id}: {len(batch)} host changes "
        f"({counted(Counter(host.status for host in batch))}); {_final(result)}; "
        f"latest: {named(batch[-1].hostname)} {batch[-1].status}"
    )


def heartbeat_note(result: DeploymentResult) -> str:
    """Nothing changed for a while: say so, so the client knows the call is alive."""
    hosts = _final(result) if result.hosts else "no answer yet"
    down = ""
    if result.outages and result.outages[-1].duration_s is None:
        down = f"; NATS connection lost at {clock(result.outages[-1].started_at)}"
    return (
        f"deployment {result.deployment_id}: still running after {result.duration_s:.0f} s "
        f"({hosts}{down})"
    )


# -- builds ----------------------------------------------------------------------------------


def build_opening_note(result: BuildResult) -> str:
    """The first note of every wait: which build this is, so a model can follow it up."""
    return f"build {result.build_id}: {result.target} at {result.revision}"


def build_accepted_note(result: BuildResult) -> str:
    """A builder took the build: who, which commit, how many hosts (as far as known)."""
    builder = f"builder {result.builder}" if plain(result.builder) else "a builder"
    note = f"build {result.build_id}: {builder} took it"
    if is_commit(result.commit):
        note += f"; {result.revision} is commit {result.commit}"
    if result.hosts:
        note += f"; {len(result.hosts)} host(s) to build"
    return note


def build_host_note(build_id: str, host: HostBuild) -> str:
    """One host's new state: its phase while building, its error code when it failed; its
    store path and message are builder output, left to the result."""
    detail = ""
    if host.state is HostBuildState.BUILDING:
        detail = f"({host.phase})" if plain(host.phase) else ""
    elif host.state is not HostBuildState.BUILT and host.error:
        detail = f"— {_code(host.error, BUILD_CODES)}"
    return f"build {build_id}: {named(host.host)} {host.state.value} {detail}".rstrip()


def _done_of(result: BuildResult) -> str:
    done = sum(1 for h in result.hosts if h.state in _DONE_BUILDS)
    return f"{done}/{len(result.hosts)} hosts done"


def build_batch_note(build_id: str, batch: Sequence[HostBuild], result: BuildResult) -> str:
    """Many changes at once (a waiter that comes late, a builder stopping), as counts."""
    return (
        f"build {build_id}: {len(batch)} host changes "
        f"({counted(Counter(host.state.value for host in batch))}); {_done_of(result)}; "
        f"latest: {named(batch[-1].host)} {batch[-1].state.value}"
    )


def build_heartbeat_note(result: BuildResult) -> str:
    """Nothing changed for a while: how long, how far, and the host being built."""
    if not result.hosts:
        where = "waiting for the builder" if result.builder is None else "listing the hosts"
        return f"build {result.build_id}: still running after {result.elapsed_s:.0f} s ({where})"
    building = next((h for h in result.hosts if h.state is HostBuildState.BUILDING), None)
    phase = building.phase if building and plain(building.phase) else "building"
    now = f"; {named(building.host)} {phase}" if building else ""
    return (
        f"build {result.build_id}: still running after {result.elapsed_s:.0f} s "
        f"({_done_of(result)}{now})"
    )


def build_end_note(result: BuildResult) -> str:
    """The last note of a finished build: its status, and its error code if any (its
    message is builder output, left to the result)."""
    code = _code(result.error, BUILD_CODES)
    return f"build {result.build_id}: {result.status}" + (f" — {code}" if code else "")
