"""The setting-up commands: ``keygen``, ``nats-config`` and ``sandbox``.

``add_commands`` registers their subparsers on ``fleet-deploy``'s; ``cli.py`` calls it. Like
``cli.py`` this module imports only argparse at load time (``fleet-deploy --help`` stays
fast): each handler imports what it needs when it runs, and every user mistake is a
``FleetError``, which ``cli.main`` turns into a message and exit code 2.

It also holds the two text renderers the sandbox shares with ``nats-config``, so that the
sandbox's server runs exactly the configuration ``nats-config`` would write for its fleet:

    inventory_toml(inventory)        an inventory as TOML (public keys only)
    nats_config(inventory, source)   a complete nats-server config: header + authorization
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from typing import TypeAlias

    from fleet_core.natsconfig import Inventory

    _Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["add_commands", "inventory_toml", "nats_config", "run_keygen", "run_nats_config"]

_Formatter = argparse.RawDescriptionHelpFormatter

_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_BARE_TOML_KEY = re.compile(r"[A-Za-z0-9_-]+")
SEED_SUFFIX = ".seed"


def add_commands(commands: _Commands) -> None:
    """Register ``keygen``, ``nats-config`` and ``sandbox`` on ``fleet-deploy``'s subparsers."""
    _add_keygen(commands)
    _add_nats_config(commands)
    _add_sandbox(commands)


# -- keygen ------------------------------------------------------------------------------------


def _add_keygen(commands: _Commands) -> None:
    parser = commands.add_parser(
        "keygen",
        help="create an NKey user seed (mode 0600) and print its public key",
        formatter_class=_Formatter,
        description=(
            "Write a new NKey user seed to DIR/NAME.seed with mode 0600 (an existing file is\n"
            "never overwritten) and print its public key on stdout — the key that goes into\n"
            "the inventory for nats-config. The seed is the secret: it never leaves the file.\n\n"
            "  fleet-deploy keygen web1 --dir /run/keys     # one per host and per deployer"
        ),
    )
    parser.add_argument("name", metavar="NAME", help="key name: the file becomes NAME.seed")
    parser.add_argument(
        "--dir", metavar="DIR", default=".", help="where to write it (default: current directory)"
    )
    parser.set_defaults(handler=_keygen)


def _keygen(args: argparse.Namespace) -> int:
    return run_keygen(name=args.name, directory=Path(args.dir))


def run_keygen(
    *, name: str, directory: Path, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """Write ``directory/name.seed`` (0600, never over an existing file); print the public key."""
    from fleet_core.errors import UsageError
    from fleet_core.keys import generate_seed, write_seed

    base = name.removesuffix(SEED_SUFFIX)
    if not _KEY_NAME.fullmatch(base):
        raise UsageError(
            f"invalid key name {name!r}: use 1-63 letters, digits, '-' or '_' (no path: "
            "choose the folder with --dir)"
        )
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --dir {directory}: {exc.strerror or exc}") from exc
    path = directory / f"{base}{SEED_SUFFIX}"
    seed = generate_seed()
    write_seed(path, seed)
    print(seed.public_key, file=out, flush=True)
    print(f"wrote {path} (mode 0600); its public key is above", file=err, flush=True)
    return 0


# -- nats-config -------------------------------------------------------------------------------


def _add_nats_config(commands: _Commands) -> None:
    parser = commands.add_parser(
        "nats-config",
        help="write the NATS authorization block for a TOML inventory",
        formatter_class=_Formatter,
        description=(
            "Turn an inventory into nats-server's authorization block with the tiered\n"
            "permissions: one permission block per host (NATS permission templates do not\n"
            "work for nkey users), a test deployer that reaches only deploy.test.>, and an\n"
            "admin deployer that reaches everything.\n\n"
            "The output is a complete config: `nats-server -c FILE` loads it as it is, or\n"
            "`include` it from your server's own config. Check it with\n"
            "`nats-server -t -c FILE`.\n\n"
            "Inventory (see examples/inventory.toml):\n\n"
            "  [hosts.web1]\n"
            '  tier = "test"            # test or prod\n'
            '  role = "web"             # optional: deploy.<tier>.role.<role>\n'
            '  nkey = "U..."            # the listener\'s public key (fleet-deploy keygen)\n\n'
            "  [deployers.assistant]\n"
            '  access = "test"          # test: deploy.test.> only; admin: deploy.>\n'
            '  nkey = "U..."'
        ),
    )
    parser.add_argument("inventory", metavar="INVENTORY", help="TOML inventory, or - for stdin")
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write the config here (default: stdout)"
    )
    parser.set_defaults(handler=_nats_config)


def _nats_config(args: argparse.Namespace) -> int:
    return run_nats_config(
        inventory=args.inventory, output=Path(args.output) if args.output else None
    )


def run_nats_config(
    *,
    inventory: str,
    output: Path | None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    stdin: TextIO = sys.stdin,
) -> int:
    """Parse and check the inventory, then write its config to ``output`` (or ``out``)."""
    from fleet_core.errors import UsageError
    from fleet_core.natsconfig import parse_inventory

    if inventory == "-":
        source, text = "<stdin>", stdin.read()
    else:
        source = inventory
        try:
            text = Path(inventory).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UsageError(f"cannot read inventory {inventory}: {reason}") from exc
    config = nats_config(parse_inventory(text, source=source), source=source)
    if output is None:
        out.write(config)
        out.flush()
        return 0
    _write_atomically(output, config)
    print(f"wrote {output}: check it with `nats-server -t -c {output}`", file=err, flush=True)
    return 0


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step, so a server reloading it never reads half a file."""
    from fleet_core.errors import UsageError

    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc


def nats_config(inventory: Inventory, *, source: str) -> str:
    """A complete nats-server config for ``inventory``: a header comment and its users."""
    from fleet_core.natsconfig import render_authorization

    tiers = [host.tier.value for host in inventory.hosts]
    header = [
        "# NATS authorization for fleet-deploy, written by `fleet-deploy nats-config` from",
        f"# {source}: {len(tiers)} hosts ({tiers.count('test')} test, "
        f"{tiers.count('prod')} prod) and {len(inventory.deployers)} deployers.",
        "# Regenerate it rather than edit it. Load it with `nats-server -c <this file>`, or",
        "# `include` it from your server's config; check it with `nats-server -t -c <file>`.",
        "",
    ]
    return "\n".join(header) + render_authorization(inventory)


def _toml_key(name: str) -> str:
    return name if _BARE_TOML_KEY.fullmatch(name) else json.dumps(name)


def inventory_toml(inventory: Inventory) -> str:
    """``inventory`` as the TOML that ``parse_inventory`` reads back (public keys only)."""
    lines = [
        "# fleet-deploy inventory: `fleet-deploy nats-config <this file>` writes the NATS",
        "# authorization block for it. Only public keys are here; the seeds stay with their",
        "# owners.",
    ]
    for host in inventory.hosts:
        lines += ["", f"[hosts.{_toml_key(host.name)}]", f'tier = "{host.tier.value}"']
        if host.role is not None:
            lines.append(f'role = "{host.role}"')
        lines.append(f'nkey = "{host.nkey}"')
    for deployer in inventory.deployers:
        lines += [
            "",
            f"[deployers.{_toml_key(deployer.name)}]",
            f'access = "{deployer.access}"',
            f'nkey = "{deployer.nkey}"',
        ]
    return "\n".join(lines) + "\n"


# -- sandbox -----------------------------------------------------------------------------------


def _add_sandbox(commands: _Commands) -> None:
    parser = commands.add_parser(
        "sandbox",
        help="run a whole simulated fleet on this machine: nothing to install or configure",
        formatter_class=_Formatter,
        description=(
            "Start a real nats-server on 127.0.0.1 with freshly generated NKeys and the\n"
            "tiered permissions, and simulated hosts (test and prod tiers, a shared role,\n"
            "one host whose rebuild fails) whose listeners are real and whose nixos-rebuild\n"
            "is a packaged stand-in. It prints the NATS URL, the key files, commands to\n"
            "paste and an MCP client config, then runs until Ctrl-C or SIGTERM and stops\n"
            "every process it started.\n\n"
            "--once runs a guided tour instead and exits: discover, deploy to the test\n"
            "tier, explain the failing host, and show the test key refused on prod.\n"
            "Exit status: 0 stopped by Ctrl-C or SIGTERM, or the tour went as expected;\n"
            "1 the tour saw something it did not expect; 2 a usage error such as a busy\n"
            "port; 128+N the tour was interrupted by signal N."
        ),
    )
    parser.add_argument(
        "--hosts", metavar="N", help="number of simulated hosts, 3 to 50 (default: 6)"
    )
    parser.add_argument(
        "--port",
        metavar="P",
        help="NATS port on 127.0.0.1; 0 picks a free one (default: 4222, or a free one "
        "with --once)",
    )
    parser.add_argument(
        "--dir",
        metavar="D",
        help="keep keys, config and job logs here, and reuse its keys on the next run "
        "(default: a temporary directory, removed at exit)",
    )
    parser.add_argument(
        "--sim-delay",
        metavar="SECONDS",
        help="pause between the simulated rebuild's output lines (default: 0.15)",
    )
    parser.add_argument(
        "--once", action="store_true", help="run the guided tour, then stop and exit"
    )
    parser.set_defaults(handler=_sandbox)


def _sandbox(args: argparse.Namespace) -> int:
    from fleet_core.sandbox import run_sandbox, sandbox_settings

    settings = sandbox_settings(
        hosts=args.hosts,
        port=args.port,
        directory=args.dir,
        sim_delay=args.sim_delay,
        once=args.once,
    )
    return run_sandbox(settings)
