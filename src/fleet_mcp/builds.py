"""One build that outlives a tool call, as a deployment does (``fleet_mcp.deployments``),
and how a waiter follows it.

A build runs as a task of the server's lifespan task group (``fleet_mcp.registry``), not of
the ``build`` call that asked for it: a client that cancels or times out stops *waiting*,
never the build, and a later ``build_status`` call follows it on.

The build client's ``BuildTracker`` updates one ``BuildResult`` in place and hands it to
``Build.on_update`` after every status that changed it. A ``Build`` keeps that object rather
than a copy per status (a big build would be copied thousands of times) and counts the
changes; a waiter remembers each host's state and phase as it last reported them and, at
each change, reports the hosts that differ. So every waiter — a ``build`` call, or a
``build_status`` call that comes later and starts from nothing — hears each host's latest
state once, and no update log is needed: unlike a deployment's hosts, a builder's hosts
change one at a time. The sentences of the notes are pure functions in
``fleet_mcp.reports.progress``.
"""

from __future__ import annotations

import time
from typing import TypeAlias

import anyio
import structlog

from fleet_core.build.client import BuildClient, new_build_id
from fleet_core.build.protocol import BuildResult, BuildTarget, HostBuildState
from fleet_core.errors import FleetError
from fleet_mcp.deployments import BATCH, COALESCE, Notify
from fleet_mcp.registry import Registry
from fleet_mcp.reports.progress import (
    build_accepted_note,
    build_batch_note,
    build_end_note,
    build_heartbeat_note,
    build_host_note,
    build_opening_note,
)

__all__ = ["Build", "BuildRegistry"]

log = structlog.get_logger("fleet.mcp")

_ACCEPTED = ""  # a waiter's mark that it told of the builder taking the build: never a host


class Build:
    """One build: its request, the result as far as it got, and how it ended."""

    kind = "build"  # its task's name in the lifespan's task group starts with this

    def __init__(self, target: BuildTarget, *, revision: str, build_id: str | None = None) -> None:
        self.id = build_id or new_build_id()
        self.target = target
        self.revision = revision
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        self._live = BuildResult(
            build_id=self.id, target=target.subject, repo=target.repo, revision=revision
        )
        self.error: FleetError | None = None
        self._seq = 0  # number of the latest change
        self._changed = anyio.Event()
        self.finished = anyio.Event()

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    def current(self) -> BuildResult:
        """The result as far as it got; a running build's elapsed time is now's."""
        if self.done:
            return self._live
        elapsed = round(time.monotonic() - self.started_at, 3)
        return self._live.model_copy(update={"elapsed_s": elapsed})

    def on_update(self, result: BuildResult) -> None:
        """The build client's callback: keep the result and wake every waiter."""
        self._live = result
        self._pulse()

    def _pulse(self) -> None:
        self._seq += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def run(self, client: BuildClient, limit: float) -> None:
        """The build's task; it ends with the result final or ``error`` set, never raising
        (but for the cancellation of the server's exit)."""
        bound = log.bind(build_id=self.id, subject=self.target.subject)
        try:
            self._live = await client.build(
                self.target,
                revision=self.revision,
                timeout=limit,
                build_id=self.id,
                on_update=self.on_update,
            )
        except FleetError as exc:
            bound.warning("build_failed", error=str(exc))
            self.error = exc
        except anyio.get_cancelled_exc_class():
            self.error = FleetError(
                "the MCP server stopped before the build finished; the builder may still be at it"
            )
            raise
        except Exception as exc:  # a bug must not leave waiters hanging
            bound.exception("build_crashed")
            self.error = FleetError(f"internal error in the MCP server ({type(exc).__name__})")
        finally:
            self.finished.set()
            self._pulse()  # the result may have changed without a callback (lost, timeout)

    async def follow(self, wait: float, notify: Notify, *, heartbeat: float) -> None:
        """Wait up to ``wait`` seconds for the end, telling ``notify`` what happens.

        What the notes promise (``tools`` numbers them with strictly increasing progress):

        - The first note names the build: its id, subject and revision; every note starts
          with ``build <id>:``.
        - Once a builder took the build, a note says which, at what commit, how many hosts.
        - A host's change is reported soon after it happens, as its latest state and phase
          (notes are ``COALESCE`` seconds apart while changes pour in); a host still waiting
          is not reported. More than ``BATCH`` changes at once are counted in one note.
        - While nothing changes, a note at least every ``heartbeat`` seconds.
        - Before this returns for a finished build, every host's final state has been
          reported, and a last note gives the build's status.
        """
        told: dict[str, tuple[HostBuildState, str | None]] = {}
        seen = -1  # the change number last reported: none, so a late waiter reports all
        with anyio.move_on_after(wait):
            await notify(build_opening_note(self.current()))
            sent = anyio.current_time()
            while True:
                changed = self._changed  # taken with no await since the checks below
                if seen != self._seq:
                    gap = sent + COALESCE - anyio.current_time()
                    if gap > 0 and seen >= 0 and not self.done:
                        with anyio.move_on_after(gap):
                            await self.finished.wait()
                    seen = self._seq
                    notes = self._news(told)
                    for note in notes:
                        await notify(note)
                    if notes:
                        sent = anyio.current_time()
                    continue  # more may have come while notifying
                if self.done:
                    await notify(build_end_note(self.current()))
                    return
                with anyio.move_on_after(heartbeat) as beat:
                    await changed.wait()
                if beat.cancelled_caught:
                    await notify(build_heartbeat_note(self.current()))
                    sent = anyio.current_time()

    def _news(self, told: dict[str, tuple[HostBuildState, str | None]]) -> list[str]:
        """The notes for what changed since ``told`` (one waiter's view, updated here): the
        builder taking the build, then each host whose state or phase is new to it."""
        result = self.current()
        notes: list[str] = []
        # (A refusal names its builder too; it took nothing.)
        if result.builder is not None and result.status != "rejected" and _ACCEPTED not in told:
            told[_ACCEPTED] = (HostBuildState.WAITING, None)
            notes.append(build_accepted_note(result))
        fresh = []
        for host in result.hosts:
            now = (host.state, host.phase)
            if told.get(host.host) != now:
                told[host.host] = now
                if host.state is not HostBuildState.WAITING:
                    fresh.append(host)
        if len(fresh) <= BATCH:
            return notes + [build_host_note(self.id, host) for host in fresh]
        return [*notes, build_batch_note(self.id, fresh, result)]


# The builds this server asked for, each run by a build client on the test key's link.
BuildRegistry: TypeAlias = Registry[Build, BuildClient]
