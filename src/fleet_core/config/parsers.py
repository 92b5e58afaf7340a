"""Parsers of option values that need more than a type: NATS URLs, listen addresses, keys.

Pure; each takes the flag or variable the text came from (``source``) and begins every
error with it, so the user learns which setting to fix.
"""

from __future__ import annotations

import re
import urllib.parse

from fleet_core.errors import UsageError
from fleet_core.protocol.signing import public_key_bytes

__all__ = ["check_public_key", "parse_listen_address", "parse_nats_urls"]

_NATS_SCHEMES = ("nats", "tls")
# A host name, an IPv4 address, or an IPv6 address in brackets (as in a URL).
_LISTEN_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?\]")


def parse_nats_urls(text: str, source: str = "--nats-url") -> tuple[str, ...]:
    """The servers in ``text``: URLs separated by commas, as the NATS tools take them.

    Each is ``nats://HOST[:PORT]``, ``tls://HOST[:PORT]`` or a bare ``HOST[:PORT]`` (taken as
    ``nats://``; the port defaults to 4222 in nats-py). Credentials in a URL are refused:
    fleet-deploy authenticates with its NKey, and URLs are shown in logs and messages.
    ``source`` (the flag or variable) begins every error.
    """
    urls: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise UsageError(
                f"{source} {text!r} has an empty item: separate URLs with single commas, "
                "e.g. nats://a:4222,nats://b:4222"
            )
        parts = urllib.parse.urlsplit(item if "://" in item else f"nats://{item}")
        scheme = parts.scheme.lower()
        if parts.username is not None or parts.password is not None:
            shown = f"{scheme}://…@{parts.netloc.rpartition('@')[2]}"
            raise UsageError(
                f"{source}: {shown} carries credentials in its URL: leave them out, "
                "fleet-deploy authenticates with the NKey of --nkey-file"
            )
        if scheme not in _NATS_SCHEMES:
            raise UsageError(
                f"{source}: {item!r} is not a NATS URL: use nats://HOST:PORT, tls://HOST:PORT "
                "or HOST:PORT"
            )
        try:
            port = parts.port
        except ValueError:
            port = 0
        if (
            not parts.hostname
            or port == 0
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
        ):
            raise UsageError(
                f"{source}: {item!r} is not a NATS URL: use nats://HOST:PORT, tls://HOST:PORT "
                "or HOST:PORT, with a port from 1 to 65535"
            )
        url = f"{scheme}://{parts.netloc}"
        if url in urls:
            raise UsageError(f"{source} names {url} twice")
        urls.append(url)
    return tuple(urls)


def parse_listen_address(text: str, source: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT``, as homelab-deploy's ``--metrics-addr``
    (Go's ``net.Listen``) takes them: the host and port to bind, host ``""`` meaning every
    address of this host. ``source`` (the flag or variable) begins every error."""
    host, sep, port = text.strip().rpartition(":")
    example = "e.g. :9972 (every address) or 127.0.0.1:9972"
    digits = port.isascii() and port.isdigit() and len(port) <= 5  # int() takes "²" and 10**5000
    if not sep or not digits or not 0 < int(port) < 65536:
        raise UsageError(
            f"{source} {text!r} must be HOST:PORT or :PORT, with a port from 1 to 65535: {example}"
        )
    if host and not _LISTEN_HOST.fullmatch(host):
        raise UsageError(
            f"{source} {text!r}: {host!r} is not a host name or address (an IPv6 address goes "
            f"in brackets, [::1]:9972): {example}"
        )
    return host.removeprefix("[").removesuffix("]"), int(port)


def check_public_key(key: str, source: str) -> None:
    """``key`` is a user public key (``U…``), or a ``UsageError`` that never repeats a seed."""
    if key.startswith("S"):  # a seed given by mistake: the secret must not reach the journal
        raise UsageError(
            f"{source}: that is an NKey seed, a secret: give the deployer's public key (U…), "
            "which `fleet-deploy keygen` prints"
        )
    try:
        public_key_bytes(key)
    except ValueError as exc:
        raise UsageError(
            f"{source}: {exc}: give the deployer's public key (U…), which `fleet-deploy "
            "keygen` prints"
        ) from None
