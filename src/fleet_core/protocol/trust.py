"""Bound replies: which host and tier an answer comes from, and what a deployer believes (pure).

A deployer that can read bound replies sends ``"bind": true`` in its request. A listener then
publishes every status and answer for it to ``<reply_to>.<tier>.<hostname>`` — its own tier
and hostname — instead of the bare ``reply_to`` (homelab-deploy's listeners ignore ``bind``
and keep using the bare one). Under the layout ``nats-config`` writes, each listener may
publish only on ``deploy.responses.*.<tier>.<hostname>``, so the NATS server itself vouches
that what arrives on ``<reply>.test.web1`` was sent by web1's key, and nobody but the admin
may publish to a bare reply subject.

The deployer subscribes to ``<reply>.<tier>.*`` for each tier it expects and to the bare
``<reply>``, reads the sender from the subject (``reply_origin``) and asks the functions here
whether to believe the body:

- on a bound subject, the body must name the subject's host and tier;
- on the bare subject, which any listener key may publish to under homelab-deploy's layout,
  only an expected host of the deployment's tier counts — and not one that has already
  spoken on its own bound subject (a fleet-deploy listener never falls back to the bare
  one): such a status still counts, but the result is not server-verified;
- a status of another request id never counts, nor one on a bound subject without an id;
- a status that says which key signed the request it answers (every listener of this
  release does) counts only when that key is the deployer's own: anyone who reads a
  deployment's id can send a request of their own with it, and a host must not answer that
  one in the deployment's place.

What is not believed is dropped, logged and listed (``Flagged``) in the result.
"""

from __future__ import annotations

import json
import re
from typing import Final, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from fleet_core.protocol.messages import HostInfo, Status
from fleet_core.protocol.subjects import Tier

__all__ = [
    "BARE",
    "MAX_FLAGGED",
    "Flagged",
    "ReplyOrigin",
    "bound_replies",
    "bound_reply",
    "judge_answer",
    "judge_status",
    "plainly_believed",
    "reply_origin",
    "shown",
]

MAX_FLAGGED: Final = 50  # flagged messages a result lists; the rest are only counted
_PLAIN = re.compile(r"[A-Za-z0-9_.-]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")  # one subject token (subjects)


def bound_reply(reply_to: str, tier: str, hostname: str) -> str:
    """The subject a listener of ``tier`` named ``hostname`` answers ``reply_to`` on, bound."""
    return f"{reply_to}.{tier}.{hostname}"


def bound_replies(reply: str, tier: Tier) -> str:
    """The wildcard a deployer subscribes to for the bound answers of ``tier``'s hosts."""
    return f"{reply}.{tier.value}.*"


class ReplyOrigin(NamedTuple):
    """Where an answer arrived: a host's bound subject (tier and hostname), or the bare one.

    A named tuple: one is made per status a deployer reads (see ``bus.Message``)."""

    tier: str | None = None
    hostname: str | None = None

    @property
    def bound(self) -> bool:
        return self.hostname is not None


BARE: Final = ReplyOrigin()


def reply_origin(reply: str, subject: str) -> ReplyOrigin | None:
    """The origin of a message on ``subject`` for the reply subject ``reply``; None when the
    subject is neither ``reply`` nor ``reply.<tier>.<hostname>``."""
    if subject == reply:
        return BARE
    start = len(reply) + 1
    if subject[start - 1 : start] != "." or not subject.startswith(reply):
        return None
    tier, _, hostname = subject[start:].partition(".")
    if not tier or not hostname or "." in hostname:
        return None
    return ReplyOrigin(tier, hostname)


def shown(value: object, limit: int = 64) -> str:
    """A value from the wire as a person may see it: plain ones as they are, anything else
    quoted and cut to ``limit`` characters (a hostile body must not reach a terminal raw)."""
    text = value if isinstance(value, str) else json.dumps(value)
    plain = len(text) <= limit and _PLAIN.fullmatch(text) is not None
    return text if plain else json.dumps(text[:limit])


class Flagged(BaseModel):
    """A status or answer the deployer did not believe: dropped, not counted."""

    model_config = ConfigDict(frozen=True)

    subject: str = Field(description="the subject it arrived on")
    hostname: str = Field(description="the host its body claimed to be (quoted if odd)")
    claim: str = Field(description="what it claimed: a status, or 'discovery' / 'job answer'")
    reason: str = Field(description="why it was not believed")

    @classmethod
    def of(cls, subject: str, hostname: object, claim: str, reason: str) -> Flagged:
        return cls(
            subject=shown(subject, 255),
            hostname=shown(hostname),
            claim=claim,
            reason=reason,
        )


def _contradiction(origin: ReplyOrigin, hostname: str, tier: str | None) -> str | None:
    """Why a body on a bound subject contradicts it, or None."""
    if hostname != origin.hostname:
        return f"its body claims host {shown(hostname)} on the reply subject of {origin.hostname}"
    if tier is not None and tier != origin.tier:
        return f"its body claims tier {shown(tier)} on a reply subject of tier {origin.tier}"
    return None


def judge_status(
    status: Status,
    origin: ReplyOrigin,
    *,
    deployment_id: str,
    tier: str,
    expected: bool,
    group: bool,
    speaks_bound: bool,
    signer: str | None = None,
) -> str | None:
    """Why ``status`` must not count for the deployment (a sentence), or None when it may.

    ``expected``: the deployment waits for this host. ``group``: it addressed a group, so a
    host may answer unasked (one that came up after discovery). ``speaks_bound``: the host has
    answered on its own bound subject before (in this deployment or its discovery).
    ``signer``: the public key this deployer signed its request with (None: unsigned).

    A status that names another signer answers a request someone else sent with this
    deployment's id (a key that read the id from a status subject): the host's true answer to
    this deployment is still to come, and must not be pre-empted by it.
    """
    if status.request_id is not None and status.request_id != deployment_id:
        return f"request id {shown(status.request_id)} is not this deployment's"
    if status.request_id is None and origin.bound:
        return "it names no request id: a fleet-deploy listener names the request it answers"
    if status.reports_signer and status.signer != signer:
        sent_by = f"key {shown(status.signer)}" if status.signer else "no verified key"
        return f"it answers a request signed by {sent_by}, not by this deployer"
    if not _HOSTNAME.fullmatch(status.hostname):
        return f"its hostname {shown(status.hostname)} is not a hostname"
    if origin.bound:
        return _contradiction(origin, status.hostname, status.tier) or _unasked_bound(
            origin, tier=tier, expected=expected, group=group
        )
    return _unbelieved_bare(status, tier=tier, expected=expected, speaks_bound=speaks_bound)


def plainly_believed(
    status: Status,
    origin: ReplyOrigin,
    *,
    deployment_id: str,
    tier: str,
    expected: bool,
    signer: str | None = None,
) -> bool:
    """Whether ``status`` is the common case that ``judge_status`` believes: an expected
    host's status for this deployment, on its own bound reply subject of the deployment's
    tier, naming itself and that tier (or none), answering this deployer's key.

    A few comparisons, for the deployer's hot path (each host sends several statuses, and
    a deployment may have ten thousand hosts). True implies ``judge_status(...)`` is None
    (``tests/test_trust.py`` holds it to that); False says nothing: judge it.
    """
    return (
        expected
        and status.request_id == deployment_id
        and status.hostname == origin.hostname
        and origin.tier == tier
        and (status.tier is None or status.tier == tier)
        and (status.signer == signer or not status.reports_signer)
        and _HOSTNAME.fullmatch(status.hostname) is not None
    )


def _unasked_bound(origin: ReplyOrigin, *, tier: str, expected: bool, group: bool) -> str | None:
    """Why a host that truly sent a status was not part of the deployment, or None."""
    if origin.tier != tier:
        return f"it came from tier {origin.tier} for a deployment to tier {tier}"
    if not group and not expected:
        return f"{origin.hostname} was not addressed by this deployment"
    return None


def _unbelieved_bare(
    status: Status, *, tier: str, expected: bool, speaks_bound: bool
) -> str | None:
    """Why a status on the bare reply subject (anyone's, under homelab-deploy's layout)
    cannot count, or None for an expected host of the tier that never answered bound."""
    if status.tier is not None and status.tier != tier:
        return (
            f"it claims tier {shown(status.tier)} for a deployment to tier {tier}, on the bare "
            "reply subject"
        )
    if not expected:
        return (
            "it came on the bare reply subject, which any listener key may publish to, for "
            f"{shown(status.hostname)}, a host this deployment did not expect"
        )
    if speaks_bound:
        return (
            f"it came on the bare reply subject, but {status.hostname} answers on its own "
            "reply subject (any listener key may publish to the bare one)"
        )
    return None


def judge_answer(info: HostInfo, origin: ReplyOrigin) -> str | None:
    """Why a discovery or job-query answer on ``origin`` must not be believed, or None.

    A bare answer is believed here (homelab-deploy's listeners answer there); the caller marks
    what it built on it as not server-verified, and drops it for a host known to answer bound.
    """
    if not _HOSTNAME.fullmatch(info.hostname):
        return f"its hostname {shown(info.hostname)} is not a hostname"
    if not origin.bound:
        return None
    return _contradiction(origin, info.hostname, info.tier)
