"""``fleet-deploy history`` and ``show``: deployments read back from JetStream (or, without
it, from the hosts' job records), as a table, one deployment in full, or JSON.

Everything a host wrote (messages, errors, log tails) was escaped when it was read
(``fleet_core.deploy.history``); JSON goes out with ``ensure_ascii`` on top.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from fleet_core.bus import Bus
from fleet_core.config.settings import HistorySettings, ShowSettings
from fleet_core.deploy.history import DeploymentRecord, Retention, as_json, select
from fleet_core.deploy.history_reader import HistoryView, key_names, load_history, setup_history
from fleet_core.errors import PermissionDenied
from fleet_core.keys import load_seed
from fleet_core.lifecycle import Finished, run_until_signal
from fleet_core.logging import configure_logging
from fleet_core.protocol.text import counted

__all__ = ["history_table", "run_history", "run_show", "show_text"]

_NO_VALUE = "-"


def run_history(settings: HistorySettings, *, out: TextIO = sys.stdout) -> int:
    """List deployments, or with ``--setup`` create or update the streams."""
    configure_logging("warning")
    if settings.setup:
        return _setup(settings, out)
    finished = _read(settings, "fleet-deploy history", want=settings.limit)
    view = finished.value
    if view is None:
        return finished.exit_code
    _refuse_if_nothing_readable(view)
    target = settings.target.subject if settings.target is not None else None
    chosen = select(view.records, target=target, host=settings.host, limit=settings.limit)
    for note in view.notes():
        print(note, file=sys.stderr)
    if settings.json:
        print(json.dumps(_json_view(view, chosen), indent=2), file=out)
    elif not chosen:
        print(_none_recorded(view, target=target, host=settings.host), file=out)
    else:
        print(history_table(chosen), file=out)
    return 0


def _setup(settings: HistorySettings, out: TextIO) -> int:
    seed = load_seed(settings.connection.nkey_file)
    retention = Retention(
        max_age=settings.max_age,
        max_msgs=settings.max_msgs,
        max_bytes=settings.max_bytes,
        replicas=settings.replicas,
    )

    async def main() -> dict[str, str]:
        urls = settings.connection.nats_urls
        async with await Bus.connect(urls, seed, name="fleet-deploy history --setup") as bus:
            return dict(await setup_history(bus, settings.tiers, retention))

    finished = run_until_signal(main)
    done = finished.value
    if done is None:
        return finished.exit_code
    if settings.json:
        print(json.dumps({"ok": True, "streams": done}, indent=2), file=out)
    else:
        for stream, outcome in done.items():
            print(
                f"{stream}: {outcome} (max age {_seconds(settings.max_age)}, "
                f"{settings.max_msgs} messages, {_bytes(settings.max_bytes)}, "
                f"{counted(settings.replicas, 'replica')})",
                file=out,
            )
    return 0


def _seconds(seconds: float) -> str:
    """A retention age as given (``--max-age`` is in seconds), with days when whole:
    "7776000 s (90 days)", never "7.776e+06 s"."""
    text = f"{seconds:.0f} s" if seconds == int(seconds) else f"{seconds} s"
    days = seconds / 86_400
    return f"{text} ({counted(int(days), 'day')})" if days >= 1 and days == int(days) else text


def _bytes(size: int) -> str:
    """A byte limit as given, with GiB or MiB when whole: "1073741824 bytes (1 GiB)"."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if size >= scale and size % scale == 0:
            return f"{size} bytes ({size // scale} {unit})"
    return f"{size} bytes"


def run_show(settings: ShowSettings, *, out: TextIO = sys.stdout) -> int:
    """Print one deployment with each host's final status and log tail; 1 if unknown."""
    configure_logging("warning")
    finished = _read(settings, "fleet-deploy show", find=settings.deployment_id)
    view = finished.value
    if view is None:
        return finished.exit_code
    _refuse_if_nothing_readable(view)
    found = [r for r in view.records if r.id == settings.deployment_id]
    for note in view.notes():
        print(note, file=sys.stderr)
    if settings.json:
        print(json.dumps(_json_view(view, found), indent=2), file=out)
    elif not found:
        print(_not_found(view, settings.deployment_id), file=out)
    else:
        print("\n\n".join(show_text(record) for record in found), file=out)
    return 0 if found else 1


def _refuse_if_nothing_readable(view: HistoryView) -> None:
    """A key that may read none of the tiers asked for (the test key with ``--tier prod``)
    learnt nothing: that is a permission error (exit 2), not "no deployment recorded"."""
    if view.unreadable and not view.sources:
        tiers = " or ".join(view.unreadable)
        raise PermissionDenied(
            f"this key may not read the {tiers} tier's history: the NATS server keeps it from "
            "this key. Use the admin key (--nkey-file or FLEET_DEPLOY_NKEY_FILE), which reads "
            "every tier",
            fix="use the admin key, which reads every tier's history",
        )


def _where(view: HistoryView) -> str:
    """Which record was read, for a sentence: "the test tier's history"."""
    streams = [tier for tier, source in view.sources.items() if source == "jetstream"]
    records = [tier for tier, source in view.sources.items() if source == "job_records"]
    parts = []
    if streams:
        tiers = " and ".join(streams)
        parts.append(f"the {tiers} tier's history" if len(streams) == 1 else f"the {tiers} history")
    if records:
        parts.append(f"the {' and '.join(records)} hosts' job records")
    return " and ".join(parts)


def _none_recorded(view: HistoryView, *, target: str | None, host: str | None) -> str:
    if target is None and host is None:
        return f"no deployment recorded in {_where(view)}"
    what = " and ".join(
        part
        for part in (f"to {target}" if target else "", f"that reached {host}" if host else "")
        if part
    )
    return f"no deployment {what} recorded in {_where(view)}"


def _not_found(view: HistoryView, deployment_id: str) -> str:
    unread = (
        f"; the {' and '.join(view.unreadable)} history needs the admin key"
        if view.unreadable
        else ""
    )
    return (
        f"no record of deployment {deployment_id!r} in {_where(view)}: check the id "
        "('fleet-deploy history' lists the recorded ones); a deployment older than the "
        f"history's retention is no longer there{unread}"
    )


def _read(
    settings: HistorySettings | ShowSettings, name: str, *, want: int = 0, find: str | None = None
) -> Finished[HistoryView]:
    """Connect with the settings' key and read the history of their tiers, signers named
    from the inventory and the seeds beside the key."""
    seed = load_seed(settings.connection.nkey_file)
    names = key_names(settings.inventory, (settings.connection.nkey_file,))

    async def main() -> HistoryView:
        urls = settings.connection.nats_urls
        async with await Bus.connect(urls, seed, name=name) as bus:
            return await load_history(
                bus, settings.tiers, names=names, timing=settings.timing, want=want, find=find
            )

    return run_until_signal(main)


def _json_view(view: HistoryView, records: list[DeploymentRecord]) -> dict[str, object]:
    return {
        "deployments": as_json(records),
        "sources": view.sources,
        "fallback_reasons": view.fallback_reasons,
        "unreadable_tiers": list(view.unreadable),
    }


def _when(moment: float | None) -> str:
    if moment is None:
        return _NO_VALUE
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(moment))


def _who(record: DeploymentRecord) -> str:
    if not record.request_recorded:
        # Its request aged out — or there never was one: a listener may answer under an id
        # no deployer used. Either way nobody is known to have asked for it.
        return "(no request)"
    if record.signer is None:
        return "unsigned" if record.signature == "unsigned" else _NO_VALUE
    return record.signer_name or record.signer[:12] + "…"


def _outcome(record: DeploymentRecord) -> str:
    counts = record.counts
    if not counts:
        return "no host answered"
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _duration(record: DeploymentRecord) -> str:
    return f"{record.duration_s:.1f} s" if record.duration_s is not None else _NO_VALUE


def history_table(records: list[DeploymentRecord]) -> str:
    """Deployments as a table for people, newest first, times in UTC."""
    rows = [("ID", "STARTED (UTC)", "WHO", "TARGET", "ACTION", "REVISION", "HOSTS", "DURATION")]
    for record in records:
        target = ", ".join(record.targets) if record.targets else f"({record.tier})"
        if len(record.targets) > 2:
            target = f"{record.targets[0]} +{len(record.targets) - 1}"
        rows.append(
            (
                record.id,
                _when(record.started_at),
                _who(record),
                target,
                (record.action or _NO_VALUE) + (" (cancelled)" if record.cancel_requested else ""),
                record.revision or _NO_VALUE,
                _outcome(record),
                _duration(record),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def show_text(record: DeploymentRecord) -> str:
    """One deployment in full: who, what, where, and each host's end with its log tail."""
    who = _who(record)
    if record.signer is not None and record.signer_name is not None:
        who = f"{record.signer_name} ({record.signer})"
    lines = [
        f"deployment {record.id} ({record.tier} tier)",
        f"  by        {who}, signature {record.signature}",
        f"  target    {', '.join(record.targets) or 'not recorded'}",
        f"  action    {record.action or _NO_VALUE}, revision {record.revision or _NO_VALUE}",
        f"  started   {_when(record.started_at)} UTC",
        f"  finished  {_when(record.finished_at)} UTC ({_duration(record)})",
        f"  hosts     {_outcome(record)}",
    ]
    if record.cancel_requested:
        lines.append("  a cancel of this deployment was sent")
    if not record.request_recorded:
        lines.append(
            "  no request of it is recorded (aged out, or a host answered an id no deployer "
            "used): statuses only"
        )
    if record.flagged_count:
        lines.append(f"  {counted(record.flagged_count, 'message')} not believed:")
        lines += [f"    {reason}" for reason in record.flagged]
    for host in record.hosts:
        state = host.status if host.final else f"{host.status} (no final status)"
        error = f" {host.error}:" if host.error else ""
        source = " [from its job record]" if host.source == "job_query" else ""
        lines.append(f"\n  {host.hostname}  {state}{error} {host.message}{source}".rstrip())
        if host.store_path is not None:
            lines.append(f"    system {host.store_path}")
        lines += [f"    | {line}" for line in host.log_tail]
    if record.hosts:  # the tail is the last lines at most (none from a job record)
        tier = "" if record.tier == "test" else f" --tier {record.tier}"
        lines.append(f"\n  a host's whole log: fleet-deploy logs {record.id} --host HOST{tier}")
    return "\n".join(lines)
