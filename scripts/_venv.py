"""Bootstrap the project's virtualenv (.venv) with nothing but python3, then run in it.

Used by ./scripts/test and ./scripts/demo. The venv is (re)installed when it is missing or
when pyproject.toml changed since the last install, so a fresh clone needs no other step.
./scripts/test also installs tests/interop's npm packages when node is there
(``ensure_node_packages``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".fleet-deploy-installed"
INTEROP = ROOT / "tests" / "interop"
SDK_NAME = "@modelcontextprotocol/sdk"
NPM_TIMEOUT_S = 300


def _fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv() -> Path:
    """Create and install .venv if needed; return its bin directory."""
    if STAMP.exists() and STAMP.read_text() == _fingerprint() and (BIN / "python").exists():
        return BIN
    if not (BIN / "python").exists():
        print(f"creating {VENV} ...", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    print("installing fleet-deploy and its test tools into .venv ...", file=sys.stderr, flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[test]"], check=True, cwd=ROOT)
    STAMP.write_text(_fingerprint())
    return BIN


def _sdk_installed() -> bool:
    """Whether tests/interop/node_modules holds the SDK version package.json pins."""
    pinned = json.loads((INTEROP / "package.json").read_text())["dependencies"][SDK_NAME]
    manifest = INTEROP / "node_modules" / SDK_NAME / "package.json"
    return manifest.is_file() and json.loads(manifest.read_text()).get("version") == pinned


def _npm_error(output: str) -> str:
    """npm's message from its error output: the first line after "code", "syscall", "errno"."""
    lines = [line.removeprefix("npm error").strip() for line in output.strip().splitlines()]
    lines = [line for line in lines if line]
    told = [line for line in lines if not line.startswith(("code ", "syscall ", "errno "))]
    return f": {(told or lines)[0]}" if lines else ""


def ensure_node_packages() -> None:
    """Install tests/interop's pinned npm packages — the TypeScript MCP SDK that
    tests/test_mcp_interop.py drives fleet-mcp with — when node is here and they are not.

    Quiet, and never fatal: without them that test is skipped and says what provides them
    (under CI=true it fails, and .ci/run installs them itself).
    """
    if shutil.which("node") is None or _sdk_installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        print(
            "node is installed but npm is not, so the MCP interop test will be skipped "
            "(Debian: apt-get install -y npm)",
            file=sys.stderr,
        )
        return
    print("installing the TypeScript MCP SDK into tests/interop (npm ci) ...", file=sys.stderr)
    argv = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        done = subprocess.run(
            argv, cwd=INTEROP, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        reason = f"no answer within {NPM_TIMEOUT_S} s"
    except OSError as exc:
        reason = str(exc)
    else:
        if done.returncode == 0:
            return
        reason = f"exit {done.returncode}" + _npm_error(done.stderr or done.stdout)
    print(
        f"npm ci in tests/interop failed ({reason}), so the MCP interop test will be skipped; "
        "to retry: npm ci --prefix tests/interop",
        file=sys.stderr,
    )


def _env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def run(argv: list[str]) -> int:
    """Run ``argv`` (a program in .venv/bin and its arguments) from the project root."""
    return subprocess.run(argv, cwd=ROOT, env=_env(), check=False).returncode


def become(argv: list[str]) -> None:
    """Become ``argv`` (a program in .venv/bin), from the project root: a signal sent to
    this script's pid (``kill -TERM``, a service manager's stop) then reaches the program
    itself, and nothing is left behind when it ends."""
    os.chdir(ROOT)
    os.execve(argv[0], argv, _env())  # noqa: S606 - an argv of ours, never a shell
