"""What the listener hands the job runner besides the argv: the guard of an activation (the
listener's side of ``fleet_core.host.jobs.activation``) and a closure deploy's plan (of
``fleet_core.host.jobs.closure``), and the refusal of a closure that is not this host's.

A NixOS host's ``switch``, ``test`` and ``boot`` are guarded: the runner records the exact
system they replace and, for ``switch`` and ``test``, checks the new one and waits for this
listener's confirmation before it lets it stand. ``dry-activate`` and ``build`` change
nothing. A nix-darwin or Home Manager host has no system profile of this shape, so nothing
is guarded there (docs/home-manager.md says so): its result is what the rebuild says.

A closure deploy (a request with a ``store_path``) is guarded as a rebuild of its action is.
Its plan (``closure_plan``) names where the path lies once fetched (``--store-dir``) and the
profile a switch or boot sets; its fetch (``closure_fetch_argv``) is ``nix-store --realise``.
Only a NixOS host takes one, and only its own system (``closure_refusal``), refused before
anything is accepted, fetched or changed.
"""

from __future__ import annotations

from pathlib import Path

from fleet_core.config.settings import ListenerSettings
from fleet_core.errors import RequestRejected
from fleet_core.host.jobs.activation import ACTIONS_GUARDED, GUARD_FILE, Guard, HealthCheck
from fleet_core.host.jobs.closure import Plan
from fleet_core.protocol.actions import HostKind
from fleet_core.protocol.closures import store_path_in, system_refusal
from fleet_core.protocol.messages import DeployRequest, ErrorCode

__all__ = ["closure_fetch_argv", "closure_plan", "closure_refusal", "guard_for", "has_guard"]


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


def closure_refusal(settings: ListenerSettings, request: DeployRequest) -> RequestRejected | None:
    """Why this host refuses the closure deploy ``request`` before accepting it; None when it
    takes it (or the request is no closure deploy). By the path's name alone: nothing is
    fetched to decide."""
    if request.store_path is None:
        return None
    if settings.host_kind is not HostKind.NIXOS:
        return RequestRejected(
            ErrorCode.INVALID_ACTION,
            f"{settings.hostname} is a {settings.host_kind.value} host: a closure deploy "
            "activates a NixOS system, so deploy it a revision instead",
        )
    return system_refusal(request.store_path, (settings.hostname, settings.flake_configuration))


def closure_fetch_argv(settings: ListenerSettings, store_path: str) -> list[str]:
    """The fetch of a closure deploy: nix substitutes ``store_path`` from this host's own
    substituters, checking their signatures (never ``--no-check-sigs``)."""
    return [*settings.nix_store_command, "--realise", store_path]


def closure_plan(settings: ListenerSettings, request: DeployRequest) -> Plan | None:
    """The plan of the closure deploy ``request``; None when it is a rebuild."""
    if request.store_path is None:
        return None
    rollback = settings.rollback
    return Plan(
        store_path=request.store_path,
        action=request.action.value,
        path=store_path_in(str(settings.store_dir), request.store_path),
        profile=str(rollback.system_profile),
        nix_env=rollback.nix_env,
    )
