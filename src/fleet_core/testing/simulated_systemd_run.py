"""A stand-in for ``systemd-run`` with the interface the listener uses, for tests and sandboxes.

    python -m fleet_core.testing.simulated_systemd_run [--sim-record FILE] [--user] [--same-dir] \\
        --unit NAME --collect --quiet [--description TEXT] [--service-type TYPE] \\
        [--property KEY=VALUE]... [--setenv NAME[=VALUE]]... -- COMMAND [ARG]...

Like the real one it starts COMMAND detached from the caller, in a session of its own with
stdin, stdout and stderr on /dev/null, and exits 0 at once; and like a transient unit the
command gets a clean environment: systemd's default ``PATH``, an ``INVOCATION_ID``, and only
what ``--setenv`` passes (``NAME`` alone copies the caller's value). ``--user`` (the
caller's own user manager, as a Home Manager listener under ``systemd --user`` asks) starts
it the same way and is recorded; so is ``--same-dir``, the caller's working directory, which
the command gets either way here. It checks the unit name
and property syntax the way systemd would, but enforces no property (``RuntimeMaxSec`` is the
job runner's own deadline's backstop, never reached in tests). ``--sim-record`` appends the
options and the command as one JSON line, for tests to assert on.
Standard library only: it starts once per job and must start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
_UNIT = re.compile(r"[A-Za-z0-9:_.\\-]{1,250}\.service")
_PROPERTY = re.compile(r"[A-Z][A-Za-z]+=.*")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="systemd-run (simulated)", allow_abbrev=False)
    parser.add_argument("--sim-record", type=Path, help="append the call as a JSON line here")
    parser.add_argument("--user", action="store_true")
    parser.add_argument("--same-dir", "-d", action="store_true")
    parser.add_argument("--unit", required=True)
    parser.add_argument("--collect", action="store_true")
    parser.add_argument("--quiet", "-q", action="store_true")
    parser.add_argument("--description")
    parser.add_argument("--service-type", choices=("simple", "exec", "forking", "oneshot"))
    parser.add_argument("--property", "-p", action="append", default=[])
    parser.add_argument("--setenv", "-E", action="append", default=[])
    return parser


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    if "--" not in given or given.index("--") == len(given) - 1:
        print("systemd-run (simulated): no command given after --", file=sys.stderr)
        return 1
    split = given.index("--")
    args = _parser().parse_args(given[:split])
    command = given[split + 1 :]
    unit = args.unit if args.unit.endswith(".service") else f"{args.unit}.service"
    if not _UNIT.fullmatch(unit):
        print(f"Invalid unit name: {args.unit}", file=sys.stderr)
        return 1
    for item in args.property:
        if not _PROPERTY.fullmatch(item):
            print(f"Failed to parse property: {item}", file=sys.stderr)
            return 1
    environment = {"PATH": DEFAULT_PATH, "INVOCATION_ID": secrets.token_hex(16)}
    for item in args.setenv:
        name, equals, value = item.partition("=")
        if equals:
            environment[name] = value
        elif (inherited := os.environ.get(name)) is not None:  # systemd-run's own environment
            environment[name] = inherited
    if args.sim_record is not None:
        call = {
            "unit": unit,
            "user": args.user,
            "same_dir": args.same_dir,
            "collect": args.collect,
            "quiet": args.quiet,
            "service_type": args.service_type,
            "properties": args.property,
            "setenv": sorted(environment),
            "command": command,
        }
        with args.sim_record.open("a", encoding="utf-8") as record:
            record.write(json.dumps(call) + "\n")
    try:
        os.posix_spawnp(
            command[0],
            command,
            environment,
            setsid=True,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
        )
    except OSError as exc:
        print(f"Failed to start transient service unit: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"Running as unit: {unit}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
