"""``fleet-deploy``: the command line. Parses flags, builds settings, runs one command.

The parsers are built from the declarations in ``fleet_core.config.options``; each command is a
settings builder (``fleet_core.config.resolve``) and a ``run_*`` function that takes the frozen
settings and returns an exit code. Start-up must stay fast (``fleet-deploy --help`` well
under 0.4 s), so this module imports only argparse and the declarations; a command imports
what it needs when it runs, and only ``mcp`` loads the MCP stack. Every ``FleetError`` is
caught here and becomes a message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from fleet_core.config.options import COMMANDS, add_arguments

__all__ = ["build_parser", "main"]

# command -> (module, its run function, the settings builder of fleet_core.config.resolve)
_RUNNERS: dict[str, tuple[str, str, str]] = {
    "listener": ("fleet_core.host.daemon", "run_listener", "listener_settings"),
    "deploy": ("fleet_core.deploy.commands", "run_deploy", "deploy_settings"),
    "check": ("fleet_core.deploy.commands", "run_deploy", "check_settings"),
    "cancel": ("fleet_core.deploy.commands", "run_cancel", "cancel_settings"),
    "hosts": ("fleet_core.deploy.commands", "run_hosts", "hosts_settings"),
    "status": ("fleet_core.deploy.status_command", "run_status", "status_settings"),
    "history": ("fleet_core.deploy.history_commands", "run_history", "history_settings"),
    "show": ("fleet_core.deploy.history_commands", "run_show", "show_settings"),
    "logs": ("fleet_core.deploy.logs", "run_logs", "logs_settings"),
    "builder": ("fleet_core.build.builder", "run_builder", "builder_settings"),
    "build": ("fleet_core.build.commands", "run_build", "build_settings"),
    "keygen": ("fleet_core.setup.commands", "run_keygen", "keygen_settings"),
    "nats-config": ("fleet_core.setup.commands", "run_nats_config", "nats_config_settings"),
    "sandbox": ("fleet_core.testing.sandbox", "run_sandbox", "sandbox_settings"),
    "dashboard": ("fleet_dashboard.command", "run_dashboard", "dashboard_settings"),
}


class _BadFlags(Exception):
    """What argparse would print and exit with, raised instead, so ``main`` can also say it
    as JSON when ``--json`` was asked for."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.usage = parser.format_usage()
        self.prog = parser.prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _BadFlags(self, message)


class _VersionAction(argparse.Action):
    """``--version``, looking the version up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **_: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from fleet_core import __version__

        print(f"{parser.prog} {__version__}")  # on stdout, as fleet-mcp --version prints it
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fleet-deploy",
        description="Deploy NixOS configurations to a fleet over NATS.",
        epilog="Run 'fleet-deploy COMMAND --help' for the flags of a command.",
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for declared in COMMANDS:
        if declared.name == "mcp":  # its own parser lives with the MCP server: hand over
            commands.add_parser(
                "mcp", help=f"{declared.help}; see fleet-deploy mcp --help", add_help=False
            )
            continue
        sub = commands.add_parser(
            declared.name,
            help=declared.help,
            description=declared.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_arguments(sub, declared.options)
    return parser


def _run(name: str, flags: dict[str, Any]) -> int:
    from fleet_core.config import resolve

    module, runner, builder = _RUNNERS[name]
    build: Callable[[dict[str, Any]], object] = getattr(resolve, builder)
    run: Callable[[object], int] = getattr(importlib.import_module(module), runner)
    return run(build(flags))


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["mcp"]:
        from fleet_mcp.cli import main as mcp_main  # the only path that loads the MCP stack

        return mcp_main(arguments[1:], prog="fleet-deploy mcp")
    parser = build_parser()
    as_json = "--json" in arguments
    try:
        flags = vars(parser.parse_args(arguments))
    except _BadFlags as exc:
        print(f"{exc.usage}{exc.prog}: error: {exc}", file=sys.stderr)
        if as_json:
            _print_error("usage", str(exc), f"Run '{exc.prog} --help' for its flags.")
        return 2
    name = flags.pop("command", None)
    if name is None:
        parser.print_help(sys.stderr)
        return 2
    from fleet_core.errors import FleetError

    try:
        return _run(name, flags)
    except FleetError as exc:
        print(f"fleet-deploy: error: {exc}", file=sys.stderr)
        if as_json:
            _print_error(exc.code, str(exc), exc.what_to_do, exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fleet-deploy: interrupted", file=sys.stderr)
        return 130


def _print_error(code: str, message: str, what_to_do: str, exit_code: int = 2) -> None:
    """With ``--json``, an error is one JSON object on stdout too, for scripts and CI:
    ``{"ok": false, "exit_code": 2, "error": {"code", "message", "what_to_do"}}``."""
    import json

    error = {"code": code, "message": message, "what_to_do": what_to_do}
    print(json.dumps({"ok": False, "exit_code": exit_code, "error": error}, indent=2))
