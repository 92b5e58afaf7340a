"""A stand-in for ``nixos-version`` with the same interface, reading a simulated host's root.

    python -m fleet_core.testing.simulated_nixos_version --sim-root DIR \
        [--json | --hash | --revision | --configuration-revision]

The real program prints the version of the system that runs (``/run/current-system``) and,
with ``--json``, ``{"nixosVersion", "nixpkgsRevision", "configurationRevision"}``, the last
only when the configuration sets ``system.configurationRevision``. Here the running system
is ``DIR/run/current-system`` (``simulated_system``), whose ``nixos-version`` file holds its
label: the revision it was deployed from, which becomes its configuration revision, as a
flake that sets ``system.configurationRevision = self.rev`` would have it. The version and
nixpkgs revision are made up from the label, stable for one system.

A listener's ``--version-command`` runs this in tests and the sandbox (``fleet-deploy
status`` shows what it prints). Standard library only: it starts once per change of the
running system.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from fleet_core.testing.simulated_system import current

__all__ = ["main", "simulated_version_command"]

_RELEASE = "24.11"
_DATE = "20241120"


def simulated_version_command(root: Path) -> tuple[str, ...]:
    """The argv of this stand-in for the host whose simulated root is ``root``, with --json."""
    module = "fleet_core.testing.simulated_nixos_version"
    return (sys.executable, "-m", module, "--sim-root", str(Path(root).absolute()), "--json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nixos-version (simulated)", allow_abbrev=False)
    parser.add_argument("--sim-root", type=Path, required=True, help="the simulated host's root")
    shown = parser.add_mutually_exclusive_group()
    for flag in ("--json", "--hash", "--revision", "--configuration-revision"):
        shown.add_argument(flag, action="store_true")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    system = current(args.sim_root)
    if system is None or not (system / "nixos-version").is_file():
        print("nixos-version: no running system (no /run/current-system)", file=sys.stderr)
        return 1
    label = (system / "nixos-version").read_text(encoding="utf-8").strip()
    nixpkgs = hashlib.sha1(f"nixpkgs {label}".encode()).hexdigest()  # noqa: S324 - a made-up id
    version = f"{_RELEASE}.{_DATE}.{nixpkgs[:7]}"
    if args.json:
        print(
            json.dumps(
                {
                    "nixosVersion": version,
                    "nixpkgsRevision": nixpkgs,
                    "configurationRevision": label,
                }
            )
        )
    elif args.hash or args.revision:
        print(nixpkgs)
    elif args.configuration_revision:
        print(label)
    else:
        print(f"{version} (Vicuna)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
