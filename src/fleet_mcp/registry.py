"""The server's deployments and builds, each kept past the tool call that started it.

A deployment or build runs as a task of the server's lifespan task group, not of the tool
call that asked for it: a client that cancels or times out stops *waiting*, never the work,
and a later ``deployment_status`` or ``build_status`` call finds it here by id, or as the
newest one still running when the model lost the id. The registry is bounded: past ``keep``
entries it forgets the oldest finished ones, never a running one.

One type serves both (``DeploymentRegistry`` and ``BuildRegistry`` are its aliases): what it
needs of an entry is the small ``Entry`` protocol.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import anyio.abc

__all__ = ["KEEP", "Entry", "Registry"]

KEEP = 200  # finished deployments (and builds) remembered for deployment_status (build_status)


class Entry(Protocol):
    """What the registry needs of a deployment or a build."""

    @property
    def id(self) -> str:
        """The id a tool call names it by."""

    @property
    def kind(self) -> str:
        """What it is, for the name of its task: 'deploy' or 'build'."""

    @property
    def done(self) -> bool:
        """True once ``run`` has returned (or was cancelled)."""

    async def run(self, runner: Any, limit: float) -> None:
        """Do the work with ``runner`` (a deployer, a build client) for up to ``limit``
        seconds; end with a result or an error set, never raising but for cancellation."""


E = TypeVar("E", bound=Entry)
R = TypeVar("R")


class Registry(Generic[E, R]):
    """Entries of type ``E``, each run by an ``R``, started by this server, newest last;
    finished ones beyond ``keep`` go. ``on_end`` is called with each entry that ends (not
    when the server's exit cancels it): the HTTP server counts deployments there."""

    def __init__(
        self,
        tasks: anyio.abc.TaskGroup,
        *,
        keep: int = KEEP,
        on_end: Callable[[E], None] | None = None,
    ) -> None:
        self._tasks = tasks
        self._keep = keep
        self._on_end = on_end
        self._entries: OrderedDict[str, E] = OrderedDict()

    @property
    def keep(self) -> int:
        """How many finished entries the registry remembers."""
        return self._keep

    def start(self, entry: E, runner: R, *, limit: float) -> E:
        """Run ``entry`` in the lifespan's task group; it may last ``limit`` seconds."""
        self._entries[entry.id] = entry
        self._tasks.start_soon(self._run, entry, runner, limit, name=f"{entry.kind} {entry.id}")
        self._prune()
        return entry

    async def _run(self, entry: E, runner: R, limit: float) -> None:
        await entry.run(runner, limit)
        if self._on_end is not None:
            self._on_end(entry)

    def get(self, entry_id: str) -> E | None:
        return self._entries.get(entry_id)

    def latest(self) -> E | None:
        """The entry a caller without an id means: the newest one still running, else the
        newest one (a duplicate refused at once must not hide the one that runs)."""
        return self.running() or next(reversed(self._entries.values()), None)

    def running(self, *, besides: E | None = None) -> E | None:
        """The newest entry still running, other than ``besides``."""
        return next(
            (e for e in reversed(self._entries.values()) if not e.done and e is not besides),
            None,
        )

    def recent(self, limit: int) -> list[E]:
        """Up to ``limit`` entries, newest first."""
        return list(itertools.islice(reversed(self._entries.values()), limit))

    def __len__(self) -> int:
        return len(self._entries)

    def _prune(self) -> None:
        """Forget the oldest finished entries beyond ``keep``; running ones stay."""
        excess = len(self._entries) - self._keep
        for entry_id, entry in list(self._entries.items()):
            if excess <= 0:
                break
            if entry.done:
                del self._entries[entry_id]
                excess -= 1
