"""The public surface: every name a module exports exists, and the layering holds."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import fleet_core
import fleet_mcp

MODULES = sorted(
    f"{package.__name__}.{info.name}"
    for package in (fleet_core, fleet_mcp)
    for info in pkgutil.iter_modules(package.__path__)
    if info.name != "__main__"
)
SRC = Path(fleet_core.__file__).parent


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    """Each name in a module's __all__ can be imported from it."""
    module = importlib.import_module(name)
    for exported in getattr(module, "__all__", []):
        assert hasattr(module, exported), f"{name}.__all__ names missing {exported!r}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_layering() -> None:
    """Only bus.py imports nats; only settings.py reads os.environ; fleet_core never imports mcp.

    The one way from fleet_core to the MCP stack is cli.py handing `fleet-deploy mcp` over.
    """
    for path in sorted(SRC.glob("*.py")):
        imported = _imports(path)
        assert "mcp" not in imported, path.name
        if path.name != "cli.py":
            assert "fleet_mcp" not in imported, path.name
        if path.name != "bus.py":
            assert "nats" not in imported, f"{path.name} imports nats"
        if path.name != "settings.py":
            assert "os.environ" not in path.read_text(), f"{path.name} reads os.environ"


PURE = ("subjects", "messages", "rebuild", "rebuild_output", "tracking", "report", "natsconfig")


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_io(name: str) -> None:
    """The protocol modules import no asyncio, anyio, subprocess, socket or nats."""
    imported = _imports(SRC / f"{name}.py")
    assert not imported & {"asyncio", "anyio", "subprocess", "socket", "nats", "structlog"}
