"""Following one deployment host by host, and deciding when it is over (pure: no I/O).

The deployer feeds every status it hears and the current time into a ``DeploymentTracker``;
the tracker says which hosts changed, when to look again, and whether every host is final.
Only *final* states count towards success: a deployment is ``ok`` when every host it knows
of — each expected one and each that answered unasked — ended ``completed``.

Final states: ``completed``, ``failed`` and ``rejected`` come from the listener; the
deployer itself decides ``missing`` (an expected host never answered), ``lost`` (a host went
silent after answering) and ``timeout`` (the deployment's deadline passed first).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet_core.messages import FINAL_STATUSES, Status

__all__ = ["FINAL_STATES", "DeploymentResult", "DeploymentTracker", "HostResult", "HostState"]

HostState = Literal[
    "pending",
    "accepted",
    "started",
    "progress",
    "completed",
    "failed",
    "rejected",
    "missing",
    "lost",
    "timeout",
]
FINAL_STATES: frozenset[str] = frozenset(
    {*(s.value for s in FINAL_STATUSES), "missing", "lost", "timeout"}
)


class HostResult(BaseModel):
    """What is known of one host in one deployment."""

    model_config = ConfigDict(frozen=True)

    hostname: str
    status: HostState = Field(description="latest state; final ones end the host's part")
    final: bool = False
    expected: bool = Field(True, description="false when the host answered without being expected")
    error: str | None = Field(None, description="error code of a failed or rejected host")
    message: str = ""
    phase: str | None = None
    duration_s: float | None = None
    log_tail: list[str] = Field(default_factory=list, description="last output lines of a failure")


class DeploymentResult(BaseModel):
    """The outcome of one deployment (or its state so far, while ``done`` is false)."""

    model_config = ConfigDict(frozen=True)

    deployment_id: str
    subject: str
    tier: str
    action: str
    revision: str
    ok: bool = Field(description="true only when every host's final status is completed")
    done: bool = Field(description="true when every host is final")
    counts: dict[str, int] = Field(description="number of hosts in each state")
    hosts: list[HostResult]
    duration_s: float


class DeploymentTracker:
    """Per-host state of one deployment; every method takes ``now`` (monotonic seconds)."""

    def __init__(
        self,
        expected: Iterable[str],
        *,
        started_at: float,
        timeout: float,
        answer_within: float,
        silence_limit: float,
    ) -> None:
        self._started_at = started_at
        self._deadline = started_at + timeout
        self._answer_by = started_at + answer_within
        self._silence_limit = silence_limit
        self._hosts: dict[str, HostResult] = {
            name: HostResult(hostname=name, status="pending") for name in sorted(set(expected))
        }
        self._last_heard: dict[str, float] = {}
        self._nobody_listens = False
        self._now = started_at

    @property
    def hosts(self) -> list[HostResult]:
        return list(self._hosts.values())

    @property
    def done(self) -> bool:
        """Every known host is final — or nobody was expected and the answer window closed."""
        if self._hosts:
            return all(h.final for h in self._hosts.values())
        return self._nobody_listens or self._now >= self._answer_by

    @property
    def ok(self) -> bool:
        return bool(self._hosts) and all(h.status == "completed" for h in self._hosts.values())

    def observe(self, status: Status, now: float) -> HostResult | None:
        """Take one status message; returns the host's new state, or None if nothing changed."""
        self._now = max(self._now, now)
        current = self._hosts.get(status.hostname)
        if current is not None and current.final:
            return None  # a late or duplicate message for a host that is already decided
        self._last_heard[status.hostname] = now
        updated = HostResult(
            hostname=status.hostname,
            status=status.status.value,
            final=status.is_final,
            expected=current.expected if current is not None else False,
            error=status.error,
            message=status.message,
            phase=status.phase or (current.phase if current else None),
            duration_s=status.duration_s,
            log_tail=status.log_tail or [],
        )
        self._hosts[status.hostname] = updated
        return updated

    def nobody_listens(self, now: float) -> list[HostResult]:
        """The server said no subscriber exists for the subject: every silent host is missing."""
        self._now = max(self._now, now)
        self._nobody_listens = True
        return self._finish_where(
            lambda h: h.status == "pending", "missing", "no listener is subscribed to the subject"
        )

    def expire(self, now: float) -> list[HostResult]:
        """Apply the deadlines that have passed by ``now``; returns the hosts that changed."""
        self._now = max(self._now, now)
        changed: list[HostResult] = []
        if now >= self._deadline:
            return self._finish_where(
                lambda h: True, "timeout", "the deployment timed out before this host finished"
            )
        if now >= self._answer_by:
            changed += self._finish_where(
                lambda h: h.status == "pending", "missing", "the host never answered"
            )
        for name, heard in self._last_heard.items():
            host = self._hosts[name]
            if not host.final and now - heard >= self._silence_limit:
                changed += self._finish_one(
                    host, "lost", f"the host went silent for {self._silence_limit:g} s"
                )
        return changed

    def next_check(self) -> float:
        """The next moment at which ``expire`` could change something."""
        moments = [self._deadline]
        if any(h.status == "pending" for h in self._hosts.values()) or not self._hosts:
            moments.append(self._answer_by)
        moments += [
            heard + self._silence_limit
            for name, heard in self._last_heard.items()
            if not self._hosts[name].final
        ]
        return min(moments)

    def result(
        self,
        *,
        deployment_id: str,
        subject: str,
        tier: str,
        action: str,
        revision: str,
        now: float,
    ) -> DeploymentResult:
        hosts = self.hosts
        return DeploymentResult(
            deployment_id=deployment_id,
            subject=subject,
            tier=tier,
            action=action,
            revision=revision,
            ok=self.ok,
            done=self.done,
            counts=dict(Counter(h.status for h in hosts)),
            hosts=hosts,
            duration_s=round(now - self._started_at, 3),
        )

    def _finish_where(
        self, predicate: Callable[[HostResult], bool], state: HostState, message: str
    ) -> list[HostResult]:
        changed: list[HostResult] = []
        for host in list(self._hosts.values()):
            if not host.final and predicate(host):
                changed += self._finish_one(host, state, message)
        return changed

    def _finish_one(self, host: HostResult, state: HostState, message: str) -> list[HostResult]:
        updated = host.model_copy(update={"status": state, "final": True, "message": message})
        self._hosts[host.hostname] = updated
        return [updated]
