"""The closure deploys VM test (nix/tests/closures.nix), checked without a VM.

The test itself needs Nix and KVM (`nix build .#checks.x86_64-linux.closures`). Here it is
evaluated against stand-ins for nixpkgs, as tests/test_nix.py does for nix/tests/vm.nix: its
nodes are module functions, so each is called with stand-ins for the arguments it takes (the
other nodes' systems, `extendModules`). That checks the wiring the VM relies on: the listener
passes the module's checks and fetches with the host's nix-store; the host trusts the key
whose secret half the builder signs with; the builder gets that secret as a credential; the
NATS users are the ones `fleet-deploy nats-config` writes; the script compiles. The builder's
stand-in for nix is run for real, with the package's simulated nix and a recording `nix`: it
must route the very argv the builder builds (fleet_core.build.protocol) as the test expects.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nacl.signing
import pytest

from fleet_core.build.protocol import build_argv, copy_argv, list_argv, metadata_argv
from fleet_core.protocol.closures import system_refusal
from fleet_core.protocol.subjects import Tier
from fleet_core.setup.nats_config import (
    BuilderEntry,
    HostEntry,
    builder_permissions,
    deployer_permissions,
    listener_permissions,
)

from .nix_eval import KEYS_DIR, eval_expr, evaluate, lib_dir, parse_flags
from .tools import missing_tool

__all__ = ["lib_dir"]  # the fixture, imported for pytest to find

HARNESS = "eval-module.nix"
FAKE = "/nix/store/00000000000000000000000000000000-"
NEXT = f"{FAKE}nixos-system-web1-25.11.20251201.0000000"
ROGUE = f"{FAKE}nixos-system-web1-25.11.20251201.1111111"
OTHER_HOST = f"{FAKE}nixos-system-builder-25.11.20251201.0000000"
NIX_CALLS = "/var/lib/fleet-deploy-builder/nix.calls"
CACHE_KEY = (KEYS_DIR / "cache-signing.pub").read_text().strip()
CACHE_CREDENTIAL = "/run/credentials/fleet-deploy-builder.service/cache-key"
FLAKE = "git+https://git.example.invalid/fleet.git"
FEATURES = ["--extra-experimental-features", "nix-command flakes"]

# nix/tests/closures.nix against stand-ins: `scriptText` true makes each shell script its
# text (to run it), false a store path (as the nodes name it).
EXPR = """
{ libDir, repo, scriptText ? false }:
let
  lib = import libDir;
  fake = name: "/nix/store/00000000000000000000000000000000-${name}";
  pkgs = {
    inherit lib;
    testers.runNixOSTest = test: test;
    writeShellScript =
      name: text: if scriptText then text else builtins.seq text (fake name);
    coreutils = fake "coreutils";
    curl = "curl";
  };
  # The package, as the script's PYTHONPATH and interpreter see it: this checkout's sources
  # and this interpreter.
  package = {
    outPath = repo;
    python = {
      interpreter = "@PYTHON@";
      sitePackages = "src";
    };
  };
  nodes = {
    web1.system.build = {
      fleetNext = "@NEXT@";
      fleetRogue = "@ROGUE@";
    };
    builder.system.build.toplevel = "@OTHER_HOST@";
  };
  test = import (repo + "/nix/tests/closures.nix") {
    inherit pkgs package;
    module = "fleet-deploy-module";
  };
  # extendModules, standing in: the "system" is the list of modules it was extended with.
  web1 = test.nodes.web1 {
    inherit lib;
    extendModules = { modules }: { config.system.build.toplevel = modules; };
  };
  builder = test.nodes.builder { inherit nodes; };
  etc = web1.environment.etc // builder.environment.etc // test.nodes.deployer.environment.etc;
in
{
  inherit (test) name;
  nodes = builtins.attrNames test.nodes;
  testScript = test.testScript { inherit nodes; };
  users = test.nodes.nats.services.nats.settings.authorization.users;
  web1Imports = web1.imports;
  listener = builtins.removeAttrs web1.services.fleet-deploy.listener [ "enable" ];
  web1Nix = web1.nix.settings;
  web1Systems = web1.system.build;
  builderImports = builder.imports;
  builder = builder.services.fleet-deploy.builder;
  cacheServer = builder.systemd.services.fleet-vm-binary-cache;
  builderPorts = builder.networking.firewall.allowedTCPPorts;
  additionalPaths = builder.virtualisation.additionalPaths;
  secrets = lib.mapAttrs (_: f: { source = toString f.source; inherit (f) mode; }) (
    lib.filterAttrs (_: f: f ? source) etc
  );
}
"""


def _expr() -> str:
    return (
        EXPR.replace("@PYTHON@", sys.executable)
        .replace("@NEXT@", NEXT)
        .replace("@ROGUE@", ROGUE)
        .replace("@OTHER_HOST@", OTHER_HOST)
    )


@pytest.fixture(scope="module")
def vm(lib_dir: Path) -> dict[str, Any]:
    """The VM test, its scripts as store paths."""
    result: dict[str, Any] = eval_expr(_expr(), lib_dir)
    return result


@pytest.fixture(scope="module")
def closure_nix(lib_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The builder's stand-in for nix as a runnable script, recording its calls in a
    temporary file instead of the builder's state directory, and that file."""
    bash = shutil.which("bash")
    if bash is None:
        missing_tool("bash is not installed", "apt-get install -y bash")
    expr = _expr().replace("scriptText ? false", "scriptText ? true")
    text = eval_expr(expr, lib_dir)["builder"]["extraArgs"][1]
    root = tmp_path_factory.mktemp("closure-nix")
    calls = root / "nix.calls"
    assert NIX_CALLS in text
    script = root / "closure-nix"
    script.write_text(f"#!{bash}\n" + text.replace(NIX_CALLS, str(calls)))
    script.chmod(0o755)
    return script, calls


def _run(script: Path, argv: list[str], fake_nix_dir: Path) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PATH": f"{fake_nix_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(script), *argv[1:]],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )


def test_the_closures_vm_test_is_well_formed(vm: dict[str, Any]) -> None:
    """Four nodes, a script that compiles, and the subtests the issue asks for: a deploy
    built on the builder, an untrusted signature refused, another host's system refused."""
    assert vm["name"] == "fleet-deploy-closures"
    assert vm["nodes"] == ["builder", "deployer", "nats", "web1"]
    script = vm["testScript"]
    compile(script, "nix/tests/closures.nix:testScript", "exec")
    assert script.count("with subtest(") >= 5
    assert f'NEXT = "{NEXT}"' in script
    assert f'ROGUE = "{ROGUE}"' in script
    assert f'OTHER_HOST = "{OTHER_HOST}"' in script
    assert f'CACHE_KEY = "{CACHE_KEY}"' in script
    for expected in (
        'deploy_web1("--build fleet --build-timeout 600")',
        'host["store_path"] == NEXT',
        'deploy_web1(f"--store-path {ROGUE}")',
        '("failed", "closure_unavailable")',
        "--store-path {OTHER_HOST} 2>&1",
        "is not a system of 'web1'",
        "secret-key=/root/rogue.secret",
        "nix-store --generate-binary-cache-key rogue-1",
        'system_of("/run/current-system") == NEXT',
        "assert not in_web1_store(ROGUE)",
    ):
        assert expected in script, expected


def test_the_systems_it_sends_are_web1s_own_and_the_other_is_not() -> None:
    """The names the script sends pass (web1's systems) and fail (the builder's) the
    listener's name check, as the real store paths of those nodes would."""
    for path in (NEXT, ROGUE):
        assert system_refusal(path, ["web1"]) is None
    refusal = system_refusal(OTHER_HOST, ["web1"])
    assert refusal is not None and refusal.code == "wrong_host"


def test_web1_builds_two_variants_of_itself_outside_its_own_system(
    vm: dict[str, Any],
) -> None:
    """The next and the rogue system are web1's configuration extended with one changed
    file and no specialisations: what a new commit would build, not part of web1's closure."""
    systems = vm["web1Systems"]
    for name, text in (("fleetNext", "next"), ("fleetRogue", "rogue")):
        (change,) = systems[name]
        etc = change["environment"]["etc"]["fleet-deploy-vm/system"]["text"]
        assert etc == {"_type": "override", "content": text, "priority": 50}
        assert change["specialisation"] == {"_type": "override", "content": {}, "priority": 50}
    # The builder holds the rogue system (the script signs it with a key of its own); the next
    # one reaches its store through the stand-in for nix, which names it.
    assert vm["additionalPaths"] == [ROGUE]


def test_web1s_listener_passes_the_modules_checks_and_fetches_with_its_nix_store(
    vm: dict[str, Any], lib_dir: Path
) -> None:
    """web1's listener, rendered by the real module with the offline stubs, trips no
    assertion, passes nix.package's nix-store, no store directory and no rebuild stand-in."""
    assert vm["web1Imports"] == ["fleet-deploy-module"]
    result = evaluate(
        HARNESS,
        lib_dir,
        {"web1": {"hostName": "web1", "listener": {**vm["listener"], "enable": True}}},
    )["web1"]
    assert result["failedAssertions"] == []
    flags = parse_flags(
        _exec_start(result["service"]), "listener", {"--metrics-enabled", "--no-rollback"}
    )
    assert flags["--nix-store-command"] == [f"{FAKE}nix/bin/nix-store"]
    assert "--store-dir" not in flags
    assert "--rebuild-command" not in flags
    assert flags["--trusted-deployer-key"] == [
        (KEYS_DIR / "admin-deployer.pub").read_text().strip()
    ]


def _exec_start(service: dict[str, Any]) -> list[str]:
    return shlex.split(service["serviceConfig"]["ExecStart"])


def test_web1_trusts_the_key_the_builder_signs_with(vm: dict[str, Any]) -> None:
    """web1's nix substitutes from the builder's cache alone and trusts the committed public
    key, whose secret half the builder gets as a credential and names in its cache URL."""
    settings = vm["web1Nix"]
    assert settings["substituters"] == {
        "_type": "override",
        "content": ["http://builder:8080"],
        "priority": 50,
    }
    assert settings["trusted-public-keys"] == [CACHE_KEY]
    builder = vm["builder"]
    assert builder["credentials"] == {"cache-key": "/etc/fleet-deploy/cache-signing.secret"}
    assert builder["cache"] == (
        "file:///var/cache/fleet-deploy-builder/binary-cache"
        f"?compression=zstd&secret-key={CACHE_CREDENTIAL}"
    )
    secret = vm["secrets"]["fleet-deploy/cache-signing.secret"]
    assert secret["mode"] == "0400"
    assert Path(secret["source"]).name == "cache-signing.secret"
    # The pair belongs together: nix's secret key is the ed25519 seed and the public key.
    name, encoded = (KEYS_DIR / "cache-signing.secret").read_text().strip().split(":", 1)
    raw = base64.b64decode(encoded)
    signing = nacl.signing.SigningKey(raw[:32])
    public = base64.b64encode(bytes(signing.verify_key)).decode()
    assert raw[32:] == bytes(signing.verify_key)
    assert f"{name}:{public}" == CACHE_KEY
    # The cache is served where web1 looks for it.
    server = vm["cacheServer"]["serviceConfig"]["ExecStart"]
    assert server.split()[1:] == [
        "-m",
        "http.server",
        "8080",
        "--directory",
        "/var/cache/fleet-deploy-builder/binary-cache",
    ]
    assert vm["builderPorts"] == [8080]


def test_the_builder_passes_the_modules_checks(vm: dict[str, Any], lib_dir: Path) -> None:
    """The builder's settings, rendered by the real module, trip no assertion, and the
    signing key reaches it as a credential, never on its command line."""
    assert vm["builderImports"] == ["fleet-deploy-module"]
    result = evaluate(
        HARNESS, lib_dir, {"builder": {"hostName": "builder", "builder": vm["builder"]}}
    )["builder"]
    assert result["failedAssertions"] == []
    config = result["builderService"]["serviceConfig"]
    assert "cache-key:/etc/fleet-deploy/cache-signing.secret" in config["LoadCredential"]
    assert "cache-signing.secret" not in config["ExecStart"]


def test_the_vm_nats_users_follow_the_tiered_layout(vm: dict[str, Any]) -> None:
    """The VM's NATS server admits web1's listener, the admin and the builder with the
    permissions `fleet-deploy nats-config` writes."""
    users = {u["nkey"]: u["permissions"] for u in vm["users"]}

    def public(name: str) -> str:
        return (KEYS_DIR / f"{name}.pub").read_text().strip()

    def as_nats(permissions: Any) -> dict[str, object]:
        subscribe: object = list(permissions.subscribe)
        if permissions.deny_subscribe:
            subscribe = {"allow": subscribe, "deny": list(permissions.deny_subscribe)}
        publish: object = list(permissions.publish)
        if permissions.deny_publish:
            publish = {"allow": publish, "deny": list(permissions.deny_publish)}
        return {"publish": publish, "subscribe": subscribe}

    entry = HostEntry("web1", Tier.TEST, public("listener-web1"), role="web")
    assert users[public("listener-web1")] == as_nats(listener_permissions(entry))
    assert users[public("admin-deployer")] == as_nats(deployer_permissions("admin"))
    builder = BuilderEntry("builder", public("builder"), repos=("fleet",))
    assert users[public("builder")] == as_nats(builder_permissions(builder))
    assert len(users) == 3


def test_the_builders_nix_evaluates_simulated_and_copies_for_real(
    closure_nix: tuple[Path, Path], tmp_path: Path
) -> None:
    """The stand-in routes the builder's own argv: metadata and the host listing to the
    simulated nix (a pinned commit, web1 and web2), web1's build to the real nix with web1's
    next system, any other host's build to an error, and a copy to the real nix unchanged;
    it records every call."""
    script, calls = closure_nix
    fake_nix_dir = tmp_path / "bin"
    fake_nix_dir.mkdir()
    seen = tmp_path / "nix.argv"
    fake = fake_nix_dir / "nix"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(seen)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "print(sys.argv[-1])\n"
    )
    fake.chmod(0o755)
    nix = ["nix"]

    metadata = _run(script, metadata_argv(nix, FLAKE, "master"), fake_nix_dir)
    assert metadata.returncode == 0, metadata.stderr
    commit = json.loads(metadata.stdout)["locked"]["rev"]
    flake = f"{FLAKE}?rev={commit}"

    listed = _run(script, list_argv(nix, flake), fake_nix_dir)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == ["web1", "web2"]

    built = _run(script, build_argv(nix, flake, "web1"), fake_nix_dir)
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == NEXT
    other = _run(script, build_argv(nix, flake, "web2"), fake_nix_dir)
    assert other.returncode == 1
    assert "does not provide attribute" in other.stderr

    cache = f"file:///var/cache/fleet-deploy-builder/binary-cache?secret-key={CACHE_CREDENTIAL}"
    copied = _run(script, copy_argv(nix, cache, NEXT), fake_nix_dir)
    assert copied.returncode == 0, copied.stderr

    real = [json.loads(line) for line in seen.read_text().splitlines()]
    assert real == [
        [*FEATURES, "build", "--no-link", "--print-out-paths", NEXT],
        copy_argv([], cache, NEXT),
    ]
    recorded = calls.read_text().splitlines()
    assert len(recorded) == 5
    assert recorded[2].startswith("--extra-experimental-features nix-command flakes build ")
