"""A closure deploy's job as the job runner runs it: fetch, check, activate the exact system.

A closure deploy sends a host the store path of a system the builder built for it
(``DeployRequest.store_path``); nothing is evaluated on the host. The listener refuses a path
that is not its own system by name before it accepts anything
(``fleet_core.protocol.closures.system_refusal``), then leaves the job's *plan* in the job
directory (``closure.json``, ``write_plan``) beside the fetch's argv (``argv.json``, as a
rebuild's). The runner runs, in order, each step in a process group of its own, its output
into ``output.log``, all of them under the job's one deadline:

1. ``fetch``: ``nix-store --realise <store path>``, the argv.json's. nix substitutes the path
   from the host's own configured substituters, and only with a signature by a key in its
   ``trusted-public-keys`` (never ``--no-check-sigs``); a path already in the store is there.
   When it fails the job ends ``closure_unavailable`` and nothing has changed.
2. ``check`` (no process, ``system_check``): what arrived is a directory, not a symlink,
   holding ``bin/switch-to-configuration`` and ``nixos-version``, as every NixOS system does;
   else ``not_a_system``, nothing is activated. The name check on arrival guards against
   mistakes; this one looks at content.
3. the activation (``activation_steps``), with the exact-system primitive a rollback uses:

       switch        nix-env --profile P --set PATH, then PATH/bin/switch-to-configuration switch
       boot          nix-env --profile P --set PATH, then PATH/bin/switch-to-configuration boot
       test          PATH/bin/switch-to-configuration test
       dry-activate  PATH/bin/switch-to-configuration dry-activate
       build         nothing: the fetch and the check were the job

   Before it the runner writes the phase ``activating`` (``activation.PHASE_FILE``): from
   then on a stop request is not obeyed (a half activation helps nobody) and a cancel is
   answered ``already_activating``, as during nixos-rebuild's activation. The deadline
   still holds, as it does for a rebuild's activation. A stop that came meanwhile is obeyed
   once the activation ended: the guard does not let the new system stand unchecked
   (``activation.STOPPED_REASON``).

Then the guard runs as after any rebuild (``activation``): health checks, the listener's
confirmation, and the rollback to the exact previous system. What the steps did goes into
``exit.json`` under ``closure`` (``Report``): the steps run, the one that failed and why.

Standard library only: the job runner loads this file by path, as it loads ``jobdir``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ACTIVATE",
    "ACTIVATING",
    "CHECK",
    "FETCH",
    "PLAN_FILE",
    "SET_PROFILE",
    "SYSTEM_FILES",
    "Plan",
    "Report",
    "activation_steps",
    "read_plan",
    "system_check",
    "write_plan",
]

PLAN_FILE = "closure.json"
ACTIVATING = "activating"  # the runner's phase once past the fetch and the check
# The steps, by the names exit.json's ``closure`` gives them (outcome.py judges by these).
FETCH = "fetch"
CHECK = "check"
SET_PROFILE = "set-profile"
ACTIVATE = "activate"
# What every NixOS system's top level holds; a closure without them is no system.
SYSTEM_FILES = ("bin/switch-to-configuration", "nixos-version")
_ACTIVATED = ("switch", "boot", "test", "dry-activate")  # switch-to-configuration's verbs
_PROFILED = ("switch", "boot")  # they make the system the boot default: the profile moves


@dataclass(frozen=True, slots=True)
class Plan:
    """What the listener asks the runner to do with a fetched closure: written before the
    launch, read once.

    ``store_path`` is the path as the request carried it (``/nix/store/…``); ``path`` is
    where it lies on this host once fetched (the same on every real host; a simulated host's
    store is below its own root). ``profile`` is the system profile a switch or boot sets,
    ``nix_env`` the argv prefix that sets it.
    """

    store_path: str
    action: str
    path: str
    profile: str
    nix_env: tuple[str, ...] = ("nix-env",)


@dataclass(slots=True)
class Report:
    """What the steps did: ``exit.json``'s ``closure``."""

    store_path: str
    steps: list[str] = field(default_factory=list)  # every step begun, in order
    failed_step: str | None = None
    error: str | None = None  # why it failed, in a sentence, when the step's output is not

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def write_plan(job_dir: Path, plan: Plan, write: Callable[[Path, dict[str, Any]], None]) -> None:
    """Leave ``plan`` for the runner; ``write`` is ``jobdir.write_json_atomically``."""
    write(job_dir / PLAN_FILE, asdict(plan))


def read_plan(job_dir: Path) -> Plan | str | None:
    """The plan the listener left; None when there is none (a rebuild, not a closure
    deploy), a sentence saying why when it cannot be read (the runner then runs nothing)."""
    try:
        data = json.loads((job_dir / PLAN_FILE).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"cannot read the job's {PLAN_FILE}: {exc}"
    try:
        plan = Plan(
            store_path=str(data["store_path"]),
            action=str(data["action"]),
            path=str(data["path"]),
            profile=str(data["profile"]),
            nix_env=tuple(str(a) for a in data.get("nix_env") or ("nix-env",)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"the job's {PLAN_FILE} is not what a listener writes: {exc}"
    if plan.action not in (*_ACTIVATED, "build"):
        return f"the job's {PLAN_FILE} names no action a closure deploy takes: {plan.action!r}"
    return plan


def system_check(path: str) -> str | None:
    """Why the fetched ``path`` is not a NixOS system; None when it is one (its top level is
    a directory, not a symlink, and holds ``SYSTEM_FILES``, the script executable and, links
    followed, within the store that holds ``path``)."""
    top = Path(path)
    if top.is_symlink():
        # A system's top level is a directory. A store path that is a symlink (any local
        # user can add one, of any name) may point where its owner can still change what
        # would be activated, and booted, after this check.
        return f"{path} is not a NixOS system: it is a symlink, not a directory"
    if not top.is_dir():
        return f"{path} is not a NixOS system: it is not a directory"
    missing = [name for name in SYSTEM_FILES if not (top / name).is_file()]
    if missing:
        return (
            f"{path} is not a NixOS system: it holds no {' and no '.join(missing)}. Send the "
            "store path of a host's config.system.build.toplevel"
        )
    script = top / SYSTEM_FILES[0]
    if not script.stat().st_mode & 0o111:
        return f"{path} is not a NixOS system: its {SYSTEM_FILES[0]} is not executable"
    # It may be a link (into another store path, as switch-to-configuration-ng's is), but
    # never out of the store: what it runs must be as fixed as the path itself.
    store = os.path.realpath(top.parent)
    runs = os.path.realpath(script)
    if not runs.startswith(store + os.sep):
        return (
            f"{path} is not a NixOS system: its {SYSTEM_FILES[0]} leads out of the store "
            f"(to {runs[:200]})"
        )
    return None


def activation_steps(plan: Plan) -> list[tuple[str, list[str]]]:
    """The named argv that activate ``plan.path`` for ``plan.action``, in order (none for
    build): the profile first for switch and boot, then the system's own
    switch-to-configuration, as nixos-rebuild does and as a rollback does."""
    if plan.action not in _ACTIVATED:
        return []
    steps: list[tuple[str, list[str]]] = []
    if plan.action in _PROFILED:
        steps.append((SET_PROFILE, [*plan.nix_env, "--profile", plan.profile, "--set", plan.path]))
    script = str(Path(plan.path) / SYSTEM_FILES[0])
    steps.append((ACTIVATE, [script, plan.action]))
    return steps
