"""The rebuild's argv: built here and nowhere else, and never passed through a shell (pure).

    nixos         nixos-rebuild <action> --flake <flake-url>?ref=<revision>#<name> --refresh
    darwin        darwin-rebuild <verb> --flake … --refresh
    home-manager  home-manager <verb> --flake … --refresh

``<name>`` is the configuration (``--configuration``, the hostname unless set); which verb a
kind runs for an action is ``fleet_core.protocol.actions``'s table. ``rev=`` replaces
``ref=`` for a full commit hash; ``&`` replaces ``?`` when the flake URL already has a query.
``--refresh`` makes nix re-fetch a moved branch instead of deploying the commit it cached an
hour ago.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from fleet_core.protocol.actions import (
    DEFAULT_HOST_KIND,
    Action,
    HostKind,
    validate_configuration,
    validate_revision,
    verb_for,
)

__all__ = ["build_argv", "flake_reference"]

_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def flake_reference(flake_url: str, revision: str, configuration: str) -> str:
    """``<flake-url>?ref=<revision>#<configuration>`` (``rev=`` for a commit, ``&`` after a
    query)."""
    key = "rev" if _COMMIT.fullmatch(revision) else "ref"
    separator = "&" if "?" in flake_url else "?"
    return f"{flake_url}{separator}{key}={revision}#{configuration}"


def build_argv(
    command: Sequence[str],
    action: Action,
    *,
    flake_url: str,
    revision: str,
    configuration: str,
    kind: HostKind = DEFAULT_HOST_KIND,
) -> list[str]:
    """The full argv of one rebuild of ``configuration`` on a host of ``kind``; ``command`` is
    the rebuild program and its fixed args. An action the kind cannot run is
    ``invalid_action``, as when the listener checked the request."""
    verb = verb_for(kind, action)
    reference = flake_reference(
        flake_url, validate_revision(revision), validate_configuration(configuration, kind)
    )
    return [*command, *verb, "--flake", reference, "--refresh"]
