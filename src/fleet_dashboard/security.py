"""What keeps the dashboard safe on a network: Host and Origin checks, security headers.

The decisions are pure functions of a ``HostPolicy``; ``Guard`` is the ASGI middleware
that applies them to every request, before any route runs.

- **Host** (DNS rebinding): a page on ``evil.example`` whose name is re-pointed at
  127.0.0.1 would reach the dashboard from the victim's browser as same-origin. It still
  sends ``Host: evil.example``; only the listen address, the loopback names with its port
  and the ``--allowed-host`` names (a reverse proxy's) are served. Anything else gets
  421 and a JSON sentence saying which flag admits a name.
- **Origin**: a browser names the page a request comes from. A request from another
  origin (cross-site ``fetch``, a form post, an ``EventSource`` of another site) gets 403,
  whatever its method; a request without ``Origin`` (a same-origin ``GET``, curl) is
  left to the Host check. The action routes (``fleet_dashboard.actions``) additionally
  require an ``Origin`` on every ``POST``, through ``origin_allowed``.
- **Headers** on every response, refusals and event streams included: a CSP without any
  inline script or style and with no source but this server, no sniffing, no referrer,
  no framing, and ``Cache-Control: no-store`` under ``/api/`` (fleet state is not for
  caches).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CSP",
    "SECURITY_HEADERS",
    "WILDCARDS",
    "Guard",
    "HostPolicy",
    "host_allowed",
    "origin_allowed",
]

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final[tuple[tuple[str, str], ...]] = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
)
_LOOPBACK: Final = ("localhost", "127.0.0.1", "[::1]")
# Listen addresses that name every interface, and so no host a browser would name.
WILDCARDS: Final = ("0.0.0.0", "::", "")  # noqa: S104 - compared with, never bound
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The names this dashboard answers to: ``exact`` Host values (``name:port``) and
    ``any_port`` names (an ``--allowed-host`` given without a port: a reverse proxy's name,
    reached on its own port or on the default one)."""

    exact: frozenset[str]
    any_port: frozenset[str]

    @classmethod
    def of(cls, listen_host: str, port: int, allowed: Iterable[str] = ()) -> HostPolicy:
        """The policy of a dashboard listening on ``listen_host``:``port`` (the bound port,
        not 0), with the ``--allowed-host`` values ``allowed``."""
        exact = {f"{name}:{port}" for name in _LOOPBACK}
        if listen_host not in WILDCARDS:  # a wildcard names no host
            exact.add(f"{_bracketed(listen_host).lower()}:{port}")
        any_port: set[str] = set()
        for given in allowed:
            name = given.strip().lower()
            if not name:
                continue
            head, _, tail = name.rpartition(":")
            if tail.isdigit() and head and not head.endswith(":"):
                exact.add(name)
            else:
                any_port.add(_bracketed(name))
        return cls(frozenset(exact), frozenset(any_port))


def host_allowed(policy: HostPolicy, host: str | None) -> bool:
    """Whether a request's ``Host`` header names this dashboard."""
    if not host:
        return False
    host = host.strip().lower()
    if host in policy.exact:
        return True
    name, _, port = host.rpartition(":")
    if not name or not port.isdigit() or name.endswith(":"):  # no port, or a bare IPv6
        name = host
    return name in policy.any_port


def origin_allowed(policy: HostPolicy, origin: str | None) -> bool:
    """Whether ``origin`` (an ``Origin`` header) is this dashboard's own. None or ``null``
    is not: the caller decides whether a request without one may pass."""
    if not origin or origin == "null":
        return False
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path or parts.query:
        return False
    host = _bracketed(parts.hostname)
    if port is None:
        return host in policy.any_port or f"{host}:{_DEFAULT_PORTS[parts.scheme]}" in (policy.exact)
    return host_allowed(policy, f"{host}:{port}")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


class Guard:
    """ASGI middleware: refuse a foreign Host (421) or Origin (403), and add the security
    headers to every response. ``policy`` is set once the port is known (port 0)."""

    def __init__(self, app: ASGIApp, policy: HostPolicy | None = None) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the dashboard has none: refused, whoever asks
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = str(scope.get("path", "")).startswith("/api/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS]
                if api and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        policy = self.policy
        refusal: tuple[int, str] | None = None
        if policy is None:
            refusal = (503, "the dashboard is starting: try again in a moment")
        elif not host_allowed(policy, _header(scope, b"host")):
            refusal = (
                421,
                "this dashboard does not answer to that host name: open it by the address it "
                "listens on, or start it with --allowed-host NAME for a name that reaches it",
            )
        else:
            origin = _header(scope, b"origin")
            if origin is not None and not origin_allowed(policy, origin):
                refusal = (403, "requests from another site's page are refused")
        if refusal is None:
            await self.app(scope, receive, with_headers)
            return
        status, sentence = refusal
        body = json.dumps({"error": sentence}).encode()
        await with_headers(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await with_headers({"type": "http.response.body", "body": body})
