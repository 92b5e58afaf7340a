"""The docs stay true: option tables match the declarations, the command table names every
command, and links between pages resolve."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
_LINK = re.compile(r"\]\(([^)#\s]+\.md)?(?:#([^)\s]+))?\)")


def test_option_tables_match_the_declarations() -> None:
    """docs/cli.md shows exactly what fleet_core.config.options declares (scripts/sync_docs.py)."""
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "sync_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings."""
    slugs = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            slugs.add(slug)
    return slugs


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_links_between_pages_resolve(page: Path) -> None:
    """Every relative link to a page, and every #anchor, points at something that exists."""
    broken = []
    for target, anchor in _LINK.findall(page.read_text(encoding="utf-8")):
        if target.startswith(("http:", "https:")):
            continue
        linked = (page.parent / target).resolve() if target else page
        if not linked.is_file():
            broken.append(f"{target} (no such file)")
        elif anchor and anchor not in _anchors(linked):
            broken.append(f"{target}#{anchor} (no such heading)")
    assert not broken, f"{page.name}: {broken}"


def test_the_command_table_names_every_command() -> None:
    """docs/cli.md's table of commands has a row for each command `fleet-deploy --help` lists."""
    from fleet_core.cli import build_parser

    parser = build_parser()
    commands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    table = text.split("| command | what it does |", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"^\| \[`([\w-]+)", table, flags=re.MULTILINE))
    missing = set(commands.choices) - listed
    assert not missing, f"docs/cli.md's command table lacks {sorted(missing)}"
