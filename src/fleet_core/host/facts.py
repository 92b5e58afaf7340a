"""Measure the host facts a listener adds to its discovery answers, cheaply.

What a host runs is read from the links a deploy changes (``FactsSettings``): the running
and booted systems, and the system profile. Where they point (three ``readlink`` calls) is
looked at by a discovery at most once a second (``recheck_after``), and at once by the first
discovery after a job this listener ran; everything else — resolving the kernel, initrd and
modules of both systems, the profile's generations, and running ``nixos-version --json`` —
is done only when one of those links moved, in a worker thread or a subprocess with a
deadline, and kept until the next move. A change made behind the listener's back (a
``nixos-rebuild`` run by hand) shows within a second; a reboot restarts the listener.

``last_job`` is the newest deploy — a health check rebuilds nothing, and would otherwise
hide a failed switch from ``status`` — from the job in progress (its record is in memory)
or, when none is, from the newest such record on disk, read again only when it may have
changed: a job was seen in progress since, the listener said a job ended
(``jobs_changed``), the jobs directory's modification time moved (looked at with the
links), or the newest record was not final yet.

Failures cost facts, never the answer: a link that is missing, a version program that is
not installed, hangs or prints something else, each leaves its fields None.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import structlog

from fleet_core.config.settings import FactsSettings, ListenerSettings
from fleet_core.host.jobs.store import JobRecord, JobStore
from fleet_core.protocol.actions import Action, HostKind
from fleet_core.protocol.facts import (
    KERNEL_ENTRIES,
    HostFacts,
    LastJob,
    generation_number,
    kernel_differs,
    parse_version_json,
)
from fleet_core.protocol.messages import JobPhase

__all__ = [
    "VERSION_DEADLINE",
    "FactsReader",
    "LinkPaths",
    "LinkState",
    "last_job_of",
    "link_state",
]

log = structlog.get_logger("fleet.facts")

VERSION_DEADLINE = 10.0  # seconds the version program may take before its facts are None
_MAX_VERSION_OUTPUT = 64 * 1024  # bytes of its output read; nixos-version prints ~200

# Where each link points, one level: (current, booted, profile).
LinkState = tuple[str | None, str | None, str | None]


def _readlink(path: str | Path | None) -> str | None:
    if path is None:
        return None
    try:
        return os.readlink(path)
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class LinkPaths:
    """The links of ``FactsSettings`` as strings, made once: ``link_state`` runs for every
    discovery, and a ``Path`` costs more to turn into a system call's argument."""

    current: str
    booted: str | None
    profile: str

    @classmethod
    def of(cls, paths: FactsSettings) -> LinkPaths:
        booted = paths.booted_system
        return cls(
            current=str(paths.current_system),
            booted=str(booted) if booted is not None else None,
            profile=str(paths.system_profile),
        )


def link_state(links: LinkPaths) -> LinkState:
    """Where the links point now: the cache key of the measured facts (a few syscalls).

    The profile's own link names its generation (``system-N-link``): a switch that made a
    new generation is seen even when it rebuilt an identical system, and nix never points
    an existing generation link elsewhere. A link replaced by another to the same target is
    rightly no change."""
    return (_readlink(links.current), _readlink(links.booted), _readlink(links.profile))


@dataclass(frozen=True, slots=True)
class _Measured:
    """The facts that change only when a link moves."""

    current_system: str | None = None
    booted_system: str | None = None
    needs_reboot: bool | None = None
    generation: int | None = None
    nixos_version: str | None = None
    configuration_revision: str | None = None


def _resolve(path: Path | None) -> str | None:
    """The store path behind ``path`` (links followed), or None when it is missing."""
    if path is None:
        return None
    try:
        return str(path.resolve(strict=True))
    except (OSError, RuntimeError):  # RuntimeError: a loop of links
        return None


def _kernel_of(system: str) -> dict[str, str | None]:
    return {entry: _resolve(Path(system, entry)) for entry in KERNEL_ENTRIES}


def _pending_boot(paths: FactsSettings, current: str, profile_generation: int) -> bool:
    """Whether the profile holds a newer generation than the running system's: a ``boot``
    deploy that waits for a reboot. A ``test`` leaves the profile behind what runs; that is
    no reboot pending (a reboot would undo the test), so only an older generation counts."""
    name = paths.system_profile.name
    try:
        entries = list(paths.system_profile.parent.iterdir())
    except OSError:
        return False
    for entry in entries:
        number = generation_number(name, entry.name)
        if number is not None and number < profile_generation and _resolve(entry) == current:
            return True
    return False


def _measure_links(paths: FactsSettings, kind: HostKind) -> _Measured:
    """Blocking: resolve the systems and tell whether a reboot is needed."""
    current = _resolve(paths.current_system)
    booted = _resolve(paths.booted_system)
    profile_target = _readlink(paths.system_profile)
    generation = (
        generation_number(paths.system_profile.name, profile_target) if profile_target else None
    )
    needs_reboot: bool | None = None
    if kind is HostKind.NIXOS and current is not None and booted is not None:
        profile = _resolve(paths.system_profile)
        needs_reboot = kernel_differs(_kernel_of(booted), _kernel_of(current)) or (
            profile is not None
            and profile != current
            and generation is not None
            and _pending_boot(paths, current, generation)
        )
    return _Measured(
        current_system=current,
        booted_system=booted,
        needs_reboot=needs_reboot,
        generation=generation,
    )


async def _version(argv: tuple[str, ...]) -> tuple[str | None, str | None]:
    """Run the version program (no shell, a deadline); its version and configuration revision."""
    if not argv:
        return None, None
    try:
        with anyio.fail_after(VERSION_DEADLINE):
            done = await anyio.run_process(list(argv), check=False, stdin=None)
    except TimeoutError:
        log.warning("version_command_timeout", program=argv[0], deadline=VERSION_DEADLINE)
        return None, None
    except OSError as exc:
        log.info("version_command_unavailable", program=argv[0], error=str(exc)[:200])
        return None, None
    if done.returncode != 0:
        log.info("version_command_failed", program=argv[0], exit_code=done.returncode)
        return None, None
    return parse_version_json(done.stdout[:_MAX_VERSION_OUTPUT])


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def last_job_of(record: JobRecord) -> LastJob:
    """A job record as ``last_job``: a finished job's final status, else where it is."""
    status: str | None
    if record.phase is JobPhase.FINISHED and record.status is not None:
        status = record.status.value
    else:
        status = "started" if record.phase is JobPhase.RUNNING else "accepted"
    return LastJob(
        id=record.request_id,
        action=record.request.action.value,
        revision=record.request.revision,
        store_path=record.request.store_path,
        status=status,
        error=record.error,
        finished_at=record.finished_at,
    )


class FactsReader:
    """A listener's facts, measured once per change; ``read`` is what discovery calls."""

    def __init__(self, settings: ListenerSettings, store: JobStore) -> None:
        self._paths = settings.facts
        self._links = LinkPaths.of(settings.facts)
        self._kind = settings.host_kind
        self._store = store
        self._jobs_dir = str(store.jobs)
        self._started = time.monotonic()
        self._recheck_after = settings.facts.recheck_after
        self._next_check = 0.0  # monotonic time of the next look at the links
        self._lock = anyio.Lock()
        self._key: LinkState | None = None
        self._measured = _Measured()
        # The answer last built: rebuilt only when the measurement, the last job or the
        # uptime (whole seconds) changed, so a burst of discoveries builds it once.
        self._facts: HostFacts | None = None
        # The newest record on disk; read again once a job was seen in progress (it has
        # ended since), when told a job ended, when the jobs directory changed, or while
        # the newest record is not final.
        self._disk_job: LastJob | None = None
        self._disk_read = False
        self._disk_stamp: int | None = None
        self._seen_active: str | None = None
        self._active: tuple[JobRecord, LastJob] | None = None
        # The listener's task group, which owns the version program's runs once attached.
        self._tasks: anyio.abc.TaskGroup | None = None

    def attach(self, tasks: anyio.abc.TaskGroup) -> None:
        """Run the version program in ``tasks`` from now on, so that a discovery answer
        waits for it ``FactsSettings.version_grace`` at most (without: inline, up to its
        deadline)."""
        self._tasks = tasks

    def jobs_changed(self) -> None:
        """A job ended: the next ``read`` looks at the links and the newest record again."""
        self._disk_read = False
        self._next_check = 0.0

    async def read(self, active: JobRecord | None = None) -> HostFacts:
        """The facts now; ``active`` is the record of the job in progress, if any."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._recheck_after
            key = link_state(self._links)
            if key != self._key:
                async with self._lock:
                    if key != self._key:  # not measured meanwhile by another discovery
                        self._measured = await self._measure(key)
                        self._key = key
                        self._facts = None
            stamp = _mtime(self._jobs_dir)
            if stamp != self._disk_stamp:  # a job directory was made or pruned
                self._disk_stamp = stamp
                self._disk_read = False
        job = await self._last_job(active)
        uptime = float(int(now - self._started))
        facts = self._facts
        if facts is None or facts.last_job is not job or facts.uptime_s != uptime:
            measured = self._measured
            facts = self._facts = HostFacts(
                current_system=measured.current_system,
                booted_system=measured.booted_system,
                needs_reboot=measured.needs_reboot,
                nixos_version=measured.nixos_version,
                configuration_revision=measured.configuration_revision,
                generation=measured.generation,
                uptime_s=uptime,
                last_job=job,
            )
        return facts

    async def _measure(self, key: LinkState) -> _Measured:
        """The facts of the links as they are at ``key``; the caller keeps them for it."""
        links = await anyio.to_thread.run_sync(_measure_links, self._paths, self._kind)
        log.debug("facts_measured", generation=links.generation, needs_reboot=links.needs_reboot)
        if self._tasks is None:
            version, revision = await _version(self._paths.version_command)
            return replace(links, nixos_version=version, configuration_revision=revision)
        found: list[tuple[str | None, str | None]] = []
        done = anyio.Event()

        async def run_version() -> None:
            found.append(await _version(self._paths.version_command))
            done.set()
            if self._key == key:  # came after the grace: the answers from now on carry it
                self._measured = replace(
                    self._measured, nixos_version=found[0][0], configuration_revision=found[0][1]
                )
                self._facts = None

        self._tasks.start_soon(run_version)
        with anyio.move_on_after(self._paths.version_grace):
            await done.wait()
        if not found:
            log.info("version_command_slow", program=self._paths.version_command[:1])
            return links
        return replace(links, nixos_version=found[0][0], configuration_revision=found[0][1])

    async def _last_job(self, active: JobRecord | None) -> LastJob | None:
        if active is not None and active.request.action is Action.CHECK:
            active = None  # a health check is no deploy: the last deploy stays the last job
        if active is not None:
            self._seen_active = active.request_id
            if self._active is None or self._active[0] is not active:  # records are frozen
                self._active = (active, last_job_of(active))
            return self._active[1]
        if not self._disk_read or self._seen_active is not None:
            record = await anyio.to_thread.run_sync(self._store.latest_deploy)
            self._disk_job = last_job_of(record) if record is not None else None
            # A record not yet final (its job ended in another process) is read again.
            self._disk_read = record is None or record.phase is JobPhase.FINISHED
            self._seen_active = None
            self._active = None
        return self._disk_job
