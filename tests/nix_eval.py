"""What tests/test_nix.py and tests/test_nix_home.py share: running `nix-instantiate`, the
`lib_dir` fixture (nixpkgs' lib, from `NIXPKGS_LIB`), evaluating cases through an evaluation
harness (nix/eval-module.nix, nix/eval-home-module.nix), and reading the command line a module
rendered.

A test whose tool is missing is skipped with the command that provides it. Under CI
(`CI=true`, which .ci/run sets) it fails with the same message instead, so a CI run cannot
pass by skipping the Nix checks.

Every nix-instantiate call uses `--store dummy://`, so no Nix daemon or store is touched and
anything that would copy a file into the store fails loudly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from .tools import missing_tool

REPO = Path(__file__).resolve().parents[1]
NIX_DIR = REPO / "nix"
KEYS_DIR = NIX_DIR / "tests" / "keys"
NIX_TIMEOUT_S = 60  # each call takes well under a second; this only bounds a hang
OPT = "services.fleet-deploy.listener"

# What the evaluation harnesses stand in for the fleet-deploy package.
FAKE_EXE = "/nix/store/00000000000000000000000000000000-fleet-deploy/bin/fleet-deploy"
# The public test keys of the VM test (nix/tests/keys/): an admin and a test-tier deployer.
ADMIN_KEY = (KEYS_DIR / "admin-deployer.pub").read_text().strip()
TEST_KEY = (KEYS_DIR / "test-deployer.pub").read_text().strip()
A_SEED = (KEYS_DIR / "test-deployer.seed").read_text().strip()  # public too: test-only

# The start of an expression that evaluates flake.nix against a stand-in for nixpkgs (its
# lib, and packages that throw when forced); each test adds its own bindings and result.
FLAKE_PRELUDE = """
{ libDir, repo }:
let
  lib = import libDir;
  flake = import (repo + "/flake.nix");
  systems = [ "x86_64-linux" "aarch64-linux" ];
  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs systems (_: throw "nixpkgs is not available here");
  };
  self = flake.outputs { inherit self nixpkgs; };
"""


def case_name(label: str) -> str:
    """A case's name in the harness's JSON, from a test's label."""
    return label.replace(" ", "-").replace("/", "")


def _nix_instantiate() -> str:
    path = shutil.which("nix-instantiate")
    if path is None:
        missing_tool(
            "nix-instantiate is not installed",
            "apt-get install -y nix-bin (Debian), as .ci/run does",
        )
    return path


def run_nix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_nix_instantiate(), "--store", "dummy://", *args],
        capture_output=True,
        text=True,
        timeout=NIX_TIMEOUT_S,
        check=False,
    )


def _eval_json(nix_args: list[str]) -> Any:
    result = run_nix("--eval", "--strict", "--json", *nix_args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def eval_expr(expr: str, lib_dir: Path) -> Any:
    """Evaluates a function of { libDir, repo } to JSON."""
    return _eval_json(
        ["--argstr", "libDir", str(lib_dir), "--argstr", "repo", str(REPO), "-E", expr]
    )


def eval_cases(
    harness: str, lib_dir: Path, cases: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """Evaluates `cases` through the harness nix/<harness>, successful or not."""
    return run_nix(
        "--eval",
        "--strict",
        "--json",
        str(NIX_DIR / harness),
        "--argstr",
        "nixpkgsLib",
        str(lib_dir),
        "--argstr",
        "casesJson",
        json.dumps(cases),
    )


def evaluate(harness: str, lib_dir: Path, cases: dict[str, Any]) -> dict[str, Any]:
    """Every case in `cases`, evaluated through nix/<harness> in one nix-instantiate call."""
    result = eval_cases(harness, lib_dir, cases)
    assert result.returncode == 0, result.stderr
    evaluated: dict[str, Any] = json.loads(result.stdout)
    return evaluated


def parse_flags(
    argv: list[str], command: str = "listener", switches: Collection[str] = ()
) -> dict[str, list[str]]:
    """The `--flag value` pairs after `fleet-deploy <command>`, values in order; a switch
    (one of `switches`) has no value, so its list stays empty."""
    assert argv[:2] == [FAKE_EXE, command], argv
    rest = iter(argv[2:])
    flags: dict[str, list[str]] = {}
    for flag in rest:
        assert flag.startswith("--"), argv
        values = flags.setdefault(flag, [])
        if flag not in switches:
            value = next(rest, None)
            assert value is not None, f"{flag} has no value: {argv}"
            values.append(value)
    return flags


def assert_fails_one_assertion(failed: list[str], fragment: str, opt: str) -> None:
    """`failed` (the failed assertions' messages) is one message, about an option under
    `opt`, that holds `fragment`."""
    assert len(failed) == 1, failed
    assert fragment in failed[0], failed[0]
    assert failed[0].startswith(f"{opt}."), failed[0]


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    value = os.environ.get("NIXPKGS_LIB")
    if not value:
        missing_tool(
            "NIXPKGS_LIB is not set",
            "export NIXPKGS_LIB=<checkout of nix-community/nixpkgs.lib> "
            "(CI uses ../shared/nixpkgs-lib)",
        )
    root = Path(value).resolve()
    for candidate in (root / "lib", root):
        if (candidate / "default.nix").is_file() and (candidate / "modules.nix").is_file():
            return candidate
    pytest.fail(f"NIXPKGS_LIB={value} holds no nixpkgs lib (lib/modules.nix)", pytrace=False)
