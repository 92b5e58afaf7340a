"""A stand-in for ``systemctl``'s health questions about a simulated host, for tests and the
sandbox: what a deploy asks after a switch to decide whether to keep the new system.

    python -m fleet_core.testing.simulated_systemctl --sim-root DIR [--sim-starting-for S] \\
        is-system-running [--wait] [--quiet]
    python -m fleet_core.testing.simulated_systemctl --sim-root DIR \\
        list-units [--state=failed | --failed] [--plain] [--no-legend] [--no-pager]
    python -m fleet_core.testing.simulated_systemctl --sim-root DIR --failed

The answer is the running system's (DIR/run/current-system, ``simulated_system``): degraded
with its ``sim/degraded`` units failed, else running; offline when nothing runs. With
``--sim-starting-for S`` it is ``starting`` for S seconds after that link last changed, as
a system is after a switch; ``--wait`` then waits for the end of that, as systemctl waits
for the boot to finish. Exit codes are systemctl's: is-system-running exits 0 only for
running; list-units exits 0. ``--sim-record`` appends the argv as one JSON line.
Standard library only: a health check starts it, and must not wait for it to start.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fleet_core.testing import simulated_system

# What a healthy simulated host runs besides the failed units: enough for list-units to
# show a table whose failed rows are the point.
_RUNNING = (("nginx.service", "Nginx"), ("sshd.service", "SSH Daemon"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="systemctl (simulated)", allow_abbrev=False)
    parser.add_argument("--sim-root", type=Path, required=True, help="the host's root DIR")
    parser.add_argument("--sim-record", type=Path, help="append the argv as a JSON line here")
    parser.add_argument(
        "--sim-starting-for", type=float, default=0.0, help="starting this long after a switch"
    )
    parser.add_argument("verb", nargs="?", default="list-units")
    parser.add_argument("--wait", action="store_true")
    parser.add_argument("--quiet", "-q", action="store_true")
    parser.add_argument("--state", action="append", default=[])
    parser.add_argument("--failed", action="store_true")
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--no-legend", action="store_true")
    parser.add_argument("--no-pager", action="store_true")
    return parser


def _state(root: Path, starting_for: float) -> tuple[str, float]:
    """The system's state and, while starting, how long it still will be."""
    link = simulated_system.current_system_path(root)
    if simulated_system.current(root) is None:
        return "offline", 0.0
    left = link.lstat().st_mtime + starting_for - time.time()
    if left > 0:
        return "starting", left
    return ("degraded" if simulated_system.failed_units(root) else "running"), 0.0


def _is_system_running(args: argparse.Namespace) -> int:
    state, left = _state(args.sim_root, args.sim_starting_for)
    while args.wait and state == "starting":
        time.sleep(min(left, 0.5))  # the simulated boot's own pace, not a test's
        state, left = _state(args.sim_root, args.sim_starting_for)
    if not args.quiet:
        print(state, flush=True)
    return 0 if state == "running" else 1


def _list_units(args: argparse.Namespace) -> int:
    states = {s for item in args.state for s in item.split(",") if s}
    if args.failed:
        states.add("failed")
    failed = simulated_system.failed_units(args.sim_root)
    rows = [(u, "loaded", "failed", "failed", simulated_system.describe_unit(u)) for u in failed]
    if simulated_system.current(args.sim_root) is not None:
        rows += [(u, "loaded", "active", "running", d) for u, d in _RUNNING if u not in failed]
    if states:
        rows = [row for row in rows if states & set(row[1:4])]
    bullet = not args.plain
    if not args.no_legend:
        rows.insert(0, ("UNIT", "LOAD", "ACTIVE", "SUB", "DESCRIPTION"))
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(4)]
    for index, row in enumerate(rows):
        mark = ""
        if bullet:
            header = index == 0 and not args.no_legend
            mark = "\N{BLACK CIRCLE} " if row[2] == "failed" and not header else "  "
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        print(mark + " ".join([*cells, row[4]]), flush=True)
    if not args.no_legend:
        print(f"\n{len(rows) - 1} loaded units listed.", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(given)
    if args.sim_record is not None:
        with args.sim_record.open("a", encoding="utf-8") as record:
            record.write(json.dumps({"argv": given}) + "\n")
    verbs = {"is-system-running": _is_system_running, "list-units": _list_units}
    if args.verb not in verbs:
        print(f"Unknown command verb '{args.verb}'.", file=sys.stderr)
        return 1
    return verbs[args.verb](args)


if __name__ == "__main__":
    sys.exit(main())
