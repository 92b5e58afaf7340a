"""A stand-in for ``nix-env`` with the interface that sets and lists a system profile, for
tests and the sandbox:

    python -m fleet_core.testing.simulated_nix_env [--sim-record FILE] \\
        {--profile|-p} DIR/nix/var/nix/profiles/system {--set PATH | --list-generations}

``--set`` makes a new generation of a simulated host's system profile (``simulated_system``)
hold PATH, as nixos-rebuild runs it before switch-to-configuration, and as a rollback runs
it with the previous store path; PATH may be a link to one (``DIR/run/current-system``), as
nix follows links to the store. A path that is not in DIR's store, or not there, fails with
nix's words and exit 1. ``--list-generations`` prints them as nix-env does, the current one
marked. ``--sim-record`` appends the argv as one JSON line, for tests to assert on.
Standard library only: it starts once per switch and must start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from fleet_core.testing import simulated_system

_PROFILE_DIR = ("nix", "var", "nix", "profiles")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nix-env (simulated)", allow_abbrev=False)
    parser.add_argument("--sim-record", type=Path, help="append the argv as a JSON line here")
    parser.add_argument("--profile", "-p", type=Path, required=True)
    operation = parser.add_mutually_exclusive_group(required=True)
    operation.add_argument("--set", metavar="PATH", type=Path)
    operation.add_argument("--list-generations", action="store_true")
    return parser


def _root(profile: Path) -> Path | None:
    """The host root of a system profile DIR/nix/var/nix/profiles/system, or None."""
    absolute = profile.absolute()
    if absolute.name != "system" or absolute.parent.parts[-4:] != _PROFILE_DIR:
        return None
    return absolute.parents[4]


def _list(root: Path) -> int:
    profile = simulated_system.profile_path(root)
    chosen = os.readlink(profile) if profile.is_symlink() else ""  # system-<N>-link
    for number, _ in simulated_system.generations(root):
        link = profile.with_name(f"system-{number}-link")
        made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(link.lstat().st_mtime))
        mark = "(current)" if link.name == chosen else ""
        print(f"{number:>4}   {made}   {mark}".rstrip(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(given)
    if args.sim_record is not None:
        with args.sim_record.open("a", encoding="utf-8") as record:
            record.write(json.dumps({"argv": given}) + "\n")
    root = _root(args.profile)
    if root is None:
        print(
            f"error: simulated nix-env knows only a host's system profile, "
            f"DIR/nix/var/nix/profiles/system, not '{args.profile}'",
            file=sys.stderr,
        )
        return 1
    if args.list_generations:
        return _list(root)
    try:
        simulated_system.set_profile(root, args.set)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
