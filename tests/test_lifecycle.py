"""run_until_signal: the one way every command runs, stops on a signal, and reports errors."""

from __future__ import annotations

import os
import signal

import anyio
import anyio.lowlevel
import pytest

from fleet_core.errors import ConnectionFailed, UsageError
from fleet_core.lifecycle import Finished, run_until_signal

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it


def test_returns_what_main_returns() -> None:
    """Without a signal, the value of main comes back and the exit code is 0."""

    async def main() -> int:
        await anyio.lowlevel.checkpoint()
        return 7

    finished = run_until_signal(main)
    assert finished == Finished(7)
    assert finished.exit_code == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_cancels_main_and_its_cleanup_runs(signum: signal.Signals) -> None:
    """The first signal cancels the work; its finally block runs; a second one is ignored."""
    cleaned: list[str] = []

    async def main() -> int:
        try:
            os.kill(os.getpid(), signum)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                os.kill(os.getpid(), signum)  # during clean-up: must not interrupt it
                await anyio.lowlevel.checkpoint()  # while the second signal is pending
                cleaned.append("closed")
        return 0

    finished = run_until_signal(main)
    assert finished.signal == signum
    assert finished.value is None
    assert finished.exit_code == 128 + signum
    assert cleaned == ["closed"]


def test_a_fleet_error_from_a_task_group_comes_out_unwrapped() -> None:
    """A FleetError raised in a child task reaches the caller as itself, not as a group."""

    async def fail() -> None:
        raise ConnectionFailed("cannot reach the NATS server")

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(fail)
            await anyio.sleep_forever()

    with pytest.raises(ConnectionFailed, match="cannot reach"):
        run_until_signal(main)


def test_a_fleet_error_from_main_itself_comes_out_unwrapped() -> None:
    """A FleetError raised by main directly is not wrapped by the supervising task group."""

    async def main() -> None:
        raise UsageError("bad flag")

    with pytest.raises(UsageError, match="bad flag"):
        run_until_signal(main)


def test_anything_else_propagates_as_it_came() -> None:
    """A bug is not turned into a FleetError: the exception group reaches the caller."""

    async def main() -> None:
        raise RuntimeError("bug")

    with pytest.raises(BaseExceptionGroup) as caught:
        run_until_signal(main)
    assert caught.group_contains(RuntimeError, match="bug")
