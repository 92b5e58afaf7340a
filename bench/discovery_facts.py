"""Discovery with host facts against discovery without them: the cost of what ``status`` reads.

``fleet_core.testing.local_fleet`` starts one real nats-server with the tiered permissions,
N (1000) test-tier listener keys and a deployer key, and N real
``fleet_core.host.listener.Listener`` objects in this process, each on its own connection.
Every listener measures its facts on one simulated system root (``simulated_system``: the
same links as a host's, a switch's worth of kernel, initrd and modules) and runs ``cat`` of
a ``nixos-version --json`` output as its version program (the real one is a shell script of
about that cost).

Two arms, in shuffled order every round, on the same listeners and connections:

``facts``
    the listeners as shipped: every answer carries ``facts`` (a few ``readlink`` calls, a
    ``stat`` of the jobs directory, the cached measurement, a bigger JSON body).
``no-facts``
    each listener's ``facts`` reader replaced by one that returns None: the answer of the
    release before facts.

Each run is a raw gather (plain nats-py, the deployer's key, subscribed as the deployer is):
publish a discovery request and stop when all N hosts answered — no quiet window, so the
figure is the hosts' cost, not the deployer's wait. The ratio of the medians is the target
(facts within 1.2x). One more figure, outside the ratio: the first discovery after the
running system changed (every listener re-measures: resolve, compare kernels, run the
version program once), which happens once per deploy, not per discovery.

Run ``python bench/discovery_facts.py`` (about a minute) or ``--quick``; results go to the
``discovery-facts`` block of RESULTS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import nats
from _results import Stats, load_average, machine, ms, publish
from fanout import DEPLOYER, bench_fleet, raw_discover

from fleet_core.config.settings import FactsSettings
from fleet_core.host.listener import Listener
from fleet_core.logging import configure_logging
from fleet_core.testing import InstantRebuilder
from fleet_core.testing.simulated_system import (
    activate,
    booted_system_path,
    current_system_path,
    init_root,
    make_system,
    profile_path,
    set_profile,
)

TARGET_RATIO = 1.2
VERSION_JSON = {
    "nixosVersion": "24.11.20241120.9c6b49a",
    "nixpkgsRevision": "9c6b49aeac36e2ed73a8c472f1546f6d9cf1addc",
    "configurationRevision": "0f3c1e7f2f4c6a1c2d3b4a5968778695a4b3c2d1",
}


class NoFacts:
    """A facts reader that reports nothing: the discovery answer of the release before."""

    async def read(self, active: Any = None) -> None:
        return None

    def jobs_changed(self) -> None:
        return None


def facts_settings(root: Path, version_file: Path) -> FactsSettings:
    return FactsSettings(
        current_system=current_system_path(root),
        booted_system=booted_system_path(root),
        system_profile=profile_path(root),
        version_command=("cat", str(version_file)),
    )


def switch(root: Path, label: str) -> None:
    """What a switch to a new system with the same kernel changes: profile and current."""
    system = make_system(root, "bench", label)
    set_profile(root, system)
    with contextlib.redirect_stdout(io.StringIO()):
        activate(system / "bin" / "switch-to-configuration", ["switch"])


async def run(n: int, rounds: int, directory: Path) -> dict[str, Any]:
    root = directory / "system"
    init_root(root, "bench")
    version_file = directory / "nixos-version.json"
    version_file.write_text(json.dumps(VERSION_JSON))
    paths = facts_settings(root, version_file)
    samples: dict[str, list[float]] = {"facts": [], "no-facts": []}
    async with bench_fleet(n, directory / "fleet", directory / "state") as fleet:
        chosen = [fleet.listener_settings(h, facts=paths) for h in fleet.hosts]
        async with fleet.listeners(chosen, rebuilder=InstantRebuilder()) as running:
            listeners: list[Listener] = list(running.values())
            readers = {id(lst): lst.facts for lst in listeners}
            client = await nats.connect(
                fleet.url, nkeys_seed_str=fleet.seed(DEPLOYER).reveal(), name="bench raw"
            )
            try:

                def arm(name: str) -> None:
                    for listener in listeners:
                        reader = readers[id(listener)] if name == "facts" else NoFacts()
                        listener.facts = reader  # type: ignore[assignment]  # duck-typed

                arm("facts")
                first = await raw_discover(client, n)  # every listener measures once
                arm("no-facts")
                await raw_discover(client, n)  # warm the other arm too
                for _ in range(rounds):
                    order = ["facts", "no-facts"]
                    random.shuffle(order)
                    for name in order:
                        arm(name)
                        samples[name].append(await raw_discover(client, n))
                arm("facts")
                switch(root, "bench-2")
                # A change made behind the listeners' backs is looked for once a second
                # (FactsSettings.recheck_after): wait that out, so that every one re-measures.
                await anyio.sleep(paths.recheck_after + 0.1)
                changed = await raw_discover(client, n)
            finally:
                await client.close()
    return {"samples": samples, "first": first, "changed": changed}


def report(n: int, rounds: int, result: dict[str, Any], load_before: float) -> str:
    facts = Stats(result["samples"]["facts"])
    plain = Stats(result["samples"]["no-facts"])
    ratio = facts.median / plain.median
    verdict = "within" if ratio <= TARGET_RATIO else "over"
    lines = [
        "### Discovery with host facts (`bench/discovery_facts.py`)",
        "",
        machine(load_before),
        "",
        f"{n} real listeners in one process, each on its own connection; a raw gather of "
        f"all {n} discovery answers, {rounds} rounds per arm in shuffled order.",
        "",
        "| arm | median ms | p90 ms | min ms |",
        "|---|---:|---:|---:|",
        f"| no-facts (the answer before facts) | {ms(plain.median)} | {ms(plain.p90)} "
        f"| {ms(plain.min)} |",
        f"| facts (cached, as shipped) | {ms(facts.median)} | {ms(facts.p90)} | {ms(facts.min)} |",
        "",
        f"Ratio of medians: **{ratio:.2f}x**, {verdict} the {TARGET_RATIO}x target.",
        "",
        "The facts arm answers from the cache: each listener looks at its three links at "
        "most once a second (`FactsSettings.recheck_after`) and at once after a job of its "
        "own, so a round pays those `readlink` calls only where that second has passed.",
        "",
        f"Once per change, outside the ratio: the first discovery of all {n} listeners "
        f"(each measures: resolves the links and kernels, runs its version program) took "
        f"{ms(result['first'])} ms; the first after a switch changed the running system "
        f"{ms(result['changed'])} ms.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="100 hosts, 5 rounds")
    parser.add_argument("--no-write", action="store_true", help="print only, keep RESULTS.md")
    args = parser.parse_args()
    n, rounds = (100, 5) if args.quick else (args.hosts, args.rounds)
    configure_logging("warning", stream=open(os.devnull, "w"))  # noqa: SIM115
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-facts-") as tmp:
        result = anyio.run(run, n, rounds, Path(tmp))
    text = report(n, rounds, result, load_before)
    publish("discovery-facts", text, write=not args.no_write and not args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
