"""Log chunks on the wire (fleet_core.protocol.logs), without a server: where a chunk is cut,
that every answer fits its limit whatever the bytes, and what a log request may carry."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from fleet_core.errors import RequestRejected
from fleet_core.protocol.actions import REBUILD_ACTIONS, Action, HostKind, actions_for
from fleet_core.protocol.logs import (
    MAX_LOG_ANSWER_BYTES,
    MAX_LOG_CHUNK_BYTES,
    LogChunk,
    encode_chunk,
    parse_log_answer,
    sendable,
    utf8_boundary,
)
from fleet_core.protocol.messages import DeployRequest, Status, StatusKind, encode

pytestmark = pytest.mark.pure


def read_all(log: bytes, *, finished: bool = True, lines: int | None = None) -> list[LogChunk]:
    """Every chunk a requester gets for ``log``, asking from each chunk's next offset."""
    chunks: list[LogChunk] = []
    offset = 0
    while True:
        window = log[offset : offset + MAX_LOG_CHUNK_BYTES]
        data, chunk = encode_chunk(
            hostname="web1",
            tier="test",
            request_id="r",
            deployment_id="d",
            offset=offset,
            data=window,
            size=len(log),
            finished=finished,
            lines=lines,
        )
        assert len(data) <= MAX_LOG_ANSWER_BYTES
        assert parse_log_answer(data) == chunk
        chunks.append(chunk)
        if chunk.eof:
            return chunks
        assert chunk.next_offset > offset, "a chunk that is not the end must advance"
        offset = chunk.next_offset


class TestCut:
    def test_a_chunk_ends_after_its_last_whole_line(self) -> None:
        """A window of a running job's log is cut after its last line end."""
        assert sendable(b"one\ntwo\nthr", complete=False) == len(b"one\ntwo\n")

    def test_a_line_being_written_is_held_back(self) -> None:
        """At the end of a running job's log, a line without its end is not sent yet."""
        assert sendable(b"still writi", complete=False) == 0

    def test_a_finished_log_is_sent_to_its_last_byte(self) -> None:
        """The end of a finished job's log goes whole, a last line without line end too."""
        assert sendable(b"one\nlast", complete=True) == len(b"one\nlast")

    def test_a_window_of_lines_stops_after_that_many(self) -> None:
        """With ``lines``, the chunk ends after that many lines."""
        assert sendable(b"a\nb\nc\nd\n", complete=True, lines=2) == len(b"a\nb\n")
        assert sendable(b"a\nb", complete=True, lines=5) == len(b"a\nb")

    @pytest.mark.parametrize("char", ["é", "€", "😀"])
    def test_a_character_is_never_cut(self, char: str) -> None:
        """A cut inside a multi-byte character moves before it."""
        data = ("x" * 10 + char).encode()
        for end in range(11, len(data)):
            assert utf8_boundary(data[:end]) == 10
        assert utf8_boundary(data) == len(data)

    def test_a_line_longer_than_the_window_is_cut_between_characters(self) -> None:
        """A line longer than a chunk arrives in pieces that join to the exact text."""
        text = "é" * (MAX_LOG_CHUNK_BYTES * 2) + "\n"
        chunks = read_all(text.encode())
        assert len(chunks) > 2
        assert "".join(c.text for c in chunks) == text


class TestLimit:
    @pytest.mark.parametrize(
        "byte", [b"\x1b", b"\x00", b"\xff", b'"', b"\\", b"\xe2\x80\xae"], ids=repr
    )
    def test_every_answer_fits_whatever_the_bytes(self, byte: bytes) -> None:
        """Bytes that JSON writes six times as long (or invalid ones, three) still make
        answers within the limit, and every byte of the log is covered once, in order."""
        log = byte * (MAX_LOG_CHUNK_BYTES * 3) + b"\n"
        chunks = read_all(log)
        assert chunks[-1].next_offset == len(log)
        assert all(a.next_offset == b.offset for a, b in itertools.pairwise(chunks))
        if byte != b"\xff":  # a valid character: the text joins back exactly
            assert "".join(c.text for c in chunks) == log.decode()

    def test_random_text_joins_back_exactly(self) -> None:
        """A log of mixed scripts, controls and long lines arrives exactly, line by line."""
        rng = random.Random(21)  # noqa: S311 - a fixed sample of text, not a secret
        alphabet = "abc é€😀\t\x1b[31m\r"
        lines = [
            "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 300))) for _ in range(2000)
        ]
        log = "\n".join(lines).encode()
        chunks = read_all(log)
        assert "".join(c.text for c in chunks) == log.decode()
        assert chunks[-1].complete

    def test_a_running_jobs_log_ends_at_its_last_whole_line(self) -> None:
        """Of a running job, the chunk at the end says eof and holds the partial line back."""
        chunks = read_all(b"one\ntwo\npart", finished=False)
        assert chunks[-1].eof and not chunks[-1].finished
        assert chunks[-1].next_offset == len(b"one\ntwo\n")


class TestAnswers:
    def test_a_refusal_is_a_status(self) -> None:
        """An answer without ``next_offset`` is read as a status (a refusal)."""
        status = Status(hostname="web1", status=StatusKind.REJECTED, error="unknown_job")
        assert parse_log_answer(encode(status)) == status

    @pytest.mark.parametrize(
        "body",
        [b"[]", b"not json", b"{" * 100_000, json.dumps({"next_offset": "x"}).encode()],
        ids=["array", "text", "deep", "wrong-type"],
    )
    def test_junk_is_no_answer(self, body: bytes) -> None:
        """What is neither a chunk nor a status is ignored."""
        assert parse_log_answer(body) is None

    def test_a_chunk_that_goes_backwards_is_no_chunk(self) -> None:
        """A chunk whose next offset is before its offset, or past its file, is ignored."""
        good: dict[str, object] = {"hostname": "h", "tier": "test", "deployment_id": "d"}
        good |= {"text": "", "eof": True, "finished": True}
        good |= {"offset": 10, "next_offset": 10, "size": 10}
        assert parse_log_answer(json.dumps(good).encode()) is not None
        for bad in ({"next_offset": 5}, {"size": 5}, {"offset": -1, "next_offset": 0}):
            assert parse_log_answer(json.dumps(good | bad).encode()) is None


class TestRequest:
    def test_logs_runs_no_rebuild(self) -> None:
        """``logs`` is an action of every host kind but no deploy action."""
        assert Action.LOGS not in REBUILD_ACTIONS
        for kind in HostKind:
            assert Action.LOGS not in actions_for(kind)

    def test_a_window_is_left_off_the_wire_unless_set(self) -> None:
        """A request without a window is what it always was: old listeners see nothing new."""
        body = json.loads(encode(DeployRequest(reply_to="deploy.responses.x", id="x")))
        assert not {"offset", "size", "lines"} & set(body)
        asked = DeployRequest(
            action=Action.LOGS, revision="abc", reply_to="deploy.responses.x", offset=5, lines=3
        )
        assert json.loads(encode(asked))["offset"] == 5

    @pytest.mark.parametrize(
        "window",
        [
            {"offset": -1},
            {"offset": "5"},
            {"offset": True},
            {"offset": 2**60},
            {"size": 0},
            {"lines": 0},
            {"lines": 1.5},
        ],
        ids=str,
    )
    def test_a_bad_window_is_refused(self, window: dict[str, object]) -> None:
        """Negative, huge, boolean, fractional or textual numbers are refused as invalid."""
        with pytest.raises(RequestRejected) as caught:
            DeployRequest.model_validate(
                {"action": "logs", "revision": "abc", "reply_to": "deploy.responses.x", **window}
            )
        assert caught.value.code == "invalid_request"
