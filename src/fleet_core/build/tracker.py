"""Following one build host by host, and deciding when its builder is lost (pure: no I/O).

The build client feeds every status it hears, each drop and return of its own connection,
and the current time into a ``BuildTracker``; the tracker updates the build's
``BuildResult`` in place, says when to look again (``next_check``) and, at ``expire``, ends
the build from the client's side:

- ``no_builder``: the server says nobody listens on the subject (``nobody_listens``), or
  nothing answers within ``answer_within`` of the request going out;
- ``lost``: the builder that took the build falls silent for ``silence_limit`` or 3.5 of the
  heartbeats it announced, whichever is longer; or the build's ``timeout`` passes; or the
  client's connection closes for good.

The client's own outage is not the builder's silence: while the connection is down the
silence clock stands still, and after it the answer window is as long as a builder's
silence (the outage may have eaten the ``accepted``); a build lost later says that what the
builder sent meanwhile is gone. The deadline runs on regardless.

Every time is the caller's ``now`` (monotonic seconds), so ``tests/test_build_tracker.py``
drives each rule with explicit clocks, as ``tests/test_tracking.py`` does a deployment's.
"""

from __future__ import annotations

import math

from fleet_core.build.protocol import (
    BuildError,
    BuildResult,
    BuildStatus,
    HostBuild,
    HostBuildState,
)
from fleet_core.protocol.messages import StatusKind

__all__ = ["HEARTBEATS_OF_SILENCE", "BuildTracker"]

# How many of the builder's announced heartbeats may pass unheard before it counts as silent.
HEARTBEATS_OF_SILENCE = 3.5


class BuildTracker:
    """One build's statuses into its ``BuildResult``, and when it is over; every clock it
    reads is a ``now`` its caller passes in.

    Statuses of other requests, or from a second builder that answers the same request (two
    builders configured with one repo), are ignored: the first builder to accept owns it.

    ``started_at`` dates the result's ``elapsed_s``; the answer window, the silence clock and
    the deadline start when the request goes out (``published``).
    """

    def __init__(
        self,
        result: BuildResult,
        *,
        started_at: float,
        timeout: float,
        answer_within: float,
        silence_limit: float,
    ) -> None:
        self.result = result
        self.heartbeat_s: float | None = None  # the builder's, once it said
        self._hosts: dict[str, HostBuild] = {}
        self._started_at = started_at
        self._timeout = timeout
        self._answer_within = answer_within
        self._silence_limit = silence_limit
        self._deadline = started_at + timeout
        self._heard_at = started_at  # the last status that counted, or the end of an outage
        self._down_since: float | None = None  # the client's connection is down since then
        self._down_s = 0.0  # how long it was down, all outages together

    @property
    def done(self) -> bool:
        return self.result.done

    def published(self, now: float) -> None:
        """The request went out at ``now``: the answer window, the silence clock and the
        deadline run from here."""
        self._heard_at = now
        self._deadline = now + self._timeout

    def feed(self, status: BuildStatus, now: float) -> bool:
        """Take one status; return whether it changed the result (then the silence clock
        starts again, and ``elapsed_s`` is ``now``'s).

        Before a builder took the build, a refusal without a request id counts (the request
        was too malformed to have one). Once one did, only its statuses with this build's id
        count, and no refusal: every deployer reads ``build.responses.*``, and one could
        otherwise make a builder refuse a request of its own "to" this build's subject.
        """
        if not self._take(status):
            return False
        self._heard_at = now
        self.result.elapsed_s = round(now - self._started_at, 3)
        return True

    def nobody_listens(self) -> None:
        """The server said no subscriber exists for the subject: there is no builder."""
        self._end(self._no_builder(), status="no_builder")

    def connection_lost(self, now: float) -> None:
        """The client's connection dropped: the silence clock stops until it is back."""
        if self._down_since is None:
            self._down_since = now

    def connection_back(self, now: float) -> None:
        """The connection is back: the silence clock starts again from ``now``."""
        if self._down_since is None:
            return
        self._down_s += now - self._down_since
        self._down_since = None
        self._heard_at = now

    def connection_gone(self) -> None:
        """The connection is closed for good (its reconnect attempts ran out)."""
        self._end("this deployer's NATS connection closed for good")

    def quiet(self) -> float:
        """How long a silence may last now: the deadline alone bounds an outage; before a
        builder took the build, ``answer_within`` (after an outage, which may have eaten the
        answer, as long as a builder's silence); then 3.5 of the builder's heartbeats, and at
        least ``silence_limit``."""
        if self._down_since is not None:
            return math.inf
        heartbeat = max(self._silence_limit, HEARTBEATS_OF_SILENCE * (self.heartbeat_s or 0.0))
        if self.result.builder is None:
            return max(self._answer_within, heartbeat) if self._down_s else self._answer_within
        return heartbeat

    def next_check(self) -> float:
        """The next moment at which ``expire`` could end the build."""
        return min(self._deadline, self._heard_at + self.quiet())

    def expire(self, now: float) -> None:
        """Apply the deadline, then the silence limit, as of ``now``."""
        if self.done:
            return
        if now >= self._deadline:
            self._end(
                f"the build did not finish within {self._timeout:g} s; builder "
                f"{self.result.builder or '?'} may still be at it"
            )
            return
        quiet = self.quiet()
        if now >= self._heard_at + quiet:
            self._silent(quiet)

    def result_at(self, now: float) -> BuildResult:
        """The result with its ``elapsed_s`` as of ``now`` (the same object, updated)."""
        self.result.elapsed_s = round(now - self._started_at, 3)
        return self.result

    # -- internals ------------------------------------------------------------------------------

    def _silent(self, quiet: float) -> None:
        builder = self.result.builder
        if builder is None and not self._down_s:
            self._end(self._no_builder(quiet), status="no_builder")
            return
        missed = (
            f" (this deployer's connection was down for {self._down_s:.1f} s, and what the "
            "builder sent meanwhile is lost)"
            if self._down_s
            else ""
        )
        who = f"builder {builder}" if builder else "the build"
        self._end(
            f"{who} fell silent for {quiet:g} s{missed}: it may have stopped; ask again (nix "
            "keeps what it built)"
        )

    def _no_builder(self, waited: float | None = None) -> str:
        after = f" within {waited:g} s" if waited is not None else ""
        return (
            f"no builder answered on {self.result.target}{after}: is `fleet-deploy builder` "
            f"running with --repo {self.result.repo}=<flake>, and may it subscribe there?"
        )

    def _take(self, status: BuildStatus) -> bool:
        result = self.result
        if (
            result.done
            or status.request_id not in (None, result.build_id)
            or status.repo != result.repo
            or status.revision not in (None, result.revision)
        ):
            return False
        if result.builder is None:
            result.builder = status.builder
        elif (
            status.builder != result.builder
            or status.request_id is None
            or status.status == StatusKind.REJECTED
        ):
            return False
        if status.heartbeat_s:
            self.heartbeat_s = status.heartbeat_s
        if status.commit:
            result.commit = status.commit
        if status.host is None:
            return self._whole(status)
        host = self._host(status.host)
        if host.state in (HostBuildState.BUILT, HostBuildState.FAILED):
            return False
        host.phase = status.phase.value if status.phase else host.phase
        host.message = status.message or host.message
        if status.status == StatusKind.COMPLETED:
            host.state = HostBuildState.BUILT
            host.store_path = status.store_path
            host.copied_to = status.copied_to
        elif status.status in (StatusKind.FAILED, StatusKind.REJECTED):
            host.state = HostBuildState.FAILED
            host.error = status.error or BuildError.BUILD_FAILED.value
            host.log_tail = list(status.log_tail or [])
        else:
            host.state = HostBuildState.BUILDING
        host.duration_s = status.duration_s if status.duration_s is not None else host.duration_s
        return True

    def _whole(self, status: BuildStatus) -> bool:
        result = self.result
        for name in status.hosts or []:
            self._host(name)
        for name in status.skipped or []:
            host = self._host(name)
            host.state = HostBuildState.FAILED
            host.error = BuildError.INVALID_NAME.value
            host.message = "its name cannot be put into an installable safely: rename it"
        if not status.is_final:
            result.message = status.message or result.message
            return True
        result.status = status.status.value
        result.error = status.error
        result.message = status.message
        for host in self._hosts.values():
            if host.state not in (HostBuildState.WAITING, HostBuildState.BUILDING):
                continue
            if status.status == StatusKind.COMPLETED:  # the builder built every host
                host.state = HostBuildState.BUILT
                host.message = "built (its own status was lost on the way)"
            else:
                host.state = HostBuildState.LOST
                host.error = status.error or BuildError.LOST.value
        if status.status == StatusKind.REJECTED and status.log_tail:
            result.message += "\n" + "\n".join(status.log_tail[-5:])
        return True

    def _host(self, name: str) -> HostBuild:
        host = self._hosts.get(name)
        if host is None:
            host = self._hosts[name] = HostBuild(host=name)
            self.result.hosts.append(host)
        return host

    def _end(self, reason: str, *, status: str = "lost") -> None:
        """End the build from the client's side: every host not final is ``lost`` with
        ``reason``. A build already over stays as it ended."""
        result = self.result
        if result.done:
            return
        result.status = status
        result.error = BuildError.LOST.value if status == "lost" else status
        result.message = reason
        for host in self._hosts.values():
            if host.state in (HostBuildState.WAITING, HostBuildState.BUILDING):
                host.state = HostBuildState.LOST
                host.error = BuildError.LOST.value
                host.message = reason
