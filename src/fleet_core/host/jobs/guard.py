"""Which jobs the runner guards, and with what: the listener's side of
``fleet_core.host.jobs.activation``.

A NixOS host's ``switch``, ``test`` and ``boot`` are guarded: the runner records the exact
system they replace and, for ``switch`` and ``test``, checks the new one and waits for this
listener's confirmation before it lets it stand. ``dry-activate`` and ``build`` change
nothing. A nix-darwin or Home Manager host has no system profile of this shape, so nothing
is guarded there (docs/home-manager.md says so): its result is what the rebuild says.
"""

from __future__ import annotations

from pathlib import Path

from fleet_core.config.settings import ListenerSettings
from fleet_core.host.jobs.activation import ACTIONS_GUARDED, GUARD_FILE, Guard, HealthCheck
from fleet_core.protocol.actions import HostKind
from fleet_core.protocol.messages import DeployRequest

__all__ = ["guard_for", "has_guard"]


def guard_for(settings: ListenerSettings, request: DeployRequest) -> Guard | None:
    """The guard of ``request`` on this host; None when there is nothing to guard."""
    if settings.host_kind is not HostKind.NIXOS or request.action.value not in ACTIONS_GUARDED:
        return None
    rollback = settings.rollback
    return Guard(
        action=request.action.value,
        profile=str(rollback.system_profile),
        current=str(rollback.current_system),
        nix_env=rollback.nix_env,
        systemctl=rollback.systemctl,
        checks=tuple(
            HealthCheck(
                name=check.name,
                argv=check.argv,
                timeout=check.timeout,
                builtin=check.builtin,
                ignore_units=check.ignore_units,
            )
            for check in rollback.checks
        ),
        confirm_timeout=rollback.confirm_timeout,
        rollback=rollback.enabled and not request.no_rollback,
    )


def has_guard(job_dir: Path) -> bool:
    """Whether the job in ``job_dir`` is guarded (its runner will ask for confirmation)."""
    return (job_dir / GUARD_FILE).exists()
