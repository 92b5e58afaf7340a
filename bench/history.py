"""The history streams: what capturing a tier's traffic costs a deploy, and how fast it reads.

``fleet_core.testing.local_fleet`` starts one real nats-server with the tiered permissions,
N (200) test-tier listeners in this process with an instant rebuild, and an admin key. Two
fleets, one after the other, identical but for ``history``: without the streams, and with
JetStream and the two history streams capturing every request and bound answer (on the
machine's disk, file storage, as shipped).

``deploy``
    ``Deployer.deploy(deploy.test.all)``, call to return (the discovery window included:
    its N answers are captured too), ``--rounds`` times per fleet after a warm-up. The
    ratio of the medians is the cost of recording.
``read``
    after the deploys, ``--messages`` more recorded messages (a request and three statuses
    per synthetic deployment, published by the admin key onto the captured subjects), then
    ``read_history`` of the test tier with the admin key: direct gets in batches, each
    message parsed into the book. Messages per second.

Run ``python bench/history.py`` (about a minute) or ``--quick``; results go to the
``history`` block of RESULTS.md unless ``--no-write`` (or ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
from _results import Stats, load_average, machine, ms, publish

from fleet_core.config.settings import DeployTiming
from fleet_core.deploy.deployer import Deployer
from fleet_core.deploy.history import HistoryBook
from fleet_core.deploy.history_reader import read_history
from fleet_core.logging import configure_logging
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import Tier, parse_target
from fleet_core.testing import FleetHost, InstantRebuilder, local_fleet

ADMIN = "ops"
TIMING = DeployTiming(discovery_first=1.0, discovery_quiet=0.1, discovery_cap=5.0)


async def deploys(
    n: int, rounds: int, root: Path, *, history: bool, messages: int
) -> dict[str, Any]:
    hosts = [FleetHost(f"h{i:04d}") for i in range(n)]
    async with (
        local_fleet(hosts, {ADMIN: "admin"}, root=root, history=history) as fleet,
        fleet.listeners([h.name for h in hosts], rebuilder=InstantRebuilder()),
        await fleet.connect(ADMIN) as bus,
    ):
        deployer = Deployer(bus, timing=TIMING, signer=fleet.seed(ADMIN))
        samples: list[float] = []
        for index in range(rounds + 1):
            start = time.perf_counter()
            result = await deployer.deploy(
                parse_target("deploy.test.all"),
                revision="master",
                action=Action.SWITCH,
                timeout=60,
            )
            if index:  # the first is the warm-up
                samples.append(time.perf_counter() - start)
            assert result.ok, result.counts
        read: dict[str, Any] = {}
        if history:
            read = await reads(bus, messages=messages)
    return {"deploy": samples, **read}


async def reads(bus: Any, *, messages: int) -> dict[str, Any]:
    for _ in range(messages // 4):
        rid = uuid.uuid4().hex
        request = {"action": "switch", "revision": "master", "reply_to": f"deploy.responses.{rid}"}
        await bus.publish("deploy.test.h0000", json.dumps({**request, "id": rid}).encode())
        for status in ("accepted", "started", "completed"):
            body = {"hostname": "h0000", "status": status, "request_id": rid, "tier": "test"}
            await bus.publish(f"deploy.responses.{rid}.test.h0000", json.dumps(body).encode())
    await bus.flush()
    samples: list[float] = []
    count = 0
    records = 0
    for _ in range(3):
        book = HistoryBook()
        start = time.perf_counter()
        count = await read_history(bus, Tier.TEST, book, scan=messages * 2)
        samples.append(time.perf_counter() - start)
        records = len(book.records())
    return {"read": samples, "read_count": count, "records": records}


def report(n: int, rounds: int, plain: dict[str, Any], kept: dict[str, Any], load: float) -> str:
    without, with_ = Stats(plain["deploy"]), Stats(kept["deploy"])
    read = Stats(kept["read"])
    rate = kept["read_count"] / read.median
    lines = [
        "### History streams (`bench/history.py`)",
        "",
        machine(load),
        "",
        f"{n} real listeners in one process (instant rebuild); `deploy.test.all` with the "
        f"admin key, call to return (discovery window included), {rounds} runs per fleet.",
        "",
        "| fleet | median ms | p90 ms | min ms |",
        "|---|---:|---:|---:|",
        f"| without streams | {ms(without.median)} | {ms(without.p90)} | {ms(without.min)} |",
        f"| with the history streams | {ms(with_.median)} | {ms(with_.p90)} | {ms(with_.min)} |",
        "",
        f"Ratio of medians: **{with_.median / without.median:.2f}x**.",
        "",
        f"Reading back: {kept['read_count']} messages ({kept['records']} deployments) of the "
        f"test stream in {ms(read.median)} ms (median of {read.runs}): "
        f"{rate:,.0f} messages/s, parsing included.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="50 hosts, 3 rounds, 4000 messages")
    parser.add_argument("--no-write", action="store_true", help="print only, keep RESULTS.md")
    args = parser.parse_args()
    n, rounds = (50, 3) if args.quick else (args.hosts, args.rounds)
    messages = 4000 if args.quick else args.messages
    configure_logging("warning", stream=open(os.devnull, "w"))  # noqa: SIM115
    load = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        root = Path(tmp)
        plain = anyio.run(
            lambda: deploys(n, rounds, root / "plain", history=False, messages=messages)
        )
        kept = anyio.run(lambda: deploys(n, rounds, root / "kept", history=True, messages=messages))
    text = report(n, rounds, plain, kept, load)
    publish("history", text, write=not args.no_write and not args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
