"""The public surface: every name a module exports exists (the layering: test_layout.py)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import fleet_core
import fleet_dashboard
import fleet_mcp

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

MODULES = sorted(
    info.name
    for package in (fleet_core, fleet_mcp, fleet_dashboard)
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    """Each name in a module's __all__ can be imported from it."""
    module = importlib.import_module(name)
    for exported in getattr(module, "__all__", []):
        assert hasattr(module, exported), f"{name}.__all__ names missing {exported!r}"
