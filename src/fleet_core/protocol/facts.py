"""Host facts: what a host runs, measured on the host, as discovery carries them (pure).

A listener answers discovery with ``HostFacts`` (``HostInfo.facts``) so that a deployer can
tell at a glance which hosts are behind, need a reboot, or failed their last deploy. The
facts are measured, not inferred: the store paths behind the system links, what
``nixos-version --json`` says, the profile's generation, and the newest job record
(``fleet_core.host.facts`` reads them, cached until a link moves).

Every field is optional and unknown fields are ignored, both ways: an older listener (or
homelab-deploy's) sends no facts at all, a Home Manager host has no booted system, and a
host whose ``nixos-version`` is missing still reports its links. A deployer shows what is
there and says "unknown" for the rest, never guesses.

All text in here comes from a host and is untrusted: it is bounded here, and escaped
(``fleet_core.protocol.text``) wherever it is shown.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Final

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = [
    "KERNEL_ENTRIES",
    "MAX_FACT_CHARS",
    "HostFacts",
    "LastJob",
    "clip",
    "generation_number",
    "kernel_differs",
    "parse_version_json",
]

# The entries of a NixOS system whose change needs a reboot to take effect (NixFleet's and
# nixos-needsreboot's test): the kernel image, the initrd and the kernel modules.
KERNEL_ENTRIES: Final = ("kernel", "initrd", "kernel-modules")

# A store path is at most ~250 characters; a version or revision far less. Longer text is
# cut, so that a thousand discovery answers stay small whatever a host reports.
MAX_FACT_CHARS: Final = 300
_MAX_ERROR_CHARS: Final = 500


def clip(text: str | None, limit: int = MAX_FACT_CHARS) -> str | None:
    """``text`` cut to ``limit`` characters (None stays None)."""
    return text if text is None or len(text) <= limit else text[:limit]


class _Facts(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class LastJob(_Facts):
    """The host's newest deploy (a health check is none), from its job record: what it was
    asked and how it ended.

    ``status`` is a wire status (``completed``, ``failed``, ``rejected``) once the job is
    over; ``accepted`` or ``started`` while it runs. ``finished_at`` is the host's wall
    clock, in seconds since the epoch.
    """

    id: str
    action: str | None = None
    revision: str | None = None
    # A closure deploy's system (fleet_core.protocol.closures): the host was sent this path,
    # and ``revision`` is what it was built from only when it is a full commit.
    store_path: str | None = None
    status: str | None = None
    error: str | None = None
    finished_at: float | None = None

    @field_validator("action", "revision", "store_path", "status", "error", mode="after")
    @classmethod
    def _bounded(cls, value: str | None) -> str | None:
        return clip(value, _MAX_ERROR_CHARS)


class HostFacts(_Facts):
    """What a host runs, for ``fleet-deploy status`` and the MCP ``fleet_status`` tool.

    - ``current_system``/``booted_system``: the store paths behind ``/run/current-system``
      and ``/run/booted-system`` (on a Home Manager host: its generation's path, and no
      booted system).
    - ``needs_reboot``: the kernel, initrd or kernel modules of the two differ. None when it
      cannot be told (no booted system, or a host kind that never reboots for a deploy).
    - ``nixos_version``/``configuration_revision``: from ``nixos-version --json``
      (``darwin-version --json`` on nix-darwin); the revision only when the configuration
      sets ``system.configurationRevision``.
    - ``generation``: the number of the profile generation the system profile points at.
    - ``uptime_s``: of the listener, not of the machine.
    - ``last_job``: the newest job record.
    """

    current_system: str | None = None
    booted_system: str | None = None
    needs_reboot: bool | None = None
    nixos_version: str | None = None
    configuration_revision: str | None = None
    generation: int | None = None
    uptime_s: float | None = None
    last_job: LastJob | None = None

    @field_validator(
        "current_system", "booted_system", "nixos_version", "configuration_revision", mode="after"
    )
    @classmethod
    def _bounded(cls, value: str | None) -> str | None:
        return clip(value)


def generation_number(profile_name: str, link_target: str) -> int | None:
    """The generation a profile's link target names: ``system-42-link`` of profile ``system``
    is 42 (``home-manager-7-link`` of ``home-manager`` is 7); None for anything else."""
    match = re.fullmatch(
        rf"{re.escape(profile_name)}-(\d{{1,9}})-link", link_target.rpartition("/")[2]
    )
    return int(match.group(1)) if match else None


def kernel_differs(booted: Mapping[str, str | None], running: Mapping[str, str | None]) -> bool:
    """Whether a reboot would change the kernel, initrd or kernel modules: the store paths of
    ``KERNEL_ENTRIES`` in the booted and in the running system, as resolved on the host (an
    entry missing from both is no difference)."""
    return any(booted.get(entry) != running.get(entry) for entry in KERNEL_ENTRIES)


def parse_version_json(output: bytes) -> tuple[str | None, str | None]:
    """The version and configuration revision in ``nixos-version --json``'s output
    (``nixosVersion``, ``configurationRevision``) or ``darwin-version --json``'s
    (``darwinLabel``, ``configurationRevision``); (None, None) for anything else."""
    try:
        data = json.loads(output)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    version = data.get("nixosVersion", data.get("darwinLabel"))
    revision = data.get("configurationRevision")
    return (
        clip(version) if isinstance(version, str) and version else None,
        clip(revision) if isinstance(revision, str) and revision else None,
    )
