"""What a deploy runs on the host: validated action and revision, and the argv (pure).

The argv is built here and nowhere else, and it never passes through a shell:

    nixos-rebuild <action> --flake <flake-url>?ref=<revision>#<hostname> --refresh

``rev=`` replaces ``ref=`` for a full commit hash; ``&`` replaces ``?`` when the flake URL
already has a query. ``--refresh`` makes nix re-fetch a moved branch instead of deploying the
commit it cached an hour ago. A revision is checked so strictly that it can never end the
query, start a fragment, or become an argument of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum

from fleet_core.errors import RequestRejected, UsageError

__all__ = [
    "DEFAULT_ACTION",
    "DEFAULT_REVISION",
    "MAX_REVISION_LENGTH",
    "Action",
    "build_argv",
    "flake_reference",
    "redact",
    "validate_action",
    "validate_flake_url",
    "validate_revision",
]


class Action(StrEnum):
    """The nixos-rebuild actions a deploy may ask for."""

    SWITCH = "switch"
    BOOT = "boot"
    TEST = "test"
    DRY_ACTIVATE = "dry-activate"
    BUILD = "build"


DEFAULT_ACTION = Action.SWITCH
DEFAULT_REVISION = "master"
MAX_REVISION_LENGTH = 255

_ACTIONS = ", ".join(a.value for a in Action)
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# A conservative subset of git's ref-name rules: it can hold ordinary branch and tag names
# (release/1.2, v1.0.0-rc1, feature_x) and nothing that has meaning in a flake URL or argv.
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/+-]*")


def validate_action(value: object) -> Action:
    """Return the ``Action`` named by ``value``; raise ``invalid_action`` otherwise."""
    if isinstance(value, str):
        try:
            return Action(value)
        except ValueError:
            pass
    raise RequestRejected("invalid_action", f"unknown action {value!r}: use one of {_ACTIONS}")


def validate_revision(value: object) -> str:
    """Return ``value`` if it is a branch, tag or full commit; raise ``invalid_revision``."""
    if not isinstance(value, str) or not value:
        raise RequestRejected(
            "invalid_revision", f"revision must be a non-empty string, not {value!r}"
        )
    shown = value if len(value) <= 80 else value[:77] + "..."
    if len(value) > MAX_REVISION_LENGTH:
        raise RequestRejected(
            "invalid_revision",
            f"revision {shown!r} is longer than {MAX_REVISION_LENGTH} characters",
        )
    if (
        not _REF.fullmatch(value)
        or ".." in value
        or "//" in value
        or value.endswith(("/", ".", ".lock"))
        or "/." in value
    ):
        raise RequestRejected(
            "invalid_revision",
            f"revision {shown!r} is not a branch, tag or full commit hash: use letters, "
            "digits and . _ / + - (no '..', no leading '-' or '.')",
        )
    return value


def validate_flake_url(value: str) -> str:
    """Return ``value`` if the listener can append a revision and a host to it; an error
    shows it redacted, as it may carry a token."""
    shown = redact(value)
    if not value or any(c.isspace() for c in value) or "#" in value:
        raise UsageError(
            f"invalid flake URL {shown!r}: give the repository without '#<host>' and without "
            "spaces, e.g. git+https://git.example.com/nixos-configs.git"
        )
    if re.search(r"[?&](ref|rev)=", value):
        raise UsageError(
            f"flake URL {shown!r} already pins ref= or rev=: drop it, each deploy names its "
            "revision"
        )
    return value


def flake_reference(flake_url: str, revision: str, hostname: str) -> str:
    """``<flake-url>?ref=<revision>#<hostname>`` (``rev=`` for a commit, ``&`` after a query)."""
    key = "rev" if _COMMIT.fullmatch(revision) else "ref"
    separator = "&" if "?" in flake_url else "?"
    return f"{flake_url}{separator}{key}={revision}#{hostname}"


_USERINFO = re.compile(r"(://)[^/@\s]*@")


def redact(text: str) -> str:
    """``text`` with any ``user:token@`` of a URL replaced, for messages, logs and job files.

    A flake URL may carry a token (``git+https://oauth2:TOKEN@host/repo``); the argv that
    runs needs it, nothing that is shown or published does.
    """
    return _USERINFO.sub(r"\1***@", text)


def build_argv(
    command: Sequence[str], action: Action, *, flake_url: str, revision: str, hostname: str
) -> list[str]:
    """The full argv of one rebuild; ``command`` is the rebuild program and its fixed args."""
    reference = flake_reference(flake_url, validate_revision(revision), hostname)
    return [*command, action.value, "--flake", reference, "--refresh"]
