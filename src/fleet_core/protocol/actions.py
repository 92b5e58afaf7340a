"""What a deploy request may ask of a host, validated (pure).

An action is one of nixos-rebuild's; a host's kind (``--host-kind``) says which program runs
it and with which verb:

    nixos         nixos-rebuild <action>
    darwin        darwin-rebuild <verb>     (dry-activate is its check)
    home-manager  home-manager <verb>       (dry-activate is switch --dry-run)

A kind that has no counterpart for an action (darwin-rebuild and Home Manager have no
``boot`` or ``test``) rejects it when the request arrives, before anything is accepted, so
that a deploy never starts something other than what was asked for.

A revision is checked so strictly that it can never end the flake URL's query, start a
fragment, or become an argument of its own; a configuration name so that it can never end
the fragment or become an argument. The argv itself is built on the host, in
``fleet_core.host.jobs.rebuild``.
"""

from __future__ import annotations

import re
from enum import StrEnum

from fleet_core.errors import RequestRejected, UsageError

__all__ = [
    "DEFAULT_ACTION",
    "DEFAULT_HOST_KIND",
    "DEFAULT_REVISION",
    "MAX_CONFIGURATION_LENGTH",
    "MAX_REVISION_LENGTH",
    "REBUILD_ACTIONS",
    "Action",
    "HostKind",
    "actions_for",
    "rebuild_program",
    "redact",
    "validate_action",
    "validate_action_for",
    "validate_configuration",
    "validate_flake_url",
    "validate_revision",
    "verb_for",
]


class Action(StrEnum):
    """The actions a deploy may ask for: nixos-rebuild's (other kinds map them, ``_VERBS``)."""

    SWITCH = "switch"
    BOOT = "boot"
    TEST = "test"
    DRY_ACTIVATE = "dry-activate"
    BUILD = "build"
    # No rebuild: the host runs its health checks on the system it runs now
    # (``fleet-deploy check``). Ours alone: homelab-deploy's listeners refuse it.
    CHECK = "check"
    # Stop the deployment whose id is the request's ``revision`` (so the signature covers
    # it): a rebuild still building stops; one activating is not interrupted; a request
    # of that deployment that arrives later is refused (``fleet-deploy cancel``).
    CANCEL = "cancel"
    # Read a chunk of the output of the job whose id is the request's ``revision``
    # (``fleet-deploy logs``, fleet_core.protocol.logs); runs nothing, changes nothing.
    LOGS = "logs"


class HostKind(StrEnum):
    """What a host is, and so which program deploys it (``--host-kind``)."""

    NIXOS = "nixos"
    DARWIN = "darwin"  # nix-darwin: darwin-rebuild
    HOME_MANAGER = "home-manager"  # a user's Home Manager configuration, on macOS or Linux


DEFAULT_ACTION = Action.SWITCH
DEFAULT_HOST_KIND = HostKind.NIXOS
DEFAULT_REVISION = "master"
MAX_REVISION_LENGTH = 255
MAX_CONFIGURATION_LENGTH = 63

_PROGRAMS: dict[HostKind, str] = {
    HostKind.NIXOS: "nixos-rebuild",
    HostKind.DARWIN: "darwin-rebuild",
    HostKind.HOME_MANAGER: "home-manager",
}
# The arguments before --flake that run each action, per kind. An action a kind lacks is
# absent: darwin-rebuild and Home Manager have no boot entry to write and no "activate but
# not at next boot". dry-activate's meaning, "show what activation would change", is
# darwin-rebuild's check and home-manager's switch --dry-run (-n).
# The actions that run the rebuild program; check, cancel and logs run none.
REBUILD_ACTIONS: tuple[Action, ...] = tuple(
    action for action in Action if action not in (Action.CHECK, Action.CANCEL, Action.LOGS)
)
_VERBS: dict[HostKind, dict[Action, tuple[str, ...]]] = {
    HostKind.NIXOS: {action: (action.value,) for action in REBUILD_ACTIONS},
    HostKind.DARWIN: {
        Action.SWITCH: ("switch",),
        Action.BUILD: ("build",),
        Action.DRY_ACTIVATE: ("check",),
    },
    HostKind.HOME_MANAGER: {
        Action.SWITCH: ("switch",),
        Action.BUILD: ("build",),
        Action.DRY_ACTIVATE: ("switch", "--dry-run"),
    },
}

_ACTIONS = ", ".join(a.value for a in Action)
# A flake attribute as the three programs take it after '#': a NixOS or nix-darwin host name,
# or Home Manager's user@host. Nothing that could end the fragment (#, ?, &, space), quote
# it, or, leading with '-', become an argument.
_CONFIGURATION = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._@-]{{0,{MAX_CONFIGURATION_LENGTH - 1}}}")
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


def verb_for(kind: HostKind, action: Action) -> tuple[str, ...]:
    """What the rebuild program of ``kind`` is given for ``action``; ``invalid_action`` when
    the kind cannot run it, or when it runs no rebuild (``check``, ``cancel``, ``logs``)."""
    validate_action_for(kind, action)
    verb = _VERBS[kind].get(action)
    if verb is None:
        raise RequestRejected("invalid_action", f"{action.value} runs no rebuild")
    return verb


def rebuild_program(kind: HostKind) -> str:
    """The program that deploys a host of ``kind``: the default ``--rebuild-command``."""
    return _PROGRAMS[kind]


def actions_for(kind: HostKind) -> tuple[Action, ...]:
    """The actions a host of ``kind`` can run, in ``Action``'s order: its rebuild program's,
    and ``check`` where there are health checks (NixOS). Every host also takes ``cancel``
    and ``logs``, which run nothing."""
    return tuple(
        action
        for action in Action
        if action not in (Action.CANCEL, Action.LOGS) and _runs(kind, action)
    )


def _runs(kind: HostKind, action: Action) -> bool:
    if action in (Action.CANCEL, Action.LOGS):
        return True
    if action is Action.CHECK:
        return kind is HostKind.NIXOS
    return action in _VERBS[kind]


def validate_action_for(kind: HostKind, action: Action) -> Action:
    """Return ``action`` if a host of ``kind`` can run it; raise ``invalid_action`` saying
    which actions it runs otherwise (a NixOS host runs them all)."""
    if _runs(kind, action):
        return action
    runs = ", ".join(a.value for a in actions_for(kind))
    raise RequestRejected(
        "invalid_action",
        f"{action.value} is not an action for a {kind.value} host, which runs only {runs} "
        f"({_PROGRAMS[kind]} has no {action.value}): deploy it with one of those",
    )


def validate_configuration(value: str, kind: HostKind | None = None) -> str:
    """Return ``value`` if it can be the flake attribute after ``#``; raise ``UsageError``.

    darwin-rebuild puts the name into ``darwinConfigurations.<name>`` unquoted, where a dot
    would select another attribute and an ``@`` would not parse: for that kind a name is
    letters, digits, ``_`` and ``-`` only (nixos-rebuild and home-manager quote it).
    """
    shown = value if len(value) <= 80 else value[:77] + "..."
    if not _CONFIGURATION.fullmatch(value):
        raise UsageError(
            f"invalid configuration name {shown!r}: use 1-{MAX_CONFIGURATION_LENGTH} letters, "
            "digits and . _ - @ (such as web1 or alice@mac1), starting with a letter or digit"
        )
    if kind is HostKind.DARWIN and any(c in value for c in ".@"):
        raise UsageError(
            f"invalid configuration name {shown!r} for a darwin host: darwin-rebuild does not "
            "quote it, so use letters, digits, _ and - only (such as mac1)"
        )
    return value


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


_USERINFO = re.compile(r"(://)[^/@\s]*@")


def redact(text: str) -> str:
    """``text`` with any ``user:token@`` of a URL replaced, for messages, logs and job files.

    A flake URL may carry a token (``git+https://oauth2:TOKEN@host/repo``); the argv that
    runs needs it, nothing that is shown or published does.
    """
    return _USERINFO.sub(r"\1***@", text)
