"""Bare hosts for ``bench/scale.py``: many per NATS connection, in a process of their own.

``python bench/_responders.py --url URL --seed-file PATH --first 0 --count 5000`` serves the
hosts ``h00000`` … ``h04999`` of the test tier until its standard input closes (the
benchmark holds the other end, so a benchmark that dies takes its responders with it). It
prints ``ready`` once every subscription is known to the server.

Each host answers as a listener of this release does, and does nothing else — no
validation, no job, no disk — so that what a deployment costs on the deployer's side is what
is left when the hosts cost almost nothing:

- a deploy request (on ``deploy.test.all``, or on the host's own ``deploy.test.<host>`` as a
  rollout sends it) with ``accepted``, ``started`` and ``completed`` at once, each on the
  host's bound reply subject ``<reply_to>.test.<host>`` (``protocol.trust.bound_reply``),
  naming the request id and the key that signed it — a listener names the signer it
  verified; these echo it unverified, since checking a signature is the host's cost, paid
  once per host and in parallel on a real fleet;
- discovery on ``deploy.discover.test`` with a host record that lists both subjects and says
  it takes closure deploys (``closures: true``; ``closures.py`` sends each host its own store
  path, which these answer like any request), and a
  job query (a discovery naming ``job`` and ``hosts``) for its named hosts only, with a
  finished job: the deployer asks one only for a host that went silent, which these never do.

Several hundred hosts share one connection (``--per-connection``, one key the benchmark's
nats-server lets publish on every bound reply subject): ten thousand connections, each with
a listener's own key, would not fit a small machine beside the deployer. The request
subscriptions stay per host, as a listener's: one wildcard per connection would deliver
every host's request to every connection.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

TIER = "test"
ALL_SUBJECT = f"deploy.{TIER}.all"
DISCOVER_SUBJECT = f"deploy.discover.{TIER}"
STEPS = ("accepted", "started", "completed")
CONNECT_PARALLEL = 20


def host_name(index: int) -> str:
    """The name of host ``index`` (``h00042``): sorted by name is sorted by index."""
    return f"h{index:05d}"


def _bound(request: dict[str, Any], name: str) -> str:
    reply = str(request["reply_to"])
    return f"{reply}.{TIER}.{name}" if request.get("bind") else reply


def _status(request: dict[str, Any], name: str, kind: str) -> bytes:
    """The fields a listener's status carries (``protocol.messages.Status``)."""
    final = kind == "completed"
    return json.dumps(
        {
            "hostname": name,
            "status": kind,
            "error": None,
            "message": "switch of master done" if final else "",
            "request_id": request.get("id"),
            "tier": TIER,
            "action": request.get("action"),
            "revision": request.get("revision"),
            "timestamp": time.time(),
            "duration_s": 0.0 if final else None,
            "phase": None,
            "log_tail": None,
            "signer": request.get("signer"),
            "checks": None,
            "rolled_back_to": None,
        }
    ).encode()


def _info(name: str, job: str | None) -> bytes:
    """A listener's discovery answer (``protocol.messages.HostInfo``); with ``job``, a job
    query's answer: that job finished, completed."""
    summary = None
    if job is not None:
        summary = {"request_id": job, "phase": "finished", "status": "completed"}
    return json.dumps(
        {
            "hostname": name,
            "tier": TIER,
            "role": None,
            "version": "bench",
            "busy": False,
            "deploy_subjects": [f"deploy.{TIER}.{name}", ALL_SUBJECT],
            "running_job": None,
            "job": summary,
            "kind": "nixos",
            "closures": True,
        }
    ).encode()


Handler = Callable[[Msg], Awaitable[None]]


async def serve(url: str, seed: str, names: Sequence[str], label: str) -> Client:
    """One connection answering for ``names``."""
    client = await nats.connect(url, nkeys_seed_str=seed, name=label, max_reconnect_attempts=0)

    async def answer(request: dict[str, Any], hosts: Sequence[str]) -> None:
        for name in hosts:
            subject = _bound(request, name)
            for kind in STEPS:
                await client.publish(subject, _status(request, name, kind))

    def for_host(name: str) -> Handler:
        async def on_request(msg: Msg) -> None:
            await answer(json.loads(msg.data), (name,))

        return on_request

    async def on_all(msg: Msg) -> None:
        await answer(json.loads(msg.data), names)

    async def on_discover(msg: Msg) -> None:
        request = json.loads(msg.data)
        job = request.get("job")
        asked = names if request.get("hosts") is None else set(request["hosts"])
        for name in names:
            if name in asked:
                await client.publish(_bound(request, name), _info(name, job))

    await client.subscribe(ALL_SUBJECT, cb=on_all)
    await client.subscribe(DISCOVER_SUBJECT, cb=on_discover)
    for name in names:
        await client.subscribe(f"deploy.{TIER}.{name}", cb=for_host(name))
    await client.flush()
    return client


async def main(args: argparse.Namespace, seed: str) -> None:
    names = [host_name(i) for i in range(args.first, args.first + args.count)]
    groups = [names[i : i + args.per_connection] for i in range(0, len(names), args.per_connection)]
    clients: list[Client] = []
    limiter = anyio.CapacityLimiter(CONNECT_PARALLEL)

    async def start(number: int, group: list[str]) -> None:
        async with limiter:
            label = f"bench responders {args.first + number * args.per_connection}"
            clients.append(await serve(args.url, seed, group, label))

    try:
        async with anyio.create_task_group() as tasks:
            for number, group in enumerate(groups):
                tasks.start_soon(start, number, group)
        print("ready", flush=True)
        # Until the benchmark closes our stdin (or dies): then close and leave.
        await anyio.to_thread.run_sync(sys.stdin.read)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            for client in clients:
                await client.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", required=True)
    parser.add_argument("--seed-file", required=True, help="the responders' NKey seed")
    parser.add_argument("--first", type=int, required=True, help="index of the first host")
    parser.add_argument("--count", type=int, required=True, help="hosts in this process")
    parser.add_argument("--per-connection", type=int, default=250, help="hosts per connection")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    anyio.run(main, arguments, Path(arguments.seed_file).read_text().strip(), backend="asyncio")
