#!/usr/bin/env python3
"""Rewrite the option tables of docs/cli.md from the declarations in fleet_core.config.options.

    python scripts/sync_docs.py          rewrite the tables in place
    python scripts/sync_docs.py --check  exit 1 (and say which) when a table is out of date

Each table stands between ``<!-- options:COMMAND -->`` and ``<!-- /options:COMMAND -->``,
and the table of homelab-deploy's variables between ``<!-- options:homelab-env -->`` and
``<!-- /options:homelab-env -->``; the prose around them is written by hand.
tests/test_docs.py runs the check.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from fleet_core.config.options import COMMANDS, legacy_env_table, markdown_table

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
_BLOCK = re.compile(r"(<!-- options:([a-z-]+) -->\n)(.*?)(<!-- /options:\2 -->)", re.S)


def synced(text: str) -> str:
    """``text`` with every marked table replaced by the one its command declares."""
    tables = {declared.name: markdown_table(declared.options) for declared in COMMANDS}
    tables["homelab-env"] = legacy_env_table(COMMANDS)

    def table(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in tables:
            raise SystemExit(f"{DOC}: no command {name!r} is declared in fleet_core.config.options")
        return f"{match.group(1)}{tables[name]}\n{match.group(4)}"

    return _BLOCK.sub(table, text)


def main(argv: list[str]) -> int:
    text = DOC.read_text(encoding="utf-8")
    new = synced(text)
    if "--check" in argv:
        if new != text:
            print(f"{DOC} is out of date: run python scripts/sync_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
