"""The tiered layout: an inventory, and the nats-server config and TOML it renders (pure).

``nats-config`` writes ``nats_config(inventory)``; the sandbox saves ``inventory_toml`` and
runs its server on that very ``nats_config``, so what the sandbox shows is what a user gets.

NATS permission templates (``{{name()}}``) are taken literally for config-file nkey users,
so every host gets a permission block of its own: it may subscribe to exactly its deploy
subjects and its tier's discovery subject, and publish only statuses and discovery answers.

Two layouts (``LAYOUTS``):

``bound`` (the default)
    A listener may publish answers only on ``deploy.responses.*.<tier>.<hostname>``: the
    server vouches for the host and tier of every bound reply (``fleet_core.protocol.trust``), and
    no listener can publish to a bare reply subject. Discovery and job queries go to
    ``deploy.discover.<tier>``: only that tier's listeners hear them, and the test deployer
    may publish only ``deploy.discover.test`` and read no discovery subject, so it can
    neither load nor overhear the prod listeners. The test deployer may read only bare and
    test-tier replies: ``deploy.responses.*`` and ``deploy.responses.*.test.*``.
    Because a ``*`` in a permission also admits a subscription to a literal ``>`` token,
    ``deploy.responses.*`` alone would let it subscribe to ``deploy.responses.>``; the deny
    rule ``deploy.responses.*.prod.>`` keeps prod replies from being delivered there.
    An observer (the dashboard's key) may publish only the two tiers' discovery subjects
    (discovery and job queries, with each job's recorded log tail, travel there) and read
    every reply: it sees the whole fleet and can deploy, cancel, build or fetch a whole log
    (a signed request on a host's deploy subject) nothing.
``homelab``
    homelab-deploy's published example, unchanged: listeners publish on
    ``deploy.responses.>``, the test deployer reads ``deploy.responses.>``. Nothing binds a
    reply to its sender; the deployer flags what it cannot believe.

Inventory (TOML)::

    [hosts.web1]
    tier = "test"
    role = "web"              # optional
    nkey = "U..."             # the listener's public key

    [deployers.claude]
    access = "test"           # "test": deploy.test.> only; "admin": deploy.>
    nkey = "U..."             # "observer": discovery and replies only (the dashboard)

    [builders.ci]             # optional: fleet-deploy builder
    repos = ["nixos-servers"] # it hears build.<repo>.* for these
    nkey = "U..."

Builds change no host, so every deployer may ask for one (``build.<repo>.<target>``) and read
the answers on ``build.responses.*``; only a builder may publish answers there, and only
on that prefix.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from fleet_core.build.protocol import BUILD_PREFIX, BUILD_RESPONSES_PREFIX, validate_repo
from fleet_core.config.options import DEFAULT_NATS_LAYOUT, NATS_LAYOUTS, NatsLayout
from fleet_core.errors import UsageError
from fleet_core.protocol.logs import log_reply
from fleet_core.protocol.subjects import (
    DEFAULT_DEPLOY_SUBJECTS,
    DISCOVER_SUBJECT,
    RESPONSES_PREFIX,
    Tier,
    expand_templates,
    tier_discover_subject,
    validate_hostname,
    validate_role,
)
from fleet_core.protocol.text import counted
from fleet_core.protocol.trust import bound_replies, bound_reply

__all__ = [
    "ACCESSES",
    "DEFAULT_LAYOUT",
    "LAYOUTS",
    "Access",
    "BuilderEntry",
    "DeployerEntry",
    "HostEntry",
    "Inventory",
    "Layout",
    "UserPermissions",
    "builder_permissions",
    "deployer_permissions",
    "inventory_toml",
    "listener_permissions",
    "nats_config",
    "observer_permissions",
    "parse_inventory",
    "render_authorization",
    "render_jetstream",
]

_PUBLIC_KEY = re.compile(r"U[A-Z2-7]{55}")
RESPONSES_WILDCARD = RESPONSES_PREFIX + ">"
BARE_REPLIES = RESPONSES_PREFIX + "*"  # deploy.responses.<id>: homelab-style answers
BUILD_REQUESTS = BUILD_PREFIX + "*.*"  # build.<repo>.<host|all>
BUILD_REPLIES = BUILD_RESPONSES_PREFIX + "*"  # build.responses.<id>
BUILD_RESPONSES_WILDCARD = BUILD_RESPONSES_PREFIX + ">"
JS_API_WILDCARD = "$JS.API.>"

Layout = NatsLayout
LAYOUTS: Final = NATS_LAYOUTS
DEFAULT_LAYOUT: Final = DEFAULT_NATS_LAYOUT
_GUARANTEES: Final[dict[Layout, tuple[str, ...]]] = {
    "bound": (
        "# Layout `bound`: each listener may publish answers only on",
        "# deploy.responses.*.<its tier>.<its hostname>, so the server vouches for the host and",
        "# tier of every status and discovery answer, and the test deployer cannot read",
        "# prod replies (nor discover prod hosts). Every listener must know `bind`.",
    ),
    "homelab": (
        "# Layout `homelab`: homelab-deploy's published example. Any listener key may publish",
        "# to any reply subject and the test deployer reads every reply, prod included: the",
        "# deployer flags what it cannot believe, but cannot tell a forgery in a host's own",
        "# name. Use `--layout bound` once every listener runs fleet-deploy.",
    ),
}
_BARE_TOML_KEY = re.compile(r"[A-Za-z0-9_-]+")
# What a deployer key may do: deploy the test tier, deploy everything, or only look.
Access = Literal["test", "admin", "observer"]
ACCESSES: Final[tuple[Access, ...]] = ("test", "admin", "observer")


@dataclass(frozen=True, slots=True)
class HostEntry:
    name: str
    tier: Tier
    nkey: str
    role: str | None = None


@dataclass(frozen=True, slots=True)
class DeployerEntry:
    name: str
    access: Access
    nkey: str


@dataclass(frozen=True, slots=True)
class BuilderEntry:
    name: str
    nkey: str
    repos: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Inventory:
    hosts: tuple[HostEntry, ...]
    deployers: tuple[DeployerEntry, ...] = ()
    builders: tuple[BuilderEntry, ...] = ()


def _public_key(value: object, where: str) -> str:
    if not isinstance(value, str) or not _PUBLIC_KEY.fullmatch(value):
        raise UsageError(
            f"{where}: nkey must be a user public key (56 characters starting with U), "
            "as printed by `fleet-deploy keygen`"
        )
    return value


def _table(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise UsageError(f"{where} must be a table")
    return value


def parse_inventory(text: str, *, source: str = "inventory") -> Inventory:
    """Parse and check an inventory; every mistake is a ``UsageError`` naming its place."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source} is not valid TOML: {exc}") from None
    hosts: list[HostEntry] = []
    for name, raw in _table(data.get("hosts", {}), f"{source}: [hosts]").items():
        where = f"{source}: [hosts.{name}]"
        entry = _table(raw, where)
        try:
            tier = Tier(str(entry.get("tier")))
        except ValueError:
            raise UsageError(f"{where}: tier must be 'test' or 'prod'") from None
        role = entry.get("role")
        hosts.append(
            HostEntry(
                name=validate_hostname(name),
                tier=tier,
                nkey=_public_key(entry.get("nkey"), where),
                role=validate_role(role) if role is not None else None,
            )
        )
    deployers: list[DeployerEntry] = []
    for name, raw in _table(data.get("deployers", {}), f"{source}: [deployers]").items():
        where = f"{source}: [deployers.{name}]"
        entry = _table(raw, where)
        access = entry.get("access")
        if access not in ACCESSES:
            raise UsageError(
                f"{where}: access must be 'test' (deploys the test tier), 'admin' (deploys "
                "everything) or 'observer' (reads everything, deploys nothing)"
            )
        try:
            validate_role(name)  # a name goes into a comment of the config: one plain token
        except UsageError:
            raise UsageError(
                f"{where}: a deployer name is 1-63 letters, digits, '-' or '_'"
            ) from None
        deployers.append(
            DeployerEntry(name=name, access=access, nkey=_public_key(entry.get("nkey"), where))
        )
    builders = _builders(data, source)
    if not hosts and not deployers and not builders:
        raise UsageError(f"{source} defines no [hosts.*], no [deployers.*] and no [builders.*]")
    keys = [h.nkey for h in hosts] + [d.nkey for d in deployers] + [b.nkey for b in builders]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise UsageError(f"{source}: key {duplicates[0]} is used twice; give each its own")
    return Inventory(hosts=tuple(hosts), deployers=tuple(deployers), builders=builders)


def _builders(data: Mapping[str, Any], source: str) -> tuple[BuilderEntry, ...]:
    builders: list[BuilderEntry] = []
    for name, raw in _table(data.get("builders", {}), f"{source}: [builders]").items():
        where = f"{source}: [builders.{name}]"
        entry = _table(raw, where)
        try:
            validate_role(name)
        except UsageError:
            raise UsageError(
                f"{where}: a builder name is 1-63 letters, digits, '-' or '_'"
            ) from None
        repos = entry.get("repos")
        if not isinstance(repos, list) or not repos or not all(isinstance(r, str) for r in repos):
            raise UsageError(f'{where}: repos must be a list of repository names, e.g. ["nixos"]')
        try:
            checked = tuple(validate_repo(repo) for repo in repos)
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None
        builders.append(
            BuilderEntry(name=name, nkey=_public_key(entry.get("nkey"), where), repos=checked)
        )
    return tuple(builders)


@dataclass(frozen=True, slots=True)
class UserPermissions:
    """One user's permissions; ``deny_subscribe`` only where a wildcard needs fencing."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_subscribe: tuple[str, ...] = ()
    deny_publish: tuple[str, ...] = ()


def listener_permissions(host: HostEntry, layout: Layout = DEFAULT_LAYOUT) -> UserPermissions:
    """A listener hears its own deploy subjects; under ``bound`` it answers only on reply
    subjects that carry its own tier and hostname."""
    subjects = expand_templates(
        DEFAULT_DEPLOY_SUBJECTS, hostname=host.name, tier=host.tier, role=host.role
    )
    if layout == "homelab":
        return UserPermissions(
            publish=(RESPONSES_WILDCARD, DISCOVER_SUBJECT),
            subscribe=(*subjects, DISCOVER_SUBJECT),
        )
    # Discovery only on its own tier's subject, which only that tier's deployers (and the
    # admin) may publish to: another tier's key can neither load it nor read what is asked.
    return UserPermissions(
        # Its statuses, and the chunks of its jobs' logs on a subject of their own (which
        # the history streams do not record: fleet_core.protocol.logs).
        publish=(
            bound_reply(BARE_REPLIES, host.tier.value, host.name),
            log_reply(BARE_REPLIES, host.tier.value, host.name),
        ),
        subscribe=(*subjects, tier_discover_subject(host.tier)),
    )


def observer_permissions(layout: Layout = DEFAULT_LAYOUT) -> UserPermissions:
    """An observer (the dashboard's key) discovers every tier and reads every reply, and
    publishes nothing else: no deploy subject (so no deploy and no cancel), no build
    request, and no ``$JS.API`` subject. JetStream answers a request on whatever reply
    subject it names with the server's own rights, so even a read-only grant would let the
    key have a stream deleted or a prod reply forged; an observer reads history from the
    hosts' job records instead, as the test deployer does. Discovery and job queries travel
    on the discovery subjects, which listeners answer but never act on; a whole log is a
    signed request on a host's deploy subject, so an observer sees a job's recorded log tail
    but cannot fetch its whole log."""
    if layout == "homelab":
        return UserPermissions(publish=(DISCOVER_SUBJECT,), subscribe=(RESPONSES_WILDCARD,))
    return UserPermissions(
        publish=tuple(tier_discover_subject(tier) for tier in Tier),
        subscribe=(RESPONSES_WILDCARD,),
    )


def deployer_permissions(access: Access, layout: Layout = DEFAULT_LAYOUT) -> UserPermissions:
    """The admin reaches everything; the test deployer publishes to the test tier and, under
    ``bound``, reads only bare and test-tier replies; the observer only looks."""
    if access == "observer":
        return observer_permissions(layout)
    if access == "admin":
        # $JS.API.> under ``bound``: the admin creates the history streams and reads them;
        # its answers come on reply subjects under deploy.> (history_reader).
        js = (JS_API_WILDCARD,) if layout == "bound" else ()
        return UserPermissions(
            publish=("deploy.>", BUILD_REQUESTS, *js),
            subscribe=("deploy.>", BUILD_REPLIES),
            deny_publish=(BUILD_RESPONSES_WILDCARD,),
        )
    if layout == "homelab":
        return UserPermissions(
            publish=("deploy.test.>", DISCOVER_SUBJECT, BUILD_REQUESTS),
            subscribe=(RESPONSES_WILDCARD, DISCOVER_SUBJECT, BUILD_REPLIES),
            deny_publish=(BUILD_RESPONSES_WILDCARD,),
        )
    return UserPermissions(
        # Discovery and job queries of the test tier only: the prod listeners never hear
        # this key, and it reads no discovery subject (the admin's prod job queries). No
        # JetStream API subject at all: JetStream answers on whatever reply subject a
        # request names, with the server's own rights, so even a read of the test stream
        # could be answered onto $JS.API.STREAM.DELETE.<prod's>, a prod host's bound reply
        # or a prod deploy subject. Its history comes from the test hosts' job records.
        publish=("deploy.test.>", tier_discover_subject(Tier.TEST), BUILD_REQUESTS),
        subscribe=(
            BARE_REPLIES,
            bound_replies(BARE_REPLIES, Tier.TEST),
            log_reply(BARE_REPLIES, Tier.TEST.value, "*"),  # test hosts' log chunks
            BUILD_REPLIES,
        ),
        # deploy.responses.* admits a subscription to deploy.responses.> (a ``*`` matches
        # the literal token ``>``); the server then withholds what this deny matches.
        deny_subscribe=(bound_reply(BARE_REPLIES, Tier.PROD.value, ">"),),
        # build.*.* would let a deployer answer a build in a builder's name.
        deny_publish=(BUILD_RESPONSES_WILDCARD,),
    )


def render_jetstream(store_dir: str) -> str:
    """The ``jetstream {}`` block: the history streams live in ``store_dir``."""
    return "\n".join(
        [
            "# JetStream keeps the deployment history (docs/history.md); create its streams",
            "# once with the admin key: fleet-deploy history --setup",
            "jetstream {",
            f"  store_dir: {json.dumps(store_dir)}",
            "}",
            "",
        ]
    )


def builder_permissions(builder: BuilderEntry) -> UserPermissions:
    """A builder hears build requests for its repositories and answers on build.responses."""
    return UserPermissions(
        publish=(BUILD_RESPONSES_WILDCARD,),
        subscribe=tuple(f"{BUILD_PREFIX}{repo}.*" for repo in builder.repos),
    )


def _quoted(items: Iterable[str]) -> str:
    return ", ".join(f'"{item}"' for item in items)


def _user(comment: str, nkey: str, permissions: UserPermissions) -> list[str]:
    subscribe = f"[{_quoted(permissions.subscribe)}]"
    if permissions.deny_subscribe:
        subscribe = f"{{ allow: {subscribe}, deny: [{_quoted(permissions.deny_subscribe)}] }}"
    publish = f"[{_quoted(permissions.publish)}]"
    if permissions.deny_publish:
        publish = f"{{ allow: {publish}, deny: [{_quoted(permissions.deny_publish)}] }}"
    return [
        f"    # {comment}",
        "    {",
        f'      nkey: "{nkey}"',
        "      permissions: {",
        f"        publish: {publish}",
        f"        subscribe: {subscribe}",
        "      }",
        "    }",
    ]


def render_authorization(inventory: Inventory, layout: Layout = DEFAULT_LAYOUT) -> str:
    """The ``authorization { users = [...] }`` block for nats-server's config file."""
    lines = ["authorization {", "  users = ["]
    for host in sorted(inventory.hosts, key=lambda h: (h.tier.value, h.name)):
        role = f", role {host.role}" if host.role else ""
        lines += _user(
            f"listener {host.name} (tier {host.tier.value}{role})",
            host.nkey,
            listener_permissions(host, layout),
        )
    for deployer in inventory.deployers:
        lines += _user(
            f"deployer {deployer.name} ({deployer.access})",
            deployer.nkey,
            deployer_permissions(deployer.access, layout),
        )
    for builder in inventory.builders:
        lines += _user(
            f"builder {builder.name} (repos {', '.join(builder.repos)})",
            builder.nkey,
            builder_permissions(builder),
        )
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def nats_config(
    inventory: Inventory,
    *,
    source: str,
    layout: Layout = DEFAULT_LAYOUT,
    jetstream_dir: str | None = None,
) -> str:
    """A complete nats-server config for ``inventory``: a header comment (which layout, and
    what it guarantees), its users, and under ``bound`` with ``jetstream_dir`` the JetStream
    block that keeps the history (homelab-deploy's layout has no history to keep: its
    replies name no tier)."""
    tiers = [host.tier.value for host in inventory.hosts]
    header = [
        "# NATS authorization for fleet-deploy, written by `fleet-deploy nats-config` from",
        f"# {source}: {counted(len(tiers), 'host')} ({tiers.count('test')} test, "
        f"{tiers.count('prod')} prod), {counted(len(inventory.deployers), 'deployer')} and "
        f"{counted(len(inventory.builders), 'builder')}.",
        *_GUARANTEES[layout],
        "# Regenerate it rather than edit it. Load it with `nats-server -c <this file>`, or",
        "# `include` it from your server's config; check it with `nats-server -t -c <file>`.",
        "",
    ]
    jetstream = render_jetstream(jetstream_dir) if jetstream_dir and layout == "bound" else ""
    return "\n".join(header) + render_authorization(inventory, layout) + jetstream


def _toml_key(name: str) -> str:
    return name if _BARE_TOML_KEY.fullmatch(name) else json.dumps(name)


def inventory_toml(inventory: Inventory) -> str:
    """``inventory`` as the TOML that ``parse_inventory`` reads back (public keys only)."""
    lines = [
        "# fleet-deploy inventory: `fleet-deploy nats-config <this file>` writes the NATS",
        "# authorization block for it. Only public keys are here; the seeds stay with their",
        "# owners.",
    ]
    for host in inventory.hosts:
        lines += ["", f"[hosts.{_toml_key(host.name)}]", f'tier = "{host.tier.value}"']
        if host.role is not None:
            lines.append(f'role = "{host.role}"')
        lines.append(f'nkey = "{host.nkey}"')
    for deployer in inventory.deployers:
        lines += [
            "",
            f"[deployers.{_toml_key(deployer.name)}]",
            f'access = "{deployer.access}"',
            f'nkey = "{deployer.nkey}"',
        ]
    for builder in inventory.builders:
        lines += [
            "",
            f"[builders.{_toml_key(builder.name)}]",
            f"repos = [{_quoted(builder.repos)}]",
            f'nkey = "{builder.nkey}"',
        ]
    return "\n".join(lines) + "\n"
