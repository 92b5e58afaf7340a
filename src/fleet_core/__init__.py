"""fleet-deploy's shared core: the wire protocol, the listener, the deployer and the builder.

Nothing in this package imports the MCP stack: the listener must stay small and start fast.
``__version__`` is looked up on first use: importlib.metadata costs more than the rest of
``fleet-deploy --help``. Each package's docstring maps its modules; ``tests/test_layout.py``
holds the maps and the layering between packages to the code.

Modules:
    config/      every option declared once; flags + environment -> frozen settings
    protocol/    subjects, actions, wire models, signing, reply trust (pure)
    host/        the listener daemon, its status reporting, and its jobs (``host/jobs/``)
    deploy/      the deployer: discover, publish, gather, decide; the report; its commands
    build/       the builder, the build client and tracker, the build wire protocol
    setup/       keygen and nats-config
    testing/     a local fleet, embedded nats-servers, the stand-ins for nix, the sandbox
    cli          ``fleet-deploy``: parsers from ``config.options``, one run function each
    bus          the NATS connection: the only module that imports nats
    errors       the FleetError family
    keys         NKey seeds: generate, load with the mode and checksum checks
    logging      structlog: JSON lines under systemd, readable on a TTY
    lifecycle    run a command until it ends or SIGINT/SIGTERM stops it
    metrics      Prometheus metrics, listener and MCP; prometheus_client only when on
    processes    process groups: alive or not, and stopping one (SIGTERM, grace, SIGKILL)
"""

from __future__ import annotations

from functools import cache

__all__ = ["__version__"]


@cache
def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fleet-deploy")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0.0.0+unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
