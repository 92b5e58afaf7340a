"""The dashboard's board: rows from discovery, live deployments from statuses (pure)."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest

from fleet_core.protocol.facts import HostFacts, LastJob
from fleet_core.protocol.messages import HostInfo, Status, StatusKind
from fleet_dashboard.board import (
    COALESCE,
    ENDED_QUIET,
    FLEET_ENDED_HOSTS,
    HOST_BURST,
    MAX_ENDED,
    MAX_EVENTS,
    MAX_RUNNING,
    Board,
    Origin,
    clean,
    filter_rows,
    origin_of,
)
from fleet_dashboard.hub import MAX_PENDING, Event, Hub

pytestmark = pytest.mark.pure

DEPLOYMENT = "a" * 32


def host(name: str, tier: str = "test", role: str | None = "web", **facts: Any) -> HostInfo:
    return HostInfo(
        hostname=name,
        tier=tier,
        role=role,
        version="0.1.0",
        kind="nixos",
        facts=HostFacts(**facts) if facts else None,
    )


def status(name: str, kind: str, deployment: str = DEPLOYMENT, **fields: Any) -> Status:
    return Status(
        hostname=name,
        status=StatusKind(kind),
        request_id=deployment,
        tier=fields.pop("tier", "test"),
        **fields,
    )


def bound(name: str, tier: str = "test", deployment: str = DEPLOYMENT) -> Origin:
    return Origin(deployment, tier, name)


def board_with(*hosts: HostInfo) -> Board:
    board = Board(cli_version="0.1.0")
    board.refresh(hosts, hidden=[], now=100.0)
    return board


class TestRows:
    def test_one_row_per_host_with_every_column(self) -> None:
        """Each discovered host is a row with tier, role, kind, revision, reboot, last job."""
        job = LastJob(id="j1", action="switch", revision="main", status="failed", finished_at=9.0)
        board = board_with(
            host("web1", configuration_revision="main", needs_reboot=True, last_job=job),
            host("pweb1", tier="prod", role=None),
        )
        body = json.loads(board.fleet_json(now=101.0))
        rows = {row["hostname"]: row for row in body["hosts"]}
        assert set(rows) == {"web1", "pweb1"}
        web1 = rows["web1"]
        assert (web1["tier"], web1["role"], web1["kind"]) == ("test", "web", "nixos")
        assert web1["revision"] == "main"
        assert web1["needs_reboot"] is True
        assert web1["last_job"]["status"] == "failed"
        assert web1["listener_version"] == "0.1.0"
        assert web1["ok"] is False
        assert body["refreshed_at"] == 100.0
        assert body["tiers_hidden"] == []

    def test_each_tier_is_judged_against_its_own_last_deploy(self) -> None:
        """Prod running behind test is not 'behind': each tier has its own reference."""
        test_job = LastJob(
            id="t", action="switch", revision="new", status="completed", finished_at=20.0
        )
        prod_job = LastJob(
            id="p", action="switch", revision="old", status="completed", finished_at=10.0
        )
        board = board_with(
            host("web1", configuration_revision="new", last_job=test_job),
            host("pweb1", tier="prod", configuration_revision="old", last_job=prod_job),
        )
        assert board.rows["pweb1"]["behind"] is False
        assert board.rows["web1"]["behind"] is False

    def test_hostile_text_from_a_host_is_made_printable(self) -> None:
        """Escape sequences in a host's facts reach the board only as visible escapes."""
        board = board_with(host("web1", configuration_revision="main\x1b]0;owned\x07\u202e"))
        revision = board.rows["web1"]["revision"]
        assert "\x1b" not in revision and "\u202e" not in revision
        assert "\\x1b" in revision

    def test_hidden_tiers_are_listed(self) -> None:
        """A tier the key may not read is reported, not an error."""
        board = Board(cli_version="0.1.0")
        board.refresh([host("web1")], hidden=["prod"], now=1.0)
        body = json.loads(board.fleet_json(now=1.0))
        assert body["tiers_hidden"] == ["prod"]
        assert body["error"] is None

    def test_a_failed_refresh_keeps_the_rows_and_says_why(self) -> None:
        """An outage leaves the last rows on the page, with the reason."""
        board = board_with(host("web1"))
        board.failed_refresh("cannot reach the NATS server")
        body = json.loads(board.fleet_json(now=2.0))
        assert [r["hostname"] for r in body["hosts"]] == ["web1"]
        assert body["error"] == "cannot reach the NATS server"


class TestLiveDeployments:
    def test_statuses_build_a_deployment_with_counts_and_lines(self) -> None:
        """Each host's latest status, phase and line; counts by status."""
        board = board_with(host("web1"), host("web2"))
        board.take_status(bound("web1"), status("web1", "accepted", action="switch"), now=1.0)
        board.take_status(bound("web2"), status("web2", "accepted"), now=1.0)
        board.take_status(
            bound("web1"),
            status("web1", "progress", phase="building", log_tail=["a", "building foo"]),
            now=2.0,
        )
        board.take_status(
            bound("web2"),
            status("web2", "failed", error="build_failed", log_tail=["error: boom"]),
            now=3.0,
        )
        live = board.live(DEPLOYMENT)
        assert live is not None
        assert live["action"] == "switch"
        assert live["counts"] == {"progress": 1, "failed": 1}
        hosts = {h["hostname"]: h for h in live["hosts"]}
        assert hosts["web1"]["phase"] == "building"
        assert hosts["web1"]["line"] == "building foo"
        assert hosts["web1"]["final"] is False
        assert hosts["web2"]["final"] is True
        assert hosts["web2"]["error"] == "build_failed"
        assert hosts["web2"]["line"] == "error: boom"
        assert [e["status"] for e in hosts["web1"]["events"]] == ["accepted", "progress"]

    def test_a_final_status_shows_its_outcome_not_a_trace_fragment(self) -> None:
        """A failed host's line is its message (why it failed), not the tail's last line."""
        board = board_with(host("web2"))
        board.take_status(
            bound("web2"),
            status("web2", "progress", phase="building", message="building", log_tail=["b"]),
            now=1.0,
        )
        board.take_status(
            bound("web2"),
            status(
                "web2",
                "failed",
                error="build_failed",
                message="nixos-rebuild failed (exit 1): undefined variable 'webroot'",
                log_tail=["error: undefined variable 'webroot'", "   15|   };"],
            ),
            now=2.0,
        )
        live = board.live(DEPLOYMENT)
        assert live is not None
        assert live["hosts"][0]["line"] == (
            "nixos-rebuild failed (exit 1): undefined variable 'webroot'"
        )

    def test_hostile_text_in_statuses_is_escaped_and_bounded(self) -> None:
        """A log line with terminal escapes, bidi overrides and a huge length is shown safely."""
        board = board_with(host("web1"))
        evil = "\x1b[2K\rOK \u202e" + "x" * 5000
        board.take_status(
            bound("web1"),
            status("web1", "failed", error="e\x1b[31m", log_tail=[evil], revision="m\x07"),
            now=1.0,
        )
        live = board.live(DEPLOYMENT)
        assert live is not None
        text = json.dumps(live, ensure_ascii=False)
        assert not any(ch in text for ch in "\x1b\r\u202e\x07")
        line = live["hosts"][0]["line"]
        assert line.startswith("\\x1b[2K\\x0dOK \\u202e")
        assert len(line) <= 500
        assert live["hosts"][0]["error"] == "e\\x1b[31m"
        assert live["revision"] == "m\\x07"

    def test_a_status_that_contradicts_its_subject_is_dropped(self) -> None:
        """web1's key cannot speak for web2: a body naming another host or tier is ignored."""
        board = board_with(host("web1"), host("web2"))
        assert board.take_status(bound("web1"), status("web2", "failed"), now=1.0) is None
        board.take_status(bound("web1"), status("web1", "failed", tier="prod"), now=1.0)
        board.take_status(bound("web1"), status("web1", "failed", deployment="b" * 32), now=1.0)
        assert board.live(DEPLOYMENT) is None
        assert board.deployments() == []

    def test_a_final_status_is_not_undone_by_a_late_heartbeat(self) -> None:
        """A progress message overtaken by the final status leaves the host final."""
        board = board_with(host("web1"))
        board.take_status(bound("web1"), status("web1", "completed"), now=1.0)
        board.take_status(bound("web1"), status("web1", "progress"), now=1.1)
        live = board.live(DEPLOYMENT)
        assert live is not None
        assert live["hosts"][0]["status"] == "completed"
        assert live["counts"] == {"completed": 1}

    def test_timeline_events_are_capped_and_keep_the_first(self) -> None:
        """A long job keeps at most MAX_EVENTS events per host, its first among them."""
        board = board_with(host("web1"))
        board.take_status(bound("web1"), status("web1", "accepted"), now=0.0)
        for i in range(MAX_EVENTS * 3):
            board.take_status(
                bound("web1"), status("web1", "progress", phase=f"step{i}"), now=float(i + 1)
            )
        live = board.live(DEPLOYMENT)
        assert live is not None
        events = live["hosts"][0]["events"]
        assert len(events) == MAX_EVENTS
        assert events[0]["status"] == "accepted"
        assert events[-1]["phase"] == f"step{MAX_EVENTS * 3 - 1}"

    def test_heartbeats_without_news_add_no_timeline_event(self) -> None:
        """Progress in the same phase updates the line, not the timeline."""
        board = board_with(host("web1"))
        for i in range(10):
            board.take_status(
                bound("web1"),
                status("web1", "progress", phase="building", log_tail=[f"line {i}"]),
                now=float(i),
            )
        live = board.live(DEPLOYMENT)
        assert live is not None
        assert len(live["hosts"][0]["events"]) == 1
        assert live["hosts"][0]["line"] == "line 9"

    def test_a_running_deployment_marks_its_hosts_busy(self) -> None:
        """A status changes the host's row (busy, then the last job): a host event."""
        board = board_with(host("web1"))
        row = board.take_status(bound("web1"), status("web1", "accepted", action="switch"), now=1.0)
        assert row is not None and row["busy"] is True
        assert board.take_status(bound("web1"), status("web1", "started"), now=1.5) is None
        row = board.take_status(
            bound("web1"), status("web1", "completed", revision="main"), now=2.0
        )
        assert row is not None and row["busy"] is False
        assert row["last_job"]["status"] == "completed"
        assert row["last_job"]["id"] == DEPLOYMENT

    def test_a_failed_deploy_makes_its_row_not_ok_before_the_next_discovery(self) -> None:
        """The row says what the next discovery's judgement will: not ok, and why."""
        board = board_with(
            host("web1", configuration_revision="main"), host("web2", configuration_revision="main")
        )
        assert (board.rows["web1"]["ok"], board.rows["web1"]["problems"]) == (True, [])
        board.take_status(bound("web1"), status("web1", "accepted", action="switch"), now=1.0)
        board.take_status(bound("web2"), status("web2", "accepted", action="switch"), now=1.0)
        failed = board.take_status(bound("web1"), status("web1", "failed"), now=2.0)
        done = board.take_status(bound("web2"), status("web2", "completed"), now=2.0)
        assert failed is not None and done is not None
        assert (failed["ok"], failed["healthy"]) == (False, False)
        assert failed["problems"] == ["last switch failed"]
        assert (done["ok"], done["problems"]) == (True, [])

    def test_changed_rows_are_sent_once_and_a_burst_becomes_one_fleet_body(self) -> None:
        """A few changed rows go out as host events, once; a deploy to many hosts changes
        more than HOST_BURST rows at once, and one fleet body replaces them."""
        board = board_with(*(host(f"web{i}") for i in range(HOST_BURST + 2)))
        board.take_status(bound("web0"), status("web0", "accepted"), now=1.0)
        rows = board.changed_rows()
        assert rows is not None and [r["hostname"] for r in rows] == ["web0"]
        assert board.changed_rows() == []
        for i in range(HOST_BURST + 2):  # web0 is busy already: one more than the burst
            board.take_status(bound(f"web{i}"), status(f"web{i}", "started"), now=2.0)
        assert board.changed_rows() is None
        assert board.changed_rows() == []

    def test_a_refresh_during_a_deployment_keeps_its_hosts_busy(self) -> None:
        """Facts read before the job started do not clear busy while statuses say it runs."""
        board = board_with(host("web1"))
        board.take_status(bound("web1"), status("web1", "started"), now=1.0)
        board.refresh([host("web1")], hidden=[], now=2.0)
        assert board.rows["web1"]["busy"] is True


class TestEnded:
    def test_ends_once_every_host_is_final_and_quiet(self) -> None:
        """Ended: every host seen is final and none spoke for ENDED_QUIET seconds."""
        board = board_with(host("web1"), host("web2"))
        board.take_status(bound("web1"), status("web1", "completed"), now=10.0)
        board.take_status(bound("web2"), status("web2", "started"), now=10.0)
        assert board.tick(10.0 + ENDED_QUIET + 1) == []  # web2 still runs
        board.take_status(bound("web2"), status("web2", "failed"), now=20.0)
        assert board.next_tick() == 20.0 + ENDED_QUIET
        assert board.tick(20.0 + ENDED_QUIET - 0.1) == []
        assert board.tick(20.0 + ENDED_QUIET) == [DEPLOYMENT]
        live = board.live(DEPLOYMENT)
        assert live is not None and live["ended"] is True
        assert board.next_tick() is None

    def test_running_first_then_ended_and_old_ended_ones_go(self) -> None:
        """The list: running first; at most MAX_ENDED ended ones, the newest."""
        board = board_with(host("web1"))
        for i in range(MAX_ENDED + 5):
            ident = f"d{i:03d}"
            board.take_status(
                Origin(ident, "test", "web1"), status("web1", "completed", ident), now=float(i)
            )
        board.tick(1000.0)
        board.take_status(
            Origin("running", "test", "web1"), status("web1", "started", "running"), now=1001.0
        )
        listed = [d["id"] for d in board.deployments()]
        assert listed[0] == "running"
        assert len(listed) == MAX_ENDED + 1
        assert listed[1] == f"d{MAX_ENDED + 4:03d}"
        assert "d000" not in listed

    def test_the_fleet_body_keeps_ended_deployments_within_a_host_budget(self) -> None:
        """After deploys to many hosts the fleet body lists the newest ended ones that fit
        FLEET_ENDED_HOSTS entries (one at least); each stays whole at live()."""
        size = FLEET_ENDED_HOSTS // 2 + 1
        board = Board(cli_version="0.1.0")
        for d in range(3):
            ident = f"big{d}"
            for i in range(size):
                name = f"h{i}"
                board.take_status(
                    Origin(ident, "test", name), status(name, "completed", ident), now=float(d)
                )
        board.tick(100.0)
        assert [d["id"] for d in board.deployments()] == ["big2"]
        assert board.live("big0") is not None

    def test_running_deployments_are_bounded(self) -> None:
        """A listener naming endless ids cannot grow the board past MAX_RUNNING."""
        board = board_with(host("web1"))
        for i in range(MAX_RUNNING + 50):
            ident = f"x{i}"
            board.take_status(
                Origin(ident, "test", "web1"), status("web1", "started", ident), now=float(i)
            )
        assert len(board.deployments()) == MAX_RUNNING


class TestCoalescing:
    def test_at_most_one_event_per_deployment_per_period(self) -> None:
        """Many statuses within COALESCE make one event now and one when the period ends."""
        board = board_with(*(host(f"web{i}") for i in range(10)))
        board.take_status(bound("web0"), status("web0", "accepted"), now=1.0)
        sent, later = board.due(1.0)
        assert len(sent) == 1 and later is None
        for i in range(1, 10):
            board.take_status(bound(f"web{i}"), status(f"web{i}", "accepted"), now=1.01)
        sent, later = board.due(1.05)
        assert sent == [] and later == pytest.approx(1.0 + COALESCE)
        sent, later = board.due(1.0 + COALESCE)
        assert len(sent) == 1 and len(sent[0]["hosts"]) == 10
        assert board.due(2.0) == ([], None)  # nothing new: nothing to send


class TestFilters:
    rows: ClassVar[list[dict[str, Any]]] = [
        {"hostname": "web1", "tier": "test", "role": "web", "ok": True, "busy": False},
        {
            "hostname": "db1",
            "tier": "test",
            "role": None,
            "ok": False,
            "needs_reboot": True,
            "busy": True,
        },
        {
            "hostname": "pweb1",
            "tier": "prod",
            "role": "web",
            "ok": False,
            "behind": True,
            "last_job": {"status": "failed"},
        },
    ]

    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            ({}, ["web1", "db1", "pweb1"]),
            ({"tier": "prod"}, ["pweb1"]),
            ({"role": "web"}, ["web1", "pweb1"]),
            ({"state": "problem"}, ["db1", "pweb1"]),
            ({"state": "reboot"}, ["db1"]),
            ({"state": "failed"}, ["pweb1"]),
            ({"state": "behind"}, ["pweb1"]),
            ({"state": "busy"}, ["db1"]),
            ({"state": "ok"}, ["web1"]),
            ({"text": "WEB"}, ["web1", "pweb1"]),
            ({"text": "web", "tier": "test"}, ["web1"]),
        ],
    )
    def test_filters(self, filters: dict[str, str], expected: list[str]) -> None:
        """Tier, role, state and text each narrow the rows; together they all apply."""
        assert [r["hostname"] for r in filter_rows(self.rows, **filters)] == expected


class TestSubjects:
    @pytest.mark.parametrize(
        ("subject", "expected"),
        [
            (f"deploy.responses.{DEPLOYMENT}", Origin(DEPLOYMENT)),
            (f"deploy.responses.{DEPLOYMENT}.test.web1", Origin(DEPLOYMENT, "test", "web1")),
            (f"deploy.responses.{DEPLOYMENT}.test.web1.log", None),
            (f"deploy.responses.{DEPLOYMENT}.prod.history.read", None),
            (f"deploy.responses.{DEPLOYMENT}.builds.read", None),
            ("deploy.test.web1", None),
        ],
    )
    def test_origin_of(self, subject: str, expected: Origin | None) -> None:
        """Only a status's reply subjects name a deployment; log chunks and reads do not."""
        assert origin_of(subject) == expected

    def test_clean_walks_json(self) -> None:
        """Every string in nested JSON is made printable; numbers and None stay."""
        assert clean({"a": ["\x1b", 1, None, {"b": "\u2028"}]}) == {
            "a": ["\\x1b", 1, None, {"b": "\\u2028"}]
        }


@pytest.mark.anyio
class TestHub:
    async def test_a_feed_that_falls_behind_drops_its_backlog_once(self) -> None:
        """Past MAX_PENDING events a feed holds none and says it is stale: the stream then
        sends the whole state once; a feed that keeps up gets every event, in order."""
        hub = Hub()
        with hub.feed() as slow, hub.feed() as fast:
            for i in range(MAX_PENDING):
                hub.publish("host", str(i))
            assert await fast.take() == (False, [Event("host", str(i)) for i in range(MAX_PENDING)])
            hub.publish("host", "one too many")
            assert slow.peak == MAX_PENDING and slow.pending == 0
            hub.publish("host", "after")  # dropped too: the fresh state will tell it
            assert await slow.take() == (True, [])
            hub.publish("deployment", "next")
            assert await slow.take() == (False, [Event("deployment", "next")])
            assert slow.stale_count == 1
        assert hub.feeds == []

    async def test_closing_wakes_every_feed_and_closes_new_ones(self) -> None:
        """The server stopping ends each stream, including one that opens meanwhile."""
        hub = Hub()
        with hub.feed() as feed:
            hub.close()
            assert feed.closed and await feed.take() == (False, [])
            with hub.feed() as late:
                assert late.closed
