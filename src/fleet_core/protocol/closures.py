"""Closure deploys: which store paths a request may carry, and which a host takes (pure: no I/O).

A closure deploy sends each host the store path of a system the builder built for it, and the
host activates exactly that path with no evaluation of its own (docs/closures.md). The path
travels in the signed request (``DeployRequest.store_path``; ``fleet_core.protocol.signing``
binds it into the signed text), and a host checks it twice:

1. on arrival (``system_refusal``), by its name alone, before anything is accepted or
   fetched: a path that is no NixOS system (``not_a_system``: its name does not begin
   ``nixos-system-``) or is another host's (``wrong_host``: not
   ``nixos-system-<this host>-<label>``) is refused and nothing changes on the host;
2. after nix fetched it (``fleet_core.host.jobs.closure``): what arrived must hold a
   ``bin/switch-to-configuration`` and a ``nixos-version``, or it is ``not_a_system`` and
   nothing is activated. Whether it may be fetched at all is nix's decision, never ours: it
   substitutes only from the host's configured substituters and only with a signature by a
   key in its ``trusted-public-keys`` (``closure_unavailable`` otherwise).

The name check guards against mistakes, not against a trusted deployer key: a key that may
deploy to a host may already deploy any revision to it. The name of a NixOS system is
``nixos-system-<system.name>-<system.nixos.label>``; ``system.name`` is the host name by
default, so a host accepts its host name and its flake configuration name there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from fleet_core.errors import RequestRejected

__all__ = [
    "CLOSURE_ACTIONS",
    "STORE_DIR",
    "SYSTEM_PREFIX",
    "is_store_path",
    "store_base_name",
    "store_path_in",
    "system_refusal",
    "validate_store_path",
]

STORE_DIR: Final = "/nix/store"
SYSTEM_PREFIX: Final = "nixos-system-"
# What a closure deploy can do with a system: fetch it (build), or fetch and activate it.
CLOSURE_ACTIONS: Final = frozenset({"switch", "boot", "test", "dry-activate", "build"})
# A store path: nix's base32 hash of 32 characters, a dash, and a name of at most 211
# characters from nix's own alphabet, not starting with a dot (libstore's checkName).
_STORE_PATH = re.compile(
    r"/nix/store/[0123456789abcdfghijklmnpqrsvwxyz]{32}-(?!\.)[A-Za-z0-9+\-._?=]{1,211}"
)
_HASH_CHARS = 32


def is_store_path(value: object) -> bool:
    """Whether ``value`` is one path directly in ``/nix/store`` (no subdirectory, no ``..``)."""
    return isinstance(value, str) and _STORE_PATH.fullmatch(value) is not None


def validate_store_path(value: object) -> str:
    """Return ``value`` if it is a store path a request may carry; ``invalid_request`` else."""
    if not is_store_path(value):
        shown = str(value)[:80]
        raise RequestRejected(
            "invalid_request",
            f"store_path {shown!r} is not a path in /nix/store: /nix/store/<32-character "
            "hash>-<name>, as nix build --print-out-paths prints it",
        )
    assert isinstance(value, str)
    return value


def store_base_name(store_path: str) -> str:
    """``<hash>-<name>``: what identifies a store path whatever directory holds the store."""
    return store_path.rsplit("/", 1)[-1]


def store_path_in(store_dir: str, store_path: str) -> str:
    """Where ``store_path`` lies on a host whose store is at ``store_dir`` (``/nix/store`` on
    every real host; a simulated host's own root in tests and the sandbox)."""
    return f"{store_dir.rstrip('/')}/{store_base_name(store_path)}"


def system_refusal(store_path: str, names: Iterable[str]) -> RequestRejected | None:
    """Why a host known by ``names`` (its host name, its configuration) refuses to activate
    ``store_path``, by the path's name; None when the name is one of its systems'."""
    name = store_base_name(store_path)[_HASH_CHARS + 1 :]
    if not name.startswith(SYSTEM_PREFIX):
        return RequestRejected(
            "not_a_system",
            f"{store_path} is not a NixOS system (its name does not begin {SYSTEM_PREFIX!r}): "
            "send the store path of a host's config.system.build.toplevel",
        )
    own = sorted({n for n in names if n})
    if any(
        name.startswith(f"{SYSTEM_PREFIX}{n}-") and len(name) > len(SYSTEM_PREFIX) + len(n) + 1
        for n in own
    ):
        return None
    return RequestRejected(
        "wrong_host",
        f"{store_path} is not a system of {' or '.join(repr(n) for n in own)}: its name is "
        f"{name!r}. Each host takes only its own system: deploy each host the path built "
        "for it",
    )
