"""What the NATS server's refusals say about the key that met them (pure).

The server says only "permissions violation for publish to X"; a person needs to hear what
key they used and what it may do. Under the permissions ``fleet-deploy nats-config`` writes
(both layouts), the refusals a deployer meets tell the kinds of key apart:

- every deployer key, test or admin, may read the answers to its own request on the bare
  reply subject and the test tier's bound ones (``deploy.responses.<id>``,
  ``deploy.responses.<id>.test.*``; ``build.responses.<id>``): a key refused those is no
  deployer's — a listener's or the builder's, which may only hear requests and answer them;
- a key that reads replies but may not publish to ``deploy.prod.*`` is the test deployer's;
- anything else is a permission block nats-config does not write, and is said as it is.

A key the server does not know at all never gets this far: the connection is refused first
(``ConnectionFailed``, naming the public key).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fleet_core.protocol.subjects import Tier
from fleet_core.protocol.trust import bound_replies

__all__ = ["Explanation", "Refusal", "explain_refusals"]

_KEY_FLAG = "--nkey-file or FLEET_DEPLOY_NKEY_FILE"


@dataclass(frozen=True, slots=True)
class Refusal:
    """One permission the server refused: ``operation`` on ``subject``."""

    operation: Literal["publish", "subscribe"]
    subject: str

    def __str__(self) -> str:
        verb = "publish to" if self.operation == "publish" else "subscribe to"
        return f"{verb} {self.subject!r}"


@dataclass(frozen=True, slots=True)
class Explanation:
    """What a key met: ``what`` the server refused and what the key is, and the ``fix``."""

    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}. {self.fix}"


def explain_refusals(refusals: Iterable[Refusal], *, key: str, reply: str) -> Explanation:
    """What the server refused ``key`` while it asked for something whose answers come on
    ``reply``: what the key is, what it may do, and which key to use.

    ``refusals`` holds at least one refusal; the first is the one named when nothing more
    can be said.
    """
    refused = list(dict.fromkeys(refusals))
    if not refused:
        raise ValueError("explain_refusals needs at least one refusal")
    who = f"key {key}" if key else "this key"
    deployer_key = (
        f"Use a deployer key ({_KEY_FLAG}): the test deployer's reaches the test tier, "
        "the admin key every tier"
    )
    publishes = [r.subject for r in refused if r.operation == "publish"]
    # Every deployer key may read these two; the test key alone may not read prod's answers.
    readable = (reply, bound_replies(reply, Tier.TEST))
    answers = [r.subject for r in refused if r.operation == "subscribe" and r.subject in readable]
    if answers:
        what = f"subscribe to {answers[0]!r} (the answers to its own request)"
        if publishes:
            what += " and to publish to " + " and ".join(map(repr, publishes))
        return Explanation(
            f"the NATS server refused {who} permission to {what}: this is no deployer key. "
            "Every deployer key nats-config writes may read its answers, so this is most "
            "likely a listener's or the builder's key, which may only hear requests and "
            "answer them",
            deployer_key,
        )
    prod = [s for s in publishes if s.startswith(f"deploy.{Tier.PROD.value}.")]
    if prod:
        return Explanation(
            f"the NATS server refused {who} permission to publish to {prod[0]!r}: it is a "
            "test-tier deployer key (like the one an AI assistant gets), which may deploy to "
            "deploy.test.> only",
            f"Production needs the admin key ({_KEY_FLAG})",
        )
    return Explanation(
        f"the NATS server refused {who} permission to {refused[0]}: its permissions are not "
        "a deployer's as nats-config writes them (a test deployer may publish to "
        "deploy.test.> and build.*.*, the admin key to deploy.>; an observer key, the "
        "dashboard's, only discovers and reads)",
        f"{deployer_key}; or check this key's entry in the server's authorization block",
    )
