"""A stand-in for the ``nix`` commands a builder runs, with the same interface.

    python -m fleet_core.testing.simulated_nix [--sim-* options] FEATURES COMMAND

where FEATURES is ``--extra-experimental-features 'nix-command flakes'`` (without it, it
refuses as a stock NixOS nix does) and COMMAND one of

    flake metadata --json --refresh <ref>
    eval --json <ref>#nixosConfigurations --apply builtins.attrNames
    build --no-link --print-out-paths -L <ref>#nixosConfigurations.<host>.config.sys…toplevel
    copy --to <store-url> <store-path>

It checks its arguments as strictly as the builder's argv is built, answers like nix does
(metadata as JSON with a locked commit, the host names as a JSON list, build logs on stderr
and the store path on stdout; a dotted host name only when quoted), and can be told to fail
one host's build, to fail copies, to hold a build until a file appears (so a test can keep
a build open without sleeping), or to leave a child behind that holds its output open.
``--sim-print-file`` adds a file's bytes, as they are, to the end of every build's log (a
failing build's after its error): what a branch's author can make nix print.
A copy ``--to file://DIR`` writes ``DIR/<hash>.narinfo`` naming the store path, as a real
file binary cache does, so tests can see what reached the cache; with
``--sim-signing-key NAME`` (the builder's ``secret-key-files``) it writes the whole narinfo,
signed by NAME, and the NAR, so a host's simulated ``nix-store --realise``
(``simulated_nix_store``, which holds the cache's format) can fetch the system from it; with
``--sim-store DIR`` (the builder's store) a build leaves what it made there, and that system
carries the commit it was built from as its configuration revision, as a flake setting
``system.configurationRevision`` does (without it, a copied system's label is the NixOS
version in its name).
``--sim-record`` appends each argv as one JSON line. The commit of a branch is a hash of the
flake URL and the branch name, so it is stable within a test and differs between branches.
``--sim-metadata-pad N`` adds N characters of lock data to the metadata, as a flake with many
inputs prints.
Standard library only (and the simulated nixos-rebuild's evaluation error, the same flake's).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from fleet_core.testing.simulated_nix_store import publish, system_content
from fleet_core.testing.simulated_rebuild import EVAL_ERROR

_TOPLEVEL = ".config.system.build.toplevel"
_FEATURES = ("--extra-experimental-features", "nix-command flakes")
_CONFIGURATIONS = "nixosConfigurations"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nix (simulated)", add_help=False, allow_abbrev=False)
    parser.add_argument("--sim-hosts", default="", help="the flake's nixosConfigurations, a,b,c")
    parser.add_argument("--sim-record", type=Path, help="append each argv as a JSON line here")
    parser.add_argument("--sim-fail-host", action="append", default=[], help="its build fails")
    parser.add_argument("--sim-fail-fetch", action="store_true", help="the fetch fails")
    parser.add_argument("--sim-fail-copy", action="store_true", help="every copy fails")
    parser.add_argument("--sim-wait-for", type=Path, help="a build blocks until this file exists")
    parser.add_argument("--sim-delay", type=float, default=0.0, help="seconds between log lines")
    parser.add_argument("--sim-spam", type=int, default=0, help="extra log lines per build")
    parser.add_argument("--sim-metadata-pad", type=int, default=0, help="lock data, characters")
    parser.add_argument("--sim-no-lock", action="store_true", help="metadata names no commit")
    parser.add_argument("--sim-print-file", type=Path, help="a build's log ends with its bytes")
    parser.add_argument("--sim-signing-key", help="copies sign their narinfo with this key name")
    parser.add_argument(
        "--sim-store", type=Path, help="the builder's store: what a build made, for its copy"
    )
    parser.add_argument(
        "--sim-leave-child",
        type=Path,
        help="a build leaves a child holding its output open, and writes the child's pid here",
    )
    return parser


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def _split_reference(reference: str) -> tuple[str, dict[str, str], str]:
    """``<url>?<query>#<attr>`` into the URL, its ref/rev query and the attribute."""
    flake, _, attribute = reference.partition("#")
    url, _, query = flake.partition("?")
    params = dict(urllib.parse.parse_qsl(query))
    return url, params, attribute


def _commit(url: str, params: dict[str, str]) -> str:
    if "rev" in params:
        return params["rev"]
    # A git commit is 40 hex digits: the first 40 of a sha256 stand in for one.
    return hashlib.sha256(f"{url}\n{params.get('ref', 'HEAD')}".encode()).hexdigest()[:40]


def _store_path(name: str, commit: str) -> str:
    digest = hashlib.sha256(f"{name}\n{commit}".encode()).hexdigest()
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"  # nix's base32
    text = "".join(alphabet[int(digest[i : i + 2], 16) % 32] for i in range(0, 64, 2))
    return f"/nix/store/{text}-{name}"


def _metadata(args: list[str], sim: argparse.Namespace) -> int:
    if len(args) != 3 or args[:2] != ["--json", "--refresh"]:
        return _fail(f"simulated nix flake metadata expects --json --refresh <ref>, got {args}")
    url, params, attribute = _split_reference(args[2])
    if attribute or ("ref" not in params and "rev" not in params):
        return _fail(f"'{args[2]}' must name a ref= or rev= and no attribute")
    if sim.sim_fail_fetch:
        return _fail(f"unable to download '{url}': HTTP error 404 (simulated)")
    commit = _commit(url, params)
    print(f"fetching git input '{url}'", file=sys.stderr, flush=True)
    locked: dict[str, object] = {"type": "git", "url": url, "lastModified": 1795000000}
    if not sim.sim_no_lock:
        locked["rev"] = commit
    document = {
        "description": "a simulated fleet",
        "locked": locked,
        "locks": {"nodes": {"nixpkgs": {"narHash": "x" * sim.sim_metadata_pad}}},
        "original": {"type": "git", "url": url, **params},
        "resolvedUrl": url,
        "url": f"{url}?rev={commit}",
    }
    print(json.dumps(document), flush=True)
    return 0


def _eval(args: list[str], sim: argparse.Namespace) -> int:
    if (
        len(args) != 4
        or args[0] != "--json"
        or args[2:] != ["--apply", "builtins.attrNames"]
        or not args[1].endswith("#" + _CONFIGURATIONS)
    ):
        return _fail(f"simulated nix eval expects the builder's host listing, got {args}")
    _, params, _ = _split_reference(args[1])
    if "rev" not in params:
        return _fail("the builder lists hosts at a pinned rev=, not at a moving ref")
    hosts = [name for name in sim.sim_hosts.split(",") if name]
    print(json.dumps(sorted(hosts)), flush=True)
    return 0


def _build(args: list[str], sim: argparse.Namespace) -> int:
    if len(args) != 4 or args[:3] != ["--no-link", "--print-out-paths", "-L"]:
        expected = "--no-link --print-out-paths -L <ref>"
        return _fail(f"simulated nix build expects {expected}, got {args}")
    url, params, attribute = _split_reference(args[3])
    prefix = _CONFIGURATIONS + "."
    if "rev" not in params or not attribute.startswith(prefix) or not attribute.endswith(_TOPLEVEL):
        return _fail(f"'{args[3]}' is not a pinned nixosConfigurations.<host>{_TOPLEVEL}")
    host = attribute[len(prefix) : -len(_TOPLEVEL)]
    if "." in host:  # a dotted name must come quoted, as the builder quotes it
        if not (host.startswith('"') and host.endswith('"')):
            return _fail(f"flake does not provide attribute '{attribute}'")
        host = host[1:-1]
    hosts = [name for name in sim.sim_hosts.split(",") if name]
    if host not in hosts:
        return _fail(f"flake '{url}' does not provide attribute '{attribute}'")
    lines = [
        f"evaluating derivation '{args[3]}'",
        f"building '/nix/store/{'1' * 32}-etc.drv'...",
        *(f"simulated build output {n} of {host}" for n in range(sim.sim_spam)),
        f"building '/nix/store/{'2' * 32}-nixos-system-{host}.drv'...",
    ]
    for line in lines:
        print(line, file=sys.stderr, flush=True)
        if sim.sim_delay:
            time.sleep(sim.sim_delay)
    if sim.sim_wait_for is not None:
        while not sim.sim_wait_for.exists():
            time.sleep(0.02)
    if host in sim.sim_fail_host:
        # The very evaluation error of the simulated nixos-rebuild: one flake, one mistake.
        print(EVAL_ERROR.replace("{host}", host), file=sys.stderr, flush=True)
        _print_file(sim.sim_print_file)
        return 1
    _print_file(sim.sim_print_file)
    if sim.sim_leave_child is not None:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        sim.sim_leave_child.write_text(str(child.pid), encoding="utf-8")
    name = f"nixos-system-{host}-24.11.20241122.5e4fbfb"  # the simulated nixos-rebuild's too
    commit = _commit(url, params)
    path = _store_path(name, commit)
    if sim.sim_store is not None:  # the system knows its commit: configurationRevision
        sim.sim_store.mkdir(parents=True, exist_ok=True)
        built = system_content(path, label=commit)
        (sim.sim_store / f"{Path(path).name}.json").write_text(json.dumps(built), "utf-8")
    print(path, flush=True)
    return 0


def _print_file(path: Path | None) -> None:
    """``path``'s bytes on stderr, where nix logs, exactly: control characters and all."""
    if path is not None:
        sys.stderr.flush()
        sys.stderr.buffer.write(path.read_bytes())
        sys.stderr.buffer.flush()


def _copy(args: list[str], sim: argparse.Namespace) -> int:
    if len(args) != 3 or args[0] != "--to" or not args[2].startswith("/nix/store/"):
        return _fail(f"simulated nix copy expects --to <store-url> <store-path>, got {args}")
    destination, path = args[1], args[2]
    if sim.sim_fail_copy:
        return _fail(f"cannot connect to '{destination}' (simulated)")
    print(f"copying path '{path}' to '{destination}'", file=sys.stderr, flush=True)
    if destination.startswith("file://"):
        cache = Path(urllib.parse.urlsplit(destination).path)
        cache.mkdir(parents=True, exist_ok=True)
        if sim.sim_signing_key is not None:  # as nix with secret-key-files: signed, whole
            publish(cache, path, _built(path, sim.sim_store), signing_key=sim.sim_signing_key)
            return 0
        digest = Path(path).name.split("-", 1)[0]
        (cache / f"{digest}.narinfo").write_text(f"StorePath: {path}\n", encoding="utf-8")
    return 0


def _built(path: str, store: Path | None) -> dict[str, object]:
    """What ``path`` holds: as its build left it in ``--sim-store``, else made up from its name."""
    if store is not None:
        with contextlib.suppress(OSError, ValueError):
            built = json.loads((store / f"{Path(path).name}.json").read_text(encoding="utf-8"))
            if isinstance(built, dict):
                return built
    return system_content(path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sim, rest = _parser().parse_known_args(args)
    if sim.sim_record is not None:
        with sim.sim_record.open("a", encoding="utf-8") as record:
            record.write(json.dumps({"argv": rest}) + "\n")
    if rest[:2] != list(_FEATURES):  # as a stock NixOS nix answers
        return _fail(
            "experimental Nix feature 'nix-command' is disabled; add "
            "'--extra-experimental-features nix-command' to enable it"
        )
    rest = rest[2:]
    if rest[:2] == ["flake", "metadata"]:
        return _metadata(rest[2:], sim)
    commands = {"eval": _eval, "build": _build, "copy": _copy}
    if rest and rest[0] in commands:
        return commands[rest[0]](rest[1:], sim)
    return _fail(f"simulated nix does not know the command {rest[:2]}")


if __name__ == "__main__":
    sys.exit(main())
