"""Cancelling a deployment: a signed request to the hosts, and their answers.

A cancel is a deploy request whose action is ``cancel`` and whose ``revision`` names the
deployment (so its signature covers which one), sent on a deploy subject: the server's
permissions let a key cancel exactly where it may deploy. Each host that hears it answers
on its bound reply subject (``fleet_core.protocol.trust``):

- ``completed``: its job of that deployment was still building and was stopped (the job
  itself then ends failed/cancelled, told to the deployment's own requester), or the
  deployment had not reached it: it refuses that deployment from now on, so the later
  batches of a rollout are refused on every host that heard the cancel;
- ``rejected/already_activating``: its job is activating the new system; not interrupted;
- ``rejected/already_finished``: its job of that deployment is over.

The answers are gathered as discovery gathers its own: until they stop coming.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid

import anyio
import structlog

from fleet_core.bus import Bus, Message, Subscription
from fleet_core.config.settings import DeployTiming
from fleet_core.deploy.cancellation import CancelAnswer, CancelResult, answer_outcome
from fleet_core.errors import PermissionDenied, UsageError
from fleet_core.keys import Seed
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import (
    DeployRequest,
    encode,
    is_request_id,
    parse_status,
)
from fleet_core.protocol.refusals import Refusal, explain_refusals
from fleet_core.protocol.signing import sign_request
from fleet_core.protocol.subjects import RESPONSES_PREFIX, Tier, validate_hostname
from fleet_core.protocol.trust import bound_replies, reply_origin

__all__ = ["cancel_deployment"]

log = structlog.get_logger("fleet.cancel")


async def cancel_deployment(
    bus: Bus,
    deployment_id: str,
    *,
    tiers: tuple[Tier, ...],
    signer: Seed | None,
    host: str | None = None,
    timing: DeployTiming | None = None,
) -> CancelResult:
    """Send the cancel of ``deployment_id`` to every host of ``tiers`` (or ``host`` there)
    and gather their answers. A tier this key may not publish to is noted, not an error,
    unless it is every tier asked for: then ``PermissionDenied`` says what the key is."""
    if not is_request_id(deployment_id):
        raise UsageError(
            f"{deployment_id!r} is not a deployment id: ids are 1-64 letters, digits, '-' or '_'"
        )
    if host is not None:
        validate_hostname(host)
    timing = timing or DeployTiming()
    answers: list[CancelAnswer] = []
    refused: list[str] = []
    denials: list[tuple[str, PermissionDenied]] = []  # (the request's reply, the refusal)
    for tier in tiers:
        subject = f"deploy.{tier.value}.{host or 'all'}"
        got = await _cancel_in(
            bus, deployment_id, subject, tier, signer=signer, timing=timing, denials=denials
        )
        if got is None:
            refused.append(tier.value)
        else:
            answers += got
    if len(refused) == len(tiers) and denials:
        reply = denials[0][0]
        refusals = [Refusal(d.operation or "publish", d.subject or "?") for _, d in denials]
        explained = explain_refusals(refusals, key=bus.public_key or "", reply=reply)
        first = denials[0][1]
        raise PermissionDenied(str(explained), subject=first.subject, fix=explained.fix)
    log.info(
        "cancel_done",
        deployment_id=deployment_id,
        answers=len(answers),
        stopped=len([a for a in answers if a.outcome == "stopped"]),
        refused_tiers=refused,
    )
    return CancelResult(deployment_id=deployment_id, answers=answers, refused_tiers=refused)


async def _cancel_in(
    bus: Bus,
    deployment_id: str,
    subject: str,
    tier: Tier,
    *,
    signer: Seed | None,
    timing: DeployTiming,
    denials: list[tuple[str, PermissionDenied]],
) -> list[CancelAnswer] | None:
    """The answers of one tier; None when the server refused this key the subject."""
    request_id = uuid.uuid4().hex
    reply = RESPONSES_PREFIX + request_id
    request = DeployRequest(
        action=Action.CANCEL, revision=deployment_id, reply_to=reply, id=request_id, bind=True
    )
    if signer is not None:
        request = request.signed(
            sign_request(
                signer.reveal(),
                request_id=request_id,
                subject=subject,
                action=Action.CANCEL.value,
                revision=deployment_id,
                now=time.time(),
            )
        )
    send, receive = anyio.create_memory_object_stream[Message](math.inf)
    refused = anyio.Event()

    async def deliver(msg: Message) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            send.send_nowait(msg)

    def denied(exc: PermissionDenied) -> bool:
        if exc.subject in (subject, reply, bound_replies(reply, tier)):
            denials.append((reply, exc))
            refused.set()
            return True
        return False

    stop_watching = bus.watch_denials(denied)
    subscription: Subscription | None = None
    try:
        subscription = await bus.subscribe(bound_replies(reply, tier), deliver)
        await bus.publish(subject, encode(request), reply=reply)
        await bus.flush()
        if refused.is_set():
            return None
        return await _gather(receive, reply, timing)
    finally:
        stop_watching()
        if subscription is not None:
            with anyio.CancelScope(shield=True):
                await subscription.unsubscribe()
        send.close()
        receive.close()


async def _gather(
    receive: anyio.abc.ObjectReceiveStream[Message], reply: str, timing: DeployTiming
) -> list[CancelAnswer]:
    """Answers until none has come for ``discovery_quiet`` (``discovery_first`` for the
    first), within ``discovery_cap``; a host counts once, under its bound subject's name."""
    answers: dict[str, CancelAnswer] = {}
    with anyio.move_on_after(timing.discovery_cap):
        wait = timing.discovery_first
        while True:
            with anyio.move_on_after(wait) as window:
                msg = await receive.receive()
            if window.cancelled_caught:
                break
            origin = reply_origin(reply, msg.subject)
            status = parse_status(msg.data)
            if origin is None or origin.hostname is None or status is None:
                continue  # not a bound answer: nobody vouches for who sent it
            if status.hostname != origin.hostname or not status.is_final:
                continue
            answers[origin.hostname] = CancelAnswer(
                hostname=origin.hostname,
                tier=origin.tier or "",
                outcome=answer_outcome(status.status, status.error, status.phase),
                message=status.message,
            )
            wait = timing.discovery_quiet
    return sorted(answers.values(), key=lambda a: (a.tier, a.hostname))
