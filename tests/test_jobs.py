"""The jobs room: typed job records, written atomically, read back without ever raising."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from fleet_core.host.jobs.jobdir import OUTPUT_LOG, RECORD_FILE
from fleet_core.host.jobs.outcome import Outcome
from fleet_core.host.jobs.store import JobPhase, JobRecord, JobStore
from fleet_core.protocol.actions import Action
from fleet_core.protocol.messages import DeployRequest, ErrorCode, StatusKind

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

REPLY = "deploy.responses.0123abcd"
ARGV = ("nixos-rebuild", "switch", "--flake", "git+https://***@g/r.git?ref=main#h", "--refresh")


def record(request_id: str = "job1", started_at: float = 1_700_000_000.25) -> JobRecord:
    request = DeployRequest(action=Action.BOOT, revision="main", reply_to=REPLY, id=request_id)
    return JobRecord(request_id=request_id, request=request, argv=ARGV, started_at=started_at)


def directories(store: JobStore) -> list[Path]:
    return sorted(store.jobs.iterdir())


class TestRecord:
    def test_a_job_walks_its_phases_on_disk(self, tmp_path: Path) -> None:
        """Each phase change replaces job.json; load returns what was last saved."""
        store = JobStore(tmp_path)
        accepted = record()
        directory = store.create(accepted)
        assert directory is not None
        assert store.load("job1") == accepted
        assert accepted.phase is JobPhase.ACCEPTED
        running = accepted.running()
        store.save(directory, running)
        assert store.load("job1") == running
        assert running.phase is JobPhase.RUNNING
        failed = Outcome(StatusKind.FAILED, ErrorCode.TIMEOUT, "ran too long", ("line",))
        finished = running.finished(failed, exit_code=-15, duration_s=600.12345, now=1.7e9 + 601)
        store.save(directory, finished)
        loaded = store.load("job1")
        assert loaded is not None
        assert (loaded.phase, loaded.status, loaded.error, loaded.message) == (
            JobPhase.FINISHED,
            StatusKind.FAILED,
            "timeout",
            "ran too long",
        )
        assert (loaded.exit_code, loaded.duration_s, loaded.pid) == (-15, 600.123, None)
        assert sorted(p.name for p in directory.iterdir()) == [RECORD_FILE]

    def test_the_file_holds_the_request_as_on_the_wire(self, tmp_path: Path) -> None:
        """job.json carries the validated request and the redacted argv, readable as JSON."""
        store = JobStore(tmp_path)
        directory = store.create(record())
        assert directory is not None
        data = json.loads((directory / RECORD_FILE).read_text())
        assert data["request"] == {
            "action": "boot",
            "revision": "main",
            "reply_to": REPLY,
            "id": "job1",
        }
        assert (data["phase"], data["argv"], data["started_at"]) == (
            "accepted",
            list(ARGV),
            1.7e9 + 0.25,
        )
        assert directory.name.endswith(".250000Z-job1")

    def test_a_newer_listeners_fields_are_ignored(self, tmp_path: Path) -> None:
        """A record with fields this version does not know still loads."""
        store = JobStore(tmp_path)
        directory = store.create(record())
        assert directory is not None
        data = json.loads((directory / RECORD_FILE).read_text())
        (directory / RECORD_FILE).write_text(json.dumps({**data, "signature": "later"}))
        assert store.load("job1") == record()


class TestStore:
    def test_keeps_the_newest(self, tmp_path: Path) -> None:
        """Only the newest `keep` jobs are kept, and latest() is the newest of them."""
        store = JobStore(tmp_path, keep=3)
        for index in range(5):
            store.create(record(f"job{index}", started_at=1_700_000_000.0 + index))
        assert [p.name.split("-", 1)[1] for p in directories(store)] == ["job2", "job3", "job4"]
        latest = store.latest()
        assert latest is not None and latest.request_id == "job4"
        assert store.load("job0") is None

    def test_order_holds_within_one_second(self, tmp_path: Path) -> None:
        """Two jobs in the same second sort by start time, not by their ids."""
        store = JobStore(tmp_path)
        store.create(record("zzz", started_at=1_700_000_000.2))
        store.create(record("aaa", started_at=1_700_000_000.7))
        latest = store.latest()
        assert latest is not None and latest.request_id == "aaa"

    def test_load_matches_the_whole_id(self, tmp_path: Path) -> None:
        """An id that ends another id (b-a, a) is told apart from it."""
        store = JobStore(tmp_path)
        store.create(record("a", started_at=1_700_000_000.0))
        store.create(record("b-a", started_at=1_700_000_001.0))
        found = store.load("a"), store.load("b-a")
        assert [r.request_id if r else None for r in found] == ["a", "b-a"]

    @pytest.mark.parametrize("request_id", ["../job1", "*", "job?", "", "a/b", "a" * 65])
    def test_load_refuses_what_is_not_an_id(self, tmp_path: Path, request_id: str) -> None:
        """An id that could be a path or a pattern finds nothing, even beside a real job."""
        store = JobStore(tmp_path)
        store.create(record())
        assert store.load(request_id) is None

    def test_an_unwritable_state_dir_costs_only_the_records(self, tmp_path: Path) -> None:
        """A state dir that cannot be created gives no directory, and nothing raises."""
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        store = JobStore(blocker / "state")
        with capture_logs() as logs:
            directory = store.create(record())
            store.save(directory, record().running())
        assert directory is None
        assert store.load("job1") is None
        assert store.latest() is None
        assert [e["event"] for e in logs] == ["state_dir_unwritable"]

    def test_a_failed_write_leaves_the_old_record(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When the rename fails, job.json keeps its last whole version and no temp file stays."""
        store = JobStore(tmp_path)
        directory = store.create(record())
        assert directory is not None
        (directory / OUTPUT_LOG).write_text("output\n")

        def refuse(src: object, dst: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", refuse)
        with capture_logs() as logs:
            store.save(directory, record().running())
        assert [e["event"] for e in logs] == ["state_dir_unwritable"]
        assert store.load("job1") == record()
        assert sorted(p.name for p in directory.iterdir()) == [RECORD_FILE, OUTPUT_LOG]


class TestUnreadableRecords:
    @pytest.mark.parametrize(
        "content",
        [
            b"",
            b"{not json",
            b"\xff\xfe",
            b"[]",
            b'{"request_id": "job1"}',
            json.dumps(
                {
                    "request_id": "job1",
                    "request": {"reply_to": "_INBOX.x"},
                    "argv": [],
                    "started_at": 1,
                }
            ).encode(),
            json.dumps(
                {
                    "request_id": "other",
                    "request": {"reply_to": REPLY},
                    "argv": [],
                    "started_at": 1,
                }
            ).encode(),
        ],
        ids=["empty", "not-json", "not-utf8", "array", "incomplete", "bad-request", "other-id"],
    )
    def test_is_none_and_logged(self, tmp_path: Path, content: bytes) -> None:
        """A record that cannot be read is None for load and latest, with a log line each."""
        store = JobStore(tmp_path)
        directory = store.create(record())
        assert directory is not None
        (directory / RECORD_FILE).write_bytes(content)
        with capture_logs() as logs:
            assert store.load("job1") is None
            assert store.latest() is None
        assert [e["event"] for e in logs] == ["job_record_unreadable"] * 2

    def test_a_missing_record_is_none(self, tmp_path: Path) -> None:
        """A job directory without job.json (its first write failed) has no record."""
        store = JobStore(tmp_path)
        directory = store.create(record())
        assert directory is not None
        (directory / RECORD_FILE).unlink()
        assert store.latest() is None
