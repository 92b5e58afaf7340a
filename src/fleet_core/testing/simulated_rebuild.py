"""A stand-in for ``nixos-rebuild`` with the same interface, for tests and the sandbox; and,
with ``--sim-program``, for ``darwin-rebuild`` and ``home-manager``.

    python -m fleet_core.testing.simulated_rebuild [--sim-* options] <action> --flake <ref> \
        [--refresh]
    python -m fleet_core.testing.simulated_rebuild --sim-program darwin-rebuild \
        {switch,build,check} --flake <ref> [--refresh]
    python -m fleet_core.testing.simulated_rebuild --sim-program home-manager \
        {switch [-n|--dry-run],build} --flake <ref> [--refresh]

It checks its arguments the way the program would — the verbs that program has, and only
those (darwin-rebuild and home-manager have no boot or test; home-manager's dry run is a
flag of switch, darwin-rebuild's is check) — prints realistic build and activation output,
and can be told to fail with a nix evaluation error (always, or only for one revision, so
one listener can both succeed and fail), hang, leave a grandchild behind, or wait for a
file (so a test can hold a rebuild open without sleeping). ``--sim-print-file`` prints a
file's bytes as they are, last (on stderr when failing, where nix prints its errors): the
output of a branch whose author wrote escape sequences or words meant for a model.
``--sim-record`` appends its argv, pid and the program it stood in for as one JSON line, for
tests to assert on; ``--sim-activate-writes`` appends a line to a file when a switch or test
activates, as activation rewrites unit files.

With ``--sim-root DIR`` (nixos-rebuild only) a rebuild changes a simulated host's system
profile below DIR (``simulated_system``) as the real one changes the host's: it "builds"
the system of the host and revision the flake names (DIR is initialised first if it is
not yet), with the markers ``--sim-cut-network``, ``--sim-degraded UNIT``,
``--sim-fail-activation`` and ``--sim-kernel VERSION`` (a system with another kernel: after a
switch to it the host needs a reboot) (only for the revision ``--sim-marker-revision``
names, if given);
switch and boot then set the profile to it (nixos-rebuild's ``nix-env --set``), and every
verb but build runs the system's own ``bin/switch-to-configuration``, whose output passes
through. When that fails, nixos-rebuild's warning follows and the exit is 1, as nixos-rebuild
exits. build prints the store path as its last line. Standard library only: it starts once
per job and must start fast.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import TextIO

from fleet_core.testing import simulated_system

ACTIONS = ("switch", "boot", "test", "dry-activate", "build")
# The verbs each stood-in program takes (fleet_core.protocol.actions maps the deploy actions
# to them).
VERBS = {
    "nixos-rebuild": ACTIONS,
    "darwin-rebuild": ("switch", "build", "check"),
    "home-manager": ("switch", "build"),
}

EVAL_ERROR = """\
error:
       … while evaluating the attribute 'config.system.build.toplevel'
         at /nix/store/8zq4mlqk8aqfbk3fz1c9v7cw4ygnm9lh-source/\
nixos/modules/system/activation/top-level.nix:71:5:
           70|   {
           71|     toplevel = finalSystem;
             |     ^
           72|   };

       … while evaluating the option `services.nginx.virtualHosts."{host}.example.org".root':

       (stack trace truncated; use '--show-trace' to show the full trace)

       error: undefined variable 'webroot'
       at /nix/store/5r0yq7b0c3kx8x5m0a8sdd8k2zcd6a8n-source/hosts/{host}/nginx.nix:14:14:
           13|     forceSSL = true;
           14|     root = webroot;
             |            ^
           15|   };"""


def _store_path(seed: str, name: str) -> str:
    digest = hashlib.sha256(seed.encode()).hexdigest()
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    return f"/nix/store/{''.join(alphabet[int(c, 16) * 2] for c in digest[:32])}-{name}"


def _say(line: str, delay: float) -> None:
    print(line, flush=True)
    if delay > 0:
        time.sleep(delay)


def _wait_for(path: Path, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        if time.monotonic() > deadline:
            print(f"simulated-rebuild: gave up waiting for {path}", file=sys.stderr)
            sys.exit(3)
        time.sleep(0.01)


def _program(args: list[str]) -> str:
    """The program ``--sim-program`` names (nixos-rebuild unless given); checked by the
    full parser, which takes that option too."""
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--sim-program", choices=tuple(VERBS), default="nixos-rebuild")
    known, _ = peek.parse_known_args(args)
    program: str = known.sim_program
    return program


def _parser(program: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{program} (simulated)", allow_abbrev=False)
    parser.add_argument(
        "--sim-program", choices=tuple(VERBS), default="nixos-rebuild", help="what to stand in for"
    )
    parser.add_argument("--sim-record", type=Path, help="append the argv as a JSON line here")
    parser.add_argument("--sim-fail", action="store_true", help="fail with an evaluation error")
    parser.add_argument(
        "--sim-fail-revision", metavar="REV", help="fail so only when deploying this revision"
    )
    parser.add_argument("--sim-delay", type=float, default=0.0, help="seconds between lines")
    parser.add_argument("--sim-hang", action="store_true", help="never finish")
    parser.add_argument("--sim-grandchild-pid", type=Path, help="start a grandchild, write its pid")
    parser.add_argument("--sim-wait-for", type=Path, help="block until this file exists")
    parser.add_argument("--sim-spam", type=int, default=0, help="print this many extra lines")
    parser.add_argument(
        "--sim-activate-writes", type=Path, help="append to this file when switch/test activates"
    )
    parser.add_argument(
        "--sim-print-file", type=Path, help="print this file's bytes as they are, last"
    )
    parser.add_argument("--sim-root", type=Path, help="change the simulated system under DIR")
    parser.add_argument(
        "--sim-cut-network", action="store_true", help="the new system cuts the network"
    )
    parser.add_argument(
        "--sim-degraded", metavar="UNIT", action="append", default=[], help="a failed unit"
    )
    parser.add_argument(
        "--sim-fail-activation", action="store_true", help="the new system's activation fails"
    )
    parser.add_argument(
        "--sim-kernel", metavar="VERSION", help="the new system's kernel (another needs a reboot)"
    )
    parser.add_argument(
        "--sim-marker-revision", metavar="REV", help="markers only for this revision's system"
    )
    parser.add_argument("action", choices=VERBS[program])
    if program == "home-manager":  # home-manager's -n: a flag of switch, not a verb
        parser.add_argument("-n", "--dry-run", action="store_true")
    parser.add_argument("--flake", required=True)
    parser.add_argument("--refresh", action="store_true")
    return parser


def _parse(args_list: list[str]) -> tuple[str, argparse.Namespace]:
    """The program stood in for and its arguments, checked as that program checks them."""
    program = _program(args_list)
    parser = _parser(program)
    args = parser.parse_args(args_list)
    args.dry_run = bool(getattr(args, "dry_run", False))
    if args.dry_run and args.action != "switch":
        parser.error("--dry-run is only taken here with switch")
    if args.sim_root is not None and program != "nixos-rebuild":
        parser.error("--sim-root simulates a NixOS system profile: nixos-rebuild only")
    return program, args


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    program, args = _parse(args_list)
    if args.sim_record is not None:
        with args.sim_record.open("a", encoding="utf-8") as record:
            call = {"argv": args_list, "pid": os.getpid(), "program": program}
            record.write(json.dumps(call) + "\n")
    flake, _, host = args.flake.partition("#")
    if not host or "?" not in flake:
        print(f"error: flake reference '{args.flake}' names no configuration", file=sys.stderr)
        return 1
    delay = args.sim_delay
    _say(f"unpacking '{flake}' into the Git cache...", delay)
    if args.sim_grandchild_pid is not None:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        args.sim_grandchild_pid.write_text(str(child.pid))
    if args.sim_wait_for is not None:
        _say("building the system configuration...", 0)
        _wait_for(args.sim_wait_for)
    if args.sim_hang:
        _say("building the system configuration...", 0)
        while True:
            time.sleep(3600)
    for index in range(args.sim_spam):
        print(f"building '/nix/store/{index:032d}-spam.drv'...", flush=True)
    query = urllib.parse.parse_qs(flake.partition("?")[2])
    revision = (query.get("ref") or query.get("rev") or [None])[0]
    if args.sim_fail or (args.sim_fail_revision is not None and revision == args.sim_fail_revision):
        _say("building the system configuration...", delay)
        for line in EVAL_ERROR.replace("{host}", host).splitlines():
            print(line, file=sys.stderr, flush=True)
        _print_file(args.sim_print_file, sys.stderr)
        return 1
    code = _rebuild(program, args, host, revision, delay)
    _print_file(args.sim_print_file, sys.stdout if code == 0 else sys.stderr)
    return code


def _rebuild(
    program: str, args: argparse.Namespace, host: str, revision: str | None, delay: float
) -> int:
    """The rebuild proper, once the arguments are checked and no failure was asked for."""
    if args.sim_root is not None:
        return _with_root(args, host, revision, delay)
    if program == "darwin-rebuild":
        _darwin(args.action, args.flake, host, delay, args.sim_activate_writes)
    elif program == "home-manager":
        _home_manager(args, host, delay)
    else:
        _succeed(args.action, args.flake, host, delay, args.sim_activate_writes)
    return 0


def _print_file(path: Path | None, stream: TextIO) -> None:
    """``path``'s bytes on ``stream`` exactly: control characters, no newline added."""
    if path is not None:
        stream.flush()
        stream.buffer.write(path.read_bytes())
        stream.buffer.flush()


def _succeed(action: str, flake: str, host: str, delay: float, writes: Path | None) -> None:
    """The output of a rebuild that works, shaped by the action."""
    system = _store_path(flake, f"nixos-system-{host}-24.11.20241122.5e4fbfb")
    _building(host, delay)
    if action in ("switch", "boot"):
        _say("updating GRUB 2 menu...", delay)
    if action in ("switch", "test"):
        _say("activating the configuration...", delay)
        _say("setting up /etc...", 0)
        if writes is not None:
            with writes.open("a", encoding="utf-8") as file:
                file.write(f"activated {flake}\n")
        _say("reloading user units for root...", 0)
        _say("restarting the following units: nginx.service", delay)
    if action == "dry-activate":
        _say("would restart the following units: nginx.service", delay)
    _say(f"Done. The new configuration is {system}", 0)


def _building(host: str, delay: float) -> None:
    """nixos-rebuild's and nix's lines while a system builds."""
    _say("building the system configuration...", delay)
    _say("these 3 derivations will be built:", 0)
    for name in ("etc.drv", "system-units.drv", f"nixos-system-{host}-24.11.drv"):
        _say(f"  {_store_path(name + host, name)}", 0)
    for name in ("etc.drv", "system-units.drv"):
        _say(f"building '{_store_path(name + host, name)}'...", delay)


def _with_root(args: argparse.Namespace, host: str, revision: str | None, delay: float) -> int:
    """A rebuild that changes the simulated system profile below ``--sim-root``: build,
    set the profile (switch, boot), run the system's switch-to-configuration (all but build).
    """
    root: Path = args.sim_root
    simulated_system.init_root(root, host)  # a host has a system before its first deploy
    marked = args.sim_marker_revision is None or revision == args.sim_marker_revision
    _building(host, delay)
    system = simulated_system.make_system(
        root,
        host,
        revision or "unknown",
        cut_network=marked and args.sim_cut_network,
        degraded=args.sim_degraded if marked else (),
        fail_activation=marked and args.sim_fail_activation,
        kernel=args.sim_kernel if marked and args.sim_kernel else simulated_system.DEFAULT_KERNEL,
    )
    if args.action == "build":
        _say(f"Done. The new configuration is {system}", 0)
        _say(str(system), 0)  # alone on the last line, as ./result would name it
        return 0
    if args.action in ("switch", "boot"):
        simulated_system.set_profile(root, system)  # nix-env --profile … --set
    if args.action in ("switch", "test") and args.sim_activate_writes is not None:
        with args.sim_activate_writes.open("a", encoding="utf-8") as file:
            file.write(f"activated {args.flake}\n")
    sys.stdout.flush()
    activation = [str(system / "bin" / "switch-to-configuration"), args.action]
    if subprocess.run(activation, check=False).returncode != 0:  # noqa: S603 - our own script
        warning = "warning: error(s) occurred while switching to the new configuration"
        print(warning, file=sys.stderr, flush=True)
        return 1
    _say(f"Done. The new configuration is {system}", 0)
    return 0


def _built(flake: str, host: str, name: str, delay: float) -> str:
    """nix's build lines for a configuration, and the store path it builds."""
    for drv in ("etc.drv", f"{name}.drv"):
        _say(f"building '{_store_path(drv + host, drv)}'...", delay)
    return _store_path(flake, name)


def _darwin(action: str, flake: str, host: str, delay: float, writes: Path | None) -> None:
    """darwin-rebuild's output: it builds for every verb; switch activates, check only runs
    the activation's checks (and, like switch, must run as root on current nix-darwin)."""
    _say("building the system configuration...", delay)
    system = _built(flake, host, f"darwin-system-25.05.{host}", delay)
    if action == "build":
        return
    if action == "check":
        _say("checking the activation of " + system, delay)
        return
    _say("setting up groups...", 0)
    _say("setting up /etc...", delay)
    if writes is not None:
        with writes.open("a", encoding="utf-8") as file:
            file.write(f"activated {flake}\n")
    _say("setting up launchd services...", delay)
    _say("setting up /run/current-system...", 0)


def _home_manager(args: argparse.Namespace, host: str, delay: float) -> None:
    """home-manager's output: build leaves the generation; switch activates it, and with
    --dry-run only says what it would do."""
    flake, dry_run, writes = args.flake, args.dry_run, args.sim_activate_writes
    generation = _built(flake, host, "home-manager-generation", delay)
    if args.action == "build":
        _say(generation, 0)
        return
    _say("Starting Home Manager activation", delay)
    if dry_run:
        _say("This is a dry run", 0)
    _say("Activating checkFilesChanged", 0)
    _say("Activating checkLinkTargets", 0)
    _say("Activating writeBoundary", 0)
    _say("Activating linkGeneration", delay)
    if dry_run:
        _say(f"Would create home file links to {generation}/home-files", 0)
        return
    _say("Creating profile generation 42", 0)
    _say(f"Creating home file links in /home/{host.partition('@')[0]}", delay)
    if writes is not None:
        with writes.open("a", encoding="utf-8") as file:
            file.write(f"activated {flake}\n")
    _say("Activating onFilesChange", 0)
    _say("Activating reloadSystemd", 0)


if __name__ == "__main__":
    sys.exit(main())
