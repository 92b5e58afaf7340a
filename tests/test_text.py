"""Host text as the CLI shows it (pure): ``printable``, ``escaped_json``, and the CLI's live
lines, summaries and hosts table fed text a hostile build log could hold."""

from __future__ import annotations

import json
import re

import pytest

from fleet_core.build.protocol import BuildResult, HostBuild, HostBuildState
from fleet_core.build.report import build_line, build_summary
from fleet_core.deploy.report import host_line, hosts_table, summary
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.protocol.messages import HostInfo
from fleet_core.protocol.text import escaped_json, printable

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

# A window title, a fake verdict over the line, concealed text, a C1 CSI, a bidi override.
HOSTILE = (
    "\x1b]0;all good\x07building\r\x1b[2KOK: 1 completed\n"
    "\x1b[8mhidden\x1b[0m \x9b31m \u202eevil\u202c \u2066x\u2069 \x7f \u2028 end"
)
# What must never reach a terminal raw: C0 but tab, DEL, C1, bidi, the line separators.
RAW = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]"
)


class TestPrintable:
    @pytest.mark.parametrize(
        ("raw", "shown"),
        [
            ("\x1b", "\\x1b"),
            ("\x07", "\\x07"),
            ("\r", "\\x0d"),
            ("\n", "\\x0a"),
            ("\x00", "\\x00"),
            ("\x7f", "\\x7f"),
            ("\x9b", "\\x9b"),
            ("\x85", "\\x85"),
            ("\u202e", "\\u202e"),
            ("\u2066", "\\u2066"),
            ("\u200f", "\\u200f"),
            ("\u2028", "\\u2028"),
        ],
    )
    def test_each_control_becomes_a_visible_escape(self, raw: str, shown: str) -> None:
        """Every control, bidi and line-separator character is shown as its escape."""
        assert printable(f"a{raw}b") == f"a{shown}b"

    def test_ordinary_text_is_unchanged(self) -> None:
        """Tab, non-ASCII letters and punctuation nix prints stay as they are."""
        text = "error: undefined variable \u2018webroot\u2019\tat …/nginx.nix:14 — é ü 漢"
        assert printable(text) == text

    def test_a_hostile_line_stays_one_harmless_line(self) -> None:
        """The hostile text becomes one line with no raw control left."""
        shown = printable(HOSTILE)
        assert not RAW.search(shown)
        assert "\n" not in shown
        assert "\\x1b]0;all good\\x07building\\x0d\\x1b[2KOK: 1 completed\\x0a" in shown


class TestEscapedJson:
    def test_the_same_json_with_no_raw_control(self) -> None:
        """JSON text keeps its value exactly, and carries no raw control, C1 or bidi."""
        value = {"message": HOSTILE, "log_tail": [HOSTILE, "plain \u2018ok\u2019 …"]}
        text = escaped_json(json.dumps(value, ensure_ascii=False))
        assert not RAW.search(text.replace("\n", ""))
        assert json.loads(text) == value
        assert "\u2018ok\u2019 …" in text  # other non-ASCII stays readable


def _deployment(host: HostResult) -> DeploymentResult:
    return DeploymentResult(
        deployment_id="d1",
        subject="deploy.test.web1",
        tier="test",
        action="switch",
        revision="master",
        ok=False,
        done=True,
        counts={host.status: 1},
        hosts=[host],
        duration_s=1.0,
    )


class TestTheCliShowsHostTextEscaped:
    def test_live_line_and_summary_of_a_deployment(self) -> None:
        """A failed host's hostile message, phase, error and log tail reach the live line and
        the summary escaped; no line is forged, and the verdict is the last line."""
        failed = HostResult(
            hostname="web1",
            status="failed",
            final=True,
            error=f"build_failed{HOSTILE}",
            message=HOSTILE,
            phase=HOSTILE,
            log_tail=[HOSTILE, "error: the cause"],
        )
        progress = failed.model_copy(update={"status": "progress", "final": False})
        for line in (host_line(failed), host_line(progress)):
            assert not RAW.search(line) and "\n" not in line, line
        text = summary(_deployment(failed))
        assert not RAW.search(text.replace("\n", "")), text
        lines = text.split("\n")
        assert lines[-1] == "NOT OK: 1 failed"
        assert not [line for line in lines if line.startswith("OK")]
        assert "  error: the cause" in lines

    def test_hosts_table(self) -> None:
        """A listener's hostile version (and role) is escaped in its cell, on its row."""
        hosts = [
            HostInfo(hostname="web1", tier="test", role="web", version=HOSTILE),
            HostInfo(hostname="web2", tier="test", role=f"web{HOSTILE}", version="0.9.0"),
        ]
        table = hosts_table(hosts)
        assert not RAW.search(table.replace("\n", "")), table
        assert len(table.split("\n")) == 3

    def test_build_line_and_summary(self) -> None:
        """The builder's hostile host name, phase, store path, cache, message and nix output
        are escaped; a multi-line build message is indented under its status."""
        host = HostBuild(
            host=f"web1{HOSTILE}",
            state=HostBuildState.FAILED,
            phase=HOSTILE,
            error="build_failed",
            message=HOSTILE,
            store_path=HOSTILE,
            copied_to=HOSTILE,
            log_tail=[HOSTILE],
        )
        building = host.model_copy(update={"state": HostBuildState.BUILDING, "error": None})
        for line in (build_line(host), build_line(building)):
            assert not RAW.search(line) and "\n" not in line, line
        result = BuildResult(
            build_id="b1",
            target="build.nixos.all",
            repo="nixos",
            revision="main",
            builder=HOSTILE,
            commit=HOSTILE,
            status="failed",
            error="build_failed",
            message=f"one failed\nOK{HOSTILE}",
            hosts=[host],
        )
        text = build_summary(result)
        assert not RAW.search(text.replace("\n", "")), text
        lines = text.split("\n")
        assert lines[-1] == "NOT OK"
        assert not [line for line in lines if line.startswith("OK")]
