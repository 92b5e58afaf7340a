"""What a discovery or a job query gathers: the listeners' answers the deployer believes.

An answer on a host's bound reply subject must name that subject's host and tier; one on the
bare subject, for a host that answered bound, is dropped; what is not believed is flagged
(``fleet_core.protocol.trust``). The window closes once answers stop coming.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import structlog

from fleet_core.bus import Message
from fleet_core.config.settings import DeployTiming
from fleet_core.deploy.inbox import Inbox, and_queued
from fleet_core.errors import PermissionDenied
from fleet_core.protocol.messages import (
    DiscoverRequest,
    HostInfo,
    JobPhase,
    JobSummary,
    parse_host_info,
)
from fleet_core.protocol.trust import Flagged, judge_answer, reply_origin

__all__ = ["Answers", "all_answered", "gather_answers", "job_of", "take_answer"]

log = structlog.get_logger("fleet.deployer")


@dataclass
class Answers:
    """What a discovery or job query gathered, and on which subjects."""

    reply: str = ""
    hosts: dict[str, HostInfo] = field(default_factory=dict)
    bound: set[str] = field(default_factory=set)  # answered on their own bound subject
    flagged: list[Flagged] = field(default_factory=list)

    @property
    def bare(self) -> frozenset[str]:
        return frozenset(self.hosts.keys() - self.bound)


def job_of(info: HostInfo, request_id: str) -> JobSummary | None:
    """What a job query's answer says of the job; None when the listener cannot tell."""
    if info.job is not None:
        return info.job if info.job.request_id == request_id else None
    if info.running_job == request_id:  # knows running_job but not job: still, it runs
        return JobSummary(request_id=request_id, phase=JobPhase.RUNNING)
    return None


def take_answer(found: Answers, request: DiscoverRequest, event: Message) -> None:
    """One answer to a discovery or job query into ``found``, unless it is not believed: an
    answer on a bound subject must name that subject's host and tier, and one on the bare
    subject for a host that answered bound is dropped."""
    info = parse_host_info(event.data)
    origin = reply_origin(request.reply_to, event.subject)
    if info is None or origin is None:
        return
    reason = judge_answer(info, origin)
    if reason is None and request.tier is not None and info.tier != request.tier.value:
        return  # not asked for: an answer of a listener that ignores the tier
    if reason is None and request.hosts is not None and info.hostname not in request.hosts:
        return
    if reason is None and not origin.bound and info.hostname in found.bound:
        reason = (
            f"it came on the bare reply subject, but {info.hostname} answered on its own "
            "reply subject (any listener key may publish to the bare one)"
        )
    if reason is not None:
        claim = "job answer" if request.job is not None else "discovery"
        flagged = Flagged.of(event.subject, info.hostname, claim, reason)
        log.warning(
            "reply_flagged",
            reply_subject=flagged.subject,
            claimed_host=flagged.hostname,
            claim=claim,
            reason=reason,
        )
        found.flagged.append(flagged)
        return
    if origin.bound:
        found.bound.add(info.hostname)
    found.hosts[info.hostname] = info


async def gather_answers(
    events: Inbox,
    found: Answers,
    request: DiscoverRequest,
    *,
    until: set[str] | None,
    silent: int,
    timing: DeployTiming,
) -> None:
    """Take answers into ``found`` until replies stop (``discovery_quiet`` after the last,
    ``discovery_first`` when none comes), every one of the ``silent`` subjects asked has had
    the server say nobody listens, or every host in ``until`` has answered.

    Each wait takes the answer that ends it and then those already queued behind it, without
    a timer each: at thousands of answers the timer cost more than the answer did."""
    wait = timing.discovery_first
    while True:
        with anyio.move_on_after(wait) as window:
            event = await events.receive()
        if window.cancelled_caught:
            return
        for queued in and_queued(event, events):
            if isinstance(queued, PermissionDenied):
                raise queued
            if not isinstance(queued, Message):
                continue  # only a deployment posts events of its own
            if queued.no_responders:
                silent -= 1
                if silent <= 0:
                    return
                continue
            take_answer(found, request, queued)
            wait = timing.discovery_quiet
            if all_answered(found, until):
                return


def all_answered(found: Answers, until: set[str] | None) -> bool:
    """Whether every host in ``until`` has answered (never, without ``until``). The sizes are
    compared first: the subset test walks every name, and a job query may name thousands."""
    return until is not None and len(found.hosts) >= len(until) and until <= found.hosts.keys()
