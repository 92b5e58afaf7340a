"""Telling one requester how its request goes: every status a listener sends passes here.

A reporter is bound once per request — bus, host, tier, reply subject, request and request
id — so the fields that identify a status cannot differ between the messages of one job, and
redaction and the size limit are applied in one place. A publish that fails is logged, not
raised: the server being away must not stop a rebuild that is already switching the host.

Every final status passes here, so this is where it is counted: ``on_final`` (the listener's
metrics) hears the request's first final status before it is published, so a requester that
heard it finds it counted. A final status sent again (a stop while reporting re-sends the
first outcome) is not counted again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from fleet_core.bus import Bus
from fleet_core.errors import FleetError
from fleet_core.protocol.actions import redact
from fleet_core.protocol.messages import (
    FINAL_STATUSES,
    MAX_MESSAGE_CHARS,
    CheckStatus,
    DeployRequest,
    Status,
    StatusKind,
    encode_status,
)

__all__ = ["StatusReporter"]

log = structlog.get_logger("fleet.listener")


@dataclass(frozen=True, slots=True)
class StatusReporter:
    """Publishes the statuses of one request to ``reply_to``: the request's own, or — when it
    asked for ``bind`` — that subject bound to this host (``Listener._reporter`` decides).

    ``request`` and ``request_id`` are None for a request too malformed to have them.
    ``on_final`` hears the first final status, once, before it is published.
    """

    bus: Bus
    hostname: str
    tier: str
    reply_to: str
    request: DeployRequest | None = None
    request_id: str | None = None
    signer: str | None = None  # the request's verified signer, named in every status
    on_final: Callable[[Status], None] | None = field(default=None, repr=False, compare=False)
    # Whether on_final has heard this request's final status: the one mutable part, a cell.
    _counted: list[bool] = field(default_factory=list, init=False, repr=False, compare=False)

    async def send(
        self,
        kind: StatusKind,
        *,
        message: str = "",
        error: str | None = None,
        phase: str | None = None,
        duration_s: float | None = None,
        log_tail: Sequence[str] | None = None,
        checks: Sequence[CheckStatus] | None = None,
        rolled_back_to: str | None = None,
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
            signer=self.signer,
            checks=list(checks) if checks is not None else None,
            rolled_back_to=rolled_back_to,
        )
        if kind in FINAL_STATUSES and self.on_final is not None and not self._counted:
            self._counted.append(True)
            try:
                self.on_final(status)
            except Exception:  # counting must never cost the requester its status
                log.exception("final_status_not_counted", host=self.hostname, status=kind.value)
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
