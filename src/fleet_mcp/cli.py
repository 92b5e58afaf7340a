"""``fleet-mcp`` (and ``fleet-deploy mcp``): serve the MCP server over stdio or streamable HTTP.

The flags are declared with every other command's in ``fleet_core.config.options``; they are
parsed and checked before the MCP stack is imported, so a usage mistake is reported at
once. Every ``FleetError`` becomes a message on stderr and exit code 2. Logs go to stderr
only — over stdio, stdout is the protocol.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import structlog

from fleet_core import __version__
from fleet_core.config.options import add_arguments, command
from fleet_core.config.resolve import mcp_settings
from fleet_core.errors import FleetError
from fleet_core.logging import configure_logging

__all__ = ["build_parser", "main"]

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def build_parser(prog: str = "fleet-mcp") -> argparse.ArgumentParser:
    declared = command("mcp")
    parser = argparse.ArgumentParser(
        prog=prog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=declared.description,
    )
    add_arguments(parser, declared.options)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "fleet-mcp") -> int:
    """Run the MCP server until the client goes away; returns the exit code."""
    flags = vars(build_parser(prog).parse_args(sys.argv[1:] if argv is None else list(argv)))
    try:
        settings = mcp_settings(flags)
        configure_logging(settings.log_level, stream=sys.stderr)
        from fleet_mcp.server import build_server  # the MCP stack: loaded only to serve

        server = build_server(settings)
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
