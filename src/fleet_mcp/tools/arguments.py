"""Checking what a model sent, before anything is sent to the fleet.

The parameter types here are the schema a model sees for the arguments several tools share;
``strict=True`` because a model's "yes" or 1 for a boolean is a mistake to report, not a whole
tier to deploy (the SDK leaves JSON-looking strings alone for scalars, so "true" stays a
string). A mistake becomes a ``ToolError`` that says what to send instead, and an unknown
argument is refused, not ignored: a silently dropped ``tier`` misleads.

The SDK checks the types and bounds, and words a mistake as pydantic does (error codes, a
link to pydantic's docs), which tells a model neither which argument in its own terms nor
what to send. ``argument_mistakes`` rewords pydantic's errors from the tool's input schema,
the one the model read; ``FleetServer.call_tool`` applies it to every tool.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from fleet_core.config.options import DEFAULT_DEPLOY_TIMEOUT
from fleet_core.errors import RequestRejected
from fleet_core.protocol.actions import validate_revision
from fleet_core.protocol.subjects import Tier
from fleet_mcp.reports.wording import DEFAULT_WAIT

__all__ = [
    "MAX_WAIT",
    "QUOTE_LIMIT",
    "BatchPercent",
    "BatchSize",
    "Branch",
    "Canary",
    "MaxFailures",
    "WaitSeconds",
    "argument_mistakes",
    "parse_revision",
    "parse_tier",
    "quoted",
    "reject_unknown",
    "unknown_arguments",
]

MAX_WAIT = DEFAULT_DEPLOY_TIMEOUT  # waiting longer than a deployment may last is pointless
QUOTE_LIMIT = 60  # characters of a model's value an error quotes back

Branch = Annotated[
    str,
    Field(
        strict=True,
        description="branch, tag or full 40-character commit hash of the NixOS configuration",
    ),
]
WaitSeconds = Annotated[
    float,
    Field(
        strict=True,
        ge=0,
        le=MAX_WAIT,
        description=f"seconds this call waits for the result (default {DEFAULT_WAIT:g}, which "
        "fits clients that cut calls off at 60 s); when it runs out the deployment goes on "
        "and deployment_status waits for the rest",
    ),
]


# A rollout's arguments (deploy and deploy_admin): whole numbers with bounds, so a mistake is
# told from the schema in plain words ("batch_percent must be a whole number from 1 to 100").
# Two batch arguments rather than one "N or N%" string: a model sends a number as a number.
Canary = Annotated[
    int,
    Field(
        strict=True,
        ge=0,
        description="hosts to deploy first, as a canary batch (with all=true or role; hosts "
        "go by name); the rest follow only once every canary host completed",
    ),
]
BatchSize = Annotated[
    int | None,
    Field(
        strict=True,
        ge=1,
        description="hosts per batch after the canary (with all=true or role); a batch "
        "starts only once the one before is final. Default: all the rest at once",
    ),
]
BatchPercent = Annotated[
    int | None,
    Field(
        strict=True,
        ge=1,
        le=100,
        description="hosts per batch as a percentage of the target's hosts, rounded up "
        "(instead of batch_size, not with it)",
    ),
]
MaxFailures = Annotated[
    int | None,
    Field(
        strict=True,
        ge=0,
        description="the failure budget, with canary or a batch: once more hosts than this "
        "failed, no further batch starts and the rest end skipped, never deployed. Default 0",
    ),
]


def unknown_arguments(tool: str, known: Sequence[str], arguments: Mapping[str, Any]) -> str | None:
    """What to say of the arguments ``tool`` does not take, and what it takes; None if none."""
    unknown = sorted(set(arguments) - set(known))
    if not unknown:
        return None
    message = f"{tool} has no argument {', '.join(map(quoted, unknown))}: it takes " + ", ".join(
        known
    )
    if tool == "deploy" and "tier" in unknown:
        message += (
            ". deploy always targets the test tier; production cannot be reached with it "
            "(only a person-enabled deploy_admin can)"
        )
    if tool == "build" and {"hostname", "all", "role"} & set(unknown):
        message += ". Name the hosts with target: 'all', or one host such as 'web1'"
    return message + "."


def reject_unknown(tool: str, known: Sequence[str], arguments: Mapping[str, Any]) -> None:
    """A tool error naming the arguments ``tool`` does not take, if any, and what it takes."""
    message = unknown_arguments(tool, known, arguments)
    if message is not None:
        raise ToolError(message)


def argument_mistakes(
    tool: str,
    errors: Sequence[Mapping[str, Any]],
    schema: Mapping[str, Any],
    arguments: Mapping[str, Any] | None = None,
) -> str:
    """One message for a call whose arguments failed ``tool``'s input schema: a sentence
    per wrong argument, naming it and what to send, in the schema's words (the ones the
    model read), then the arguments ``tool`` does not take, if ``arguments`` has any.

    ``errors`` is pydantic's ``ValidationError.errors()``: its codes and wording are
    pydantic's, so only the argument (``loc``), the kind of mistake and the value sent are
    read. The value is the model's own text, so it is quoted short and escaped.
    """
    properties: Mapping[str, Any] = schema.get("properties") or {}
    first: dict[str, Mapping[str, Any]] = {}
    for error in errors:  # one sentence per argument, however many errors it has
        loc = error.get("loc") or ()
        first.setdefault(str(loc[0]) if loc else "", error)
    names = [n for n in properties if n in first] + [n for n in first if n not in properties]
    sentences = [_mistake(name, first[name], properties.get(name)) for name in names]
    unknown = unknown_arguments(tool, list(properties), arguments or {})
    if unknown is not None:
        sentences.append(unknown)
    if not sentences:
        sentences.append("its arguments do not fit its input schema: send them as it shows.")
    return f"{tool}: " + " ".join(sentences)


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``value`` as Python writes it, escaped (control characters, line breaks, invisible
    ones: a model's text is untrusted too) and cut to ``limit`` characters."""
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # an integer of more digits than Python prints
        text = "(too long to show)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 4 * QUOTE_LIMIT  # cut again, to QUOTE_LIMIT, after
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 4
_REPR.maxlevel = 3

_TOO_LARGE = {"less_than_equal", "less_than"}
_TOO_SMALL = {"greater_than_equal", "greater_than"}
_ASIDE = re.compile(r"\s*\([^()]*\)")
_GLOSS_LIMIT = 100


def _mistake(name: str, error: Mapping[str, Any], schema: Mapping[str, Any] | None) -> str:
    """The sentence for one argument: what it must be, and what was wrong with it."""
    value = error.get("input")
    if not name:
        return "its arguments must be a JSON object of named arguments."
    if schema is None:
        return f"{name} cannot be {_sent(value)}: send what the tool's input schema shows."
    what, nullable = _expected(schema)
    if error.get("type") == "missing":
        return f"{name} is required: send {what}."
    must = f"{name} must be {what}" + (" or be left out" if nullable else "")
    if _finite(value) and error.get("type") in _TOO_LARGE:
        return f"{must}; {quoted(value)} is too large."
    if _finite(value) and error.get("type") in _TOO_SMALL:
        return f"{must}; {quoted(value)} is too small."
    return f"{must}, not {_sent(value)}."


def _expected(schema: Mapping[str, Any]) -> tuple[str, bool]:
    """What an argument's schema asks for, in words, and whether it may be left out as null."""
    members = [schema, *(m for m in schema.get("anyOf", ()) if isinstance(m, Mapping))]
    types = {m.get("type") for m in members}
    enum = schema.get("enum")
    choices = [v for v in enum if v is not None] if isinstance(enum, list) else []
    nullable = "null" in types or (isinstance(enum, list) and None in enum)
    if choices:
        return _one_of(choices), nullable
    if "boolean" in types:
        return "true or false (a JSON boolean)", nullable
    if types & {"integer", "number"}:
        what = "a number" if "number" in types else "a whole number"
        what += _bounds(members)
    elif "string" in types:
        what = "a string"
    else:
        what = "what the tool's input schema shows"
    gloss = _gloss(schema.get("description"))
    return (f"{what} ({gloss})" if gloss else what), nullable


def _one_of(choices: list[Any]) -> str:
    shown = [quoted(c) for c in choices]
    if len(shown) == 1:
        return shown[0]
    listed = f"{', '.join(shown[:-1])} or {shown[-1]}"
    return listed if len(shown) == 2 else f"one of {listed}"


def _bounds(members: list[Mapping[str, Any]]) -> str:
    """The range a number's schema allows, as " from 0 to 900" or " of at least 1"."""

    def bound(key: str) -> str | None:
        found = next((m[key] for m in members if _finite(m.get(key))), None)
        return None if found is None else _number(found)

    low, high = bound("minimum"), bound("maximum")
    above, below = bound("exclusiveMinimum"), bound("exclusiveMaximum")
    if low is not None and high is not None:
        return f" from {low} to {high}"
    parts = [
        f"at least {low}" if low is not None else None,
        f"more than {above}" if above is not None else None,
        f"at most {high}" if high is not None else None,
        f"less than {below}" if below is not None else None,
    ]
    chosen = [p for p in parts if p is not None]
    return f" of {' and '.join(chosen)}" if chosen else ""


def _gloss(description: object) -> str:
    """An argument's description cut to its gist: no asides in brackets, the first clause."""
    if not isinstance(description, str):
        return ""
    text = description
    while (shorter := _ASIDE.sub("", text)) != text:
        text = shorter
    text = " ".join(text.split(";", 1)[0].split())
    return text if len(text) <= _GLOSS_LIMIT else text[: _GLOSS_LIMIT - 1] + "…"


def _sent(value: object) -> str:
    """What the model sent, named by its JSON kind: "the string 'yes'", "null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    kind = next((word for types, word in _KINDS if isinstance(value, types)), None)
    return f"{kind} {quoted(value)}" if kind else quoted(value)


_KINDS: tuple[tuple[type[Any] | tuple[type[Any], ...], str], ...] = (
    (str, "the string"),
    ((int, float), "the number"),
    ((list, tuple), "the list"),
    (Mapping, "the object"),
)


def _finite(value: object) -> bool:
    """A number to compare with bounds: not a boolean, nan, an infinity or beyond a float."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _number(value: float) -> str:
    return f"{int(value)}" if float(value).is_integer() else f"{value}"


def parse_tier(value: str) -> Tier:
    try:
        return Tier(value.strip())
    except ValueError:
        raise ToolError(f"tier must be 'test' or 'prod', not {value!r}") from None


def parse_revision(branch: str) -> str:
    try:
        return validate_revision(branch.strip())
    except RequestRejected as exc:
        raise ToolError(str(exc)) from None
