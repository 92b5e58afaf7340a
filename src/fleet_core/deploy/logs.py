"""Reading a job's whole log from its host, one chunk after another (``fleet-deploy logs``).

Each chunk is a signed log request (``fleet_core.protocol.logs``) on the host's own subject
``deploy.<tier>.<host>`` with a reply subject of its own, and its one answer: a chunk, or a
refusal. One request is in flight at a time — the next is sent once the last chunk has been
written — so neither side holds more than a chunk, whatever the log's size; a reader that
writes slowly only slows the requests down. With ``follow`` the reader keeps asking once it
has reached the end of a job that is still running, every ``POLL_MIN`` to ``POLL_MAX``
seconds (doubling while nothing new comes), until the job has ended and its whole log is
read. Every answer has a deadline (``answer_within``).

What a host sends is believed only from its log reply subject (``log_reply``: the server
vouches that only that host publishes there), for the deployment and offset asked. A
refusal may also come on the plain bound subject, from a listener too old for log requests,
or on the bare one, from a listener that binds nothing (homelab-deploy's): it is then only
ever turned into an error.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import uuid
from collections.abc import Callable
from typing import TextIO

import anyio
import anyio.abc
import structlog

from fleet_core.bus import Bus, Message, Subscription
from fleet_core.config.settings import LogsSettings
from fleet_core.errors import LogUnavailable, PermissionDenied, UsageError
from fleet_core.keys import Seed, load_seed
from fleet_core.lifecycle import run_until_signal
from fleet_core.logging import configure_logging
from fleet_core.protocol.actions import Action
from fleet_core.protocol.logs import LogChunk, log_reply, parse_log_answer
from fleet_core.protocol.messages import DeployRequest, ErrorCode, Status, encode, is_request_id
from fleet_core.protocol.refusals import Refusal, explain_refusals
from fleet_core.protocol.signing import RequestSigner
from fleet_core.protocol.subjects import RESPONSES_PREFIX, Tier, validate_hostname
from fleet_core.protocol.text import escaped_json, printable
from fleet_core.protocol.trust import bound_reply, shown

__all__ = ["ANSWER_WITHIN", "FOLLOW_RETRIES", "POLL_MAX", "POLL_MIN", "LogReader", "run_logs"]

log = structlog.get_logger("fleet.logs")

ANSWER_WITHIN = 10.0  # seconds for a host to answer one log request
POLL_MIN = 0.2  # seconds between asks at the end of a running job's log, at first
POLL_MAX = 2.0  # ... and at most
# Unanswered requests in a row that --follow outlasts: a switch that upgrades fleet-deploy
# restarts the host's listener, which misses the request asked meanwhile.
FOLLOW_RETRIES = 3


class LogReader:
    """Reads the logs of the jobs of one host, ``host`` of ``tier``, over ``bus``."""

    def __init__(
        self,
        bus: Bus,
        *,
        host: str,
        tier: Tier,
        signer: Seed | None,
        answer_within: float = ANSWER_WITHIN,
    ) -> None:
        self.bus = bus
        self.host = validate_hostname(host)
        self.tier = tier
        self.subject = f"deploy.{tier.value}.{host}"
        self.answer_within = answer_within
        self._signing = RequestSigner(signer.reveal()) if signer is not None else None

    async def chunk(
        self,
        deployment_id: str,
        offset: int = 0,
        *,
        lines: int | None = None,
        size: int | None = None,
    ) -> LogChunk:
        """One chunk of ``deployment_id``'s log at byte ``offset`` (at most ``lines`` lines
        and ``size`` bytes; the host caps both).

        Raises ``LogUnavailable`` (no such job, refused, too old, no answer) or
        ``PermissionDenied`` (this key may not ask this host)."""
        if not is_request_id(deployment_id):
            raise UsageError(
                f"{shown(deployment_id)} is not a deployment id: ids are 1-64 letters, digits, "
                "'-' or '_'"
            )
        request_id = uuid.uuid4().hex
        reply = RESPONSES_PREFIX + request_id
        bound = self._bound(reply)
        answers = log_reply(reply, self.tier.value, self.host)
        request = DeployRequest(
            action=Action.LOGS,
            revision=deployment_id,
            reply_to=reply,
            id=request_id,
            bind=True,
            offset=offset or None,
            size=size,
            lines=lines,
        )
        if self._signing is not None:
            request = request.signed(
                self._signing.sign(
                    request_id=request_id,
                    subject=self.subject,
                    action=Action.LOGS.value,
                    revision=deployment_id,
                    now=time.time(),
                )
            )
        send, receive = anyio.create_memory_object_stream[Message | None](math.inf)
        denials: list[PermissionDenied] = []

        async def deliver(msg: Message) -> None:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                send.send_nowait(msg)

        def denied(exc: PermissionDenied) -> bool:
            if exc.subject in (self.subject, reply, bound, answers):
                denials.append(exc)
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    send.send_nowait(None)  # wakes the wait below
                return True
            return False

        stop_watching = self.bus.watch_denials(denied)
        subscriptions: list[Subscription] = []
        try:
            subscriptions.append(await self.bus.subscribe(answers, deliver))
            subscriptions.append(await self.bus.subscribe(bound, deliver))
            subscriptions.append(await self.bus.subscribe(reply, deliver))
            await self.bus.publish(self.subject, encode(request), reply=reply)
            # The server answers the subscriptions and the publish in order: after the flush
            # every refusal of them has arrived, to be explained together (a test key asking
            # a prod host meets two: the prod subject and the prod reply).
            await self.bus.flush()
            with anyio.move_on_after(self.answer_within):
                while True:
                    got = await receive.receive()
                    if denials:
                        raise self._refused(denials, reply)
                    if got is None:
                        continue
                    answer = self._judge(got, reply, deployment_id, offset)
                    if answer is not None:
                        return answer
        finally:
            stop_watching()
            with anyio.CancelScope(shield=True):
                for subscription in subscriptions:
                    await subscription.unsubscribe()
            send.close()
            receive.close()
        raise LogUnavailable(
            f"no answer from {self.host} on {self.subject} within {self.answer_within:g} s: "
            f"is {self.host} a {self.tier.value} host, and is its listener running?",
            reason="no_answer",
            fix="Check the host's name and tier with 'fleet-deploy hosts' (--tier prod for a "
            "prod host), and that its listener runs.",
        )

    def _judge(self, msg: Message, reply: str, deployment_id: str, offset: int) -> LogChunk | None:
        """The chunk ``msg`` brings; None to keep waiting; raises for a refusal."""
        answer = parse_log_answer(msg.data)
        own = msg.subject == log_reply(reply, self.tier.value, self.host)
        if answer is None or not (own or msg.subject in (reply, self._bound(reply))):
            return None
        if isinstance(answer, Status):
            if answer.status == "rejected" and answer.hostname == self.host:
                raise self._rejection(answer, bound=msg.subject != reply)
            return None
        if not own:
            return None  # a chunk is believed only on the host's own log reply subject
        if (
            answer.hostname != self.host
            or answer.deployment_id != deployment_id
            or answer.offset != offset
        ):
            return None
        return answer

    def _bound(self, reply: str) -> str:
        return bound_reply(reply, self.tier.value, self.host)

    def _rejection(self, status: Status, *, bound: bool) -> LogUnavailable:
        said = printable(status.message)[:300]
        if status.error == ErrorCode.INVALID_ACTION:
            return LogUnavailable(
                f"the listener on {self.host} is too old to send logs: it refused the request "
                f"({said})",
                reason="too_old",
                fix=f"Upgrade fleet-deploy on {self.host}; until then its job records hold the "
                "last lines of each failed job ('fleet-deploy deploy' shows them).",
            )
        if status.error == ErrorCode.UNKNOWN_JOB:
            return LogUnavailable(said, reason="unknown_job")
        where = "" if bound else " (on the unbound reply subject: not verified to be it)"
        return LogUnavailable(
            f"{self.host} refused the log request{where}: "
            f"{printable(status.error or 'rejected')}: {said}",
            reason="refused",
        )

    def _refused(self, denials: list[PermissionDenied], reply: str) -> PermissionDenied:
        refusals = [Refusal(d.operation or "publish", d.subject or "?") for d in denials]
        explained = explain_refusals(refusals, key=self.bus.public_key or "", reply=reply)
        return PermissionDenied(str(explained), subject=denials[0].subject, fix=explained.fix)

    async def stream(
        self,
        deployment_id: str,
        on_chunk: Callable[[LogChunk], None],
        *,
        offset: int = 0,
        follow: bool = False,
    ) -> LogChunk:
        """Every chunk of the log from ``offset`` on, each handed to ``on_chunk`` as it
        comes; with ``follow`` until the job has ended, else until the end of the log as
        it is now. Returns the last chunk. Following, a request left unanswered is asked
        again, ``FOLLOW_RETRIES`` times in a row at most."""
        pause = POLL_MIN
        unanswered = 0
        while True:
            try:
                chunk = await self.chunk(deployment_id, offset)
            except LogUnavailable as exc:
                unanswered += 1
                if not follow or exc.reason != "no_answer" or unanswered > FOLLOW_RETRIES:
                    raise
                log.info("log_request_unanswered", host=self.host, offset=offset, again=True)
                continue
            unanswered = 0
            on_chunk(chunk)
            if chunk.next_offset == offset and not chunk.eof:
                raise LogUnavailable(
                    f"{self.host} sent a chunk of the log that does not advance at offset {offset}",
                    reason="refused",
                )
            offset = chunk.next_offset
            if chunk.complete or (chunk.eof and not follow):
                return chunk
            if chunk.eof:  # the end of a running job's log: wait for more
                await anyio.sleep(pause)
                pause = min(pause * 2, POLL_MAX)
            else:
                pause = POLL_MIN


def run_logs(settings: LogsSettings, *, out: TextIO = sys.stdout) -> int:
    """Write a job's log to ``out`` as it comes; with ``--json`` one JSON object per chunk.

    0 once the log is read (with ``--follow``: the job ended and all of it was read); 1 when
    the host keeps no such job; 2 for usage, key, connection and permission errors, a
    refusal, a listener too old, or no answer (``cli.main`` turns those into the code).
    Host text is shown with its control characters escaped; ``--json`` keeps it exact.
    """
    configure_logging("error")
    seed = load_seed(settings.connection.nkey_file)
    line_open = [False]  # whether the text written so far ends inside a line

    def write(chunk: LogChunk) -> None:
        if settings.json:
            # JSON escapes the C0 controls; escaped_json the C1 ones and the bidi characters.
            out.write(escaped_json(chunk.model_dump_json()) + "\n")
        elif chunk.text:
            *whole, rest = chunk.text.split("\n")
            out.write("".join(printable(line) + "\n" for line in whole) + printable(rest))
            line_open[0] = bool(rest)
        out.flush()

    async def main() -> LogChunk:
        urls = settings.connection.nats_urls
        async with await Bus.connect(urls, seed, name="fleet-deploy logs") as bus:
            reader = LogReader(
                bus,
                host=settings.host,
                tier=settings.tier,
                signer=seed,
                answer_within=settings.answer_within,
            )
            return await reader.stream(
                settings.deployment_id, write, offset=settings.offset, follow=settings.follow
            )

    finished = run_until_signal(main)
    last = finished.value
    if last is None:
        print("fleet-deploy: interrupted", file=sys.stderr)
        return finished.exit_code
    if line_open[0]:
        out.write("\n")  # a log whose last line has no line end: end it for the shell
    if not settings.json and not last.finished:
        print(
            f"fleet-deploy: the job is still running on {settings.host}; "
            "--follow reads on until it ends",
            file=sys.stderr,
        )
    log.debug("log_read", host=settings.host, size=last.size)
    return 0
