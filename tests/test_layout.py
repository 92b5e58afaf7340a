"""The house: packages show the architecture, and the layering between them holds.

Each package's docstring lists its modules (checked here, so it cannot drift), the README's
map names every package, and the rules below are checked on the imports themselves.
"""

from __future__ import annotations

import ast
import pkgutil
import re
from pathlib import Path

import pytest

import fleet_core
import fleet_dashboard
import fleet_mcp

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

SRC = Path(fleet_core.__file__).resolve().parent.parent
REPO = SRC.parent
ROOTS = ("fleet_core", "fleet_mcp", "fleet_dashboard")
# Folders of files a package ships that are no Python: the maps name them too.
DATA_FOLDERS = ("fleet_dashboard/static",)
PACKAGES = sorted(path.parent for root in ROOTS for path in (SRC / root).rglob("__init__.py"))
MODULES = sorted(
    path
    for root in ROOTS
    for path in (SRC / root).rglob("*.py")
    if path.name not in ("__init__.py", "__main__.py")
)

# Pure logic: no I/O, tested without a server. Whole packages, and single modules elsewhere.
PURE_PACKAGES = ("fleet_core/protocol",)
PURE_MODULES = (
    "fleet_core/config/options.py",
    "fleet_core/config/parsers.py",
    "fleet_core/config/settings.py",
    "fleet_core/host/jobs/resume.py",
    "fleet_core/host/jobs/rebuild.py",
    "fleet_core/host/jobs/rebuild_output.py",
    "fleet_core/host/jobs/outcome.py",
    "fleet_core/deploy/tracker.py",
    "fleet_core/deploy/results.py",
    "fleet_core/deploy/report.py",
    "fleet_core/deploy/rollout.py",
    "fleet_core/deploy/closures.py",
    "fleet_core/deploy/cancellation.py",
    "fleet_core/deploy/fleet_status.py",
    "fleet_core/deploy/history.py",
    "fleet_core/build/protocol.py",
    "fleet_core/build/tracker.py",
    "fleet_core/setup/nats_config.py",
    "fleet_dashboard/board.py",
    "fleet_dashboard/auth.py",
    "fleet_dashboard/security.py",
)
IO_MODULES = {"asyncio", "anyio", "subprocess", "socket", "nats", "structlog"}
# Programs of their own: the job runner outlives the listener and is started by path.
STDLIB_ONLY = (
    "fleet_core/host/jobs/job_runner.py",
    "fleet_core/host/jobs/jobdir.py",
    "fleet_core/host/jobs/activation.py",
    "fleet_core/host/jobs/closure.py",
)
# The one reader of the environment, and the systemd-run stand-in: a program of its own
# that, like the real one, copies `--setenv NAME` from its own environment.
READS_ENVIRONMENT = ("fleet_core/config/resolve.py", "fleet_core/testing/simulated_systemd_run.py")


def _rel(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def _imports(path: Path) -> set[str]:
    """Every absolute module ``path`` imports, dotted, as written."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _tops(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _imports(path)}


def _own(path: Path) -> set[str]:
    """The fleet_core modules ``path`` imports, as paths below src/ (``fleet_core/x/y.py``)."""
    found = set()
    for name in _imports(path):
        if not name.startswith("fleet_core."):
            continue
        candidate = SRC / Path(*name.split("."))
        if candidate.with_suffix(".py").is_file():
            found.add(_rel(candidate.with_suffix(".py")))
    return found


def _in(path: str, *places: str) -> bool:
    return any(path == place or path.startswith(place.rstrip("/") + "/") for place in places)


def _listed(docstring: str) -> list[str]:
    """The names a package docstring's map lists: below its ``Modules`` line, up to a blank
    line, the first word of each line indented by four."""
    names: list[str] = []
    listing = False
    for line in docstring.splitlines():
        if line.startswith("Modules"):
            listing = True
        elif not line.strip():
            listing = False
        elif listing and line.startswith("    ") and not line.startswith("     "):
            names.append(line.split()[0].removesuffix(".py"))
    return names


@pytest.mark.parametrize("package", PACKAGES, ids=[_rel(p) for p in PACKAGES])
def test_each_package_docstring_lists_its_modules(package: Path) -> None:
    """A package's docstring names each of its modules and subpackages once, and no other."""
    present = sorted(
        f"{info.name}/" if info.ispkg else info.name
        for info in pkgutil.iter_modules([str(package)])
        if info.name != "__main__"
    )
    # Read as written: Python 3.13 strips a docstring's indentation when it compiles it.
    source = (package / "__init__.py").read_text(encoding="utf-8")
    listed = _listed(source.split('"""')[1] if source.startswith('"""') else "")
    assert sorted(listed) == present


def _tree(block: str) -> tuple[set[str], set[str]]:
    """The folders and the modules a layout block names, as paths below src/: a folder line
    (``config/``) opens a folder, two spaces deeper per level; a module (``options.py``)
    stands one level below its folder."""
    folders: set[str] = set()
    modules: set[str] = set()
    open_folders: list[str] = []
    for line in block.splitlines():
        found = re.match(r"^( *)(?:src/)?([a-z_]+(?:/[a-z_]+)*)(/|\.py)(?:\s|$)", line)
        if not found:
            continue
        depth = len(found.group(1)) // 2
        name, kind = found.group(2), found.group(3)
        del open_folders[depth:]
        if kind == "/":
            open_folders.append(name)
            folders.add("/".join(open_folders))
        elif open_folders:
            modules.add("/".join([*open_folders, f"{name}.py"]))
    return folders, modules


def _block(page: Path, heading: str) -> str:
    return page.read_text(encoding="utf-8").split(heading, 1)[1].split("```")[1]


def test_the_readme_map_names_every_package() -> None:
    """README's "Where the code is" names each package of src/ in its place, and no other."""
    folders, _ = _tree(_block(REPO / "README.md", "## Where the code is"))
    assert folders == {_rel(p) for p in PACKAGES} | set(DATA_FOLDERS)


def test_the_development_layout_names_every_module() -> None:
    """docs/development.md's layout names every module, under its own package, and no
    module that is not there."""
    folders, named = _tree(_block(REPO / "docs" / "development.md", "## Layout"))
    present = {_rel(m) for m in MODULES}
    assert sorted(named - present) == [], "named, but no such module"
    assert sorted(present - named) == [], "modules the layout does not name"
    assert {f for f in folders if f.startswith("fleet_")} == {_rel(p) for p in PACKAGES} | set(
        DATA_FOLDERS
    )


@pytest.mark.parametrize("path", MODULES, ids=[_rel(p) for p in MODULES])
def test_layering(path: Path) -> None:
    """Only bus.py imports nats, only config/resolve.py reads os.environ, fleet_core never
    imports mcp (cli.py alone hands `fleet-deploy mcp` over to fleet_mcp)."""
    rel = _rel(path)
    tops = _tops(path)
    if rel.startswith("fleet_core/"):
        assert "mcp" not in tops
        if rel != "fleet_core/cli.py":
            assert "fleet_mcp" not in tops
    if rel != "fleet_core/bus.py":
        assert "nats" not in tops, f"{rel} imports nats"
    if rel not in READS_ENVIRONMENT:
        assert "os.environ" not in path.read_text(encoding="utf-8"), f"{rel} reads os.environ"


PURE = [m for m in MODULES if _in(_rel(m), *PURE_PACKAGES) or _rel(m) in PURE_MODULES]


@pytest.mark.parametrize("path", PURE, ids=[_rel(p) for p in PURE])
def test_pure_modules_import_no_io(path: Path) -> None:
    """Pure modules import no asyncio, anyio, subprocess, socket, nats or structlog, and of
    ours only other pure modules, errors.py and the job directory's format."""
    assert not _tops(path) & IO_MODULES
    # jobdir (stdlib only) is the job directory's format: its parsers are pure functions of
    # bytes, and resume judges what they parse.
    allowed = {_rel(p) for p in PURE} | {"fleet_core/errors.py", "fleet_core/host/jobs/jobdir.py"}
    assert _own(path) <= allowed, f"{_rel(path)} imports {sorted(_own(path) - allowed)}"


def test_every_pure_module_named_exists() -> None:
    """The pure list names real files, so that a move cannot drop a module from the check."""
    for rel in PURE_MODULES:
        assert (SRC / rel).is_file(), rel


@pytest.mark.parametrize("rel", STDLIB_ONLY)
def test_the_job_runner_imports_only_the_standard_library(rel: str) -> None:
    """The job runner and the job directory's format import nothing but the standard library
    (the runner loads jobdir.py and activation.py by path), so that the runner starts fast,
    and anywhere."""
    import sys

    ours = {name for name in _tops(SRC / rel) if name not in sys.stdlib_module_names}
    assert ours <= {"fleet_core", "__future__"}, ours
    assert _own(SRC / rel) <= {
        "fleet_core/host/jobs/jobdir.py",
        "fleet_core/host/jobs/activation.py",
        "fleet_core/host/jobs/closure.py",
    }


@pytest.mark.parametrize(
    ("side", "others"),
    [
        ("fleet_core/host", ("fleet_core/deploy", "fleet_core/build", "fleet_core/testing")),
        ("fleet_core/deploy", ("fleet_core/host", "fleet_core/testing")),
        ("fleet_core/build", ("fleet_core/host/listener.py", "fleet_core/testing")),
        ("fleet_core/build/builder.py", ("fleet_core/deploy", "fleet_core/host/listener.py")),
        ("fleet_core/protocol", ("fleet_core/host", "fleet_core/deploy", "fleet_core/build")),
        ("fleet_core/config", ("fleet_core/host", "fleet_core/deploy", "fleet_core/testing")),
    ],
)
def test_sides_do_not_import_each_other(side: str, others: tuple[str, ...]) -> None:
    """The host never imports the deployer (the listener stays small), nor the deployer the
    host; the builder neither; the protocol and config sit below them all."""
    for path in MODULES:
        if _in(_rel(path), side):
            crossing = {own for own in _own(path) if _in(own, *others)}
            assert not crossing, f"{_rel(path)} imports {sorted(crossing)}"


def test_fleet_mcp_is_a_layer_over_the_core() -> None:
    """fleet_mcp reaches the host side of fleet_core never: it deploys through the deployer."""
    for path in MODULES:
        if _rel(path).startswith("fleet_mcp/"):
            crossing = {own for own in _own(path) if _in(own, "fleet_core/host")}
            assert not crossing, f"{_rel(path)} imports {sorted(crossing)}"


def test_fleet_mcp_is_imported() -> None:
    """The packages import (the parametrised tests above read files; this loads them)."""
    assert fleet_mcp.__name__ == "fleet_mcp"
    assert fleet_dashboard.__name__ == "fleet_dashboard"


# The sandbox is the whole product on one machine: it serves the read-only dashboard too.
DASHBOARD_IMPORTERS = ("fleet_core/testing/sandbox.py",)


def test_the_dashboard_is_a_front_end_over_the_core() -> None:
    """fleet_core never imports fleet_dashboard (the sandbox aside, which runs it), so
    neither `fleet-deploy --help` nor the listener loads it; the dashboard reaches neither
    the host side nor the MCP server."""
    for path in MODULES:
        rel = _rel(path)
        if rel.startswith("fleet_core/") and rel not in DASHBOARD_IMPORTERS:
            assert "fleet_dashboard" not in _tops(path), f"{rel} imports fleet_dashboard"
        if rel.startswith("fleet_dashboard/"):
            assert "fleet_mcp" not in _tops(path), f"{rel} imports fleet_mcp"
            crossing = {own for own in _own(path) if _in(own, "fleet_core/host")}
            assert not crossing, f"{rel} imports {sorted(crossing)}"


TESTS = sorted((REPO / "tests").glob("test_*.py"))
# What starts a server or a process, which a test marked pure never touches.
SERVERS_AND_PROCESSES = {
    *("subprocess", "mcp", "fleet_core.testing", "nix_eval", "support"),
    "browser",  # tests/browser.py: chromium, the sandbox and the dashboard as processes
}


def _marked_pure(path: Path) -> bool:
    return bool(re.search(r"^pytestmark = .*pytest\.mark\.pure", path.read_text(), re.M))


@pytest.mark.parametrize("path", [t for t in TESTS if _marked_pure(t)], ids=lambda p: p.name)
def test_a_test_module_marked_pure_starts_no_server_and_no_process(path: Path) -> None:
    """``./scripts/test --quick`` runs the tests marked pure: none of them may start a
    nats-server (the ``fleet`` fixture, fleet_core.testing) or a process."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    touched = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            touched |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            touched.add(node.module)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if "fleet" in {arg.arg for arg in node.args.args}:
                touched.add(f"the fleet fixture ({node.name})")
        elif isinstance(node, ast.Attribute) and node.attr == "open_process":
            touched.add("anyio.open_process")
    bad = {
        name
        for name in touched
        if name.startswith("the fleet fixture")
        or name == "anyio.open_process"
        or any(name == s or name.startswith(f"{s}.") for s in SERVERS_AND_PROCESSES)
    }
    assert not bad, f"{path.name} is marked pure but uses {sorted(bad)}"


def test_the_quick_run_has_pure_tests_and_one_deploy() -> None:
    """There are pure test modules, and exactly one smoke test: a real deploy."""
    assert len([t for t in TESTS if _marked_pure(t)]) >= 10
    smoke = [t for t in TESTS if re.search(r"^ +@pytest\.mark\.smoke", t.read_text(), re.M)]
    assert [t.name for t in smoke] == ["test_deploy_e2e.py"]
