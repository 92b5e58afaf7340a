"""Tools the tests run that pip does not install (nix-instantiate, node and npm, chromium).

One rule for all of them, in one place: a test that finds its tool missing skips outside CI,
saying how to install it, and fails under ``CI=true``, where ``.ci/run`` installs every one
and a missing tool is a gap, never a pass.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["missing_tool"]


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def missing_tool(reason: str, provide: str) -> NoReturn:
    """Skip the calling test for want of a tool (``reason``, then how to ``provide`` it);
    under CI fail it."""
    message = f"{reason}: {provide}"
    if _under_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
