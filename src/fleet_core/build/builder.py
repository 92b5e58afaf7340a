"""``fleet-deploy builder``: build a fleet's system closures once, on a build host.

The builder subscribes to ``build.<repo>.*`` for each repository it was given — in a queue
group, so that several builders of one repository share its requests instead of each
building every one — takes one build at a time (another request meanwhile is
``rejected/already_running``) and streams its statuses to the request's
``build.responses.`` subject. What it runs and the order of the
statuses are in ``fleet_core.build.protocol``; this module only runs those argvs and tells.

Unlike a deploy, a build is not durable: nothing on any host changes while it runs, so a
builder that stops kills its ``nix`` processes, reports every unfinished host
``failed/cancelled`` when it still can, and the build can simply be asked for again (nix
keeps what was already built). A deployer that hears nothing for 3.5 heartbeats reports the
build ``lost``.

Each ``nix`` runs in a session of its own, so a timeout or a stop ends its whole process
group (nix's builders and substituters included), never only its first process.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from subprocess import DEVNULL, PIPE
from typing import Any

import anyio
import anyio.abc
import structlog

from fleet_core import __version__
from fleet_core.build.protocol import (
    BuildError,
    BuildPhase,
    BuildRequest,
    BuildStatus,
    BuildTarget,
    build_argv,
    copy_argv,
    encode_build_status,
    flake_at,
    list_argv,
    metadata_argv,
    must_pin,
    parse_build_request,
    parse_configuration_names,
    parse_locked_commit,
    parse_store_path,
    target_of_subject,
)
from fleet_core.bus import Bus, Message, Subscription
from fleet_core.config.settings import BuilderSettings
from fleet_core.errors import FleetError, RequestRejected
from fleet_core.host.jobs.rebuild_output import failure_summary
from fleet_core.keys import load_seed
from fleet_core.lifecycle import run_until_signal
from fleet_core.logging import configure_logging
from fleet_core.processes import KILL_GRACE, stop_group
from fleet_core.protocol.actions import redact
from fleet_core.protocol.messages import InvalidRequest, StatusKind
from fleet_core.protocol.text import counted

__all__ = ["QUEUE_GROUP", "AsyncLinesIterator", "Builder", "NixRun", "run_builder", "run_nix"]

log = structlog.get_logger("fleet.builder")

# Builders of one repository share its requests: each goes to one of them, not to all.
QUEUE_GROUP = "fleet-deploy-builders"
TAIL_LINES = 60  # the last output lines a failed step reports
MAX_LINE_CHARS = 2000  # a longer line is cut: nix can print a whole derivation on one line
MAX_STDOUT_BYTES = 16 * 1024 * 1024  # a flake's metadata with every lock, a fleet's names
_READ_CHUNK = 65536


def run_builder(settings: BuilderSettings) -> int:
    """Serve builds until SIGTERM or SIGINT, then stop the running one and exit 0."""
    configure_logging(settings.log_level)
    seed = load_seed(settings.nkey_file)
    builder = Builder(settings)

    async def main() -> None:
        name = f"fleet-builder {settings.name}"
        async with await Bus.connect(settings.nats_urls, seed, name=name, persistent=True) as bus:
            await builder.serve(bus)

    run_until_signal(main)
    return 0


@dataclass(slots=True)
class NixRun:
    """How one ``nix`` invocation ended."""

    exit_code: int | None  # None: it was stopped (timeout), or never started (``error``)
    stdout: str  # whole, up to MAX_STDOUT_BYTES: one JSON document can be one long line
    tail: list[str]
    timed_out: bool = False
    error: str | None = None  # why it could not be started at all

    @property
    def stdout_lines(self) -> list[str]:
        return self.stdout.splitlines()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


OnLine = Callable[[str], Awaitable[None]]


async def run_nix(
    argv: Sequence[str], *, timeout: float, on_line: OnLine, kill_grace: float = KILL_GRACE
) -> NixRun:
    """Run ``argv`` (never through a shell) in a session of its own until it exits or
    ``timeout`` passes; ``on_line`` hears each line of its stderr (nix's log). A timeout or
    a cancellation ends its whole process group: SIGTERM, then SIGKILL after ``kill_grace``.
    """
    stdout = bytearray()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        process = await anyio.open_process(
            list(argv), stdin=DEVNULL, stdout=PIPE, stderr=PIPE, start_new_session=True
        )
    except OSError as exc:
        reason = f"cannot run {argv[0]}: {exc.strerror or exc}"
        return NixRun(None, "", [reason], error=reason)

    async def collect(stream: anyio.abc.ByteReceiveStream | None) -> None:
        """stdout, whole: never split, never cut within the limit (nix prints its JSON on
        one line, which can be long); what is past the limit is read and dropped."""
        if stream is None:
            return
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
            while True:
                chunk = await stream.receive(_READ_CHUNK)
                stdout.extend(chunk[: max(0, MAX_STDOUT_BYTES - len(stdout))])

    async def pump(stream: anyio.abc.ByteReceiveStream | None) -> None:
        if stream is None:
            return
        async for line in AsyncLinesIterator(stream):
            tail.append(line)
            await on_line(line)

    timed_out = False
    try:
        with anyio.move_on_after(timeout) as deadline:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(collect, process.stdout)
                tasks.start_soon(pump, process.stderr)
                await process.wait()
                # A leftover child holding the pipes open must not hold the step: what it
                # has not written within the grace is not waited for.
                tasks.cancel_scope.deadline = anyio.current_time() + kill_grace
        # Past the deadline only if nix itself was: not when its exit beat it and only a
        # leftover child's output was being waited for.
        timed_out = deadline.cancelled_caught and process.returncode is None
    finally:
        with anyio.CancelScope(shield=True):
            await stop_group(process.pid, grace=kill_grace, leader=process)
            await process.aclose()
    code = None if timed_out else process.returncode
    return NixRun(code, stdout.decode("utf-8", "replace"), list(tail), timed_out=timed_out)


class AsyncLinesIterator:
    """Decoded lines of a byte stream; a line is cut at ``MAX_LINE_CHARS`` and the buffer
    never holds more than one chunk beyond that, whatever a flood of output looks like."""

    def __init__(self, stream: anyio.abc.ByteReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self._ready: deque[str] = deque()
        self._ended = False

    def __aiter__(self) -> AsyncLinesIterator:
        return self

    async def __anext__(self) -> str:
        while not self._ready:
            if self._ended:
                raise StopAsyncIteration
            try:
                chunk = await self._stream.receive(_READ_CHUNK)
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._ended = True
                if self._buffer:
                    self._ready.append(_decode(self._buffer))
                    self._buffer = b""
                continue
            *complete, self._buffer = (self._buffer + chunk).split(b"\n")
            self._ready.extend(_decode(line) for line in complete)
            if len(self._buffer) > MAX_LINE_CHARS * 4:
                self._ready.append(_decode(self._buffer))
                self._buffer = b""
        return self._ready.popleft()


async def _unsubscribe(subscriptions: list[Subscription]) -> None:
    """Drain ``subscriptions`` (shielded, within a deadline) and forget them."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        while subscriptions:
            await subscriptions.pop().drain()


def _decode(line: bytes) -> str:
    return redact(line.decode("utf-8", "replace").rstrip("\r"))[:MAX_LINE_CHARS]


@dataclass(slots=True)
class _Reporter:
    """Publishes one build's statuses; the identifying fields are bound once."""

    bus: Bus
    builder: str
    repo: str
    reply_to: str
    request_id: str | None
    revision: str | None
    heartbeat_s: float | None = None  # in every status: a requester that missed one knows
    commit: str | None = None
    last_sent: float = field(default=0.0)

    async def send(
        self,
        kind: StatusKind,
        *,
        host: str | None = None,
        message: str = "",
        **fields: object,
    ) -> None:
        status = BuildStatus.model_validate(
            {
                "builder": self.builder,
                "repo": self.repo,
                "status": kind,
                "host": host,
                "request_id": self.request_id,
                "revision": self.revision,
                "heartbeat_s": self.heartbeat_s,
                "commit": self.commit,
                "message": redact(message),
                "timestamp": time.time(),
                **fields,
            }
        )
        self.last_sent = time.monotonic()
        try:
            await self.bus.publish(self.reply_to, encode_build_status(status))
        except FleetError as exc:  # the server is away: the build goes on, this status is lost
            log.warning("status_not_sent", request_id=self.request_id, error=str(exc))


class Builder:
    """Serves build requests for its repositories until its ``serve`` task is cancelled."""

    def __init__(self, settings: BuilderSettings) -> None:
        self.settings = settings
        self.running: str | None = None  # the request id of the build in progress
        self._tasks: anyio.abc.TaskGroup | None = None
        self._bus: Bus | None = None
        self._log = log.bind(builder=settings.name)

    async def serve(
        self, bus: Bus, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Subscribe, report ready through ``task_status``, and serve until cancelled; a
        build still running then is stopped and reported cancelled."""
        self._bus = bus
        subscriptions: list[Subscription] = []
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                for repo in self.settings.repos:
                    subscriptions.append(
                        await bus.subscribe(f"build.{repo}.*", self._on_request, queue=QUEUE_GROUP)
                    )
                await bus.flush()
                self._log.info(
                    "listening",
                    repos=sorted(self.settings.repos),
                    cache=redact(self.settings.cache) if self.settings.cache else None,
                    version=__version__,
                )
                task_status.started()
                try:
                    await anyio.sleep_forever()
                finally:
                    # From here a request is refused (shutting down); draining answers those
                    # already delivered, and the next go to another builder of the queue
                    # group. The running build is stopped meanwhile, by the same cancel.
                    self._tasks = None
                    await _unsubscribe(subscriptions)
        finally:
            self._tasks = None
            await _unsubscribe(subscriptions)
            self._log.info("stopped")

    # -- the callback: the edge where every error is caught ---------------------------------

    async def _on_request(self, msg: Message) -> None:
        try:
            await self._handle(msg)
        except FleetError as exc:
            self._log.error("build_request_failed", subject=msg.subject, error=str(exc))
        except Exception:  # the builder outlives any bug in one request
            self._log.exception("build_request_crashed", subject=msg.subject)

    async def _handle(self, msg: Message) -> None:
        assert self._bus is not None
        try:
            request = parse_build_request(msg.data, nats_reply=msg.reply)
        except InvalidRequest as exc:
            self._log.warning(
                "request_rejected", subject=msg.subject, error=exc.code, reason=str(exc)
            )
            if exc.reply_to is not None:
                repo = msg.subject.split(".")[1] if msg.subject.count(".") >= 1 else ""
                reporter = _Reporter(self._bus, self.settings.name, repo, exc.reply_to, None, None)
                await reporter.send(StatusKind.REJECTED, error=exc.code, message=str(exc))
            return
        request_id = request.id or uuid.uuid4().hex
        if request_id == self.running:  # never answer in the running build's name
            request_id = uuid.uuid4().hex
        repo = msg.subject.split(".")[1]
        reporter = _Reporter(
            self._bus,
            self.settings.name,
            repo,
            request.reply_to,
            request_id,
            request.revision,
            heartbeat_s=self.settings.heartbeat_interval,
        )
        try:
            target = target_of_subject(msg.subject)
            refusal = self._refusal(target)
        except RequestRejected as exc:
            refusal = exc
        if refusal is not None:
            self._log.info(
                "request_rejected", request_id=request_id, error=refusal.code, reason=str(refusal)
            )
            await reporter.send(StatusKind.REJECTED, error=refusal.code, message=str(refusal))
            return
        assert self._tasks is not None  # _refusal says so
        self.running = request_id  # before the first await: no second build slips in
        self._tasks.start_soon(self._build, target, request, reporter)

    def _refusal(self, target: BuildTarget) -> RequestRejected | None:
        """Why this builder cannot take a build of ``target`` now, if it cannot."""
        name = self.settings.name
        if target.repo not in self.settings.repos:
            return RequestRejected(
                BuildError.UNKNOWN_REPO, f"builder {name} has no repository {target.repo!r}"
            )
        if self._tasks is None:
            return RequestRejected(
                BuildError.CANCELLED,
                f"builder {name} is shutting down: build again once it is back",
            )
        if self.running is not None:
            return RequestRejected(
                BuildError.ALREADY_RUNNING,
                f"builder {name} is already running build {self.running}: wait for it to finish",
            )
        return None

    # -- one build ---------------------------------------------------------------------------

    async def _build(self, target: BuildTarget, request: BuildRequest, reporter: _Reporter) -> None:
        bound = self._log.bind(
            request_id=reporter.request_id, repo=target.repo, revision=request.revision
        )
        run = _BuildRun(self.settings, target, request, reporter, bound)
        try:
            await run.run()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await run.cancelled()
            raise
        except Exception:  # a bug costs this build, never the builder
            bound.exception("build_crashed")
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await run.crashed()
        finally:
            self.running = None


class _BuildRun:
    """The steps of one build, and its statuses."""

    def __init__(
        self,
        settings: BuilderSettings,
        target: BuildTarget,
        request: BuildRequest,
        reporter: _Reporter,
        bound: Any,
    ) -> None:
        self.settings = settings
        self.target = target
        self.request = request
        self.reporter = reporter
        self.log = bound
        self.flake_url = settings.repos[target.repo]
        self.started = time.monotonic()
        self.hosts: list[str] = []
        self.current: str | None = None
        self.phase = BuildPhase.FETCHING
        self.failures: dict[str, str] = {}
        self.skipped: list[str] = []
        self.built: list[str] = []
        self._next_progress = 0.0
        self._last_line = ""

    def _elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)

    async def run(self) -> None:
        reporter = self.reporter
        self.log.info("build_accepted", target=self.target.subject)
        await reporter.send(
            StatusKind.ACCEPTED,
            phase=BuildPhase.FETCHING,
            message=f"fetching {self.request.revision} of {redact(self.flake_url)}",
        )
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._heartbeat)
            try:
                await self._steps()
            finally:
                tasks.cancel_scope.cancel()

    async def _steps(self) -> None:
        nix = self.settings.nix_command
        fetched = await self._nix(
            metadata_argv(nix, self.flake_url, self.request.revision), BuildPhase.FETCHING
        )
        if not fetched.ok:
            await self._end_whole(BuildError.EVAL_FAILED, "cannot fetch", fetched)
            return
        commit = parse_locked_commit(fetched.stdout)
        if commit is None and must_pin(self.flake_url):
            await self._finish(
                StatusKind.FAILED,
                BuildError.EVAL_FAILED,
                f"nix flake metadata named no locked commit for {self.request.revision} of "
                f"{redact(self.flake_url)}: building unpinned could mix commits between hosts",
            )
            return
        self.reporter.commit = commit
        flake = flake_at(self.flake_url, commit or self.request.revision)
        listed = await self._nix(list_argv(nix, flake), BuildPhase.EVALUATING)
        if not listed.ok:
            await self._end_whole(BuildError.EVAL_FAILED, "cannot list the hosts of", listed)
            return
        try:
            names, skipped = parse_configuration_names(listed.stdout)
        except ValueError as exc:
            await self._end_whole(BuildError.EVAL_FAILED, str(exc) + " for", listed)
            return
        unknown = await self._choose(names, skipped)
        if unknown is None:
            return
        unbuildable = (
            f"; {len(self.skipped)} whose names cannot be built: {', '.join(self.skipped[:20])}"
            if self.skipped
            else ""
        )
        await self.reporter.send(
            StatusKind.STARTED,
            hosts=self.hosts,
            skipped=self.skipped or None,
            phase=BuildPhase.BUILDING,
            message=f"building {counted(len(self.hosts), 'host')} of {self.target.repo} at "
            f"{self._at()}{unbuildable}",
        )
        for host in self.hosts:
            if host in unknown:
                await self._unknown_host(host, names)
            else:
                await self._build_host(flake, host)
        if self.skipped and not self.failures:
            await self._finish(
                StatusKind.FAILED,
                BuildError.INVALID_NAME,
                f"built {counted(len(self.hosts), 'host')}, but not "
                f"{counted(len(self.skipped), 'configuration')} "
                f"whose names cannot go into an installable safely: "
                f"{', '.join(self.skipped[:20])}; rename them (letters, digits, . _ -)",
            )
        elif self.failures:
            failed = ", ".join(f"{host} ({code})" for host, code in self.failures.items())
            await self._finish(
                StatusKind.FAILED,
                BuildError.BUILD_FAILED,
                f"{len(self.failures)} of {counted(len(self.hosts), 'host')} failed: {failed}",
            )
        else:
            where = f" and copied to {redact(self.settings.cache)}" if self.settings.cache else ""
            await self._finish(
                StatusKind.COMPLETED,
                None,
                f"built {counted(len(self.hosts), 'host')} of {self.target.repo} at "
                f"{self._at()}{where}",
            )

    async def _choose(self, names: list[str], skipped: list[str]) -> set[str] | None:
        """Set the hosts this build builds, from the flake's ``names``; returns those asked
        for by name that the flake does not have, or None when the build ended here (its one
        host is not in the flake)."""
        self.skipped = skipped if self.target.host is None else []
        if self.target.host is not None and self.target.host not in names:
            shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
            await self._finish(
                StatusKind.FAILED,
                BuildError.UNKNOWN_HOST,
                f"{self.target.host} is not a nixosConfiguration of {self.target.repo} at "
                f"{self._at()}; it has: {shown or 'none'}",
            )
            return None
        if self.target.host is not None:
            self.hosts = [self.target.host]
            return set()
        if self.request.hosts is not None:
            # Exactly the hosts asked for (a closure deploy's targets), at the same commit;
            # the flake's others are not this build's to build or to report. A name it does
            # not have fails alone.
            self.hosts = list(self.request.hosts)
            self.skipped = []
            return set(self.hosts) - set(names)
        self.hosts = names
        return set()

    async def _unknown_host(self, host: str, names: Sequence[str]) -> None:
        """A host asked for by name that the flake does not have: it fails alone."""
        self.failures[host] = BuildError.UNKNOWN_HOST.value
        shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
        await self.reporter.send(
            StatusKind.FAILED,
            host=host,
            error=BuildError.UNKNOWN_HOST,
            phase=BuildPhase.EVALUATING,
            message=f"{host} is not a nixosConfiguration of {self.target.repo} at "
            f"{self._at()}; it has: {shown or 'none'}",
        )

    def _at(self) -> str:
        commit = self.reporter.commit
        return f"{self.request.revision} ({commit[:12]})" if commit else self.request.revision

    async def _build_host(self, flake: str, host: str) -> None:
        self.current = host
        started = time.monotonic()
        nix = self.settings.nix_command
        await self.reporter.send(
            StatusKind.STARTED, host=host, phase=BuildPhase.BUILDING, message=f"building {host}"
        )
        built = await self._nix(build_argv(nix, flake, host), BuildPhase.BUILDING)
        store_path = parse_store_path(built.stdout_lines) if built.ok else None
        if store_path is None:
            code = BuildError.TIMEOUT if built.timed_out else BuildError.BUILD_FAILED
            await self._host_failed(host, code, self._why("nix build", built), built, started)
            return
        copied_to = None
        if self.settings.cache:
            copied = await self._nix(
                copy_argv(nix, self.settings.cache, store_path), BuildPhase.COPYING
            )
            if not copied.ok:
                code = BuildError.TIMEOUT if copied.timed_out else BuildError.COPY_FAILED
                why = self._why(f"nix copy to {redact(self.settings.cache)}", copied)
                await self._host_failed(
                    host, code, f"built {store_path}, but {why}", copied, started
                )
                return
            copied_to = redact(self.settings.cache)
        self.built.append(host)
        self.current = None
        self.log.info("host_built", host=host, store_path=store_path)
        await self.reporter.send(
            StatusKind.COMPLETED,
            host=host,
            phase=BuildPhase.COPYING if copied_to else BuildPhase.BUILDING,
            store_path=store_path,
            copied_to=copied_to,
            duration_s=round(time.monotonic() - started, 3),
            message=f"built {store_path}" + (f", copied to {copied_to}" if copied_to else ""),
        )

    def _why(self, step: str, run: NixRun) -> str:
        if run.error is not None:
            return run.error
        if run.timed_out:
            return f"{step} did not finish within {self.settings.timeout:g} s"
        if run.exit_code == 0:
            return f"{step} printed no store path"
        return failure_summary(run.tail, run.exit_code, program=step)

    async def _host_failed(
        self, host: str, code: BuildError, message: str, run: NixRun, started: float
    ) -> None:
        self.failures[host] = code.value
        self.current = None
        self.log.warning("host_build_failed", host=host, error=code.value, reason=message)
        await self.reporter.send(
            StatusKind.FAILED,
            host=host,
            error=code,
            phase=self.phase,
            message=message,
            log_tail=run.tail,
            duration_s=round(time.monotonic() - started, 3),
        )

    async def _end_whole(self, code: BuildError, doing: str, run: NixRun) -> None:
        if run.timed_out:
            code = BuildError.TIMEOUT
        what = f"{doing} {self.target.repo} at {self.request.revision}"
        why = self._why("nix", run)
        await self._finish(StatusKind.FAILED, code, f"{what}: {why}", log_tail=run.tail)

    async def _finish(
        self,
        kind: StatusKind,
        code: BuildError | None,
        message: str,
        *,
        log_tail: list[str] | None = None,
    ) -> None:
        self.current = None
        self.log.info("build_done", status=kind.value, error=code, built=len(self.built))
        await self.reporter.send(
            kind,
            error=code,
            message=message,
            log_tail=log_tail,
            duration_s=self._elapsed(),
            hosts=self.hosts or None,
        )

    async def cancelled(self) -> None:
        """The builder is stopping: tell what will not be finished."""
        reason = f"builder {self.settings.name} stopped: build again once it is back"
        if self.current is not None:
            await self.reporter.send(
                StatusKind.FAILED, host=self.current, error=BuildError.CANCELLED, message=reason
            )
        await self._finish(StatusKind.FAILED, BuildError.CANCELLED, reason)

    async def crashed(self) -> None:
        """A bug ended the build: say so rather than fall silent."""
        await self._finish(
            StatusKind.FAILED,
            BuildError.BUILD_FAILED,
            f"builder {self.settings.name} hit an internal error: see its log",
        )

    async def _nix(self, argv: list[str], phase: BuildPhase) -> NixRun:
        self.phase = phase
        self.log.debug("nix", argv=[redact(arg) for arg in argv])
        return await run_nix(
            argv,
            timeout=self.settings.timeout,
            on_line=self._on_line,
            kill_grace=self.settings.kill_grace,
        )

    async def _on_line(self, line: str) -> None:
        """Progress on new output, at most once per ``progress_interval``."""
        self._last_line = line
        now = time.monotonic()
        if now < self._next_progress:
            return
        self._next_progress = now + self.settings.progress_interval
        await self._progress(line)

    async def _progress(self, line: str) -> None:
        await self.reporter.send(
            StatusKind.PROGRESS,
            host=self.current,
            phase=self.phase,
            message=line,
            duration_s=self._elapsed(),
        )

    async def _heartbeat(self) -> None:
        """Progress at least every ``heartbeat_interval``, output or not: the deployer's sign
        that the build is alive."""
        interval = self.settings.heartbeat_interval
        while True:
            await anyio.sleep(max(0.0, self.reporter.last_sent + interval - time.monotonic()))
            if time.monotonic() - self.reporter.last_sent >= interval:
                await self._progress(self._last_line or f"{self.phase.value}")
