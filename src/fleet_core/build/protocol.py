"""Builds: subjects, wire models, the nix argv and one build's result (pure: no I/O).

A builder builds the system closures of a flake's hosts once, so that the hosts substitute
them from a binary cache instead of each building its own. It listens on

    build.<repo>.<host>     one host's closure
    build.<repo>.all        every nixosConfiguration of the flake

where ``<repo>`` is a name the builder was configured with (``--repo NAME=FLAKE_URL``). Its
statuses go to the request's ``reply_to`` under ``build.responses.``; nothing else of the
builder's is ever published. For one request the builder runs, from an argv and never a
shell:

    nix flake metadata --json --refresh <flake>?ref=<revision>      which commit that is
    nix eval --json <flake>?rev=<commit>#nixosConfigurations --apply builtins.attrNames
    nix build --no-link --print-out-paths -L \\
        <flake>?rev=<commit>#nixosConfigurations.<host>.config.system.build.toplevel
    nix copy --to <cache> <store path>                                  with --cache only

A request to ``build.<repo>.all`` may name exactly the configurations to build
(``BuildRequest.hosts``: what a closure deploy asks for, its target's hosts); the builder
then builds those alone, all from the one pinned commit, and fails each name the flake does
not have (``unknown_host``) without stopping the others. A builder from before the field
ignores it and builds every configuration: the deployer takes its targets' results either
way, and asks for ``all`` when the names would not fit in one request.

Each runs as ``nix --extra-experimental-features 'nix-command flakes' …``: a stock NixOS
nix has neither enabled, and nixos-rebuild passes the same itself. Pinning the commit once
means every host of one build comes from the same commit even if the branch moves
meanwhile, and the report can name it. A build's statuses:

    accepted (whole build: the builder's heartbeat interval) → started (whole build:
    ``hosts`` and ``commit``) → for each host in turn: started → progress… → completed
    (``store_path``) or failed → the whole build's completed (every host built) or failed.

``fleet_core.build.tracker`` turns that stream into a ``BuildResult``: what the deploy CLI
prints and the MCP ``build`` tool returns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleet_core.errors import RequestRejected, UsageError
from fleet_core.protocol.actions import DEFAULT_REVISION, validate_revision
from fleet_core.protocol.messages import (
    MAX_MESSAGE_CHARS,
    MAX_REQUEST_BYTES,
    MAX_STATUS_BYTES,
    ErrorCode,
    InvalidRequest,
    StatusKind,
    is_request_id,
)
from fleet_core.protocol.subjects import validate_hostname

__all__ = [
    "ALL_HOSTS",
    "BUILD_PREFIX",
    "BUILD_RESPONSES_PREFIX",
    "NIX_FEATURES",
    "BuildError",
    "BuildPhase",
    "BuildRequest",
    "BuildResult",
    "BuildStatus",
    "BuildTarget",
    "HostBuild",
    "HostBuildState",
    "build_argv",
    "copy_argv",
    "encode_build_status",
    "flake_at",
    "is_build_reply_subject",
    "is_buildable_name",
    "list_argv",
    "metadata_argv",
    "must_pin",
    "parse_build_request",
    "parse_build_status",
    "parse_build_target",
    "parse_configuration_names",
    "parse_locked_commit",
    "parse_store_path",
    "target_of_subject",
    "toplevel_attribute",
    "validate_repo",
]

BUILD_PREFIX: Final = "build."
BUILD_RESPONSES_PREFIX: Final = "build.responses."
ALL_HOSTS: Final = "all"
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_STORE_PATH = re.compile(r"/[^\s]*/[0-9a-z]{32}-[^\s/]+")
# A nixosConfigurations name the builder can put into an installable, quoted where it has a
# dot (web1.example.com): the listener's --configuration rule, less '@'.
_CONFIGURATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NIX_FEATURES: Final = ("--extra-experimental-features", "nix-command flakes")
_RESERVED_REPOS = frozenset({"responses"})  # build.responses.> is where answers go


class BuildError(StrEnum):
    """Error codes of a build status, beyond the deploy ones it shares (``ErrorCode``)."""

    INVALID_REQUEST = ErrorCode.INVALID_REQUEST.value
    INVALID_REVISION = ErrorCode.INVALID_REVISION.value
    ALREADY_RUNNING = ErrorCode.ALREADY_RUNNING.value
    BUILD_FAILED = ErrorCode.BUILD_FAILED.value
    TIMEOUT = ErrorCode.TIMEOUT.value
    CANCELLED = ErrorCode.CANCELLED.value
    UNKNOWN_REPO = "unknown_repo"  # the subject names a repo this builder was not given
    UNKNOWN_HOST = "unknown_host"  # the flake has no nixosConfiguration of that name
    EVAL_FAILED = "eval_failed"  # the revision could not be fetched or its hosts listed
    COPY_FAILED = "copy_failed"  # built, but nix copy to the cache failed
    INVALID_NAME = "invalid_name"  # a configuration name no installable can safely hold
    LOST = "lost"  # the builder fell silent (only a deployer says this)


class BuildPhase(StrEnum):
    FETCHING = "fetching"  # nix flake metadata: which commit the revision is
    EVALUATING = "evaluating"  # listing the flake's nixosConfigurations
    BUILDING = "building"
    COPYING = "copying"


def validate_repo(value: str) -> str:
    """Return ``value`` if it can name a repository in a build subject, else ``UsageError``."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value) or value in _RESERVED_REPOS:
        raise UsageError(
            f"invalid repository name {value!r}: use 1-63 letters, digits, '-' or '_', "
            "starting with a letter or digit, and not 'responses' (it becomes one NATS "
            "subject token)"
        )
    return value


def is_build_reply_subject(value: object) -> bool:
    """Whether ``value`` is a subject a builder may answer on: ``build.responses.<token>``."""
    if not isinstance(value, str) or not value.startswith(BUILD_RESPONSES_PREFIX):
        return False
    rest = value[len(BUILD_RESPONSES_PREFIX) :]
    return bool(rest) and all(_TOKEN.fullmatch(token) for token in rest.split("."))


class BuildTarget(BaseModel):
    """What one build request asks for: a repository and one host or ``all`` of them."""

    model_config = ConfigDict(frozen=True)

    repo: str
    host: str | None = None  # None: every nixosConfiguration of the flake

    @property
    def subject(self) -> str:
        return f"{BUILD_PREFIX}{self.repo}.{self.host or ALL_HOSTS}"

    def __str__(self) -> str:
        return self.subject


def parse_build_target(repo: str, target: str = ALL_HOSTS) -> BuildTarget:
    """The target of ``fleet-deploy build REPO [TARGET]``; ``TARGET`` is a host or ``all``."""
    validate_repo(repo)
    if target == ALL_HOSTS:
        return BuildTarget(repo=repo)
    return BuildTarget(repo=repo, host=validate_hostname(target))


def target_of_subject(subject: str) -> BuildTarget:
    """The target a request arrived for, from its subject; ``RequestRejected`` otherwise."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] + "." != BUILD_PREFIX:
        raise RequestRejected(
            BuildError.INVALID_REQUEST, f"{subject!r} is not build.<repo>.<host|all>"
        )
    try:
        return parse_build_target(parts[1], parts[2])
    except UsageError as exc:
        raise RequestRejected(BuildError.INVALID_REQUEST, str(exc)) from None


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class BuildRequest(_Wire):
    """A validated build request; building one is the single check on both sides."""

    revision: str = DEFAULT_REVISION
    reply_to: str
    id: str | None = None
    # Build only these nixosConfigurations (a request to build.<repo>.all); None: every one.
    hosts: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _validate(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        hosts = data.get("hosts")
        if hosts is not None:
            if not isinstance(hosts, list) or not all(
                isinstance(name, str) and is_buildable_name(name) for name in hosts
            ):
                raise RequestRejected(
                    BuildError.INVALID_REQUEST,
                    "hosts must be a list of configuration names (letters, digits, . _ -)",
                )
            data = {**data, "hosts": sorted(set(hosts))}
        if not is_build_reply_subject(data.get("reply_to")):
            raise RequestRejected(
                BuildError.INVALID_REQUEST,
                f"reply_to {str(data.get('reply_to'))[:80]!r} does not begin with "
                f"{BUILD_RESPONSES_PREFIX}",
            )
        request_id = data.get("id")
        if request_id is not None and not is_request_id(request_id):
            raise RequestRejected(
                BuildError.INVALID_REQUEST, "id must be 1-64 letters, digits, '-' or '_'"
            )
        return {**data, "revision": validate_revision(data.get("revision", DEFAULT_REVISION))}

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


def parse_build_request(data: bytes, *, nats_reply: str | None = None) -> BuildRequest:
    """Parse and validate a build request, or raise ``InvalidRequest`` saying where to answer
    (None when the body names no usable ``build.responses.`` subject: then nobody is)."""
    fallback = nats_reply if is_build_reply_subject(nats_reply) else None
    if len(data) > MAX_REQUEST_BYTES:
        raise InvalidRequest(
            BuildError.INVALID_REQUEST,
            f"message of {len(data)} bytes is over the {MAX_REQUEST_BYTES}-byte limit",
            reply_to=fallback,
        )
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidRequest(
            BuildError.INVALID_REQUEST, "message is not a JSON object", reply_to=fallback
        ) from None
    if not isinstance(obj, dict):
        raise InvalidRequest(
            BuildError.INVALID_REQUEST, "message is not a JSON object", reply_to=fallback
        )
    reply = obj.get("reply_to", fallback)
    answer = reply if is_build_reply_subject(reply) else None
    try:
        return BuildRequest.model_validate({**obj, "reply_to": reply})
    except RequestRejected as exc:
        raise InvalidRequest(exc.code, str(exc), reply_to=answer) from exc
    except ValidationError:
        raise InvalidRequest(
            BuildError.INVALID_REQUEST, "request fields have the wrong types", reply_to=answer
        ) from None


class BuildStatus(_Wire):
    """One status of a build. ``host`` is None for the whole build (accepted, rejected and
    the final completed or failed); a host's own statuses name it."""

    builder: str
    repo: str
    status: StatusKind
    host: str | None = None
    request_id: str | None = None
    revision: str | None = None
    commit: str | None = None  # the commit the revision was when the build began
    hosts: list[str] | None = None  # in the whole build's ``started``: what will be built
    # How many hosts the build builds, when ``hosts`` was left off to fit the status within
    # MAX_STATUS_BYTES (a flake of thousands of hosts): their own statuses name them.
    host_count: int | None = None
    skipped: list[str] | None = None  # configurations whose names cannot be built
    heartbeat_s: float | None = None  # in ``accepted``: progress comes at least this often
    phase: BuildPhase | None = None
    error: str | None = None
    message: str = ""
    store_path: str | None = None
    copied_to: str | None = None  # the cache a completed host's closure was copied to
    log_tail: list[str] | None = None
    duration_s: float | None = None
    timestamp: float | None = None

    @property
    def is_final(self) -> bool:
        return self.status in (StatusKind.REJECTED, StatusKind.COMPLETED, StatusKind.FAILED)


def encode_build_status(status: BuildStatus, limit: int = MAX_STATUS_BYTES) -> bytes:
    """Serialize ``status`` within ``limit`` bytes, dropping the oldest log lines first, then
    the whole build's list of hosts (counted in ``host_count`` instead) and of skipped names:
    a flake of ten thousand hosts names more than one status holds."""
    clipped = status.model_copy(update={"message": status.message[:MAX_MESSAGE_CHARS]})
    data = clipped.model_dump_json().encode()
    tail = clipped.log_tail or []
    while len(data) > limit and tail:
        tail = tail[max(1, len(tail) // 8) :]
        clipped = clipped.model_copy(update={"log_tail": tail})
        data = clipped.model_dump_json().encode()
    if len(data) > limit and (clipped.hosts or clipped.skipped):
        counted_hosts = len(clipped.hosts) if clipped.hosts is not None else None
        clipped = clipped.model_copy(
            update={
                "hosts": None,
                "host_count": counted_hosts,
                "skipped": clipped.skipped[:20] if clipped.skipped else None,
            }
        )
        data = clipped.model_dump_json().encode()
    return data


def parse_build_status(data: bytes) -> BuildStatus | None:
    """A builder's status, or None when it is not one (a deployer ignores it)."""
    if len(data) > MAX_STATUS_BYTES:
        return None
    try:
        return BuildStatus.model_validate_json(data)
    except ValidationError:
        return None


# -- what the builder runs -------------------------------------------------------------------


def flake_at(flake_url: str, revision: str) -> str:
    """``<flake>?ref=<revision>`` (``rev=`` for a full commit, ``&`` after a query)."""
    key = "rev" if _COMMIT.fullmatch(revision) else "ref"
    separator = "&" if "?" in flake_url else "?"
    return f"{flake_url}{separator}{key}={validate_revision(revision)}"


def is_buildable_name(name: str) -> bool:
    """Whether ``name`` (a nixosConfigurations entry) can go into an installable safely."""
    return _CONFIGURATION.fullmatch(name) is not None and ".." not in name


def toplevel_attribute(host: str) -> str:
    """The flake output holding ``host``'s system closure; a name with a dot is quoted, as
    nixos-rebuild quotes it (``nixosConfigurations."web1.example.com"``)."""
    if not is_buildable_name(host):
        raise UsageError(f"configuration name {host!r} cannot be built: use letters, digits, . _ -")
    name = f'"{host}"' if "." in host else host
    return f"nixosConfigurations.{name}.config.system.build.toplevel"


def metadata_argv(nix: Sequence[str], flake_url: str, revision: str) -> list[str]:
    """Fetch the revision afresh and print its metadata, with the locked commit."""
    reference = flake_at(flake_url, revision)
    return [*nix, *NIX_FEATURES, "flake", "metadata", "--json", "--refresh", reference]


def list_argv(nix: Sequence[str], flake: str) -> list[str]:
    """Print the names of ``flake``'s nixosConfigurations as a JSON list."""
    return [
        *nix,
        *NIX_FEATURES,
        "eval",
        "--json",
        f"{flake}#nixosConfigurations",
        "--apply",
        "builtins.attrNames",
    ]


def build_argv(nix: Sequence[str], flake: str, host: str) -> list[str]:
    """Build ``host``'s closure, print its store path, stream build logs (``-L``)."""
    installable = f"{flake}#{toplevel_attribute(host)}"
    return [*nix, *NIX_FEATURES, "build", "--no-link", "--print-out-paths", "-L", installable]


def copy_argv(nix: Sequence[str], cache: str, store_path: str) -> list[str]:
    """Copy a built closure to the binary cache."""
    return [*nix, *NIX_FEATURES, "copy", "--to", cache, store_path]


def must_pin(flake_url: str) -> bool:
    """Whether a fetch that names no locked commit is an error: a git-hosted flake always
    has one, and building it unpinned would break "one commit for every host". A ``path:``
    or tarball flake has none and cannot move under the build."""
    return flake_url.startswith(("git+", "git:", "github:", "gitlab:", "sourcehut:"))


def parse_locked_commit(text: str) -> str | None:
    """The locked commit in ``nix flake metadata --json`` output, None if it has none (a
    path flake, say): the build then uses the revision as given."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    locked = data.get("locked") if isinstance(data, dict) else None
    rev = locked.get("rev") if isinstance(locked, dict) else None
    return rev if isinstance(rev, str) and _COMMIT.fullmatch(rev) else None


def parse_configuration_names(text: str) -> tuple[list[str], list[str]]:
    """The names in ``nix eval --json … --apply builtins.attrNames`` output: those the
    builder can build, and those it cannot put into an installable safely (reported, never
    dropped in silence)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("nix eval did not print a JSON list of names") from None
    if not isinstance(data, list) or not all(isinstance(name, str) for name in data):
        raise ValueError("nix eval did not print a JSON list of names")
    buildable = [name for name in data if is_buildable_name(name)]
    return buildable, [name for name in data if not is_buildable_name(name)]


def parse_store_path(stdout_lines: Sequence[str]) -> str | None:
    """The store path ``nix build --print-out-paths`` printed (its last such line)."""
    for line in reversed(stdout_lines):
        candidate = line.strip()
        if _STORE_PATH.fullmatch(candidate):
            return candidate
    return None


# -- one build's result, at the deployer -----------------------------------------------------


class HostBuildState(StrEnum):
    WAITING = "waiting"  # named in accepted, not started yet
    BUILDING = "building"
    BUILT = "built"
    FAILED = "failed"
    LOST = "lost"  # the builder fell silent or the build ended without this host


class HostBuild(BaseModel):
    """One host's part of a build, as the deployer saw it."""

    host: str
    state: HostBuildState = HostBuildState.WAITING
    phase: str | None = None
    error: str | None = None
    message: str = ""
    store_path: str | None = None
    copied_to: str | None = None
    log_tail: list[str] = Field(default_factory=list)
    duration_s: float | None = None


class BuildResult(BaseModel):
    """A whole build: what the CLI prints and the MCP ``build`` tool returns."""

    build_id: str
    target: str
    repo: str
    revision: str
    builder: str | None = None
    commit: str | None = None
    status: str = "running"  # running, completed, failed, rejected, lost, no_builder
    error: str | None = None
    message: str = ""
    hosts: list[HostBuild] = Field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def done(self) -> bool:
        return self.status != "running"

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def counts(self) -> dict[str, int]:
        counted: dict[str, int] = {}
        for host in self.hosts:
            counted[host.state.value] = counted.get(host.state.value, 0) + 1
        return counted
