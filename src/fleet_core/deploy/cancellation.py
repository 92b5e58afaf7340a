"""A cancel's answers, as the deployer reads them (pure): what each host did with it.

``fleet_core.deploy.cancel`` sends the cancel and gathers the answers; this module says what
an answer means, from its status, error code and phase — never from a host's words.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fleet_core.protocol.messages import ErrorCode, StatusKind

__all__ = ["CancelAnswer", "CancelResult", "answer_outcome"]


class CancelAnswer(BaseModel):
    """One host's answer to a cancel."""

    model_config = ConfigDict(frozen=True)

    hostname: str
    tier: str
    outcome: str = Field(
        description="stopped (its rebuild was stopped), refused (the deployment had not "
        "reached it: refused from now on), activating (not interrupted), finished (over)"
    )
    message: str = ""


class CancelResult(BaseModel):
    """What a cancel reached: each host's answer, and the tiers this key may not cancel in."""

    model_config = ConfigDict(frozen=True)

    deployment_id: str
    answers: list[CancelAnswer]
    refused_tiers: list[str] = Field(
        default_factory=list, description="tiers whose deploy subject this key may not publish to"
    )

    @property
    def stopped(self) -> list[str]:
        return [a.hostname for a in self.answers if a.outcome == "stopped"]

    @property
    def ok(self) -> bool:
        """Every host that answered either stopped its job or will refuse the deployment."""
        return bool(self.answers) and all(a.outcome in ("stopped", "refused") for a in self.answers)


def answer_outcome(kind: StatusKind, error: str | None, phase: str | None) -> str:
    """The answer's meaning from its status, error code and phase (``stopped`` or
    ``refused`` for a completed cancel, as the listener sets it), never from its words."""
    if kind is StatusKind.COMPLETED:
        return "stopped" if phase == "stopped" else "refused"
    if error == ErrorCode.ALREADY_ACTIVATING:
        return "activating"
    if error == ErrorCode.ALREADY_FINISHED:
        return "finished"
    return "rejected"
