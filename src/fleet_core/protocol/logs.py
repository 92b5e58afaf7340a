"""Whole logs on demand, on the wire (pure): the log request's window, the chunk, the cut.

A deployer reads a job's full output from its host one chunk at a time. The request is a
deploy request (``fleet_core.protocol.messages.DeployRequest``) of action ``logs`` whose
``revision`` is the deployment's id — so the signature covers which job's log is read —
sent on the host's own subject ``deploy.<tier>.<host>``: the server's permissions already
say which keys may ask which hosts, as they do for a deploy. Its optional fields:

    offset   the byte of ``output.log`` to start at (default 0)
    size     the most bytes to read (default and cap ``MAX_LOG_CHUNK_BYTES``)
    lines    the most lines to send (a window of lines, as the MCP tool asks)

They are not signed: whoever could change them in flight could only choose which part of
that same log goes to that same requester. The answer is one ``LogChunk``; a refusal (no
such job, an offset past the end) is a ``rejected`` status, as for any request. Both go to
the bound reply subject with ``.log`` after it (``log_reply``): a subject of their own, so
that the history streams, which record every bound status (``deploy.responses.*.<tier>.*``),
record none of a log's text — reading a 60 MB log would otherwise write 60 MB of history.
The layout ``nats-config`` writes lets each listener publish there for its own tier and
hostname only, as for its statuses. (A listener too old for log requests refuses the
unknown action on the plain bound subject.)

Every answer stays under ``MAX_LOG_ANSWER_BYTES``, below ``MAX_STATUS_BYTES`` and far below
a server's max payload, whatever the bytes: JSON writes a control character as six bytes
and an invalid byte as three (U+FFFD), so ``encode_chunk`` halves the window until the
encoded answer fits. A chunk ends after a whole line where it can (so a window of lines
never splits one, and a line still being written is held back until it ends); only a line
longer than the window is cut, and then between characters, never inside one.
"""

from __future__ import annotations

import json
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError

from fleet_core.protocol.messages import MAX_STATUS_BYTES, Status, parse_status

__all__ = [
    "LOG_REPLY_SUFFIX",
    "MAX_LOG_ANSWER_BYTES",
    "MAX_LOG_CHUNK_BYTES",
    "MAX_LOG_LINES",
    "LogChunk",
    "encode_chunk",
    "log_reply",
    "parse_log_answer",
    "sendable",
    "utf8_boundary",
]

MAX_LOG_CHUNK_BYTES: Final = 48 * 1024  # read from output.log for one answer, at most
MAX_LOG_ANSWER_BYTES: Final = 60 * 1024  # one encoded answer, at most (< MAX_STATUS_BYTES)
MAX_LOG_LINES: Final = 10_000  # a window of lines, at most
assert MAX_LOG_ANSWER_BYTES < MAX_STATUS_BYTES
LOG_REPLY_SUFFIX: Final = "log"


def log_reply(reply_to: str, tier: str, hostname: str) -> str:
    """Where a listener of ``tier`` named ``hostname`` answers the log request of
    ``reply_to``: its bound reply subject, then ``.log``."""
    return f"{reply_to}.{tier}.{hostname}.{LOG_REPLY_SUFFIX}"


class LogChunk(BaseModel):
    """One piece of a job's ``output.log``, as its host sends it.

    ``text`` is the bytes from ``offset`` to ``next_offset`` decoded as UTF-8 (an invalid
    byte becomes U+FFFD); it is host text, raw: whoever shows it escapes it. ``size`` is how
    long the file was when read. ``eof``: asking again at ``next_offset`` brings nothing new
    until the job writes more. ``finished``: the job had ended before the file was read, so
    with ``eof`` this is the whole log. ``status`` is the job's final status once finished.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    hostname: str
    tier: str
    request_id: str | None = None
    deployment_id: str
    offset: int
    next_offset: int
    size: int
    text: str
    eof: bool
    finished: bool
    status: str | None = None

    @property
    def complete(self) -> bool:
        """Nothing more will ever come: the job has ended and this chunk reaches the end."""
        return self.eof and self.finished


def utf8_boundary(data: bytes) -> int:
    """The length of ``data`` without a UTF-8 character cut off at its end: the place to cut
    so that the character is sent whole in the next chunk (never 0 for 4 bytes or more)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: its lead is further back
            continue
        needed = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
        if byte < 0x80 or byte >> 3 == 0b11111:  # ASCII, or not a lead byte at all
            needed = 1
        return len(data) - back if back < needed else len(data)
    return len(data)  # continuation bytes only: invalid whatever the cut


def sendable(data: bytes, *, complete: bool, lines: int | None = None) -> int:
    """How many leading bytes of ``data`` go in one chunk.

    ``complete``: ``data`` runs to the end of a finished job's log, so all of it goes (up to
    ``lines`` lines). Otherwise the chunk ends after its last whole line (or its
    ``lines``-th); a window without a line end that reaches the end of the file is a line
    still being written, held back (0); one that does not is a line longer than the window,
    cut between characters.
    """
    if lines is not None:
        end = -1
        for _ in range(lines):
            end = data.find(b"\n", end + 1)
            if end < 0:
                break
        else:
            return end + 1
    if complete:
        return len(data)
    last = data.rfind(b"\n")
    if last >= 0:
        return last + 1
    return 0


def encode_chunk(
    *,
    hostname: str,
    tier: str,
    request_id: str | None,
    deployment_id: str,
    offset: int,
    data: bytes,
    size: int,
    finished: bool,
    status: str | None = None,
    lines: int | None = None,
    limit: int = MAX_LOG_ANSWER_BYTES,
) -> tuple[bytes, LogChunk]:
    """The answer to a log request that read ``data`` at ``offset`` of a file of ``size``
    bytes, encoded within ``limit`` bytes, and the chunk it holds.

    The window is halved until the encoded chunk fits, each time cut again after a whole line
    or between characters, so a chunk always advances (but for a held-back line at the end).
    """
    window = data
    while True:
        reaches_end = offset + len(window) >= size
        cut = sendable(window, complete=reaches_end and finished, lines=lines)
        if cut == 0 and not reaches_end:  # a line longer than the window
            cut = utf8_boundary(window) or len(window)
        rest = window[cut:]
        chunk = LogChunk(
            hostname=hostname,
            tier=tier,
            request_id=request_id,
            deployment_id=deployment_id,
            offset=offset,
            next_offset=offset + cut,
            size=size,
            text=window[:cut].decode("utf-8", "replace"),
            # What is left is at most a line still being written: nothing more for now.
            eof=reaches_end and b"\n" not in rest and (not finished or not rest),
            finished=finished,
            status=status,
        )
        encoded = chunk.model_dump_json().encode()
        if len(encoded) <= limit or len(window) <= 1:
            return encoded, chunk
        window = window[: len(window) // 2]


def parse_log_answer(data: bytes) -> LogChunk | Status | None:
    """A host's answer to a log request: a chunk, a status (a refusal), or None when it is
    neither (the requester ignores it)."""
    try:
        obj: Any = json.loads(data) if len(data) <= MAX_STATUS_BYTES else None
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        return None
    if "next_offset" not in obj:
        return parse_status(data)
    try:
        chunk = LogChunk.model_validate(obj)
    except ValidationError:
        return None
    # A chunk that goes backwards or past its own file is not one.
    return chunk if 0 <= chunk.offset <= chunk.next_offset <= chunk.size else None
