"""``fleet-mcp`` (and ``fleet-deploy mcp``): serve the MCP server over stdio or streamable HTTP.

Flags are parsed and checked before the MCP stack is imported, so a usage mistake is reported
at once; every ``FleetError`` becomes a message on stderr and exit code 2. Logs go to stderr
only — over stdio, stdout is the protocol.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog

from fleet_core import __version__
from fleet_core.cli import add_connection_flags
from fleet_core.errors import FleetError
from fleet_core.logging import configure_logging
from fleet_core.settings import ENV_PREFIX, mcp_settings

__all__ = ["build_parser", "main"]

_ENV = ENV_PREFIX
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def build_parser(prog: str = "fleet-mcp") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Serve fleet-deploy's MCP server: list_hosts, deploy (test tier only), "
            "deployment_status,\nand deploy_admin when --enable-admin and an admin key are "
            "given.\n\nServes stdio by default (what an editor launches); --http serves "
            "streamable HTTP at /mcp."
        ),
    )
    add_connection_flags(parser, key="seed of the test-tier deployer key")
    parser.add_argument(
        "--enable-admin",
        action="store_true",
        default=None,
        help=f"register deploy_admin (needs --admin-nkey-file) [env {_ENV}ENABLE_ADMIN=true]",
    )
    parser.add_argument(
        "--admin-nkey-file",
        metavar="PATH",
        help="seed of the admin deployer key, used only by deploy_admin "
        f"[env {_ENV}ADMIN_NKEY_FILE]",
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve streamable HTTP on HOST:PORT instead of stdio, e.g. 127.0.0.1:8765",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="log level of the JSON lines on stderr (default: info)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "fleet-mcp") -> int:
    """Run the MCP server until the client goes away; returns the exit code."""
    args = build_parser(prog).parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        settings = mcp_settings(
            nats_url=args.nats_url,
            nkey_file=args.nkey_file,
            enable_admin=args.enable_admin,
            admin_nkey_file=args.admin_nkey_file,
            http=args.http,
        )
        configure_logging(args.log_level, stream=sys.stderr)
        from fleet_mcp.server import build_server  # the MCP stack: loaded only to serve

        server = build_server(settings, log_level=args.log_level)
        if settings.http is None:
            server.run()
        else:
            host, port = settings.http
            if host not in _LOOPBACK:
                structlog.get_logger("fleet.mcp").warning(
                    "mcp_http_unauthenticated",
                    host=host,
                    port=port,
                    hint="anyone who reaches this port can deploy: bind to 127.0.0.1",
                )
            server.run("streamable-http", host=host, port=port)
    except FleetError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0
