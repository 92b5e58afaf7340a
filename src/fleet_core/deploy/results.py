"""What a deployment reports: its result, host by host (pure: no I/O).

``DeploymentResult`` is what ``Deployer.deploy`` returns and its callers print, count, store
and hand to an AI (``--json``, the MCP reports, the dashboard's actions); ``HostResult`` is one
host's part, ``Outage`` a time the deployer's own connection was down, ``RolloutResult`` and
``RolloutStep`` a rollout's batches. The tracker (``fleet_core.deploy.tracker``) decides them;
this module only says what they are, so that a reader of a result need not read the rules
that made it.

Host states: ``completed``, ``failed`` and ``rejected`` come from the listener; the deployer
itself decides ``missing``, ``lost``, ``timeout`` and ``skipped`` (the tracker's docstring says
when). ``queued`` and ``pending`` are a host not sent a request yet, and one not heard from.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet_core.protocol.messages import FINAL_STATUSES, CheckStatus
from fleet_core.protocol.trust import MAX_FLAGGED, Flagged

__all__ = [
    "FINAL_STATES",
    "DeploymentResult",
    "HostResult",
    "HostState",
    "Outage",
    "RolloutResult",
    "RolloutStep",
    "TierDirectory",
]

HostState = Literal[
    "queued",  # a rollout's host whose batch has not started: no request was sent to it
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
    "skipped",  # a rollout stopped before its batch: never sent a request
]
FINAL_STATES: frozenset[str] = frozenset(
    {*(s.value for s in FINAL_STATUSES), "missing", "lost", "timeout", "skipped"}
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
    # A tuple: with no list among its values a result's __dict__ is no container the garbage
    # collector must walk, and ten thousand of them live through a big deployment.
    log_tail: tuple[str, ...] = Field((), description="last output lines of a failure")
    recovered: bool = Field(
        False,
        description="true when the final status was read from the host's job record (a job "
        "query) because the status message itself was lost, e.g. in a NATS outage",
    )
    batch: int | None = Field(
        None,
        description="the host's batch in a rollout: 0 is the canary batch, then 1, 2, …; "
        "null when the deployment was not a rollout",
    )
    checks: list[CheckStatus] | None = Field(
        None,
        description="the health checks the host ran after activating the new system "
        "(a switch or test with checks): name, ok, duration_s, output_tail",
    )
    rolled_back_to: str | None = Field(
        None,
        description="after a rollback decided on the host: the exact system that runs again",
    )
    store_path: str | None = Field(
        None,
        description="a closure deploy: the exact system the host was sent (null: it was sent "
        "none, or the deployment evaluated a revision on the hosts)",
    )


class Outage(BaseModel):
    """A time the deployer's own NATS connection was down during a deployment."""

    model_config = ConfigDict(frozen=True)

    started_at: float = Field(description="when the connection dropped (Unix time)")
    duration_s: float | None = Field(None, description="how long it was down; null: still down")


class RolloutResult(BaseModel):
    """How a rollout (``--canary``, ``--batch``, ``--max-failures``) went, batch by batch;
    each host's own ``batch`` says where it was."""

    model_config = ConfigDict(frozen=True)

    canary: int = Field(description="hosts asked for in the canary batch (batch 0)")
    batch_size: str | None = Field(
        description="hosts per batch after the canary, as asked: N, or N% of the target's "
        "hosts; null: all the rest in one batch"
    )
    max_failures: int = Field(
        description="the failure budget: more failed hosts than this, and no batch starts"
    )
    seed: int | None = Field(
        description="the seed of a shuffled host order (random.Random(seed).shuffle of the "
        "names sorted); null: the hosts went by name"
    )
    batches: int = Field(description="how many batches after the canary batch")
    current: int | None = Field(
        description="the batch in progress, or the last one started (0: the canary); null "
        "before the first"
    )
    failed: list[str] = Field(
        description="the hosts that count against the budget: those of the batches run so "
        "far that ended other than completed (the first 50)"
    )
    failed_count: int = Field(description="how many hosts count against the budget")
    stopped: str | None = Field(
        description="why no further batch started, when hosts were left out (they ended "
        "skipped); null when every batch started"
    )


class RolloutStep(BaseModel):
    """One step of a rollout, as the deployer's ``on_rollout`` hears it: a batch published,
    or the rollout stopped (``hosts`` then the skipped ones)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["batch", "stopped"]
    batch: int = Field(description="the batch published, or the last one started")
    hosts: list[str]


class TierDirectory(BaseModel):
    """Who discovery found in a tier: told when a deployment's target reached no host, so
    that a mistyped role or hostname comes back with the names it could have been."""

    model_config = ConfigDict(frozen=True)

    tier: str
    hosts: list[str] = Field(description="the hostnames that answered discovery in the tier")
    roles: list[str] = Field(description="the roles those hosts have")


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
    outages: list[Outage] = Field(
        default_factory=list,
        description="times the deployer's own NATS connection was down (not the hosts')",
    )
    server_verified: bool = Field(
        True,
        description="true when every status that counted came on its host's own reply subject "
        "(<reply>.<tier>.<host>), which under the layout nats-config writes only that host may "
        "publish to; false when one came on the bare reply subject (homelab-deploy listeners "
        "answer there), which any listener key may publish to under homelab-deploy's layout",
    )
    flagged: list[Flagged] = Field(
        default_factory=list,
        description=f"statuses and answers not believed, so not counted (the first {MAX_FLAGGED})"
        ": a body that contradicts the subject it came on, another request id, an unexpected "
        "host or tier on the bare reply subject",
    )
    flagged_count: int = Field(0, description="how many were flagged in all")
    unverified: list[str] = Field(
        default_factory=list,
        description="hosts whose counted status or job answer came on the bare reply subject",
    )
    found_in_tier: TierDirectory | None = Field(
        None,
        description="set when the target reached no host (a mistyped role or hostname?): the "
        "hosts and roles discovery found in the target's tier",
    )
    rollout: RolloutResult | None = Field(
        None, description="the batches of a rollout (--canary, --batch); null: not a rollout"
    )
    build_id: str | None = Field(
        None,
        description="a closure deploy of a build: the build whose systems the hosts were sent",
    )
    commit: str | None = Field(
        None, description="a closure deploy of a build: the commit every system was built from"
    )
