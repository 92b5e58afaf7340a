"""The one exception family of fleet-deploy.

Every error a user can meet is a ``FleetError``; its message says what to do about it.
Foreign errors (nats, pydantic, OSError) are translated where they enter — ``bus.py`` for
NATS, ``keys.py`` for key files, ``settings.py`` for flags — and caught only at the edges:
the CLI, an MCP tool, a listener callback.

    FleetError
    ├── UsageError            bad flags, targets, revisions or actions given by the user
    ├── KeyFileError          a seed file that is missing, unreadable, malformed or too open
    ├── ConnectionFailed      the NATS server cannot be reached or refused the key
    ├── PermissionDenied      the NATS server refused a publish or subscribe for this key
    ├── HistoryUnavailable    no JetStream history to read: not enabled, no stream, no answer
    ├── LogUnavailable        a host did not send a job's log: no such job (exit 1), refused,
    │                         too old to serve logs, or no answer
    └── RequestRejected       a deploy request that fails validation (carries a wire error code)

``exit_code`` is what the CLI returns for each: 2 for all of them (usage, key, connection and
permission problems); a deploy where a host did not complete is a result, not an exception.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "ConnectionFailed",
    "FleetError",
    "HistoryUnavailable",
    "KeyFileError",
    "LogUnavailable",
    "PermissionDenied",
    "RequestRejected",
    "UsageError",
    "only_fleet_error",
]


class FleetError(Exception):
    """Base of every fleet-deploy error; ``str(err)`` is a message for a person.

    ``code`` names the kind of error for a program (the CLI's ``--json`` prints it), and
    ``what_to_do`` the next step alone: the ``fix`` given where the error was raised, else
    the advice of its kind. The message itself already says both, for a person."""

    exit_code: int = 2
    code: str = "error"
    advice: str = "Read the message: it says what went wrong."

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix

    @property
    def what_to_do(self) -> str:
        return self.fix or self.advice


class UsageError(FleetError):
    """The user asked for something that cannot work: fix the flags or arguments."""

    code = "usage"
    advice = "Fix the command line: 'fleet-deploy COMMAND --help' explains every flag."


class KeyFileError(FleetError):
    """An NKey seed file cannot be used: missing, unreadable, malformed or group/world-readable."""

    code = "key_file"
    advice = (
        "Point --nkey-file (FLEET_DEPLOY_NKEY_FILE) at a readable NKey seed file of mode "
        "0600; 'fleet-deploy keygen NAME' writes one."
    )


class ConnectionFailed(FleetError):
    """The NATS server is unreachable, or it refused to authenticate the key."""

    code = "connection_failed"
    advice = (
        "Check that nats-server is running, that --nats-url (FLEET_DEPLOY_NATS_URL) is right, "
        "and that the server's authorization block has this key's public key."
    )


class PermissionDenied(FleetError):
    """The NATS server refused this key a publish or subscribe (the tiered permissions).

    ``operation`` ("publish" or "subscribe") and ``subject`` say what was refused, so that
    whoever knows what was being asked for can say what the key is
    (``fleet_core.protocol.refusals``)."""

    code = "permission_denied"
    advice = (
        "Use a key whose NATS permissions allow it: the test deployer key reaches the test "
        "tier, the admin key every tier."
    )

    def __init__(
        self,
        message: str,
        *,
        subject: str | None = None,
        operation: Literal["publish", "subscribe"] | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message, fix=fix)
        self.subject = subject
        self.operation = operation


class HistoryUnavailable(FleetError):
    """The deployment history cannot be read from JetStream: the server has no JetStream,
    the tier's stream does not exist, or it did not answer in time. ``history`` then falls
    back to the hosts' own job records; ``reason`` is a short word for programs."""

    code = "history_unavailable"
    advice = (
        "Enable JetStream on the NATS server (nats-config writes the block) and create the "
        "history streams once with the admin key: 'fleet-deploy history --setup'."
    )

    def __init__(
        self, message: str, *, reason: str = "unavailable", fix: str | None = None
    ) -> None:
        super().__init__(message, fix=fix)
        self.reason = reason


class LogUnavailable(FleetError):
    """A host did not send the log asked for (``fleet-deploy logs``, ``deployment_logs``).

    ``reason`` says why, for programs: ``unknown_job`` (the host answered that it keeps no
    job of that id: an answer about the fleet, so the CLI exits 1, not 2), ``refused`` (it
    refused the request: the message is its own), ``too_old`` (its listener predates log
    requests), ``no_answer`` (nobody answered on the host's subject in time)."""

    code = "log_unavailable"
    advice = (
        "Check the deployment id and the host's name and tier ('fleet-deploy hosts'), and "
        "that the host still keeps the job: it keeps its newest jobs only."
    )

    def __init__(self, message: str, *, reason: str, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.reason = reason
        if reason == "unknown_job":
            self.code = "unknown_job"
            self.exit_code = 1


class RequestRejected(FleetError):
    """A deploy request failed validation; ``code`` is the wire error code to send back."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def only_fleet_error(group: BaseExceptionGroup[BaseException]) -> FleetError:
    """The first FleetError of a task group's exception group that holds nothing else.

    Task groups wrap what their tasks raise; an edge that catches ``FleetError`` unwraps
    with this. Anything else (a bug, a cancellation) is re-raised as it came.
    """
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    if leaves and all(isinstance(exc, FleetError) for exc in leaves):
        first = leaves[0]
        assert isinstance(first, FleetError)
        return first
    raise group
