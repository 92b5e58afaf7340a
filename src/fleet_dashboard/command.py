"""``fleet-deploy dashboard``: read the keys and the login's files, then serve until a signal.

The thin part around the page (``fleet_dashboard.server``): everything that can be wrong
with a file (a seed others can read, a missing password hash, a bad TOTP secret) is found
here, once, before anything listens, and is exit 2 from ``cli.main`` with the flag named.
A read-only dashboard never opens the action files, so a deploying key is never in its
memory.

Once the socket listens it prints one line on stdout, ``dashboard: http://HOST:PORT/``,
flushed: a person clicks it, and the sandbox and the tests read it (with ``--listen
HOST:0`` it carries the port the kernel chose). Ctrl-C or SIGTERM stops it, exit 0.

``--hash-password`` reads a password on stdin (twice and without echo on a terminal, one
line from a pipe) and prints the line ``--password-file`` holds; nothing else runs.
"""

from __future__ import annotations

import getpass
import sys
from typing import TextIO

import structlog

from fleet_core.config.settings import DashboardSettings, PasswordHashSettings
from fleet_core.errors import UsageError
from fleet_core.keys import Seed, load_seed
from fleet_core.lifecycle import run_until_signal
from fleet_core.logging import configure_logging

__all__ = ["LISTENING_PREFIX", "MIN_PASSWORD", "run_dashboard"]

LISTENING_PREFIX = "dashboard: "  # the line's start that the sandbox and the tests look for

log = structlog.get_logger("fleet.dashboard")


def run_dashboard(
    settings: DashboardSettings | PasswordHashSettings,
    *,
    out: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Serve the dashboard until SIGINT or SIGTERM (0), or print a password's hash (0)."""
    out = out if out is not None else sys.stdout
    if isinstance(settings, PasswordHashSettings):
        return _print_password_hash(stdin if stdin is not None else sys.stdin, out)
    configure_logging(settings.log_level)
    read_seed = load_seed(settings.connection.nkey_file)
    deploy_seed: Seed | None = None
    auth = None
    if settings.allow_actions:
        # resolve.dashboard_settings refuses --allow-actions without these two files.
        assert settings.deploy_nkey_file is not None
        deploy_seed = load_seed(settings.deploy_nkey_file)
        from fleet_dashboard.auth import load_auth  # only a dashboard that acts logs in

        auth = load_auth(settings)
    from fleet_dashboard.server import serve  # uvicorn and Starlette load only to serve

    def listening(url: str) -> None:
        print(f"{LISTENING_PREFIX}{url}", file=out, flush=True)
        log.info("dashboard_listening", url=url, actions=settings.allow_actions)

    async def main() -> None:
        await serve(
            settings,
            read_seed=read_seed,
            deploy_seed=deploy_seed,
            auth=auth,
            on_listening=listening,
        )

    log.info(
        "dashboard_starting",
        read_key=read_seed.public_key,
        actions=settings.allow_actions,
        servers=len(settings.connection.nats_urls),
    )
    from fleet_dashboard.security import WILDCARDS  # hosts that name none: none admitted

    if settings.listen[0] in WILDCARDS and not settings.allowed_hosts:
        # Asked for the network, yet every name but loopback's gets 421 (the Host check):
        # say so now, not when someone first opens it by the machine's name.
        log.warning(
            "dashboard_loopback_names_only",
            listen=f"{settings.listen[0]}:{settings.listen[1]}",
            fix="it listens on every address but answers only to localhost, 127.0.0.1 and "
            "[::1]: add --allowed-host NAME for the name or address people open it by",
        )
    run_until_signal(main)
    # Stopped by a signal is how a server ends: it is no failure, as for the listener.
    return 0


# The shortest password --hash-password takes. The login limit allows 30 failures in 5
# minutes from everywhere (8,640 a day): a password that short-lived guessing can reach is no
# guard for a button that deploys.
MIN_PASSWORD = 12


def _print_password_hash(stdin: TextIO, out: TextIO) -> int:
    """Hash a password for ``--password-file``; on a terminal it is asked twice, unechoed."""
    from fleet_dashboard.auth import hash_password

    if stdin.isatty():
        password = getpass.getpass("Password for the dashboard: ")
        if getpass.getpass("The same again: ") != password:
            raise UsageError("the two passwords differ: run --hash-password again")
    else:
        password = stdin.readline().rstrip("\r\n")
    if password and len(password) < MIN_PASSWORD:
        raise UsageError(
            f"a password of {len(password)} characters is too short to guard deploys: use at "
            f"least {MIN_PASSWORD} (a few words do), then run --hash-password again"
        )
    print(hash_password(password), file=out, flush=True)
    return 0
