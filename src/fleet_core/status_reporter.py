"""Telling one requester how its request goes: every status a listener sends passes here.

A reporter is bound once per request — bus, host, tier, reply subject, request and request
id — so the fields that identify a status cannot differ between the messages of one job, and
redaction and the size limit are applied in one place. A publish that fails is logged, not
raised: the server being away must not stop a rebuild that is already switching the host.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from fleet_core.bus import Bus
from fleet_core.errors import FleetError
from fleet_core.messages import MAX_MESSAGE_CHARS, DeployRequest, Status, StatusKind, encode_status
from fleet_core.rebuild import redact

__all__ = ["StatusReporter"]

log = structlog.get_logger("fleet.listener")


@dataclass(frozen=True, slots=True)
class StatusReporter:
    """Publishes the statuses of one request to ``reply_to``: the request's own, or — when it
    asked for ``bind`` — that subject bound to this host (``Listener._reporter`` decides).

    ``request`` and ``request_id`` are None for a request too malformed to have them.
    """

    bus: Bus
    hostname: str
    tier: str
    reply_to: str
    request: DeployRequest | None = None
    request_id: str | None = None

    async def send(
        self,
        kind: StatusKind,
        *,
        message: str = "",
        error: str | None = None,
        phase: str | None = None,
        duration_s: float | None = None,
        log_tail: Sequence[str] | None = None,
    ) -> None:
        """Publish one status; a failure to publish costs that status only."""
        request = self.request
        status = Status(
            hostname=self.hostname,
            status=kind,
            error=error,
            # Redacted before it is cut: a cut through "user:token@" would hide it from redact().
            message=redact(message)[:MAX_MESSAGE_CHARS],
            request_id=self.request_id,
            tier=self.tier,
            action=request.action.value if request else None,
            revision=request.revision if request else None,
            timestamp=time.time(),
            duration_s=round(duration_s, 3) if duration_s is not None else None,
            phase=phase,
            log_tail=[redact(line) for line in log_tail] if log_tail is not None else None,
        )
        try:
            await self.bus.publish(self.reply_to, encode_status(status))
        except FleetError as exc:  # the server is away: the job goes on, the status is lost
            log.warning(
                "status_not_sent",
                host=self.hostname,
                tier=self.tier,
                request_id=self.request_id,
                status=kind.value,
                error=str(exc),
            )
