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


# settings.py, and the systemd-run stand-in: a program of its own that, like the real one,
# copies `--setenv NAME` from its own environment.
READS_ENVIRONMENT = {"settings.py", "simulated_systemd_run.py"}


def test_layering() -> None:
    """Only bus.py imports nats; only settings.py (and the systemd-run stand-in) reads
    os.environ; fleet_core never imports mcp.

    The one way from fleet_core to the MCP stack is cli.py handing `fleet-deploy mcp` over.
    """
    for path in sorted(SRC.glob("*.py")):
        imported = _imports(path)
        assert "mcp" not in imported, path.name
        if path.name != "cli.py":
            assert "fleet_mcp" not in imported, path.name
        if path.name != "bus.py":
            assert "nats" not in imported, f"{path.name} imports nats"
        if path.name not in READS_ENVIRONMENT:
            assert "os.environ" not in path.read_text(), f"{path.name} reads os.environ"


def _module_map() -> dict[str, list[str]]:
    """The groups of the module map in ``fleet_core``'s docstring: heading -> module names."""
    groups: dict[str, list[str]] = {}
    heading = ""
    for line in (fleet_core.__doc__ or "").splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            heading = line.split(" —")[0].rstrip(":")
            groups[heading] = []
        elif heading and line.startswith("    ") and line.strip():
            groups[heading].append(line.split()[0])
    return groups


MAP = _module_map()
PURE = MAP.get("Pure protocol", [])
HOST = MAP.get("On the host", [])
DEPLOYER = MAP.get("At the deployer", [])


def test_the_module_map_lists_every_module_once() -> None:
    """fleet_core's docstring names each of its modules exactly once, and no other."""
    listed = [name for names in MAP.values() for name in names]
    present = sorted(
        info.name for info in pkgutil.iter_modules(fleet_core.__path__) if info.name != "__main__"
    )
    assert sorted(listed) == present
    assert len(listed) == len(set(listed))
    assert {"Pure protocol", "On the host", "At the deployer", "Operator tooling"} <= set(MAP)


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_io(name: str) -> None:
    """The protocol modules import no asyncio, anyio, subprocess, socket, nats or logging."""
    imported = _imports(SRC / f"{name}.py")
    assert not imported & {"asyncio", "anyio", "subprocess", "socket", "nats", "structlog"}
    own = {node for node in _own_imports(SRC / f"{name}.py")}
    assert own <= {*PURE, "errors"}, f"{name} imports {sorted(own - {*PURE, 'errors'})}"


def _own_imports(path: Path) -> set[str]:
    """The fleet_core modules that ``path`` imports."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("fleet_core.")
        ):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "fleet_core":
            found |= {alias.name for alias in node.names} - {"__version__"}
    return found


@pytest.mark.parametrize(("side", "other"), [("host", "deployer"), ("deployer", "host")])
def test_host_and_deployer_sides_do_not_import_each_other(side: str, other: str) -> None:
    """The listener's modules never import the deployer's, nor the other way round."""
    groups = {"host": HOST, "deployer": DEPLOYER}
    for name in groups[side]:
        crossing = _own_imports(SRC / f"{name}.py") & set(groups[other])
        assert not crossing, f"{name} ({side}) imports {sorted(crossing)} ({other})"
