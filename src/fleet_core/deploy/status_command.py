"""``fleet-deploy status``: discover the target's hosts, judge them, print, exit 0 or 1.

The judging is ``fleet_core.deploy.fleet_status`` (pure); this is the thin part around it:
one discovery (each answer carries the host's facts), then a table or JSON. Usage, key and
connection errors are exit 2, from ``cli.main``.
"""

from __future__ import annotations

import sys
from typing import TextIO

from fleet_core import __version__
from fleet_core.bus import Bus
from fleet_core.config.settings import StatusSettings
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.fleet_status import fleet_status, status_table
from fleet_core.deploy.history_reader import LastDeploy, recorded_reference
from fleet_core.errors import PermissionDenied
from fleet_core.keys import load_seed
from fleet_core.lifecycle import run_until_signal
from fleet_core.logging import configure_logging
from fleet_core.protocol.messages import HostInfo
from fleet_core.protocol.text import escaped_json

__all__ = ["run_status"]


def run_status(settings: StatusSettings, *, out: TextIO = sys.stdout) -> int:
    """Print every host's status; 0 when all are at the revision and healthy, else 1."""
    configure_logging("warning")
    seed = load_seed(settings.connection.nkey_file)
    hidden: list[str] = []
    tier = settings.target.tier if settings.target is not None else None

    recorded: list[LastDeploy | None] = []

    async def main() -> list[HostInfo]:
        urls = settings.connection.nats_urls
        async with await Bus.connect(urls, seed, name="fleet-deploy status") as bus:
            deployer = Deployer(bus, timing=settings.timing)
            found = await deployer.discover(tier)
            hidden.extend(t.value for t in sorted(deployer.unreadable_tiers))
            if settings.revision is None:
                recorded.append(await recorded_reference(bus, found, settings.target))
            return found

    finished = run_until_signal(main)
    found = finished.value
    if found is None:
        return finished.exit_code
    if not found and hidden:  # not "no host answered": nobody this key may hear did
        tiers = " or ".join(hidden)
        raise PermissionDenied(
            f"no host shown: this key may not read the {tiers} tier's answers, so it cannot "
            "tell their status. Use the admin key (--nkey-file or FLEET_DEPLOY_NKEY_FILE), "
            "which reads every tier",
            fix="use the admin key, which reads every tier's answers",
        )
    for name in hidden:
        print(f"{name} hosts are not shown: this key may not read their answers", file=sys.stderr)
    newest = recorded[0] if recorded else None
    status = fleet_status(
        found,
        target=settings.target,
        revision=settings.revision,
        cli_version=__version__,
        recorded=(newest.revision, newest.deployment_id) if newest is not None else None,
    )
    if settings.json:
        print(escaped_json(status.model_dump_json(indent=2)), file=out)
    else:
        print(status_table(status), file=out)
    return 0 if status.ok else 1
