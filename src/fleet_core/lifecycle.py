"""Running one command until it ends or a signal stops it — written once, for every command.

Each long-running command (the listener, the sandbox, a deploy, the MCP server) needs the
same three things, and each used to write them by hand:

- a fresh event loop that runs the command's ``main``;
- SIGINT and SIGTERM turned into cancellation of that work, and nothing more: the handler
  only cancels, so every ``finally`` of the work (closing a ``Bus``, stopping a server,
  telling a requester) runs as it would on any cancellation, and a second signal during
  that clean-up is ignored instead of killing it half way (uvicorn's ``server.py`` habit);
- a ``FleetError`` raised inside a task group handed to the CLI as itself, not wrapped in
  an exception group, so the user reads one sentence instead of a traceback.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
import anyio.abc
import structlog

from fleet_core.errors import only_fleet_error

__all__ = ["Finished", "run_until_signal"]

T = TypeVar("T")

log = structlog.get_logger("fleet.lifecycle")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class Finished(Generic[T]):
    """How a command ended: ``value`` is what ``main`` returned, ``signal`` what stopped it.

    Exactly one of them is set, unless ``main`` itself returned None.
    """

    value: T | None
    signal: signal.Signals | None = None

    @property
    def exit_code(self) -> int:
        """The conventional shell code of a signalled run (128 + N); 0 otherwise."""
        return 128 + int(self.signal) if self.signal is not None else 0


def run_until_signal(main: Callable[[], Awaitable[T]]) -> Finished[T]:
    """Run ``main()`` in a new event loop until it returns or SIGINT/SIGTERM cancels it.

    Raises the ``FleetError`` that ``main`` raised, unwrapped from any exception group;
    anything else propagates as it came.
    """
    return anyio.run(_supervise, main)


async def _supervise(main: Callable[[], Awaitable[T]]) -> Finished[T]:
    work = anyio.CancelScope()
    received: list[signal.Signals] = []

    async def watch(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                if not received:
                    received.append(signal.Signals(signum))
                    log.info("shutting_down", signal=received[0].name)
                    work.cancel()

    value: T | None = None
    try:
        async with anyio.create_task_group() as tasks:
            await tasks.start(watch)  # installed before any work, so no signal slips past
            with work:
                value = await main()
            tasks.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise only_fleet_error(group) from None
    if received:
        return Finished(None, received[0])
    return Finished(value)
