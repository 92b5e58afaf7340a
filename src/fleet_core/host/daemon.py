"""``fleet-deploy listener``: one host's daemon, from its settings until a signal stops it.

Apart from the deployer's commands (``commands.py``) so that the listener process loads only
what a host runs: no deployer, tracker or report code in a daemon that lives for months.
"""

from __future__ import annotations

from fleet_core import __version__
from fleet_core.bus import Bus
from fleet_core.config.settings import ListenerSettings
from fleet_core.errors import UsageError
from fleet_core.host.listener import RESTART_EXIT_CODE, Listener
from fleet_core.keys import load_seed
from fleet_core.lifecycle import run_until_signal
from fleet_core.logging import configure_logging
from fleet_core.metrics import serve_listener_metrics

__all__ = ["run_listener"]


def run_listener(settings: ListenerSettings) -> int:
    """Serve until SIGTERM or SIGINT, then stop taking work and exit 0, leaving a running
    rebuild to run on (the next listener reports it). After a switch that changed the
    listener's own unit (``--restart-if-changed``) exit ``RESTART_EXIT_CODE`` instead.

    With ``--metrics-enabled`` the metrics server starts before NATS is touched (a busy
    address is an error at once) and stops after the listener has."""
    configure_logging(settings.log_level)
    seed = load_seed(settings.nkey_file)
    if seed.public_key in settings.trusted_deployer_keys:
        raise UsageError(
            f"--trusted-deployer-key {seed.public_key} is this listener's own key: trust only "
            "deployers' keys, so that a leaked listener key cannot deploy"
        )
    with serve_listener_metrics(settings, __version__) as metrics:
        listener = Listener(settings, metrics=metrics)

        async def main() -> None:
            name = f"fleet-listener {settings.hostname}"
            async with await Bus.connect(
                settings.nats_urls, seed, name=name, persistent=True
            ) as bus:
                await listener.serve(bus)

        run_until_signal(main)
    return RESTART_EXIT_CODE if listener.restart_reason else 0
