"""A stand-in for a host's ``nix-store --realise``, and the ``file://`` binary cache it reads.

    python -m fleet_core.testing.simulated_nix_store --sim-root DIR \\
        [--sim-substituter file://CACHE]… [--sim-trusted-key NAME]… \\
        [--sim-record FILE] [--sim-wait-for FILE] --realise /nix/store/<hash>-<name>

It realises a store path into the simulated host's store, ``DIR/nix/store``
(``simulated_system``), the way nix realises one that is not built here: from the host's
substituters, in order, and only with a signature by one of its trusted keys. The cache is
what ``nix copy --to file://CACHE`` leaves (the builder's simulated ``nix copy``, or
``publish_system`` for a test that needs no builder)::

    CACHE/<hash>.narinfo   StorePath, URL, Compression, NarHash, NarSize, References, Sig
    CACHE/nar/<hash>.nar   the content; here a JSON description of it: a system (its label,
                           markers and kernel, made with ``simulated_system.system_at``) or a
                           plain directory that is no system

The signature is a simulation, and simple on purpose: ``Sig: NAME:<hex>`` where ``<hex>`` is
the SHA-256 of ``NAME``, the path and the NAR's hash. Real verification (ed25519 against
``trusted-public-keys``) is nix's; this only reproduces its answers, in nix's words:

- a path already in the store is printed, and nothing is asked of any substituter;
- a substituter without the path's narinfo is passed over;
- a narinfo signed by no trusted key, or whose signature does not verify, is ignored with
  nix's warning, and the next substituter is asked;
- a NAR whose hash is not the narinfo's fails the fetch (nix's "hash mismatch");
- a path that no substituter serves fails with nix's error, exit 1, and nothing is made.

A fetched path is made in the store and printed on stdout; nix's progress goes to stderr.
``--sim-record`` appends the argv as one JSON line (a test sees whether a fetch was even
tried); ``--sim-wait-for`` holds a fetch, once it has begun, until a file appears (a test can
keep it open without sleeping, to cancel it, kill its listener or let its deadline pass).
Standard library only: it starts once per closure deploy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fleet_core.testing import simulated_system

__all__ = [
    "main",
    "publish",
    "publish_system",
    "signature",
    "simulated_nix_store_command",
    "store_path_of",
    "system_content",
]

_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"  # nix's base32
_STORE = "/nix/store/"
_SYSTEM = "system"
_FILE = "file"


# -- the cache ---------------------------------------------------------------------------


def signature(key: str, store_path: str, nar_hash: str) -> str:
    """The simulated signature of ``store_path`` with content ``nar_hash`` by key ``key``."""
    digest = hashlib.sha256(f"{key}\n{store_path}\n{nar_hash}".encode()).hexdigest()
    return f"{key}:{digest}"


def store_path_of(name: str, *inputs: object) -> str:
    """``/nix/store/<hash>-<name>``, the hash a function of ``name`` and ``inputs`` alone."""
    digest = hashlib.sha256(json.dumps([name, *map(str, inputs)]).encode()).digest()
    return f"{_STORE}{''.join(_ALPHABET[b % 32] for b in digest)}-{name}"


def publish(
    cache: Path,
    store_path: str,
    content: dict[str, Any],
    *,
    signing_key: str | None,
    bad_signature: bool = False,
) -> None:
    """Put ``store_path`` with ``content`` (see ``_materialise``) into the ``file://`` cache
    ``cache``, as ``nix copy --to`` does: its NAR, then its narinfo, signed by
    ``signing_key`` (None: unsigned; ``bad_signature``: a signature that does not verify,
    as after the narinfo or the NAR were changed)."""
    cache = Path(cache)
    digest = Path(store_path).name.split("-", 1)[0]
    nar = json.dumps(content, sort_keys=True).encode()
    nar_hash = f"sha256:{hashlib.sha256(nar).hexdigest()}"
    (cache / "nar").mkdir(parents=True, exist_ok=True)
    (cache / "nar" / f"{digest}.nar").write_bytes(nar)
    lines = [
        f"StorePath: {store_path}",
        f"URL: nar/{digest}.nar",
        "Compression: none",
        f"NarHash: {nar_hash}",
        f"NarSize: {len(nar)}",
        "References: ",
    ]
    if signing_key is not None:
        signed = signature(signing_key, store_path, nar_hash)
        if bad_signature:
            signed = signature(signing_key, store_path, "sha256:" + "0" * 64)
        lines.append(f"Sig: {signed}")
    (cache / f"{digest}.narinfo").write_text("\n".join(lines) + "\n", encoding="utf-8")


def publish_system(
    cache: Path,
    host: str,
    label: str,
    *,
    signing_key: str | None,
    bad_signature: bool = False,
    system: bool = True,
    cut_network: bool = False,
    degraded: Iterable[str] = (),
    fail_activation: bool = False,
    kernel: str = simulated_system.DEFAULT_KERNEL,
) -> str:
    """Put ``host``'s system ``label`` into ``cache`` as a builder would, without one; its
    store path, ``/nix/store/<hash>-nixos-system-<host>-<label>``.

    The markers are ``simulated_system.make_system``'s (what the system does once active).
    ``system=False`` publishes content that is no system under that system's name (a
    mistake the host's check after the fetch catches).
    """
    name = f"nixos-system-{host}-{label}"
    units = sorted(degraded)
    store_path = store_path_of(
        name, signing_key, system, cut_network, units, fail_activation, kernel
    )
    content: dict[str, Any] = (
        {
            "type": _SYSTEM,
            "label": label,
            "cut_network": cut_network,
            "degraded": units,
            "fail_activation": fail_activation,
            "kernel": kernel,
        }
        if system
        else {"type": _FILE, "text": f"not a system: {name}\n"}
    )
    publish(cache, store_path, content, signing_key=signing_key, bad_signature=bad_signature)
    return store_path


def system_content(store_path: str, *, label: str | None = None) -> dict[str, Any]:
    """What the builder's simulated ``nix copy`` publishes for a path it built: a system,
    labelled ``label`` (by default the last word of its name, a NixOS version), or a plain
    directory."""
    name = Path(store_path).name.split("-", 1)[1]
    if name.startswith("nixos-system-"):
        return {"type": _SYSTEM, "label": label or name.rsplit("-", 1)[-1]}
    return {"type": _FILE, "text": f"{name}\n"}


def simulated_nix_store_command(
    root: Path, cache: Path | None, trusted_key: str | None, *sim: str
) -> tuple[str, ...]:
    """This stand-in for the host whose simulated root is ``root``, substituting from the
    ``file://`` cache ``cache`` and trusting ``trusted_key``, as an argv prefix (a
    listener's ``nix_store_command``; ``--realise PATH`` follows)."""
    argv = [sys.executable, "-m", "fleet_core.testing.simulated_nix_store"]
    argv += ["--sim-root", str(Path(root).absolute())]
    if cache is not None:
        argv += ["--sim-substituter", f"file://{Path(cache).absolute()}"]
    if trusted_key is not None:
        argv += ["--sim-trusted-key", trusted_key]
    return (*argv, *sim)


# -- nix-store --realise -----------------------------------------------------------------


def _narinfo(text: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip(), []).append(value.strip())
    return fields


def _materialise(root: Path, store_path: str, content: dict[str, Any]) -> Path:
    """Make ``store_path`` in ``root``'s store from the NAR's description."""
    base = Path(store_path).name
    if content.get("type") == _SYSTEM:
        return simulated_system.system_at(
            root,
            base,
            str(content.get("label", "unknown")),
            cut_network=bool(content.get("cut_network")),
            degraded=[str(u) for u in content.get("degraded") or ()],
            fail_activation=bool(content.get("fail_activation")),
            kernel=str(content.get("kernel") or simulated_system.DEFAULT_KERNEL),
        )
    path = simulated_system.store_dir(root) / base
    path.mkdir(parents=True, exist_ok=True)
    (path / "README").write_text(str(content.get("text", "")), encoding="utf-8")
    return path


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _fetch(
    root: Path,
    store_path: str,
    substituters: Sequence[str],
    trusted: Sequence[str],
    wait_for: Path | None,
) -> int:
    for url in substituters:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "file":
            _say(f"warning: unable to download from '{url}' (simulated: only file:// caches)")
            continue
        cache = Path(parts.path)
        digest = Path(store_path).name.split("-", 1)[0]
        try:
            info = _narinfo((cache / f"{digest}.narinfo").read_text(encoding="utf-8"))
        except OSError:
            continue  # this cache does not have it
        if info.get("StorePath") != [store_path]:
            continue
        nar_url, nar_hash = info.get("URL", [""])[0], info.get("NarHash", [""])[0]
        good = [
            sig
            for sig in info.get("Sig", [])
            if sig.partition(":")[0] in trusted
            and sig == signature(sig.partition(":")[0], store_path, nar_hash)
        ]
        if not good:
            _say(
                f"warning: ignoring substitute for '{store_path}' from '{url}', as it's not "
                "signed by any of the keys in 'trusted-public-keys'"
            )
            continue
        _say("these 1 paths will be fetched (0.01 MiB download, 0.02 MiB unpacked):")
        _say(f"  {store_path}")
        _say(f"copying path '{store_path}' from '{url}'...")
        if wait_for is not None:
            while not wait_for.exists():
                time.sleep(0.02)
        try:
            nar = (cache / nar_url).read_bytes()
        except OSError as exc:
            _say(f"error: unable to download '{url}/{nar_url}': {exc.strerror or exc}")
            return 1
        got = f"sha256:{hashlib.sha256(nar).hexdigest()}"
        if got != nar_hash:
            _say(
                f"error: hash mismatch importing path '{store_path}';\n"
                f"         specified: {nar_hash}\n         got:       {got}"
            )
            return 1
        path = _materialise(root, store_path, json.loads(nar))
        print(path, flush=True)
        return 0
    _say(f"error: path '{store_path}' is required, but there is no substituter that can build it")
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nix-store (simulated)", allow_abbrev=False)
    parser.add_argument("--sim-root", type=Path, required=True, help="the simulated host's root")
    parser.add_argument(
        "--sim-substituter", action="append", default=[], help="a file:// cache, in order"
    )
    parser.add_argument(
        "--sim-trusted-key", action="append", default=[], help="a signing key's name it trusts"
    )
    parser.add_argument("--sim-record", type=Path, help="append the argv as a JSON line here")
    parser.add_argument("--sim-wait-for", type=Path, help="a fetch waits for this file")
    parser.add_argument("--realise", "-r", metavar="PATH", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(given)
    if args.sim_record is not None:
        with args.sim_record.open("a", encoding="utf-8") as record:
            record.write(json.dumps({"argv": given}) + "\n")
    store_path: str = args.realise
    name = store_path.removeprefix(_STORE)
    if not store_path.startswith(_STORE) or not name or "/" in name:
        _say(f"error: path '{store_path}' is not in the Nix store")
        return 1
    present = simulated_system.store_dir(args.sim_root) / name
    if present.exists():
        print(present, flush=True)
        return 0
    return _fetch(
        args.sim_root, store_path, args.sim_substituter, args.sim_trusted_key, args.sim_wait_for
    )


if __name__ == "__main__":
    sys.exit(main())
