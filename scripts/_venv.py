"""Bootstrap the project's virtualenv (.venv) with nothing but python3, then run in it.

Used by ./scripts/test and ./scripts/demo. The venv is (re)installed when it is missing or
when pyproject.toml changed since the last install, so a fresh clone needs no other step.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".fleet-deploy-installed"


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


def run(argv: list[str]) -> int:
    """Run ``argv`` (a program in .venv/bin and its arguments) from the project root."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode
