"""Text from the wire as it may be shown (pure): control characters made visible.

Anything a listener or a builder sent — a status message, a log line, an error code, a
version — can carry characters that act on whatever shows them: an OSC sequence that
retitles the terminal, a carriage return and an erase-line that print a fake "OK" over the
real "NOT OK", a conceal attribute that hides the rest of a line, a newline that starts a
line of its own, bidi overrides that make a person read the characters in another order.
Whoever can push a branch that a host builds writes nix's output, so none of it is trusted.

``printable`` replaces each such character with a visible escape (ESC becomes the four
characters ``\\x1b``), so that host text can be shown but never drives the terminal nor
forges a line. It is applied where text is shown — the CLI's live lines, summaries and
tables, the MCP server's texts — and never to the wire models, so ``--json`` and the MCP
structured content keep the exact text: JSON escapes the C0 controls itself, and
``escaped_json`` escapes the few that JSON leaves raw.

Replaced: the C0 controls but tab (newline included: a caller that shows a multi-line text
line by line splits it first), DEL, the C1 controls (U+0080 to U+009F: some terminals obey
them), the bidi embeddings, overrides and isolates (U+202A to U+202E, U+2066 to U+2069) and marks
(U+200E, U+200F, U+061C), and the line and paragraph separators (U+2028, U+2029), which
some viewers break lines at. Tab stays: it moves the cursor right and erases nothing.
"""

from __future__ import annotations

import re

__all__ = ["counted", "escaped_json", "printable"]

_BIDI = r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_SEPARATORS = r"\u2028\u2029"
_UNSAFE = re.compile(rf"[\x00-\x08\x0a-\x1f\x7f-\x9f{_BIDI}{_SEPARATORS}]")
# What JSON leaves raw in a string: it must escape only the C0 controls, '"' and '\'.
_RAW_IN_JSON = re.compile(rf"[\x7f-\x9f{_BIDI}{_SEPARATORS}]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control, bidi and line-separator character (all but tab) shown as
    an escape such as ``\\x1b`` or ``\\u202e``; other text, non-ASCII included, unchanged.

    The result is one line that cannot move the cursor back, erase, recolour or hide what a
    terminal shows, nor reorder it. An escape and the same characters typed literally look
    alike: this is for showing, ``--json`` is for the exact text.
    """
    return _UNSAFE.sub(_visible, text)


def escaped_json(text: str) -> str:
    """JSON text (from ``json.dumps`` or pydantic) with DEL, the C1 controls, the bidi
    characters and the line separators written as ``\\uXXXX`` escapes: the same JSON value,
    every string round-trips exactly, and no byte of it acts on a terminal.

    Only valid on JSON text: there those characters can stand only inside strings, where
    ``\\uXXXX`` means the character itself.
    """
    return _RAW_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def counted(number: int, noun: str) -> str:
    """``number`` and ``noun``, plural unless one: "1 host", "2 hosts", "0 builders"."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
