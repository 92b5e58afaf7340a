"""Following one deployment host by host, and deciding when it is over (pure: no I/O).

The deployer feeds every status it hears and the current time into a ``DeploymentTracker``;
the tracker says which hosts changed, when to look again, and whether every host is final.
Only *final* states count towards success: a deployment is ``ok`` when every host it knows
of — each expected one and each that answered unasked — ended ``completed``.

Final states: ``completed``, ``failed`` and ``rejected`` come from the listener; the
deployer itself decides ``missing`` (an expected host never answered), ``lost`` (a host went
silent after answering), ``timeout`` (the deployment's deadline passed first) and
``skipped`` (a rollout stopped before it reached the host, which was never sent a request).
A closure deploy ends some hosts before anything is sent (``end_unsent``: their build
failed, or their listener cannot take one), and keeps each host's ``store_path``.

A rollout (``fleet_core.deploy.rollout``) names each host's batch up front: those hosts start
``queued``, in no clock, and ``start_batch`` opens one batch at a time — its answer window and
its deadline start then, so ``timeout`` bounds each batch from its publish, and a host of a
later batch is never missing for the time the earlier ones took. Every earlier batch is final
when the next starts, so one answer window and one deadline serve the open batch. ``skip``
ends the hosts the rollout will not reach. The tracker does not decide *whether* to go on:
``fleet_core.deploy.rollout`` does, from the hosts' states and ``unknown_outcomes``.

Core NATS delivers at most once: a status published while the deployer's connection was
down (or before its subscription was back) is gone. So the tracker does not guess where it
can ask: it says which hosts to send a *job query* (``due_queries``), and the deployer hands
the answers back (``take_job_answers``):

- a host whose silence limit passed is asked before it is called ``lost``: one still
  running (or accepted) is alive and its silence clock restarts; one whose record is
  finished ends with that record's final status, marked ``recovered``; one that does not
  answer, or has no record of the job, is ``lost``;
- after the deployer's own connection comes back, every host not final yet is asked, and
  asked again a few times (``RECHECK_AFTER``) while it has not been heard from: a host that
  reconnects after the deployer did could not answer the first question;
- while the connection is down (``connection_lost`` … ``connection_back``) the hosts'
  clocks stand still: an outage is not silence, and does not use up the answer window. The
  deadline stays wall-clock; a host still open when it passes during an outage ends
  ``timeout`` with a message that blames NATS, not the host — as does every open host at
  once when the connection is given up for good (``connection_gone``).

Which statuses count is the deployer's to judge (``fleet_core.protocol.trust``); the tracker keeps
what it needs for that — the hosts known to answer on their own bound reply subject, whether
something counted came on the bare one (then the result is not ``server_verified``) — and
the list of what was ``flagged`` and dropped.

It is longer than most modules because these rules interlock (a host being asked is not
missing yet; a question asked across a drop is void); keeping them in one pure class is what
lets ``tests/test_tracking.py`` drive every case with explicit clocks.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Final

from fleet_core.deploy.results import (
    FINAL_STATES,
    DeploymentResult,
    HostResult,
    HostState,
    Outage,
    RolloutResult,
)
from fleet_core.protocol.messages import (
    FINAL_STATUSES,
    JobPhase,
    JobSummary,
    Status,
    StatusKind,
)
from fleet_core.protocol.trust import MAX_FLAGGED, Flagged

__all__ = ["RECHECK_AFTER", "DeploymentTracker"]

_UNSUCCESSFUL: Final = tuple(sorted(FINAL_STATES - {"completed"}))
# The host state each status kind becomes: a dict lookup where the enum's ``value`` is a
# property call, once per status in ``observe``.
_STATE_OF: Final[Mapping[StatusKind, str]] = {kind: kind.value for kind in StatusKind}
# Seconds between the rounds of job queries after a reconnect, for hosts not heard from since.
RECHECK_AFTER: Final = (1.0, 2.0, 4.0)

# Why an expected host ends missing, when the server did not say that nobody listens.
NEVER_ANSWERED = (
    "the host never answered: it is down, or it refused a request it could not verify as "
    "signed by a key it trusts (its log says which)"
)


_OBSERVED_FIELDS: Final = frozenset(HostResult.model_fields) - {"recovered"}
# One "fields set" for every observed result. pydantic changes a model's own set only on
# assignment, which a frozen HostResult refuses, and copies it for ``model_copy``. A set
# per status was most of what the garbage collector walked in a big deployment: ten
# thousand long-lived sets made a full collection (80-150 ms) in each 10,000-host deploy.
_SHARED_FIELDS_SET: Final = set(_OBSERVED_FIELDS)
_new = object.__new__
_set = object.__setattr__
# What ``_observed`` takes from a host's current state, for a host that had none (unasked).
_UNKNOWN: Final[Mapping[str, object]] = {
    "expected": False,
    "phase": None,
    "batch": None,
    "store_path": None,
}


def _observed(status: Status, current: HostResult | None, final: bool) -> HostResult:
    """The host's state after ``status``: ``HostResult(hostname=…, status=…, …)`` from the
    status's fields — the status's, and what ``current`` knew that a status does not say —
    built as ``HostResult.model_construct`` builds a model, without validating again.

    Every field comes from a model that was validated already, and ``observe`` makes one of
    these per status: validating them again was the tracker's largest cost at ten thousand
    hosts (``bench/scale.py``), and ``model_construct`` itself, with its loop over aliases,
    costs more still. The values, their order, the fields set, equality, ``repr`` and the
    dump are those of the validated model: ``tests/test_tracking.py`` holds them to it, and
    holds ``HostResult`` to having no validator this would skip.
    """
    said = status.__dict__  # its fields, read as validation left them
    known = current.__dict__ if current is not None else _UNKNOWN
    tail = said["log_tail"]
    checks = said["checks"]
    host = _new(HostResult)
    _set(
        host,
        "__dict__",
        {  # in the order HostResult declares its fields, as validation leaves them
            "hostname": said["hostname"],
            "status": _STATE_OF[said["status"]],
            "final": final,
            "expected": known["expected"],
            "error": said["error"],
            "message": said["message"],
            "phase": said["phase"] or known["phase"],
            "duration_s": said["duration_s"],
            "log_tail": tuple(tail) if tail else (),
            "recovered": False,
            "batch": known["batch"],
            "checks": list(checks) if checks is not None else None,
            "rolled_back_to": said["rolled_back_to"],
            "store_path": known["store_path"],
        },
    )
    _set(host, "__pydantic_fields_set__", _SHARED_FIELDS_SET)
    _set(host, "__pydantic_extra__", None)
    _set(host, "__pydantic_private__", None)
    return host


class DeploymentTracker:
    """Per-host state of one deployment; every method takes ``now`` (monotonic seconds).

    Everything the deployer asks after each message (``done``, ``ok``, ``next_check``,
    ``expire``, ``due_queries``) is kept up to date incrementally, so a deployment to N hosts
    costs O(N) overall, not O(N) per message: at a thousand hosts that is the difference
    between milliseconds and seconds. Only a reconnect and a round of job queries touch every
    open host, once each.

    Two clocks: the deadline runs on ``now``; the answer window and the silence limits run on
    the *host clock*, ``now`` minus the time the deployer's connection was down.
    """

    def __init__(
        self,
        expected: Iterable[str],
        *,
        started_at: float,
        timeout: float,
        answer_within: float,
        silence_limit: float,
        recheck_after: Sequence[float] = RECHECK_AFTER,
        batches: Mapping[str, int] | None = None,
        paths: Mapping[str, str] | None = None,
    ) -> None:
        self._started_at = started_at
        self._timeout = timeout
        self._deadline = started_at + timeout
        self._answer_within = answer_within
        self._answer_by = started_at + answer_within  # on the host clock
        self._silence_limit = silence_limit
        self._recheck_after = tuple(recheck_after)
        # A rollout's hosts by batch number: queued until their batch starts.
        queued = dict(batches or {})
        names = sorted(set(expected) | queued.keys())
        self._hosts: dict[str, HostResult] = {
            name: HostResult(
                hostname=name,
                status="queued" if name in queued else "pending",
                batch=queued.get(name),
                store_path=paths.get(name) if paths else None,
            )
            for name in names
        }
        self._counts: Counter[str] = Counter(host.status for host in self._hosts.values())
        self._open = len(names)  # hosts not final yet
        self._queued: set[str] = set(queued)  # a rollout's hosts whose batch has not started
        self._pending: set[str] = set(names) - self._queued  # sent a request, not heard from
        self._unknown: set[str] = set()  # ended timeout while this deployer's NATS was down
        self._gone = False  # the connection was given up for good
        self._held_since: float | None = None  # a batch is due, but NATS is down
        # Host-clock time of the last message of every host that answered and is not final
        # (nor silent), oldest first.
        self._quiet: OrderedDict[str, float] = OrderedDict()
        self._silent: set[str] = set()  # past the silence limit, not heard from since
        self._due: set[str] = set()  # silent hosts not asked yet: to be asked before "lost"
        self._unconfirmed: set[str] = set()  # not heard from since the connection came back
        self._recheck_at: float | None = None  # when to ask the unconfirmed hosts again
        self._rechecks = 0  # rounds asked since the connection came back
        self._asking: set[str] = set()  # the hosts of the job query in flight
        self._asking_round = False  # whether it is one of the rounds after a reconnect
        self._asking_pending = 0  # how many of them are pending
        self._asked_at_outage = 0  # len(_outages) when the query in flight was sent
        self._down_since: float | None = None
        self._paused = 0.0  # seconds the connection was down, all outages together
        self._outages: list[Outage] = []
        self._nobody_listens = False
        self._no_responders = 0  # of the open batch: see no_responder
        self._now = started_at
        self._bound: set[str] = set()  # hosts that answered on their own bound reply subject
        self._unverified: set[str] = set()  # hosts whose counted status came on the bare one
        self._flagged: list[Flagged] = []
        self._flagged_count = 0

    @property
    def hosts(self) -> list[HostResult]:
        return list(self._hosts.values())

    @property
    def size(self) -> int:
        """How many hosts the deployment has (queued ones and unasked ones included)."""
        return len(self._hosts)

    @property
    def connected(self) -> bool:
        return self._down_since is None

    @property
    def gone(self) -> bool:
        """The connection was given up for good: nothing more can be sent or heard."""
        return self._gone

    @property
    def batch_over(self) -> bool:
        """Every host sent a request is final: a rollout may start its next batch."""
        return self._open == len(self._queued)

    @property
    def unsuccessful(self) -> int:
        """How many hosts are final in a state other than ``completed`` (``skipped``
        included). A final host never changes again, so while this count stands the same
        hosts are those: a rollout recounts its failures only when it moves."""
        return sum(self._counts[state] for state in _UNSUCCESSFUL)

    @property
    def unknown_outcomes(self) -> frozenset[str]:
        """Hosts that ended ``timeout`` while this deployer's NATS connection was down (or
        given up): their outcome is unknown, not a failure of theirs."""
        return frozenset(self._unknown)

    def is_queued(self, name: str) -> bool:
        """Whether ``name`` is a rollout's host whose batch has not started (no request went
        to it, so nothing it says about this deployment can be believed)."""
        return name in self._queued

    def start_batch(self, names: Iterable[str], now: float) -> None:
        """A rollout published its next batch to ``names`` (queued hosts): they wait for an
        answer from now on, and the deadline is ``timeout`` from now."""
        self._now = max(self._now, now)
        self._held_since = None
        self._no_responders = 0
        self._deadline = now + self._timeout
        self._answer_by = self._host_clock(now) + self._answer_within
        for name in sorted(names):
            host = self._hosts[name]
            if name not in self._queued:
                continue
            self._queued.discard(name)
            self._pending.add(name)
            self._replace(host, host.model_copy(update={"status": "pending"}))

    def end_unsent(
        self, name: str, state: HostState, *, error: str | None, message: str
    ) -> list[HostResult]:
        """``name`` ends ``state`` before anything is sent to it, and never will be: a closure
        deploy's host whose build failed, or whose listener cannot take one
        (``fleet_core.deploy.closures``). It is neither pending nor queued from here."""
        host = self._hosts[name]
        if host.final:
            return []
        self._queued.discard(name)
        self._pending.discard(name)
        updated = host.model_copy(
            update={"status": state, "final": True, "error": error, "message": message}
        )
        self._replace(host, updated)
        self._open -= 1
        return [updated]

    def skip(self, message: str) -> list[HostResult]:
        """The rollout stops: every host still queued ends ``skipped``, never sent a request."""
        return self._finish(sorted(self._queued), "skipped", message)

    def hold(self, now: float) -> float | None:
        """A rollout's next batch is due but this deployer's connection is down: the rollout
        waits, at most ``timeout`` from the first call. Returns how long it waited once that
        has passed, else None."""
        self._now = max(self._now, now)
        if self._held_since is None:
            self._held_since = now
            self._deadline = now + self._timeout
        return now - self._held_since if now >= self._deadline else None

    def unheard(self) -> list[str]:
        """The hosts sent a request and not heard from since."""
        return sorted(self._pending)

    def no_responder(self, now: float) -> list[HostResult]:
        """A rollout publishes to each host's own subject, all answering on one reply
        subject: the server's "nobody listens" says that one of them has no listener, not
        which. Once as many have come as hosts of the batch are still unheard, those are
        the ones: they end ``missing`` (a host that answered has a listener)."""
        self._now = max(self._now, now)
        self._no_responders += 1
        return self._settle_no_responders()

    @property
    def done(self) -> bool:
        """Every known host is final — or nobody was expected and the answer window closed."""
        if self._hosts:
            return self._open == 0
        return (
            self._nobody_listens
            or self._now >= self._deadline
            or self._host_clock(self._now) >= self._answer_by
        )

    @property
    def ok(self) -> bool:
        return bool(self._hosts) and self._counts["completed"] == len(self._hosts)

    def expects(self, name: str) -> bool:
        """Whether ``name`` is one of the hosts the deployment waits for."""
        host = self._hosts.get(name)
        return host is not None and host.expected

    def speaks_bound(self, name: str) -> bool:
        """Whether ``name`` has answered on its own bound reply subject (here or in discovery)."""
        return name in self._bound

    def heard_bound(self, names: Iterable[str]) -> None:
        """``names`` answered the deployment's discovery on their bound reply subjects."""
        self._bound.update(names)

    def flag(self, flagged: Flagged) -> None:
        """A status or answer the deployer did not believe: listed (the first few), not counted."""
        self._flagged_count += 1
        if len(self._flagged) < MAX_FLAGGED:
            self._flagged.append(flagged)

    def observe(self, status: Status, now: float, *, bound: bool = True) -> HostResult | None:
        """Take one status message the deployer believes; returns the host's new state, or
        None if nothing changed. ``bound``: it came on the host's own bound reply subject."""
        self._now = max(self._now, now)
        name = status.hostname
        if bound:
            self._bound.add(name)
        current = self._hosts.get(name)
        if current is not None and current.final:
            return None  # a late or duplicate message for a host that is already decided
        if name in self._queued:
            return None  # no request went to it yet: the deployer flags such a status
        if not bound:
            self._unverified.add(name)
        counts = self._counts
        if current is None:
            self._open += 1  # a host that answered unasked: it must finish too
        else:
            counts[current.status] -= 1
        self._heard(name)
        final = status.status in FINAL_STATUSES
        updated = _observed(status, current, final)
        self._hosts[name] = updated
        counts[updated.status] += 1
        if final:
            self._open -= 1
            self._quiet.pop(name, None)
        else:
            self._quiet[name] = self._host_clock(now)
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
        """Apply the deadlines that have passed by ``now``; returns the hosts that changed.

        A host past its silence limit does not change here: it becomes due for a job query.
        """
        self._now = max(self._now, now)
        if now >= self._deadline:
            unfinished = self._unfinished()
            if self._down_since is not None:
                self._unknown.update(unfinished)
                message = (
                    "NATS was unreachable when the deployment's deadline passed (the "
                    f"deployer's connection had been down for {now - self._down_since:.1f} s): "
                    "this host's outcome is unknown, and it may still be deploying"
                )
            else:
                message = "the deployment timed out before this host finished"
            return self._finish(unfinished, "timeout", message)
        changed: list[HostResult] = self._settle_no_responders()
        if self._down_since is not None:
            return changed  # an outage is not the hosts' silence
        clock = self._host_clock(now)
        if clock >= self._answer_by and len(self._pending) > self._asking_pending:
            # Hosts being asked wait for their answer; the others never answered at all.
            unheard = sorted(name for name in self._pending if name not in self._asking)
            changed += self._finish(unheard, "missing", NEVER_ANSWERED)
        while self._quiet:
            name, heard = next(iter(self._quiet.items()))
            if clock - heard < self._silence_limit:
                break  # the rest were heard from more recently
            del self._quiet[name]
            self._silent.add(name)
            self._due.add(name)
        return changed

    def due_queries(self, now: float) -> list[str]:
        """The hosts to send a job query now (none while one is out or NATS is down).

        The deployer sends one query naming them and hands its answers, even none, to
        ``take_job_answers``.
        """
        self._now = max(self._now, now)
        if self._down_since is not None or self._asking:
            return []
        ask, self._due = self._due, set()
        self._asking_round = self._recheck_at is not None and now >= self._recheck_at
        if self._asking_round:
            self._recheck_at = None
            ask |= self._unconfirmed
        if not ask:
            return []
        self._asking = ask
        self._asking_pending = len(ask & self._pending)
        self._asked_at_outage = len(self._outages)
        return sorted(ask)

    def take_job_answers(
        self,
        answers: Mapping[str, JobSummary | None],
        now: float,
        *,
        bare: Collection[str] = (),
    ) -> list[HostResult]:
        """The answers to the query ``due_queries`` asked for, by hostname; returns the changes.

        ``None`` is the answer of a listener too old to know job queries. A host that did not
        answer is ``lost`` if it was asked for its silence — unless the deployer's connection
        dropped meanwhile, which voids the question: it is asked again once NATS is back.
        ``bare`` names the hosts whose answer came on the bare reply subject: the result is
        then not server-verified.
        """
        self._now = max(self._now, now)
        asked, self._asking, self._asking_pending = self._asking, set(), 0
        void = self._down_since is not None or len(self._outages) != self._asked_at_outage
        # After a reconnect a host may come back later than the deployer: it has until the
        # last round to answer before its silence makes it lost.
        rounds_over = self._rechecks >= len(self._recheck_after)
        changed: list[HostResult] = []
        for name in sorted(asked):
            host = self._hosts[name]
            if host.final:
                continue  # its own final status came first
            if name in answers:
                if name in bare:
                    self._unverified.add(name)
                changed += self._take_answer(host, answers[name], now)
            elif (
                name in self._silent and not void and (rounds_over or name not in self._unconfirmed)
            ):
                changed += self._finish(
                    [name],
                    "lost",
                    f"the host went silent for {self._silence_limit:g} s and did not answer "
                    "a job query",
                )
        if self._asking_round and self._unconfirmed and not void:
            if self._rechecks < len(self._recheck_after):
                self._recheck_at = now + self._recheck_after[self._rechecks]
                self._rechecks += 1
            else:  # the silence limit takes it from here
                self._unconfirmed.clear()
        return changed

    def connection_lost(self, now: float, *, at: float) -> Outage | None:
        """The deployer's connection dropped (``at``: the Unix time, for people); the hosts'
        clocks stop. Returns the outage begun, or None if it was already down."""
        self._now = max(self._now, now)
        if self._down_since is not None:
            return None
        self._down_since = now
        self._outages.append(Outage(started_at=at))
        return self._outages[-1]

    def connection_gone(self, now: float) -> list[HostResult]:
        """The connection is closed for good (its reconnect attempts ran out): nothing more
        can be heard, so every open host ends ``timeout``, saying NATS was unreachable."""
        self._now = max(self._now, now)
        self._gone = True
        down = now - self._down_since if self._down_since is not None else 0.0
        unfinished = self._unfinished()
        self._unknown.update(unfinished)
        return self._finish(
            unfinished,
            "timeout",
            f"NATS was unreachable: the deployer gave up reconnecting after {down:.0f} s, so "
            "this host's outcome is unknown, and it may still be deploying",
        )

    @property
    def connection_down(self) -> bool:
        """Whether the deployer's connection is down, as far as the tracker was told."""
        return self._down_since is not None

    def connection_back(self, now: float) -> Outage | None:
        """The connection is back: the hosts' clocks run again, and every open host is due
        for a job query. Returns the outage ended, or None if it was not down."""
        self._now = max(self._now, now)
        if self._down_since is None:
            return None
        length = max(0.0, now - self._down_since)
        self._paused += length
        self._down_since = None
        self._outages[-1] = self._outages[-1].model_copy(update={"duration_s": round(length, 3)})
        self._unconfirmed = set(self._unfinished())
        self._recheck_at = now
        self._rechecks = 0
        return self._outages[-1]

    def next_check(self) -> float:
        """The next moment at which ``expire`` or ``due_queries`` could change something (or
        a rollout's wait for its connection end)."""
        moment = self._deadline
        if self._queued and self.batch_over and self._held_since is None:
            return math.inf  # between a rollout's batches: the deployer moves on, not a clock
        if self._down_since is not None:
            return moment
        if len(self._pending) > self._asking_pending or not self._hosts:
            moment = min(moment, self._answer_by + self._paused)
        if self._quiet:
            oldest = next(iter(self._quiet.values()))
            moment = min(moment, oldest + self._silence_limit + self._paused)
        if self._recheck_at is not None and not self._asking:
            moment = min(moment, self._recheck_at)
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
        rollout: RolloutResult | None = None,
        build_id: str | None = None,
        commit: str | None = None,
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
            outages=list(self._outages),
            server_verified=not self._unverified,
            flagged=list(self._flagged),
            flagged_count=self._flagged_count,
            unverified=sorted(self._unverified),
            found_in_tier=None,
            rollout=rollout,
            build_id=build_id,
            commit=commit,
        )

    # -- internals ------------------------------------------------------------------------------

    def _unfinished(self) -> list[str]:
        """The hosts sent a request (or that answered unasked) that are not final yet."""
        return [
            name
            for name, host in self._hosts.items()
            if not host.final and name not in self._queued
        ]

    def _settle_no_responders(self) -> list[HostResult]:
        """See ``no_responder``: the unheard hosts, once the server named as many."""
        if not self._no_responders or self._no_responders < len(self._pending):
            return []
        return self._finish(
            sorted(self._pending), "missing", "no listener is subscribed to the host's subject"
        )

    def _host_clock(self, now: float) -> float:
        """``now`` without the time the connection was down (standing still while it is)."""
        return (now if self._down_since is None else self._down_since) - self._paused

    def _heard(self, name: str) -> None:
        """``name`` spoke (a status or a job answer): it is neither unheard nor silent."""
        if name in self._pending:
            self._pending.discard(name)
            if name in self._asking:
                self._asking_pending -= 1
        self._silent.discard(name)
        self._due.discard(name)
        self._unconfirmed.discard(name)

    def _take_answer(
        self, host: HostResult, job: JobSummary | None, now: float
    ) -> list[HostResult]:
        name = host.hostname
        self._unconfirmed.discard(name)  # it answered: it is connected
        silent = name in self._silent
        if job is None:  # alive, but its listener cannot say what became of the job
            if silent:
                return self._finish(
                    [name],
                    "lost",
                    f"the host went silent for {self._silence_limit:g} s; its listener is "
                    "too old to answer a job query",
                )
            return []
        if job.phase is JobPhase.FINISHED and job.status in FINAL_STATUSES:
            return [self._recover(host, job)]
        if job.phase in (JobPhase.ACCEPTED, JobPhase.RUNNING):
            return self._alive(host, job.phase, now)
        # No record of the job: a pending host never got the request (the answer window
        # decides), one that answered before has lost it.
        if silent:
            return self._finish(
                [name],
                "lost",
                f"the host went silent for {self._silence_limit:g} s and has no record of "
                "this deployment",
            )
        return []

    def _alive(self, host: HostResult, phase: JobPhase, now: float) -> list[HostResult]:
        """The host is still at the job: its silence clock starts again."""
        name = host.hostname
        was_pending = name in self._pending
        self._heard(name)
        self._quiet[name] = self._host_clock(now)
        self._quiet.move_to_end(name)
        if not was_pending:
            return []
        # Its accepted and started statuses were lost: say what it told the query instead.
        status: HostState = "accepted" if phase is JobPhase.ACCEPTED else "started"
        updated = host.model_copy(
            update={"status": status, "message": f"{phase.value}, by its answer to a job query"}
        )
        self._replace(host, updated)
        return [updated]

    def _recover(self, host: HostResult, job: JobSummary) -> HostResult:
        """The host's record holds the final status whose message was lost."""
        assert job.status is not None
        self._heard(host.hostname)
        updated = HostResult(
            hostname=host.hostname,
            status=job.status.value,
            final=True,
            expected=host.expected,
            error=job.error,
            message=job.message or "",
            phase=host.phase,
            duration_s=job.duration_s,
            log_tail=job.log_tail or [],
            recovered=True,
            batch=host.batch,
            store_path=host.store_path,
        )
        self._replace(host, updated)
        self._open -= 1
        self._quiet.pop(host.hostname, None)
        return updated

    def _replace(self, host: HostResult, updated: HostResult) -> None:
        self._hosts[host.hostname] = updated
        self._counts[host.status] -= 1
        self._counts[updated.status] += 1

    def _finish(self, names: Iterable[str], state: HostState, message: str) -> list[HostResult]:
        changed: list[HostResult] = []
        update: dict[str, object] = {"status": state, "final": True, "message": message}
        if state == "skipped":  # never sent a request, so never sent a system either
            update["store_path"] = None
        for name in names:
            host = self._hosts[name]
            updated = host.model_copy(update=update)
            self._heard(name)
            self._queued.discard(name)
            self._replace(host, updated)
            self._open -= 1
            self._quiet.pop(name, None)
            changed.append(updated)
        return changed
