"""One deployment's gathering: what each event of its stream does to its tracker, and where
its rollout is — the deployer's loop (``fleet_core.deploy.deployer``) feeds them.

``Gathering`` takes a status (believed or flagged: ``fleet_core.protocol.trust``), a job
query's answers or a change of the deployer's own connection into the tracker, and tells
the caller's callbacks; ``RunningRollout`` is a rollout under way: the request each batch
sends, the next batch, and why it stopped. Both are the deployer's alone; their decisions
are the pure modules' (the tracker's, the rollout's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from fleet_core.bus import Message
from fleet_core.deploy.closures import ClosurePlan, Closures
from fleet_core.deploy.inbox import ConnectionChange, Event, JobAnswers
from fleet_core.deploy.results import (
    DeploymentResult,
    HostResult,
    Outage,
    RolloutResult,
    RolloutStep,
)
from fleet_core.deploy.rollout import Plan, Stop, failed_hosts
from fleet_core.deploy.tracker import DeploymentTracker
from fleet_core.errors import PermissionDenied
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import DeployRequest, JobSummary, parse_status
from fleet_core.protocol.subjects import Target
from fleet_core.protocol.trust import (
    Flagged,
    ReplyOrigin,
    judge_status,
    plainly_believed,
    reply_origin,
    shown,
)

__all__ = ["Gathering", "OnConnection", "OnRollout", "OnUpdate", "RunningRollout"]

OnUpdate = Callable[[HostResult, DeploymentResult], None]
# The deployer's connection dropped (``outage.duration_s`` is None) or came back.
OnConnection = Callable[[Outage, DeploymentResult], None]
# A rollout published a batch, or stopped (before its skipped hosts' own updates).
OnRollout = Callable[[RolloutStep, DeploymentResult], None]


class Gathering:
    """One deployment's tracker and its caller's callbacks: what each event does to them."""

    def __init__(
        self,
        tracker: DeploymentTracker,
        *,
        reply: str,
        deployment_id: str,
        target: Target,
        action: Action,
        revision: str,
        log: Any,
        on_update: OnUpdate | None,
        on_connection: OnConnection | None,
        signer: str | None = None,
        rollout: RunningRollout | None = None,
        closures: Closures | None = None,
        resend_after: float = 1.0,
    ) -> None:
        self.tracker = tracker
        self.resend_after = resend_after
        self.rollout = rollout
        self.closures = closures
        # Each host is sent its own request on its own subject (a rollout, a closure
        # deploy): "nobody listens" is one host's, and no host answers unasked.
        self._per_host = rollout is not None or closures is not None
        self.signer = signer  # the public key the request is signed with, if it is
        self.reply = reply
        self.deployment_id = deployment_id
        self.target = target
        self._tier = target.tier.value  # asked once per status, with whether it is a group
        self._group = target.is_group and closures is None
        self.log = log
        self._action = action
        self._revision = revision
        self._on_update = on_update
        self._on_connection = on_connection
        # The requests of the round sent to hosts by name (a batch, a closure deploy), by
        # host: what goes out once more when the server said nobody listened to one.
        self.sent: dict[str, tuple[str, bytes]] = {}
        self.resend_at: float | None = None  # when that is due; None: not (or not again)
        self._resent = False
        self._origins: dict[str, ReplyOrigin] = {}
        self._origins_cap = 2 * tracker.size + 64

    def sent_round(self, sent: dict[str, tuple[str, bytes]]) -> None:
        """A round of per-host requests went out: ``sent`` maps each host to its subject
        and payload, for one resend."""
        self.sent, self.resend_at, self._resent = sent, None, False

    def resent(self) -> None:
        """The round's unheard hosts were sent their requests again: from now on "no
        responders" counts (``DeploymentTracker.no_responder``)."""
        self.resend_at, self._resent = None, True

    def snapshot(self, now: float) -> DeploymentResult:
        return self.tracker.result(
            deployment_id=self.deployment_id,
            subject=self.target.subject,
            tier=self.target.tier.value,
            action=self._action.value,
            revision=self._revision,
            now=now,
            rollout=self.rollout.result(self.tracker) if self.rollout is not None else None,
            build_id=self.closures.build_id if self.closures is not None else None,
            commit=self.closures.commit if self.closures is not None else None,
        )

    def report(self, changed: list[HostResult], now: float) -> None:
        if self._on_update is None or not changed:
            return
        current = self.snapshot(now)
        for host in changed:
            self._on_update(host, current)

    def take(self, event: Event, now: float) -> list[HostResult]:
        """One event into the tracker; returns the hosts that changed."""
        if isinstance(event, Message):  # all but a few: the statuses
            return self._status(event, now)
        if isinstance(event, PermissionDenied):
            raise event
        if isinstance(event, ConnectionChange):
            return self._connection(event, now)
        answers, bare = self._believed(event)  # a job query's answers
        changed = self.tracker.take_job_answers(answers, now, bare=bare)
        for host in changed:
            self.log.info(
                "job_query_settled",
                host=host.hostname,
                status=host.status,
                recovered=host.recovered,
            )
        return changed

    def _status(self, event: Message, now: float) -> list[HostResult]:
        """A message on the reply subjects into the tracker, unless it is not believed."""
        if event.no_responders:
            return self._no_responders(now)
        origin = self._origin(event.subject)
        status = parse_status(event.data)
        if status is None or origin is None:
            self.log.warning("status_ignored", subject=shown(event.subject), size=len(event.data))
            return []
        tracker = self.tracker
        name = status.hostname
        unasked = self.rollout.unasked(name, tracker) if self.rollout else None
        if unasked is not None:
            self.flag(Flagged.of(event.subject, name, status.status.value, unasked))
            return []
        expected = tracker.expects(name)
        if not plainly_believed(
            status,
            origin,
            deployment_id=self.deployment_id,
            tier=self._tier,
            expected=expected,
            signer=self.signer,
        ):
            reason = judge_status(
                status,
                origin,
                deployment_id=self.deployment_id,
                tier=self._tier,
                expected=expected,
                group=self._group,
                speaks_bound=tracker.speaks_bound(name),
                signer=self.signer,
            )
            if reason is not None:
                self.flag(Flagged.of(event.subject, name, status.status.value, reason))
                return []
        updated = tracker.observe(status, now, bound=origin.bound)
        return [updated] if updated is not None else []

    def _origin(self, subject: str) -> ReplyOrigin | None:
        """``reply_origin`` of a status's subject, remembered: a host sends several statuses
        on one subject. Only as many are kept as the deployment has hosts (and a few): a
        flood of made-up subjects (homelab-deploy's layout lets any listener key publish to
        any reply subject) must not grow it."""
        origin = self._origins.get(subject)
        if origin is None:
            origin = reply_origin(self.reply, subject)
            if origin is not None and len(self._origins) < self._origins_cap:
                self._origins[subject] = origin
        return origin

    def _no_responders(self, now: float) -> list[HostResult]:
        """The server said nobody listens: to the target's subject, or to one of the hosts'
        (a rollout, a closure deploy). A listener may be resubscribing then (a NATS restart
        that the deployer came back from first): the round's unheard hosts get their
        requests once more before any "nobody listens" counts."""
        if not self._per_host:
            return self.tracker.nobody_listens(now)
        if not self._resent and self.sent:
            if self.resend_at is None:
                self.resend_at = now + self.resend_after
                self.log.info("no_responders_resend_due", resend_in_s=self.resend_after)
            return []
        return self.tracker.no_responder(now)

    def flag(self, flagged: Flagged) -> None:
        """Drop what is not believed: a warning, and a line in the result."""
        self.log.warning(
            "reply_flagged",
            reply_subject=flagged.subject,
            claimed_host=flagged.hostname,
            claim=flagged.claim,
            reason=flagged.reason,
        )
        self.tracker.flag(flagged)

    def _believed(self, event: JobAnswers) -> tuple[dict[str, JobSummary | None], Collection[str]]:
        """A job query's answers less those on the bare subject for a host known to answer
        bound; its flagged answers go to the result."""
        answers = dict(event.answers)
        for flagged in event.flagged:
            self.flag(flagged)
        for name in sorted(event.bare & answers.keys()):
            if self.tracker.speaks_bound(name):
                del answers[name]
                self.flag(
                    Flagged.of(
                        event.reply,
                        name,
                        "job answer",
                        f"it came on the bare reply subject, but {name} answers on its own "
                        "reply subject (any listener key may publish to the bare one)",
                    )
                )
        return answers, event.bare

    def _connection(self, event: ConnectionChange, now: float) -> list[HostResult]:
        if event.gone:
            self.log.warning("deploy_connection_gone")
            return self.tracker.connection_gone(now)
        if event.connected:
            outage = self.tracker.connection_back(now)
        else:
            outage = self.tracker.connection_lost(now, at=time.time())
        if outage is None:
            return []
        if event.connected:
            self.log.info("deploy_connection_back", outage_s=outage.duration_s)
        else:
            self.log.info("deploy_connection_lost")
        if self._on_connection is not None:
            self._on_connection(outage, self.snapshot(now))
        return []


class RunningRollout:
    """A rollout under way: its plan, the request every batch sends, where it is, and why
    it stopped (the decisions are ``fleet_core.deploy.rollout``'s)."""

    def __init__(
        self,
        plan: Plan,
        request: DeployRequest,
        on_rollout: OnRollout | None,
        closures: ClosurePlan | None = None,
    ) -> None:
        self.plan = plan
        self.request = request  # unsigned: each host's copy is signed for its own subject
        self._paths = closures.send if closures is not None else None
        self.next = 0  # index of the next batch to publish
        self.current: int | None = None  # number of the batch published last
        self.stop: Stop | None = None
        self._on_rollout = on_rollout
        self._failed: list[str] | None = None  # the failed hosts, as counted ...
        self._failed_at = 0  # ... when this many hosts had ended other than completed

    @property
    def over(self) -> bool:
        """Every batch went out, or the rollout stopped."""
        return self.stop is not None or self.next >= len(self.plan.batches)

    def request_for(self, host: str) -> DeployRequest:
        """The request ``host`` is sent (unsigned): a closure deploy's carries its path."""
        if self._paths is None:
            return self.request
        return self.request.model_copy(update={"store_path": self._paths[host]})

    def started(self, number: int) -> None:
        self.current = number
        self.next += 1

    def step(self, step: RolloutStep, gathering: Gathering, now: float) -> None:
        if self._on_rollout is not None:
            self._on_rollout(step, gathering.snapshot(now))

    def unasked(self, name: str, tracker: DeploymentTracker) -> str | None:
        """Why a status from ``name`` cannot be about this rollout, if it cannot: no
        request of it went to that host (yet). A rollout addresses each host by name, so
        an unexpected host has not been asked, unlike one reached through a group subject."""
        if tracker.is_queued(name):
            return "its batch has not gone out: no request of this deployment went to it yet"
        if not tracker.expects(name):
            return "it is not one of this rollout's hosts: no request of this deployment went to it"
        return None

    def result(self, tracker: DeploymentTracker) -> RolloutResult:
        """The rollout's part of a result. Its failed hosts take a walk over every host, and
        a result is made after every turn of the gathering when someone hears updates: they
        are counted again only when a host has ended other than completed since."""
        if self._failed is None or tracker.unsuccessful != self._failed_at:
            failed = failed_hosts(
                tracker.hosts, tracker.unknown_outcomes, first=self.plan.failed_first
            )
            self._failed = [h.hostname for h in failed]
            self._failed_at = tracker.unsuccessful
        return self.plan.result(self.current, self._failed, self.stop)
