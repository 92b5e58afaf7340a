"""Before a listener takes any work: does the NATS server let its key do a listener's job?

A listener that cannot subscribe to its own deploy subjects, or cannot publish its own
statuses, must not run: started as ``web9`` with web1's seed it would hear ``deploy.test.all``
through web1's permissions and run rebuilds whose every status the server refuses, unseen by
anyone. The server says no only asynchronously (nats-py hands a permission violation to the
connection's error callback; ``Bus.watch_denials``), so ``check_own_subjects`` asks before the
listener resumes a job or subscribes for real:

- it subscribes to each of ``settings.subjects``, with a handler that drops what arrives (a
  request in that moment is not taken, as if the listener had not started yet);
- it publishes one empty message to a fresh ``deploy.responses.probe-<random>`` bound to its
  own tier and hostname — the subject its statuses take under the bound layout, and one
  homelab-deploy's layout (``deploy.responses.>``) allows too. Nobody subscribes there, and
  an empty body is no status (``docs/protocol.md``);
- one flush: the server has answered both (and refused them, if so) when it returns.

A refusal raises ``PermissionDenied`` (exit status 2), naming the key, the host the listener
was told it is, and every refused subject.
"""

from __future__ import annotations

import uuid

import anyio
import structlog

from fleet_core.bus import Bus, Message, Subscription
from fleet_core.config.settings import ListenerSettings
from fleet_core.errors import PermissionDenied
from fleet_core.protocol.subjects import RESPONSES_PREFIX
from fleet_core.protocol.trust import bound_reply

__all__ = ["PROBE_PREFIX", "check_own_subjects", "status_probe_subject"]

log = structlog.get_logger("fleet.listener")

PROBE_PREFIX = RESPONSES_PREFIX + "probe-"  # deploy.responses.probe-<hex>.<tier>.<hostname>


def status_probe_subject(settings: ListenerSettings) -> str:
    """A fresh reply subject nobody reads, bound to this host as its statuses are."""
    return bound_reply(PROBE_PREFIX + uuid.uuid4().hex, settings.tier.value, settings.hostname)


async def check_own_subjects(bus: Bus, settings: ListenerSettings) -> None:
    """Raise ``PermissionDenied`` unless the server lets ``bus``'s key subscribe to every
    deploy subject of ``settings`` and publish this host's statuses."""
    probe = status_probe_subject(settings)
    ours = {*settings.subjects, probe}
    refused: list[str] = []

    def denied(denial: PermissionDenied) -> bool:
        if denial.subject not in ours:
            return False
        refused.append(denial.subject)
        return True  # expected here: reported below, not as a stray warning

    async def drop(msg: Message) -> None:
        log.info("request_before_start_ignored", subject=msg.subject, size=len(msg.data))

    stop = bus.watch_denials(denied)
    probes: list[Subscription] = []
    try:
        for subject in settings.subjects:
            probes.append(await bus.subscribe(subject, drop))
        await bus.publish(probe, b"")
        await bus.flush()
    finally:
        stop()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            for subscription in probes:
                await subscription.unsubscribe()
    hear = [s for s in settings.subjects if s in refused]
    answer = probe in refused
    if not hear and not answer:
        return
    key = bus.public_key or "(unknown)"
    where = f"{settings.hostname} (tier {settings.tier.value})"
    statuses = bound_reply(RESPONSES_PREFIX + "*", settings.tier.value, settings.hostname)
    parts = []
    if hear:
        parts.append("subscribe to " + ", ".join(repr(s) for s in hear))
    if answer:
        parts.append(f"publish its statuses to {statuses!r}")
    log.error(
        "listener_refused",
        key=key,
        host=settings.hostname,
        tier=settings.tier.value,
        subscribe_refused=hear,
        publish_refused=[probe] if answer else [],
    )
    raise PermissionDenied(
        f"the NATS server refused key {key}, which this listener connected with as "
        f"{where}, permission to {' and to '.join(parts)}: a listener that cannot hear its "
        "deploy requests or report their statuses would run rebuilds nobody hears of, so it "
        f"does not start. Start it with {settings.hostname}'s own seed, or correct its "
        "--hostname, --tier, --role or --deploy-subject, or this key's permissions on the "
        "server (fleet-deploy nats-config)",
        subject=hear[0] if hear else probe,
    )
