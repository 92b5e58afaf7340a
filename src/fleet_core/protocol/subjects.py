"""Subjects, tiers and targets of the wire protocol (pure: no I/O).

A deploy subject names who should act:

    deploy.<tier>.<hostname>     one host
    deploy.<tier>.all            every host of a tier
    deploy.<tier>.role.<role>    every host of a role in a tier

Listeners subscribe to templates (``deploy.<tier>.<hostname>``) expanded at start; deployers
address a subject directly or through an alias (``FLEET_DEPLOY_ALIAS_<NAME>``, or
homelab-deploy's ``HOMELAB_DEPLOY_ALIAS_<NAME>`` when ours is not set for that name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, TypeGuard

from fleet_core.errors import UsageError

__all__ = [
    "ALIAS_ENV_PREFIX",
    "DEFAULT_DEPLOY_SUBJECTS",
    "DISCOVER_SUBJECT",
    "LEGACY_ALIAS_ENV_PREFIX",
    "RESPONSES_PREFIX",
    "Target",
    "Tier",
    "alias_env_name",
    "expand_templates",
    "is_reply_subject",
    "is_token",
    "parse_target",
    "resolve_target",
    "tier_discover_subject",
    "validate_hostname",
    "validate_role",
    "validate_subject",
]


class Tier(StrEnum):
    """The two deployment tiers; the NATS permissions keep them apart."""

    TEST = "test"
    PROD = "prod"


DISCOVER_SUBJECT = "deploy.discover"
RESPONSES_PREFIX = "deploy.responses."
DEFAULT_DEPLOY_SUBJECTS: tuple[str, ...] = (
    "deploy.<tier>.<hostname>",
    "deploy.<tier>.all",
    "deploy.<tier>.role.<role>",
)
ALIAS_ENV_PREFIX = "FLEET_DEPLOY_ALIAS_"
LEGACY_ALIAS_ENV_PREFIX = "HOMELAB_DEPLOY_ALIAS_"  # homelab-deploy's, read when ours is unset

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_RESERVED_HOSTNAMES = frozenset({"all", "role"})
# A literal subject: dot-separated tokens, no wildcards, no whitespace or control characters.
_SUBJECT_TOKEN = re.compile(r"[^\s.*>\x00-\x1f\x7f]+")
_MAX_SUBJECT = 255


def _check_token(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise UsageError(
            f"invalid {kind} {value!r}: use 1-63 letters, digits, '-' or '_', "
            "starting with a letter or digit (it becomes one NATS subject token)"
        )
    return value


def is_token(value: object) -> bool:
    """Whether ``value`` could be a hostname or role in a subject: 1-63 letters, digits,
    '-' or '_', starting with a letter or digit."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def validate_hostname(value: str) -> str:
    """Return ``value`` if it is a usable hostname token, else raise ``UsageError``."""
    _check_token("hostname", value)
    if value in _RESERVED_HOSTNAMES:
        raise UsageError(
            f"{value!r} cannot be a hostname: deploy.<tier>.{value} means a group of hosts"
        )
    return value


def validate_role(value: str) -> str:
    """Return ``value`` if it is a usable role token, else raise ``UsageError``."""
    return _check_token("role", value)


def validate_subject(value: str) -> str:
    """Return ``value`` if it is a literal NATS subject (no wildcards), else raise."""
    if not value or len(value) > _MAX_SUBJECT:
        raise UsageError(f"invalid subject {value!r}: it must be 1-{_MAX_SUBJECT} characters")
    if not all(_SUBJECT_TOKEN.fullmatch(tok) for tok in value.split(".")):
        raise UsageError(
            f"invalid subject {value!r}: use dot-separated tokens without spaces, '*' or '>'"
        )
    return value


def tier_discover_subject(tier: Tier, base: str = DISCOVER_SUBJECT) -> str:
    """Where one tier's listeners hear discovery and job queries: ``deploy.discover.<tier>``.

    Under the layout ``nats-config`` writes only that tier's listeners may subscribe there,
    and the test key may publish only to ``deploy.discover.test``: it can neither load the
    prod listeners nor read the admin's prod job queries. The bare ``base`` stays for
    homelab-deploy's layout and listeners.
    """
    return f"{base}.{tier.value}"


def is_reply_subject(value: object) -> TypeGuard[str]:
    """True when ``value`` is a subject a listener may publish statuses to."""
    if not isinstance(value, str) or not value.startswith(RESPONSES_PREFIX):
        return False
    if len(value) <= len(RESPONSES_PREFIX) or len(value) > _MAX_SUBJECT:
        return False
    return all(_SUBJECT_TOKEN.fullmatch(tok) for tok in value.split("."))


def expand_templates(
    templates: Iterable[str], *, hostname: str, tier: Tier, role: str | None
) -> tuple[str, ...]:
    """Expand listener subject templates; a ``<role>`` template is skipped without a role."""
    subjects: list[str] = []
    for template in templates:
        if "<role>" in template and role is None:
            continue
        subject = (
            template.replace("<hostname>", hostname)
            .replace("<tier>", tier.value)
            .replace("<role>", role or "")
        )
        if "<" in subject or ">" in subject:
            raise UsageError(
                f"subject template {template!r} has an unknown placeholder: "
                "use <hostname>, <tier> or <role>"
            )
        validate_subject(subject)
        if subject not in subjects:
            subjects.append(subject)
    return tuple(subjects)


@dataclass(frozen=True, slots=True)
class Target:
    """What a deploy addresses: one host, a whole tier, or a role within a tier."""

    subject: str
    tier: Tier
    kind: Literal["host", "all", "role"]
    name: str | None = None  # the hostname or role; None for ``all``

    @property
    def is_group(self) -> bool:
        """A group target learns which hosts to expect through discovery."""
        return self.kind != "host"

    def __str__(self) -> str:
        return self.subject

    @classmethod
    def host(cls, tier: Tier, hostname: str) -> Target:
        return cls(f"deploy.{tier.value}.{validate_hostname(hostname)}", tier, "host", hostname)

    @classmethod
    def all(cls, tier: Tier) -> Target:
        return cls(f"deploy.{tier.value}.all", tier, "all")

    @classmethod
    def role(cls, tier: Tier, role: str) -> Target:
        return cls(f"deploy.{tier.value}.role.{validate_role(role)}", tier, "role", role)


_SHAPES = "deploy.<tier>.<hostname>, deploy.<tier>.all or deploy.<tier>.role.<role>"


def parse_target(subject: str) -> Target:
    """Parse a deploy subject into a ``Target``; raise ``UsageError`` for anything else."""
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != "deploy":
        raise UsageError(f"{subject!r} is not a deploy subject: use {_SHAPES}, or an alias")
    try:
        tier = Tier(parts[1])
    except ValueError:
        raise UsageError(
            f"{subject!r} names tier {parts[1]!r}: the tiers are 'test' and 'prod'"
        ) from None
    if len(parts) == 3:
        return Target.all(tier) if parts[2] == "all" else Target.host(tier, parts[2])
    if len(parts) == 4 and parts[2] == "role":
        return Target.role(tier, parts[3])
    raise UsageError(f"{subject!r} is not a deploy subject: use {_SHAPES}")


def alias_env_name(alias: str, prefix: str = ALIAS_ENV_PREFIX) -> str:
    """The environment variable that defines ``alias``: upper-cased, ``-`` becomes ``_``."""
    return prefix + alias.upper().replace("-", "_")


def resolve_target(subject_or_alias: str, environ: Mapping[str, str]) -> Target:
    """Resolve a subject, or an alias defined in ``environ``, to a ``Target``.

    An alias is ``FLEET_DEPLOY_ALIAS_<NAME>``, else homelab-deploy's
    ``HOMELAB_DEPLOY_ALIAS_<NAME>``: the names of both are usable, ours wins for the same
    name. A bad subject in an alias is an error that names the variable it came from.
    """
    if subject_or_alias.startswith("deploy."):
        return parse_target(subject_or_alias)
    variable = alias_env_name(subject_or_alias)
    for name in (variable, alias_env_name(subject_or_alias, LEGACY_ALIAS_ENV_PREFIX)):
        aliased = environ.get(name, "").strip()
        if aliased:
            try:
                return parse_target(aliased)
            except UsageError as exc:
                raise UsageError(f"{name}: {exc}") from None
    if _TOKEN.fullmatch(subject_or_alias):
        fix = f"use {_SHAPES}, or define the alias: export {variable}=deploy.test.all"
    else:  # no alias can have this name: perhaps a subject without its "deploy."
        try:
            fix = f"did you mean {parse_target('deploy.' + subject_or_alias).subject!r}?"
        except UsageError:
            fix = f"use {_SHAPES}"
    raise UsageError(f"{subject_or_alias!r} is neither a deploy subject nor a defined alias: {fix}")
