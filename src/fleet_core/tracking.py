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

from collections import Counter, OrderedDict
from collections.abc import Iterable
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
    """Per-host state of one deployment; every method takes ``now`` (monotonic seconds).

    Everything the deployer asks after each message (``done``, ``ok``, ``next_check``,
    ``expire``) is kept up to date incrementally, so a deployment to N hosts costs O(N)
    overall, not O(N) per message: at a thousand hosts that is the difference between
    milliseconds and seconds.
    """

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
        names = sorted(set(expected))
        self._hosts: dict[str, HostResult] = {
            name: HostResult(hostname=name, status="pending") for name in names
        }
        self._counts: Counter[str] = Counter({"pending": len(names)} if names else {})
        self._open = len(names)  # hosts not final yet
        self._pending: set[str] = set(names)  # expected hosts not heard from yet
        # Last message time of every host that answered and is not final, oldest first.
        self._quiet: OrderedDict[str, float] = OrderedDict()
        self._nobody_listens = False
        self._now = started_at

    @property
    def hosts(self) -> list[HostResult]:
        return list(self._hosts.values())

    @property
    def done(self) -> bool:
        """Every known host is final — or nobody was expected and the answer window closed."""
        if self._hosts:
            return self._open == 0
        return self._nobody_listens or self._now >= min(self._answer_by, self._deadline)

    @property
    def ok(self) -> bool:
        return bool(self._hosts) and self._counts["completed"] == len(self._hosts)

    def observe(self, status: Status, now: float) -> HostResult | None:
        """Take one status message; returns the host's new state, or None if nothing changed."""
        self._now = max(self._now, now)
        name = status.hostname
        current = self._hosts.get(name)
        if current is not None and current.final:
            return None  # a late or duplicate message for a host that is already decided
        if current is None:
            self._open += 1  # a host that answered unasked: it must finish too
        else:
            self._counts[current.status] -= 1
        self._pending.discard(name)
        updated = HostResult(
            hostname=name,
            status=status.status.value,
            final=status.is_final,
            expected=current.expected if current is not None else False,
            error=status.error,
            message=status.message,
            phase=status.phase or (current.phase if current else None),
            duration_s=status.duration_s,
            log_tail=status.log_tail or [],
        )
        self._hosts[name] = updated
        self._counts[updated.status] += 1
        if updated.final:
            self._open -= 1
            self._quiet.pop(name, None)
        else:
            self._quiet[name] = now
            self._quiet.move_to_end(name)
        return updated

    def nobody_listens(self, now: float) -> list[HostResult]:
        """The server said no subscriber exists for the subject: every silent host is missing."""
        self._now = max(self._now, now)
        self._nobody_listens = True
        return self._finish(
            sorted(self._pending), "missing", "no listener is subscribed to the subject"
        )

    def expire(self, now: float) -> list[HostResult]:
        """Apply the deadlines that have passed by ``now``; returns the hosts that changed."""
        self._now = max(self._now, now)
        if now >= self._deadline:
            unfinished = [name for name, host in self._hosts.items() if not host.final]
            return self._finish(
                unfinished, "timeout", "the deployment timed out before this host finished"
            )
        changed: list[HostResult] = []
        if now >= self._answer_by and self._pending:
            changed += self._finish(sorted(self._pending), "missing", "the host never answered")
        silent: list[str] = []
        for name, heard in self._quiet.items():
            if now - heard < self._silence_limit:
                break  # the rest were heard from more recently
            silent.append(name)
        if silent:
            changed += self._finish(
                silent, "lost", f"the host went silent for {self._silence_limit:g} s"
            )
        return changed

    def next_check(self) -> float:
        """The next moment at which ``expire`` could change something."""
        moment = self._deadline
        if self._pending or not self._hosts:
            moment = min(moment, self._answer_by)
        if self._quiet:
            oldest = next(iter(self._quiet.values()))
            moment = min(moment, oldest + self._silence_limit)
        return moment

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
        # Built without re-validating every host: each HostResult was validated when made.
        return DeploymentResult.model_construct(
            deployment_id=deployment_id,
            subject=subject,
            tier=tier,
            action=action,
            revision=revision,
            ok=self.ok,
            done=self.done,
            counts={state: n for state, n in self._counts.items() if n},
            hosts=self.hosts,
            duration_s=round(now - self._started_at, 3),
        )

    def _finish(self, names: Iterable[str], state: HostState, message: str) -> list[HostResult]:
        changed: list[HostResult] = []
        for name in names:
            host = self._hosts[name]
            updated = host.model_copy(update={"status": state, "final": True, "message": message})
            self._hosts[name] = updated
            self._counts[host.status] -= 1
            self._counts[state] += 1
            self._open -= 1
            self._pending.discard(name)
            self._quiet.pop(name, None)
            changed.append(updated)
        return changed
