"""``fleet-deploy``: the command line. Parses flags, builds settings, runs one command.

Start-up must stay fast (``fleet-deploy --help`` well under 0.4 s), so this module imports
only argparse; each command imports what it needs when it runs, and only ``mcp`` imports the
MCP stack. Every ``FleetError`` is caught here and becomes a message and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["add_connection_flags", "build_parser", "main"]

_ENV = "FLEET_DEPLOY_"
_ACTIONS = ("switch", "boot", "test", "dry-activate", "build")


_Formatter = argparse.RawDescriptionHelpFormatter


def add_connection_flags(parser: argparse.ArgumentParser, *, key: str = "NKey seed file") -> None:
    """``--nats-url`` and ``--nkey-file``, shared by every command that connects."""
    parser.add_argument(
        "--nats-url", metavar="URL", help=f"NATS server URL [env {_ENV}NATS_URL] (required)"
    )
    parser.add_argument(
        "--nkey-file",
        metavar="PATH",
        help=f"{key}, mode 0600 [env {_ENV}NKEY_FILE] (required)",
    )


def _add_listener(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "listener",
        help="run the deploy listener on a NixOS host",
        formatter_class=_Formatter,
        description=(
            "Subscribe to this host's deploy subjects, run nixos-rebuild for each valid "
            "request (one at a time) and stream its status to the requester.\n\n"
            "Subjects default to deploy.<tier>.<hostname>, deploy.<tier>.all and "
            "deploy.<tier>.role.<role> (the last only with --role)."
        ),
    )
    parser.add_argument("--hostname", help="this host's name in subjects (required)")
    parser.add_argument("--tier", choices=("test", "prod"), help="deployment tier (required)")
    add_connection_flags(parser)
    parser.add_argument(
        "--flake-url", metavar="URL", help="flake to deploy, without #host (required)"
    )
    parser.add_argument("--role", help="role for deploy.<tier>.role.<role> targeting")
    parser.add_argument(
        "--timeout", metavar="SECONDS", help="deadline of one rebuild (default: 600)"
    )
    parser.add_argument(
        "--deploy-subject",
        action="append",
        metavar="TEMPLATE",
        dest="deploy_subjects",
        help="subject template to subscribe to, repeatable; <hostname>, <tier> and <role> "
        "are expanded (default: the three above)",
    )
    parser.add_argument(
        "--discover-subject", metavar="SUBJECT", help="discovery subject (default: deploy.discover)"
    )
    parser.add_argument(
        "--rebuild-command",
        metavar="CMD",
        help="rebuild program and fixed arguments, split like a shell would but never run "
        "by one (default: nixos-rebuild)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where job logs are kept (default: $STATE_DIRECTORY or /var/lib/fleet-deploy)",
    )
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="(default: info)"
    )
    parser.set_defaults(handler=_listener)


def _add_deploy(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "deploy",
        help="deploy to a host, a tier or a role and wait for every result",
        formatter_class=_Formatter,
        description=(
            "Publish a deploy request and gather every host's result.\n\n"
            "TARGET is deploy.<tier>.<host>, deploy.<tier>.all, deploy.<tier>.role.<role>,\n"
            f"or an alias defined as {_ENV}ALIAS_<NAME>=<subject> (NAME upper-cased, - as _).\n\n"
            "Exit status: 0 every host completed; 1 a host failed, was rejected, missing,\n"
            "lost or timed out; 2 usage, key, connection or permission error."
        ),
    )
    parser.add_argument("target", metavar="TARGET", help="deploy subject or alias")
    add_connection_flags(parser)
    parser.add_argument(
        "--branch",
        metavar="REV",
        help=f"branch, tag or full commit to deploy [env {_ENV}BRANCH] (default: master)",
    )
    parser.add_argument(
        "--action",
        choices=_ACTIONS,
        help=f"nixos-rebuild action [env {_ENV}ACTION] (default: switch)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        help=f"how long to wait for results [env {_ENV}TIMEOUT] (default: 900)",
    )
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="HOST[,HOST]",
        help="hosts that must answer even if discovery misses them (then reported missing)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON result object instead of a table"
    )
    parser.set_defaults(handler=_deploy)


def _add_hosts(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "hosts",
        help="discover the listening hosts",
        formatter_class=_Formatter,
        description="Ask every listener to announce itself and print them as a table.",
    )
    add_connection_flags(parser)
    parser.add_argument("--tier", choices=("test", "prod"), help="only hosts of this tier")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_hosts)


class _VersionAction(argparse.Action):
    """``--version``, looking the version up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **_: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from fleet_core import __version__

        parser.exit(message=f"{parser.prog} {__version__}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-deploy",
        description="Deploy NixOS configurations to a fleet over NATS.",
        epilog="Run 'fleet-deploy COMMAND --help' for the flags of a command.",
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_listener(commands)
    _add_deploy(commands)
    _add_hosts(commands)
    from fleet_core.setup_commands import add_commands

    add_commands(commands)
    commands.add_parser(
        "mcp",
        help="serve the MCP server (same as fleet-mcp; see fleet-deploy mcp --help)",
        add_help=False,
    )
    return parser


def _listener(args: argparse.Namespace) -> int:
    from fleet_core.commands import run_listener
    from fleet_core.settings import listener_settings

    settings = listener_settings(
        hostname=args.hostname,
        tier=args.tier,
        nats_url=args.nats_url,
        nkey_file=args.nkey_file,
        flake_url=args.flake_url,
        role=args.role,
        timeout=args.timeout,
        deploy_subjects=args.deploy_subjects,
        discover_subject=args.discover_subject,
        rebuild_command=args.rebuild_command,
        state_dir=args.state_dir,
        log_level=args.log_level,
    )
    return run_listener(settings)


def _deploy(args: argparse.Namespace) -> int:
    from fleet_core.commands import run_deploy
    from fleet_core.settings import deploy_settings

    settings = deploy_settings(
        target=args.target,
        nats_url=args.nats_url,
        nkey_file=args.nkey_file,
        branch=args.branch,
        action=args.action,
        timeout=args.timeout,
        expect=args.expect,
        json=args.json,
    )
    return run_deploy(settings)


def _hosts(args: argparse.Namespace) -> int:
    from fleet_core.commands import run_hosts
    from fleet_core.settings import hosts_settings

    settings = hosts_settings(
        nats_url=args.nats_url, nkey_file=args.nkey_file, tier=args.tier, json=args.json
    )
    return run_hosts(settings)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["mcp"]:
        from fleet_mcp.cli import main as mcp_main  # the only path that loads the MCP stack

        return mcp_main(arguments[1:], prog="fleet-deploy mcp")
    parser = build_parser()
    args = parser.parse_args(arguments)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    from fleet_core.errors import FleetError

    try:
        return handler(args)
    except FleetError as exc:
        print(f"fleet-deploy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fleet-deploy: interrupted", file=sys.stderr)
        return 130
