"""The login and the actions behind it: ``/api/session``, ``/login``, ``/logout`` and
``/api/actions/deploy|cancel|check``.

Only ``--allow-actions`` mounts the POST routes (``auth_routes(actions)``); a read-only
dashboard (``auth_routes(None)``) has ``/api/session`` alone, saying ``actions: false``, and
every other path here is a 404.

Every POST passes, in this order: its ``Origin`` is this dashboard's (the ``Host`` the
request names, which the app's Host check has already held to the allowed names) → 403;
then, but for ``/login``, a valid session cookie → 401, and an ``X-CSRF-Token`` equal to the
token inside it → 403. ``/login`` has no session yet: besides the Origin, its body must be
``application/json``, which a page of another site cannot send here without a CORS preflight
this server never grants. A prod target needs ``confirm``: the target's subject typed again.

An action is sent with the deploy key (``--deploy-nkey-file``) on a connection of its own,
so it can do no more than that key may: a refusal by the server's permissions is a 502 with
our sentence. A deploy or health check runs as a task of ``Actions``' own task group (what
``open_actions`` opens inside the server's lifetime, and cancels on its way out: the hosts
carry on, as after a Ctrl-C of ``fleet-deploy deploy``); the request returns its id once the
request has gone out — once a host answered, or the discovery and publish had time to be
refused — and its statuses reach the page through the watcher, as any deployment's do. A
cancel is quick (one gathering per tier) and answered in the request.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fleet_core.bus import Bus
from fleet_core.config.options import DEFAULT_DEPLOY_TIMEOUT
from fleet_core.config.settings import DashboardSettings
from fleet_core.deploy.cancel import cancel_deployment
from fleet_core.deploy.cancellation import CancelResult
from fleet_core.deploy.deployer import Deployer, new_deployment_id
from fleet_core.deploy.results import DeploymentResult, HostResult
from fleet_core.errors import FleetError, PermissionDenied, RequestRejected, UsageError
from fleet_core.keys import Seed
from fleet_core.protocol.actions import DEFAULT_REVISION, Action, validate_revision
from fleet_core.protocol.messages import is_request_id
from fleet_core.protocol.subjects import Target, Tier, parse_target, validate_hostname
from fleet_core.protocol.text import printable
from fleet_dashboard.auth import Auth, LoginLimiter, Session, verify_password

__all__ = [
    "COOKIE",
    "DEPLOY_ACTIONS",
    "MAX_RUNNING",
    "Actions",
    "auth_routes",
    "open_actions",
]

log = structlog.get_logger("fleet.dashboard.actions")

COOKIE = "fleet_session"
CSRF_HEADER = "x-csrf-token"
# What a deploy from the page may ask for; a health check and a cancel have their own routes.
DEPLOY_ACTIONS = (Action.SWITCH, Action.BOOT, Action.TEST, Action.DRY_ACTIVATE, Action.BUILD)
MAX_RUNNING = 8  # deployments started here at once: a double click is no second fleet deploy
MAX_BODY = 16 * 1024  # bytes of a request's JSON: a few short strings
# The app's guard marks /api/* no-store; /login and /logout are marked here.
_NO_STORE = {"Cache-Control": "no-store"}


def _error(status: int, sentence: str, **headers: str) -> JSONResponse:
    # printable: a refusal may quote what was sent (a target, a revision) or a host's name.
    return JSONResponse({"error": printable(sentence)}, status_code=status, headers=headers)


class _Refused(Exception):  # a response to send, not an error of the program
    """A request refused with ``status`` and a sentence; turned into JSON at the route."""

    def __init__(self, status: int, sentence: str, **headers: str) -> None:
        super().__init__(sentence)
        self.status = status
        self.headers = headers

    def response(self) -> JSONResponse:
        return _error(self.status, str(self), **self.headers)


@dataclass
class Actions:
    """What the action routes share for the server's lifetime: the login's state, the deploy
    key's deployer, and the task group the deployments run in (``open_actions`` makes one)."""

    settings: DashboardSettings
    auth: Auth
    deployer: Deployer
    tasks: anyio.abc.TaskGroup
    signer: Seed | None = None  # the deploy key: a cancel is signed as a deploy is
    clock: Callable[[], float] = time.time
    deploy_timeout: float = DEFAULT_DEPLOY_TIMEOUT

    def __post_init__(self) -> None:
        self.limiter = LoginLimiter()
        self.running: set[str] = set()
        # One login check at a time: parallel guesses cannot take every core (a scrypt
        # takes some 0.3 s), and each sees the failures of those before it.
        self.hashing = anyio.Lock()


@asynccontextmanager
async def open_actions(
    settings: DashboardSettings, *, auth: Auth, deploy_seed: Seed
) -> AsyncIterator[Actions]:
    """The deploy key's connection and the deployments' task group, for the server's
    lifetime: on the way out the deployments still running are cancelled (their hosts go
    on; only the following stops) and the connection is closed."""
    urls = settings.connection.nats_urls
    async with (
        await Bus.connect(urls, deploy_seed, name="fleet-deploy dashboard actions") as bus,
        anyio.create_task_group() as tasks,
    ):
        deployer = Deployer(bus, timing=settings.timing, signer=deploy_seed)
        try:
            yield Actions(settings, auth=auth, deployer=deployer, tasks=tasks, signer=deploy_seed)
        finally:
            tasks.cancel_scope.cancel()


def auth_routes(
    actions: Actions | None, *, tier_of: Callable[[str], str | None] = lambda _: None
) -> list[Route]:
    """The routes of this module: ``/api/session`` always; the POSTs only with ``actions``.

    ``tier_of`` tells the tier a deployment was seen on (the board's): a cancel of one seen
    on the test tier goes to that tier alone; any other may reach prod, and needs its id
    typed again, as a prod deploy needs its target."""
    if actions is None:
        return [Route("/api/session", _read_only_session, methods=["GET"])]
    handlers = _Handlers(actions, tier_of)
    return [
        Route("/api/session", handlers.session, methods=["GET"]),
        Route("/login", handlers.login, methods=["POST"]),
        Route("/logout", handlers.logout, methods=["POST"]),
        Route("/api/actions/deploy", handlers.deploy, methods=["POST"]),
        Route("/api/actions/check", handlers.check, methods=["POST"]),
        Route("/api/actions/cancel", handlers.cancel, methods=["POST"]),
    ]


async def _read_only_session(_: Request) -> Response:
    body = {"actions": False, "logged_in": False, "user": None, "csrf": None, "totp": False}
    return JSONResponse(body)


async def _answered(handling: Awaitable[Response]) -> Response:
    """The handler's response, or the refusal it raised as JSON."""
    try:
        return await handling
    except _Refused as refused:
        return refused.response()


def _accepted(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=202)


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _check_origin(request: Request) -> None:
    """A POST must come from a page of this dashboard: its Origin is ``scheme://Host``."""
    origin = request.headers.get("origin")
    host = request.headers.get("host")
    if origin is None or host is None:
        raise _Refused(403, "refused: a POST here must carry this dashboard's Origin header")
    if origin not in (f"http://{host}", f"https://{host}"):
        raise _Refused(403, "refused: the request came from a page of another site (Origin)")


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, at most ``MAX_BODY`` bytes; ``_Refused`` (400) else."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise _Refused(400, "send the fields as JSON (Content-Type: application/json)")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise _Refused(400, f"the request's body is over {MAX_BODY} bytes")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise _Refused(400, "the request's body is not JSON") from None
    except RecursionError:  # [[[[… deeper than the parser's stack, well under MAX_BODY
        raise _Refused(400, "the request's body nests too deeply: send a flat object") from None
    if not isinstance(body, dict):
        raise _Refused(400, "the request's body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _Refused(400, f"{name} must be a string")
    return value


class _Handlers:
    """The endpoints, over one ``Actions``."""

    def __init__(self, actions: Actions, tier_of: Callable[[str], str | None]) -> None:
        self.actions = actions
        self.tier_of = tier_of
        self.auth = actions.auth
        self.sessions = actions.auth.sessions

    def _session(self, request: Request) -> Session | None:
        return self.sessions.verify(request.cookies.get(COOKIE), self.actions.clock())

    def _guard(self, request: Request) -> Session:
        """Origin, session and CSRF token of a POST that acts (403, 401, 403)."""
        _check_origin(request)
        session = self._session(request)
        if session is None:
            raise _Refused(401, "log in first: no valid session (it may have expired)")
        token = request.headers.get(CSRF_HEADER, "")
        if not _same(token, session.csrf):
            raise _Refused(403, "refused: the X-CSRF-Token header is not this session's token")
        return session

    async def session(self, request: Request) -> Response:
        session = self._session(request)
        body = {
            "actions": True,
            "logged_in": session is not None,
            "user": session.user if session is not None else None,
            "csrf": session.csrf if session is not None else None,
            "totp": self.auth.needs_totp,
        }
        return JSONResponse(body)

    async def login(self, request: Request) -> Response:
        return await _answered(self._login(request))

    async def _login(self, request: Request) -> Response:
        client = _client(request)
        bound = log.bind(client=client)
        _check_origin(request)
        limiter, clock = self.actions.limiter, self.actions.clock
        self._limit(client, bound)  # before the body: a refused attempt costs nothing
        body = await _json_body(request)
        password = _text(body, "password") or ""
        code = _text(body, "totp") or ""
        # One login at a time, and the limit checked again inside: a thousand attempts sent
        # at once queue here and are refused as soon as the failures before them count,
        # instead of each costing a scrypt.
        async with self.actions.hashing:
            self._limit(client, bound)
            line = self.auth.password_hash
            ok = await anyio.to_thread.run_sync(verify_password, password, line)
            # The code only after the password: a guess at the password never uses up a code.
            if ok and self.auth.totp is not None:
                ok = self.auth.totp.verify(code, clock())
            if not ok:
                limiter.failed(client, clock())
                bound.warning("login_failed")
                raise _Refused(401, "wrong password or one-time code")
        limiter.succeeded(client, clock())
        cookie, session = self.sessions.issue(clock())
        bound.info("login", session=session.session_id[:6])
        response = JSONResponse(
            {"logged_in": True, "user": session.user, "csrf": session.csrf}, headers=_NO_STORE
        )
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(self.sessions.ttl),
            path="/",
            # The page's scheme, as its Origin (checked above) says: behind a TLS proxy the
            # request reaches us over http (forwarded headers are not trusted: server.py),
            # yet the browser holds an https page, whose cookie must never go over http.
            secure=request.url.scheme == "https"
            or request.headers.get("origin", "").startswith("https://"),
            httponly=True,
            samesite="strict",
        )
        return response

    def _limit(self, client: str, bound: Any) -> None:
        """A 429 when ``client`` (or everyone) has failed too often lately."""
        refusal = self.actions.limiter.check(client, self.actions.clock())
        if refusal is not None:
            bound.warning("login_limited", overall=refusal.overall)
            whose = "from everywhere" if refusal.overall else "from this address"
            raise _Refused(
                429,
                f"too many failed logins {whose}: try again in {refusal.retry_after} s",
                **{"Retry-After": str(refusal.retry_after)},
            )

    async def logout(self, request: Request) -> Response:
        return await _answered(self._logout(request))

    async def _logout(self, request: Request) -> Response:
        session = self._guard(request)
        self.sessions.revoke(session, self.actions.clock())
        log.info("logout", client=_client(request), session=session.session_id[:6])
        response = JSONResponse({"logged_in": False}, headers=_NO_STORE)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def deploy(self, request: Request) -> Response:
        return await _answered(self._deploy(request))

    async def _deploy(self, request: Request) -> Response:
        self._guard(request)
        body = await _json_body(request)
        target = _target(body)
        # An empty field is the default, as a form left blank sends it.
        action = _deploy_action(_text(body, "action") or Action.SWITCH.value)
        try:
            revision = validate_revision(_text(body, "revision") or DEFAULT_REVISION)
        except RequestRejected as exc:
            raise _Refused(400, str(exc)) from None
        _confirmed(target, body, "deploy")
        deployment_id = await self._start(request, target, revision=revision, action=action)
        return _accepted({"deployment_id": deployment_id})

    async def check(self, request: Request) -> Response:
        return await _answered(self._check(request))

    async def _check(self, request: Request) -> Response:
        self._guard(request)
        body = await _json_body(request)
        target = _target(body)
        _confirmed(target, body, "health check")
        deployment_id = await self._start(
            request, target, revision=DEFAULT_REVISION, action=Action.CHECK
        )
        return _accepted({"deployment_id": deployment_id})

    async def cancel(self, request: Request) -> Response:
        return await _answered(self._cancel_request(request))

    async def _cancel_request(self, request: Request) -> Response:
        self._guard(request)
        body = await _json_body(request)
        deployment_id = _text(body, "deployment_id") or ""
        if not is_request_id(deployment_id):
            raise _Refused(400, "deployment_id must be 1-64 letters, digits, '-' or '_'")
        host = _text(body, "host")
        try:
            host = validate_hostname(host) if host else None
        except UsageError as exc:
            raise _Refused(400, str(exc)) from None
        if self.tier_of(deployment_id) == Tier.TEST.value:
            tiers: tuple[Tier, ...] = (Tier.TEST,)
        else:
            if (_text(body, "confirm") or "").strip() != deployment_id:
                raise _Refused(
                    403,
                    "a cancel that may reach prod needs confirming: this dashboard has not seen "
                    f"deployment {deployment_id} on the test tier, so type its id again in "
                    "confirm",
                )
            tiers = (Tier.TEST, Tier.PROD)
        result = await self._cancel(request, deployment_id, host, tiers)
        answers = [
            {"hostname": printable(a.hostname), "tier": a.tier, "outcome": a.outcome}
            for a in result.answers
        ]
        return _accepted(
            {
                "deployment_id": deployment_id,
                "answers": answers,
                "refused_tiers": result.refused_tiers,
            }
        )

    async def _cancel(
        self, request: Request, deployment_id: str, host: str | None, tiers: tuple[Tier, ...]
    ) -> CancelResult:
        deployer = self.actions.deployer
        timing = deployer.timing
        bound = log.bind(client=_client(request), deployment_id=deployment_id, host=host)
        try:
            # Two gatherings (test, prod), each within discovery_cap, and their publishes.
            with anyio.fail_after(2 * timing.discovery_cap + 10):
                result = await cancel_deployment(
                    deployer.bus,
                    deployment_id,
                    tiers=tiers,
                    signer=self.actions.signer,
                    host=host,
                    timing=timing,
                )
        except PermissionDenied as exc:
            bound.warning("cancel_refused", error=str(exc))
            raise _Refused(502, _key_refused(exc)) from None
        except FleetError as exc:
            bound.warning("cancel_failed", error=str(exc))
            raise _Refused(502, f"the cancel could not be sent: {exc}") from None
        except TimeoutError:
            raise _Refused(502, "the cancel's answers did not come in time: try again") from None
        bound.info("cancel", answers=len(result.answers), stopped=len(result.stopped))
        return result

    async def _start(
        self, request: Request, target: Target, *, revision: str, action: Action
    ) -> str:
        """Start a deployment in ``Actions``' task group; its id once it is under way.

        Under way means a host has answered (or ended missing), or the deployment ended, or
        the discovery and the publish have had time to be refused (``discovery_cap`` and a
        little): a refusal raised by then is this request's answer (502), not a log line."""
        actions = self.actions
        if len(actions.running) >= MAX_RUNNING:
            raise _Refused(
                429, f"{MAX_RUNNING} deployments started here are still running: wait for one"
            )
        deployment_id = new_deployment_id()
        bound = log.bind(
            client=_client(request),
            deployment_id=deployment_id,
            subject=target.subject,
            action=action.value,
        )
        under_way = anyio.Event()
        failure: list[FleetError] = []

        def on_update(_: HostResult, __: DeploymentResult) -> None:
            under_way.set()

        async def run() -> None:
            try:
                result = await actions.deployer.deploy(
                    target,
                    revision=revision,
                    action=action,
                    timeout=actions.deploy_timeout,
                    deployment_id=deployment_id,
                    on_update=on_update,
                )
                bound.info("action_done", ok=result.ok, counts=result.counts)
            except FleetError as exc:
                failure.append(exc)
                bound.warning("action_refused", error=str(exc))
            except Exception:  # an edge: a bug ends this deployment, never the dashboard
                bound.exception("action_crashed")
            finally:
                actions.running.discard(deployment_id)
                under_way.set()

        actions.running.add(deployment_id)
        bound.info("action_started", revision=revision)
        actions.tasks.start_soon(run, name=f"dashboard deployment {deployment_id}")
        with anyio.move_on_after(actions.deployer.timing.discovery_cap + 2.0):
            await under_way.wait()
        if failure:
            exc = failure[0]
            if isinstance(exc, UsageError):
                raise _Refused(400, str(exc))
            if isinstance(exc, PermissionDenied):
                raise _Refused(502, _key_refused(exc))
            raise _Refused(502, f"the deployment could not be sent: {exc}")
        return deployment_id


def _key_refused(exc: PermissionDenied) -> str:
    """The refusal, with the dashboard's flag as its fix: the core's fix names
    ``--nkey-file``, which here is the read key's flag and would change nothing."""
    what = str(exc)
    if exc.fix and what.endswith(exc.fix):
        what = what[: -len(exc.fix)].rstrip(" .")
    return (
        f"the NATS server refused the dashboard's deploy key: {what}. The deploy key is "
        "--deploy-nkey-file's: a test deployer key reaches the test tier only, an admin "
        "key every tier"
    )


def _same(given: str, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def _target(body: dict[str, Any]) -> Target:
    text = (_text(body, "target") or "").strip()
    if not text:
        raise _Refused(400, "target is missing: deploy.<tier>.<host>, .all or .role.<role>")
    try:
        return parse_target(text)
    except UsageError as exc:
        raise _Refused(400, str(exc)) from None


def _deploy_action(value: str) -> Action:
    allowed = ", ".join(a.value for a in DEPLOY_ACTIONS)
    try:
        action = Action(value)
    except ValueError:
        raise _Refused(400, f"action must be one of {allowed}") from None
    if action not in DEPLOY_ACTIONS:
        raise _Refused(400, f"action must be one of {allowed}")
    return action


def _confirmed(target: Target, body: dict[str, Any], what: str) -> None:
    """A prod target needs ``confirm``: its subject typed again (403 otherwise)."""
    if target.tier is not Tier.PROD:
        return
    if (_text(body, "confirm") or "").strip() != target.subject:
        raise _Refused(
            403,
            f"a {what} of prod needs confirming: type the target {target.subject} again in confirm",
        )
