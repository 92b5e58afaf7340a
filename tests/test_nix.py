"""The Nix side: every .nix file parses, and the NixOS module renders the unit it promises.

No nixpkgs and no builder are needed. The parse test needs only `nix-instantiate` (Debian's
`nix-bin`). The evaluation tests also need nixpkgs' `lib`: set `NIXPKGS_LIB` to a checkout of
nix-community/nixpkgs.lib (the directory holding `lib/`; CI uses ../shared/nixpkgs-lib, beside
the repository). They evaluate nix/module.nix through nix/eval-module.nix, which stubs the few
NixOS options the module touches, and evaluate flake.nix, nix/package.nix,
nix/python-deps.nix and nix/tests/vm.nix against stand-ins for nixpkgs: that checks their
structure and wiring but builds nothing. `nix flake check` on a Nix machine (package build, VM
test) does the rest.

A test whose tool is missing is skipped with the command that provides it. Under CI
(`CI=true`, which .ci/run sets) it fails with the same message instead, so a CI run cannot
pass by skipping the Nix checks.

Every nix-instantiate call uses `--store dummy://`, so no Nix daemon or store is touched and
anything that would copy a file into the store fails loudly.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any, NoReturn

import nkeys
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from fleet_core.natsconfig import (
    HostEntry,
    UserPermissions,
    deployer_permissions,
    listener_permissions,
)
from fleet_core.subjects import Tier

REPO = Path(__file__).resolve().parents[1]
NIX_DIR = REPO / "nix"
KEYS_DIR = NIX_DIR / "tests" / "keys"
NIX_TIMEOUT_S = 60  # each call takes well under a second; this only bounds a hang
OPT = "services.fleet-deploy.listener"

# What eval-module.nix stands in for the fleet-deploy package.
FAKE_EXE = "/nix/store/00000000000000000000000000000000-fleet-deploy/bin/fleet-deploy"
SEED = "/run/secrets/fleet-deploy-listener.seed"
FLAKE_FILE = "/run/secrets/fleet-deploy-flake-url"
# The public test keys of the VM test (nix/tests/keys/): an admin and a test-tier deployer.
ADMIN_KEY = (KEYS_DIR / "admin-deployer.pub").read_text().strip()
TEST_KEY = (KEYS_DIR / "test-deployer.pub").read_text().strip()
A_SEED = (KEYS_DIR / "test-deployer.seed").read_text().strip()  # public too: test-only

MINIMAL: dict[str, Any] = {
    "enable": True,
    "tier": "test",
    "natsUrl": "nats://nats.example.com:4222",
    "nkeyFile": SEED,
    "flakeUrl": "git+https://git.example.com/fleet.git",
}

FULL: dict[str, Any] = {
    **MINIMAL,
    "natsUrl": ["nats://nats1.example.com:4222", "nats://nats2.example.com:4222"],
    "hostname": "dns1",
    "tier": "prod",
    "role": "dns",
    "timeout": 1800,
    "deploySubjects": [
        "deploy.<tier>.<hostname>",
        "deploy.<tier>.all",
        "deploy.<tier>.role.<role>",
        "deploy.canary.<hostname>",
    ],
    "discoverSubject": "fleet.discover",
    "environment": {"GIT_SSH_COMMAND": "ssh -i /etc/ssh/fleet-deploy_ed25519"},
    "stateDir": "/var/lib/fleet-deploy-prod",
    "logLevel": "warning",
    "trustedDeployerKeys": [ADMIN_KEY, TEST_KEY],
    "metrics": {"enable": True, "address": "127.0.0.1:9100", "openFirewall": True},
    "extraArgs": ["--rebuild-command", "nixos-rebuild --show-trace"],
}
# flakeUrlFile instead of flakeUrl: the two exclude each other.
WITH_FLAKE_FILE: dict[str, Any] = {
    **{k: v for k, v in MINIMAL.items() if k != "flakeUrl"},
    "flakeUrlFile": FLAKE_FILE,
}

# The flag each listener option turns into; the other options are not flags.
FLAG_FOR_OPTION = {
    "hostname": "--hostname",
    "tier": "--tier",
    "role": "--role",
    "natsUrl": "--nats-url",
    "nkeyFile": "--nkey-file",
    "flakeUrl": "--flake-url",
    "flakeUrlFile": "--flake-url-file",
    "timeout": "--timeout",
    "deploySubjects": "--deploy-subject",
    "discoverSubject": "--discover-subject",
    "stateDir": "--state-dir",
    "logLevel": "--log-level",
    "trustedDeployerKeys": "--trusted-deployer-key",
    "restartOnUpgrade": "--restart-if-changed",
    "metrics.enable": "--metrics-enabled",
    "metrics.address": "--metrics-addr",
}
NOT_FLAGS = {"enable", "package", "environment", "extraArgs", "metrics.openFirewall"}
# Flags without a value.
SWITCHES = {"--metrics-enabled", "--debug"}
# Passed whatever the options: rebuilds run as transient units; restartOnUpgrade watches this.
UNIT_FILE = "/etc/systemd/system/fleet-deploy-listener.service"
ALWAYS = {"--rebuild-runner": ["systemd"], "--restart-if-changed": [UNIT_FILE]}

# One bad setting on top of MINIMAL (and networking.hostName = "web1"), and a piece of the
# assertion message it must produce.
BAD_SETTINGS: dict[str, tuple[dict[str, Any], str]] = {
    "seed in the store": (
        {"nkeyFile": "/nix/store/0000-listener.seed"},
        "nkeyFile points into the Nix store",
    ),
    "relative seed path": ({"nkeyFile": "secrets/listener.seed"}, "must be an absolute path"),
    "reserved hostname": ({"hostname": "all"}, 'hostname is "all", which is not a valid'),
    "hostname with a dot": ({"hostname": "web1.example.com"}, "not a valid subject token"),
    "role with a space": ({"role": "web servers"}, 'role is "web servers"'),
    "flake with an attribute": (
        {"flakeUrl": "git+https://git.example.com/fleet.git#web1"},
        "without a '#attribute'",
    ),
    "flake with a ref": (
        {"flakeUrl": "git+https://git.example.com/fleet.git?ref=main"},
        "spaces, ref= or rev=",
    ),
    "no deploy subjects": ({"deploySubjects": []}, "Set it to null to use the defaults"),
    "wildcard subject": ({"deploySubjects": ["deploy.test.*"]}, "has a wildcard"),
    "wildcard inside a token": ({"deploySubjects": ["deploy.<tier>.web>"]}, "has a wildcard"),
    "flake with a space": (
        {"flakeUrl": "git+https://git.example.com/fleet configs.git"},
        "without a '#attribute', spaces",
    ),
    "empty subject token": ({"deploySubjects": ["deploy..web1"]}, "has an empty token"),
    "discover subject with a space": (
        {"discoverSubject": "deploy discover"},
        "contains whitespace",
    ),
    "state dir outside /var/lib": ({"stateDir": "/srv/fleet-deploy"}, "under /var/lib"),
    "state dir escaping /var/lib": ({"stateDir": "/var/lib/../etc"}, "without '..'"),
    "seed through extraArgs": (
        {"extraArgs": ["--nkey-file", "/root/listener.seed"]},
        "extraArgs sets --nkey-file",
    ),
    "flake URL through extraArgs": (
        {"extraArgs": ["--flake-url-file=/root/flake"]},
        "extraArgs sets --flake-url or --flake-url-file",
    ),
    "no flake at all": ({"flakeUrl": None}, "set exactly one of flakeUrl"),
    "flake URL and flake URL file": ({"flakeUrlFile": FLAKE_FILE}, "set exactly one of flakeUrl"),
    "flake URL with a token": (
        {"flakeUrl": "git+https://oauth2:glpat-SECRET@git.example.com/fleet.git"},
        "set services.fleet-deploy.listener.flakeUrlFile instead",
    ),
    "flake URL file in the store": (
        {"flakeUrl": None, "flakeUrlFile": "/nix/store/0000-flake-url"},
        "flakeUrlFile points into the Nix store",
    ),
    "relative flake URL file": (
        {"flakeUrl": None, "flakeUrlFile": "secrets/flake-url"},
        "flakeUrlFile must be an absolute path",
    ),
    "trusted key that is not a key": (
        {"trustedDeployerKeys": [ADMIN_KEY, "UNOTAKEY"]},
        'not user public keys: "UNOTAKEY"',
    ),
    "trusted key that is a seed": (
        {"trustedDeployerKeys": [A_SEED]},
        "(a seed: a secret, left out here)",
    ),
    "abbreviated seed flag in extraArgs": (
        {"extraArgs": ["--nkey=/root/listener.seed"]},
        "extraArgs sets --nkey-file",
    ),
    "rebuild runner through extraArgs": (
        {"extraArgs": ["--rebuild-runner", "session"]},
        "extraArgs sets --rebuild-runner. Remove it",
    ),
    "abbreviated rebuild runner in extraArgs": (
        {"extraArgs": ["--rebuild-r=session"]},
        "extraArgs sets --rebuild-runner",
    ),
    "metrics address through extraArgs": (
        {"metrics": {"enable": True}, "extraArgs": ["--metrics-addr", ":9100"]},
        "Set services.fleet-deploy.listener.metrics.address instead",
    ),
    "metrics address without a port": (
        {"metrics": {"enable": True, "address": "9972"}},
        'metrics.address is "9972", which is not an address',
    ),
    "metrics address with port 0": (
        {"metrics": {"enable": True, "address": ":0"}},
        "with a port from 1 to 65535",
    ),
    "metrics address with a bare IPv6 host": (
        {"metrics": {"enable": True, "address": "::1:9972"}},
        "[IPV6]:PORT",
    ),
}

# Settings the option types reject before any assertion runs.
BAD_TYPES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown tier": ({"tier": "staging"}, f"{OPT}.tier"),
    "zero timeout": ({"timeout": 0}, f"{OPT}.timeout"),
    "unknown log level": ({"logLevel": "verbose"}, f"{OPT}.logLevel"),
    "seed path that is not a string": (
        {"nkeyFile": 42},
        "outside the Nix store, given as a string",
    ),
}


def _case_name(label: str) -> str:
    return label.replace(" ", "-").replace("/", "")


# A host as homelab-deploy's users configure it, untouched: only services.homelab-deploy
# options (those of its README, and metrics and extraArgs of its later releases).
HOMELAB: dict[str, Any] = {
    "listener": {
        "enable": True,
        "tier": "prod",
        "role": "dns",
        "natsUrl": "nats://nats.example.com:4222",
        "nkeyFile": "/run/secrets/homelab-deploy-nkey",
        "flakeUrl": "git+https://git.example.com/user/nixos-configs.git",
        "timeout": 900,
        "deploySubjects": [
            "deploy.<tier>.<hostname>",
            "deploy.<tier>.all",
            "deploy.<tier>.role.<role>",
        ],
        "discoverSubject": "deploy.discover",
        "environment": {"GIT_SSH_COMMAND": "ssh -i /etc/ssh/deploy_ed25519"},
        "metrics": {"enable": True, "address": ":9972", "openFirewall": True},
        "extraArgs": ["--debug", "--heartbeat-interval", "5"],
    }
}
# homelab-deploy's listener options, each renamed to fleet-deploy's option of the same name.
HOMELAB_RENAMED = {
    "enable",
    "hostname",
    "tier",
    "role",
    "natsUrl",
    "nkeyFile",
    "flakeUrl",
    "timeout",
    "deploySubjects",
    "discoverSubject",
    "environment",
    "extraArgs",
    "metrics.enable",
    "metrics.address",
    "metrics.openFirewall",
}
# homelab-deploy's options that fleet-deploy refuses, and a piece of what each says to do.
HOMELAB_REMOVED: dict[str, tuple[dict[str, Any], str]] = {
    "listener.package": (
        {"package": "homelab-deploy"},
        "set that option to use another build of fleet-deploy",
    ),
    "builder": ({"builder": {"enable": True}}, "fleet-deploy has no build service"),
}

CASES: dict[str, dict[str, Any]] = {
    "full": {"hostName": "ignored-hostname", "listener": FULL},
    "minimal": {"hostName": "web1", "listener": MINIMAL},
    "no-hostname": {"hostName": "", "listener": MINIMAL},
    "disabled": {"hostName": "web1", "listener": {**MINIMAL, "enable": False}},
    "no-restart": {"hostName": "web1", "listener": {**MINIMAL, "restartOnUpgrade": False}},
    "flake-file": {"hostName": "web1", "listener": WITH_FLAKE_FILE},
    "escaping": {
        "hostName": "web1",
        "listener": {
            **MINIMAL,
            "nkeyFile": "/run/secrets/fleet%deploy.seed",
            "flakeUrl": "git+https://git.example.com/fleet%20configs.git",
            "extraArgs": ["--rebuild-command", "nixos-rebuild --option cores $CORES"],
        },
    },
    "metrics-defaults": {"hostName": "web1", "listener": {**MINIMAL, "metrics": {"enable": True}}},
    "metrics-firewall": {
        "hostName": "web1",
        "listener": {**MINIMAL, "metrics": {"enable": True, "openFirewall": True}},
    },
    "metrics-ipv6": {
        "hostName": "web1",
        "listener": {
            **MINIMAL,
            "metrics": {"enable": True, "address": "[::1]:9100", "openFirewall": True},
        },
    },
    "metrics-off-firewall": {
        "hostName": "web1",
        "listener": {**MINIMAL, "metrics": {"openFirewall": True}},
    },
    "homelab": {"hostName": "dns1", "homelab": HOMELAB},
    # homelab-deploy's own metrics flags, through extraArgs, with metrics.enable off.
    "homelab-metrics-flags": {
        "hostName": "dns1",
        "homelab": {
            "listener": {
                **{k: v for k, v in HOMELAB["listener"].items() if k != "metrics"},
                "extraArgs": ["--metrics-enabled", "--metrics-addr", "127.0.0.1:9100"],
            }
        },
    },
    **{
        _case_name(f"homelab {path}"): {
            "hostName": "dns1",
            "homelab": {
                **HOMELAB,
                **(
                    {"listener": {**HOMELAB["listener"], **override}}
                    if path.startswith("listener.")
                    else override
                ),
            },
        }
        for path, (override, _) in HOMELAB_REMOVED.items()
    },
    **{
        _case_name(label): {"hostName": "web1", "listener": {**MINIMAL, **override}}
        for label, (override, _) in BAD_SETTINGS.items()
    },
}


# --- helpers -----------------------------------------------------------------------------


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _missing(reason: str, provide: str) -> NoReturn:
    """Skips the calling test for want of a tool; under CI, where none may be missing, fails it."""
    message = f"{reason}: {provide}"
    if _under_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _nix_instantiate() -> str:
    path = shutil.which("nix-instantiate")
    if path is None:
        _missing(
            "nix-instantiate is not installed",
            "apt-get install -y nix-bin (Debian), as .ci/run does",
        )
    return path


def _run_nix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_nix_instantiate(), "--store", "dummy://", *args],
        capture_output=True,
        text=True,
        timeout=NIX_TIMEOUT_S,
        check=False,
    )


def _eval_json(nix_args: list[str]) -> Any:
    result = _run_nix("--eval", "--strict", "--json", *nix_args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _eval_expr(expr: str, lib_dir: Path) -> Any:
    """Evaluates a function of { lib, repo } to JSON."""
    return _eval_json(
        ["--argstr", "libDir", str(lib_dir), "--argstr", "repo", str(REPO), "-E", expr]
    )


def _eval_cases(lib_dir: Path, cases: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return _run_nix(
        "--eval",
        "--strict",
        "--json",
        str(NIX_DIR / "eval-module.nix"),
        "--argstr",
        "nixpkgsLib",
        str(lib_dir),
        "--argstr",
        "casesJson",
        json.dumps(cases),
    )


def _nix_files() -> list[Path]:
    """The repository's .nix files, tracked or not, minus what .gitignore excludes."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard", "*.nix"],
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode == 0:
        return sorted({REPO / line for line in listed.stdout.splitlines() if line})
    return sorted(
        p
        for p in REPO.rglob("*.nix")
        if not any(part.startswith(".") or part in {"venv", "node_modules"} for part in p.parts)
    )


def _argv(service: dict[str, Any]) -> list[str]:
    return shlex.split(service["serviceConfig"]["ExecStart"])


def _flags(service: dict[str, Any]) -> dict[str, list[str]]:
    """ExecStart's `--flag value` pairs after `fleet-deploy listener`, values in order; a
    switch (SWITCHES) has no value, so its list stays empty."""
    argv = _argv(service)
    assert argv[:2] == [FAKE_EXE, "listener"], argv
    rest = iter(argv[2:])
    flags: dict[str, list[str]] = {}
    for flag in rest:
        assert flag.startswith("--"), argv
        values = flags.setdefault(flag, [])
        if flag not in SWITCHES:
            value = next(rest, None)
            assert value is not None, f"{flag} has no value: {argv}"
            values.append(value)
    return flags


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lib_dir() -> Path:
    value = os.environ.get("NIXPKGS_LIB")
    if not value:
        _missing(
            "NIXPKGS_LIB is not set",
            "export NIXPKGS_LIB=<checkout of nix-community/nixpkgs.lib> "
            "(CI uses ../shared/nixpkgs-lib)",
        )
    root = Path(value).resolve()
    for candidate in (root / "lib", root):
        if (candidate / "default.nix").is_file() and (candidate / "modules.nix").is_file():
            return candidate
    pytest.fail(f"NIXPKGS_LIB={value} holds no nixpkgs lib (lib/modules.nix)", pytrace=False)


@pytest.fixture(scope="module")
def evaluated(lib_dir: Path) -> dict[str, Any]:
    """Every case in CASES, evaluated in one nix-instantiate call."""
    result = _eval_cases(lib_dir, CASES)
    assert result.returncode == 0, result.stderr
    cases: dict[str, Any] = json.loads(result.stdout)
    return cases


# --- parsing -----------------------------------------------------------------------------


def test_every_nix_file_parses() -> None:
    """Every .nix file in the repository passes `nix-instantiate --parse`."""
    files = _nix_files()
    expected = {"flake.nix", "nix/module.nix", "nix/package.nix", "nix/tests/vm.nix"}
    assert expected <= {p.relative_to(REPO).as_posix() for p in files}, files
    failures = []
    for path in files:
        result = _run_nix("--parse", str(path))
        if result.returncode != 0:
            failures.append(f"{path.relative_to(REPO)}:\n{result.stderr}")
    assert not failures, "\n".join(failures)


# --- the generated unit ------------------------------------------------------------------


def test_every_option_is_a_flag_or_accounted_for(evaluated: dict[str, Any]) -> None:
    """The module declares exactly the listener options this file maps to flags."""
    declared = set(evaluated["minimal"]["optionNames"])
    assert declared == set(FLAG_FOR_OPTION) | NOT_FLAGS


def test_full_configuration_passes_a_flag_for_every_option(evaluated: dict[str, Any]) -> None:
    """With every option set, ExecStart carries each one as its flag, extraArgs last."""
    service = evaluated["full"]["service"]
    assert _flags(service) == {
        "--hostname": ["dns1"],
        "--tier": ["prod"],
        "--role": ["dns"],
        "--nats-url": ["nats://nats1.example.com:4222,nats://nats2.example.com:4222"],
        "--nkey-file": ["%d/nkey"],
        "--flake-url": ["git+https://git.example.com/fleet.git"],
        "--timeout": ["1800"],
        "--deploy-subject": FULL["deploySubjects"],
        "--discover-subject": ["fleet.discover"],
        "--state-dir": ["/var/lib/fleet-deploy-prod"],
        "--log-level": ["warning"],
        "--trusted-deployer-key": [ADMIN_KEY, TEST_KEY],
        "--metrics-enabled": [],
        "--metrics-addr": ["127.0.0.1:9100"],
        **ALWAYS,
        "--rebuild-command": ["nixos-rebuild --show-trace"],
    }
    assert _argv(service)[-2:] == FULL["extraArgs"]
    # flakeUrlFile excludes flakeUrl: test_a_token_in_the_flake_url_stays_a_credential has it.
    assert set(FLAG_FOR_OPTION.values()) - {"--flake-url-file"} <= set(_flags(service))


def test_minimal_configuration_leaves_defaults_to_the_application(
    evaluated: dict[str, Any],
) -> None:
    """Unset options pass no flag, and the hostname comes from networking.hostName."""
    service = evaluated["minimal"]["service"]
    assert _flags(service) == {
        "--hostname": ["web1"],
        "--tier": ["test"],
        "--nats-url": ["nats://nats.example.com:4222"],
        "--nkey-file": ["%d/nkey"],
        "--flake-url": ["git+https://git.example.com/fleet.git"],
        "--state-dir": ["/var/lib/fleet-deploy"],
        **ALWAYS,
    }
    assert service["environment"] == {}
    assert evaluated["minimal"]["allowedTCPPorts"] == []
    assert evaluated["minimal"]["warnings"] == []


def test_metrics_are_served_where_the_address_says(evaluated: dict[str, Any]) -> None:
    """metrics.enable passes --metrics-enabled and always the address, homelab-deploy's
    :9972 unless set; without it neither flag is passed."""
    assert _flags(evaluated["metrics-defaults"]["service"])["--metrics-enabled"] == []
    assert _flags(evaluated["metrics-defaults"]["service"])["--metrics-addr"] == [":9972"]
    assert _flags(evaluated["metrics-ipv6"]["service"])["--metrics-addr"] == ["[::1]:9100"]
    for case in ("minimal", "metrics-off-firewall"):
        flags = _flags(evaluated[case]["service"])
        assert "--metrics-enabled" not in flags, case
        assert "--metrics-addr" not in flags, case


def test_open_firewall_opens_the_metrics_port(evaluated: dict[str, Any]) -> None:
    """metrics.openFirewall opens the address's port (TCP), only while metrics are on."""
    assert evaluated["metrics-firewall"]["allowedTCPPorts"] == [9972]
    assert evaluated["metrics-ipv6"]["allowedTCPPorts"] == [9100]
    assert evaluated["full"]["allowedTCPPorts"] == [9100]
    assert evaluated["metrics-defaults"]["allowedTCPPorts"] == []
    assert evaluated["metrics-off-firewall"]["allowedTCPPorts"] == []


def test_a_switch_does_not_restart_the_listener(evaluated: dict[str, Any]) -> None:
    """The unit sets restartIfChanged = false, and systemd restarts it whenever it exits."""
    service = evaluated["minimal"]["service"]
    assert service["restartIfChanged"] is False
    assert service["serviceConfig"]["Restart"] == "always"


def test_the_listener_restarts_itself_after_an_upgrade(evaluated: dict[str, Any]) -> None:
    """The listener watches its own unit file and exits with the status the unit restarts on
    (the listener's RESTART_EXIT_CODE); restartOnUpgrade = false drops the watch."""
    from fleet_core.listener import RESTART_EXIT_CODE

    config = evaluated["minimal"]["service"]["serviceConfig"]
    assert config["RestartForceExitStatus"] == str(RESTART_EXIT_CODE)
    assert config["SuccessExitStatus"] == str(RESTART_EXIT_CODE)
    assert _flags(evaluated["minimal"]["service"])["--restart-if-changed"] == [UNIT_FILE]
    assert "--restart-if-changed" not in _flags(evaluated["no-restart"]["service"])
    assert _flags(evaluated["no-restart"]["service"])["--rebuild-runner"] == ["systemd"]


def test_the_unit_starts_once_the_network_is_online(evaluated: dict[str, Any]) -> None:
    """The unit wants and is ordered after network-online.target, and starts at boot."""
    service = evaluated["minimal"]["service"]
    assert "network-online.target" in service["wants"]
    assert "network-online.target" in service["after"]
    assert service["wantedBy"] == ["multi-user.target"]


def test_the_seed_is_passed_as_a_systemd_credential(evaluated: dict[str, Any]) -> None:
    """The seed is loaded with LoadCredential and its path never reaches the command line."""
    service = evaluated["full"]["service"]
    assert service["serviceConfig"]["LoadCredential"] == [f"nkey:{SEED}"]
    exec_start = service["serviceConfig"]["ExecStart"]
    assert " --nkey-file %d/nkey" in exec_start
    assert SEED not in exec_start


def test_a_token_in_the_flake_url_stays_a_credential(evaluated: dict[str, Any]) -> None:
    """flakeUrlFile is loaded as a credential like the seed, and read by the listener from
    the credentials directory: neither the file's path nor the URL is on the command line."""
    service = evaluated["flake-file"]["service"]
    config = service["serviceConfig"]
    assert config["LoadCredential"] == [f"nkey:{SEED}", f"flake-url:{FLAKE_FILE}"]
    flags = _flags(service)
    assert flags["--flake-url-file"] == ["%d/flake-url"]
    assert "--flake-url" not in flags
    assert FLAKE_FILE not in config["ExecStart"]
    assert evaluated["flake-file"]["failedAssertions"] == []


def test_a_token_in_the_flake_url_is_not_repeated_in_its_assertion(
    evaluated: dict[str, Any],
) -> None:
    """The assertion that refuses a flake URL with a token does not print the token, and the
    one that refuses a seed among the trusted keys does not print the seed."""
    (token,) = evaluated[_case_name("flake URL with a token")]["failedAssertions"]
    assert "SECRET" not in token
    (seed,) = evaluated[_case_name("trusted key that is a seed")]["failedAssertions"]
    assert A_SEED not in seed


def test_the_state_directory_is_created_by_systemd(evaluated: dict[str, Any]) -> None:
    """StateDirectory names stateDir below /var/lib, private to root, and --state-dir matches."""
    for case, directory in (("minimal", "fleet-deploy"), ("full", "fleet-deploy-prod")):
        service = evaluated[case]["service"]
        assert service["serviceConfig"]["StateDirectory"] == directory
        assert service["serviceConfig"]["StateDirectoryMode"] == "0700"
        assert _flags(service)["--state-dir"] == [f"/var/lib/{directory}"]


def test_the_rebuild_finds_nix_git_and_nixos_rebuild(evaluated: dict[str, Any]) -> None:
    """The unit's PATH holds nix, git and nixos-rebuild for the rebuilds it runs, and
    systemd-run, which starts each of them as a transient unit."""
    names = {entry.rsplit("-", 1)[-1] for entry in evaluated["minimal"]["service"]["path"]}
    assert {"nix", "git", "rebuild", "systemd"} <= names


def test_logs_go_to_the_journal(evaluated: dict[str, Any]) -> None:
    """Output is left to systemd's default, the journal, and tagged with the unit's name."""
    config = evaluated["full"]["service"]["serviceConfig"]
    assert config.get("StandardOutput", "journal") == "journal"
    assert config.get("StandardError", "inherit") in {"inherit", "journal"}
    assert config["SyslogIdentifier"] == "fleet-deploy-listener"


def test_environment_reaches_the_unit(evaluated: dict[str, Any]) -> None:
    """The environment option becomes the unit's environment."""
    service = evaluated["full"]["service"]
    assert service["environment"] == FULL["environment"]


def test_option_values_cannot_become_systemd_specifiers(evaluated: dict[str, Any]) -> None:
    """`%` and `$` in option values are escaped, so systemd passes them through unchanged."""
    config = evaluated["escaping"]["service"]["serviceConfig"]
    assert '"git+https://git.example.com/fleet%%20configs.git"' in config["ExecStart"]
    assert '"nixos-rebuild --option cores $$CORES"' in config["ExecStart"]
    assert config["LoadCredential"] == ["nkey:/run/secrets/fleet%%deploy.seed"]


def test_a_disabled_listener_defines_no_unit(evaluated: dict[str, Any]) -> None:
    """With enable = false the module adds no service and no assertion."""
    assert evaluated["disabled"]["service"] is None
    assert evaluated["disabled"]["failedAssertions"] == []


# Sandboxing the listener's unit can afford, because each rebuild runs in a transient unit
# of its own (--rebuild-runner systemd) that inherits none of it.
HARDENING = {
    "ProtectSystem": "strict",
    "ReadWritePaths": ["/tmp"],  # noqa: S108 - a unit setting: /tmp stays writable
    "ProtectHome": True,
    "ProcSubset": "pid",
    "PrivateDevices": True,
    "PrivateIPC": True,
    "ProtectKernelTunables": True,
    "ProtectKernelModules": True,
    "ProtectKernelLogs": True,
    "ProtectControlGroups": True,
    "ProtectClock": True,
    "ProtectHostname": True,
    "NoNewPrivileges": True,
    "RestrictSUIDSGID": True,
    "RestrictNamespaces": True,
    "RestrictRealtime": True,
    "LockPersonality": True,
    "MemoryDenyWriteExecute": True,
    "SystemCallArchitectures": "native",
    "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"],
    "SystemCallFilter": ["@system-service", "~@privileged"],
    "SystemCallErrorNumber": "EPERM",
    "UMask": "0077",
}
# What it must not set: each would break starting, following or stopping the job's unit
# (nix/module.nix says why for each).
NOT_HARDENED = {
    "User",
    "DynamicUser",
    "PrivateUsers",
    "CapabilityBoundingSet",
    "PrivatePIDs",
    "ProtectProc",
    "PrivateTmp",
    "PrivateNetwork",
}


@pytest.mark.parametrize("case", ["minimal", "full", "homelab"])
def test_the_listener_unit_is_hardened(evaluated: dict[str, Any], case: str) -> None:
    """The unit carries the sandboxing a listener that hands rebuilds to systemd-run allows,
    and none of what would cut it off from PID 1 or from its jobs' runners."""
    config = evaluated[case]["service"]["serviceConfig"]
    assert {k: config.get(k) for k in HARDENING} == HARDENING
    assert not NOT_HARDENED & set(config)
    assert _flags(evaluated[case]["service"])["--rebuild-runner"] == ["systemd"]


# --- assertions and types ----------------------------------------------------------------


def test_valid_configurations_pass_every_assertion(evaluated: dict[str, Any]) -> None:
    """The full, minimal, escaping, metrics and homelab configurations trip no assertion."""
    for case in (
        "full",
        "minimal",
        "escaping",
        "no-restart",
        "flake-file",
        "metrics-defaults",
        "metrics-firewall",
        "metrics-ipv6",
        "metrics-off-firewall",
        "homelab",
        "homelab-metrics-flags",
    ):
        assert evaluated[case]["failedAssertions"] == [], case


@pytest.mark.parametrize("label", list(BAD_SETTINGS))
def test_a_bad_setting_fails_its_assertion(evaluated: dict[str, Any], label: str) -> None:
    """Each bad setting fails exactly one assertion, naming the option and what to change."""
    _, fragment = BAD_SETTINGS[label]
    failed = evaluated[_case_name(label)]["failedAssertions"]
    assert len(failed) == 1, failed
    assert fragment in failed[0], failed[0]
    assert failed[0].startswith(f"{OPT}."), failed[0]


def test_an_empty_hostname_points_at_networking_hostname(evaluated: dict[str, Any]) -> None:
    """With networking.hostName empty and no hostname set, the assertion says to set either."""
    (message,) = evaluated["no-hostname"]["failedAssertions"]
    assert 'hostname is ""' in message
    assert "networking.hostName" in message


# --- homelab-deploy's options --------------------------------------------------------------


def test_a_homelab_deploy_configuration_runs_the_listener(evaluated: dict[str, Any]) -> None:
    """A configuration written for homelab-deploy, unchanged, gives the listener every
    setting as its flag, metrics and extraArgs included, and opens the metrics port."""
    result = evaluated["homelab"]
    listener = HOMELAB["listener"]
    service = result["service"]
    assert _flags(service) == {
        "--hostname": ["dns1"],
        "--tier": ["prod"],
        "--nats-url": ["nats://nats.example.com:4222"],
        "--state-dir": ["/var/lib/fleet-deploy"],
        "--flake-url": [listener["flakeUrl"]],
        "--role": ["dns"],
        "--timeout": ["900"],
        "--deploy-subject": listener["deploySubjects"],
        "--discover-subject": ["deploy.discover"],
        "--metrics-enabled": [],
        "--metrics-addr": [":9972"],
        **ALWAYS,
        "--nkey-file": ["%d/nkey"],
        "--debug": [],
        "--heartbeat-interval": ["5"],
    }
    assert _argv(service)[-3:] == listener["extraArgs"]
    assert service["serviceConfig"]["LoadCredential"] == [f"nkey:{listener['nkeyFile']}"]
    assert service["environment"] == listener["environment"]
    assert result["allowedTCPPorts"] == [9972]


def test_each_homelab_deploy_option_warns_of_its_new_name(evaluated: dict[str, Any]) -> None:
    """Every homelab-deploy option the configuration sets produces one warning naming the
    fleet-deploy option it now sets; a native configuration produces none."""
    listener = HOMELAB["listener"]
    used = [k for k in listener if k != "metrics"] + [f"metrics.{k}" for k in listener["metrics"]]
    expected = sorted(
        f"The option `services.homelab-deploy.listener.{name}' defined in `<unknown-file>' "
        f"has been renamed to `{OPT}.{name}'."
        for name in used
    )
    assert sorted(evaluated["homelab"]["warnings"]) == expected
    for case in ("minimal", "full"):
        assert evaluated[case]["warnings"] == [], case


def test_every_homelab_deploy_option_is_mapped(evaluated: dict[str, Any]) -> None:
    """services.homelab-deploy declares exactly homelab-deploy's options: each listener
    option renamed to ours of the same name (which exists), or refused."""
    declared = set(evaluated["minimal"]["homelabOptionNames"])
    renamed = {f"listener.{name}" for name in HOMELAB_RENAMED}
    assert declared == renamed | set(HOMELAB_REMOVED)
    assert set(evaluated["minimal"]["optionNames"]) >= HOMELAB_RENAMED


def test_homelab_metrics_flags_in_extra_args_still_work(evaluated: dict[str, Any]) -> None:
    """homelab-deploy's own metrics flags, passed through extraArgs with metrics.enable off,
    reach the listener unchanged (and open nothing)."""
    result = evaluated["homelab-metrics-flags"]
    assert _argv(result["service"])[-3:] == [
        "--metrics-enabled",
        "--metrics-addr",
        "127.0.0.1:9100",
    ]
    assert result["allowedTCPPorts"] == []


@pytest.mark.parametrize("path", list(HOMELAB_REMOVED))
def test_a_homelab_deploy_option_fleet_deploy_cannot_honour_is_refused(
    evaluated: dict[str, Any], path: str
) -> None:
    """An option fleet-deploy has no counterpart for fails an assertion that names it and
    says what to do instead; it is never ignored silently."""
    _, fragment = HOMELAB_REMOVED[path]
    (message,) = evaluated[_case_name(f"homelab {path}")]["failedAssertions"]
    assert f"`services.homelab-deploy.{path}'" in message, message
    assert "no longer has any effect" in message, message
    assert fragment in " ".join(message.split()), message


@pytest.mark.parametrize("label", list(BAD_TYPES))
def test_a_bad_option_type_is_rejected(lib_dir: Path, label: str) -> None:
    """A value of the wrong type stops evaluation with an error naming the option."""
    override, fragment = BAD_TYPES[label]
    result = _eval_cases(lib_dir, {"case": {"listener": {**MINIMAL, **override}}})
    assert result.returncode != 0, result.stdout
    assert fragment in result.stderr, result.stderr


# --- the flake, the Python overlay and the VM test, against stand-ins for nixpkgs ---------

FLAKE_EXPR = """
{ libDir, repo }:
let
  lib = import libDir;
  flake = import (repo + "/flake.nix");
  systems = [ "x86_64-linux" "aarch64-linux" ];
  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs systems (_: throw "nixpkgs is not available here");
  };
  self = flake.outputs { inherit self nixpkgs; };
  names = builtins.mapAttrs (_: builtins.attrNames);
in
{
  inputs = builtins.attrNames flake.inputs;
  outputs = builtins.attrNames self;
  packages = names self.packages;
  apps = names self.apps;
  appType = self.apps.x86_64-linux.default.type;
  devShells = names self.devShells;
  checks = names self.checks;
  formatter = builtins.attrNames self.formatter;
  nixosModules = builtins.attrNames self.nixosModules;
  overlays = builtins.attrNames self.overlays;
}
"""


def test_the_flake_declares_its_outputs_for_both_systems(lib_dir: Path) -> None:
    """flake.nix offers package, app, module, dev shell, formatter and checks on both Linuxes."""
    flake = _eval_expr(FLAKE_EXPR, lib_dir)
    systems = ["aarch64-linux", "x86_64-linux"]
    assert flake["inputs"] == ["nixpkgs"]
    assert set(flake["outputs"]) >= {
        "packages",
        "apps",
        "nixosModules",
        "devShells",
        "formatter",
        "checks",
    }
    assert flake["packages"] == {s: ["default", "fleet-deploy"] for s in systems}
    assert flake["apps"] == {s: ["default"] for s in systems}
    assert flake["appType"] == "app"
    assert flake["devShells"] == {s: ["default"] for s in systems}
    assert flake["checks"] == {s: ["package", "vm"] for s in systems}
    assert flake["formatter"] == systems
    assert flake["nixosModules"] == ["default", "fleet-deploy"]


OVERLAY_EXPR = """
{ libDir, repo }:
let
  lib = import libDir;
  overlay = import (repo + "/nix/python-deps.nix") { inherit lib; };
  ours = [ "mcp" "mcp-types" "httpx2" "httpcore2" "nats-py" "nkeys" ];
  leaves = lib.genAttrs [
    "anyio" "cryptography" "h11" "idna" "jsonschema" "opentelemetry-api" "pydantic" "pyjwt"
    "pynacl" "python-multipart" "setuptools" "sse-starlette" "starlette" "truststore"
    "typing-extensions" "typing-inspection" "uvicorn"
  ] (_: "999");
  # Like nixpkgs' python-packages.nix: each package comes from callPackage over the final
  # set, which needs the final set's attribute names before it can say its version.
  nixpkgsSet =
    versions: final:
    lib.mapAttrs (
      _: version:
      builtins.seq (builtins.attrNames final) {
        inherit version;
        fromNixpkgs = true;
        optional-dependencies.crypto = [ { pname = "cryptography"; } ];
      }
    ) (leaves // versions)
    // {
      buildPythonPackage = attrs: attrs // { fromNixpkgs = false; };
      fetchPypi = attrs: attrs;
    };
  describe =
    versions:
    let
      final = lib.fix (self: let prev = nixpkgsSet versions self; in prev // overlay self prev);
    in
    lib.genAttrs ours (
      name:
      let
        p = final.${name};
      in
      if p.fromNixpkgs then
        { nixpkgs = p.version; }
      else
        {
          inherit (p) version;
          src = builtins.removeAttrs p.src [ "hash" ];
          hash = p.src.hash;
          dependencies = map (d: d.pname or "nixpkgs") p.dependencies;
        }
    );
in
{
  missing = describe { };
  old = describe {
    mcp = "2.1.1";
    mcp-types = "2.1.1";
    httpx2 = "2.5.0";
    httpcore2 = "2.5.0";
    nats-py = "2.15.0";
    nkeys = "0.1.0";
  };
  new = describe {
    mcp = "2.3.1";
    mcp-types = "2.3.1";
    httpx2 = "2.16.2";
    httpcore2 = "2.16.2";
    nats-py = "2.16.0";
    nkeys = "0.2.1";
  };
  mixed = describe {
    mcp = "2.3.1";
    mcp-types = "2.3.1";
    httpx2 = "2.5.0";
    httpcore2 = "2.5.0";
    nats-py = "2.16.0";
    nkeys = "0.2.1";
  };
}
"""


def test_python_overlay_fills_in_what_nixpkgs_lacks(lib_dir: Path) -> None:
    """nix/python-deps.nix takes mcp 2.3 and friends from PyPI only where nixpkgs' are too old."""
    result = _eval_expr(OVERLAY_EXPR, lib_dir)
    pinned = {
        "mcp": "2.3.0",
        "mcp-types": "2.3.0",
        "httpx2": "2.16.2",
        "httpcore2": "2.16.2",
        "nats-py": "2.16.0",
        "nkeys": "0.2.1",
    }
    for scenario in ("missing", "old"):
        packages = result[scenario]
        assert {name: p.get("version") for name, p in packages.items()} == pinned
        for name, package in packages.items():
            assert package["hash"].startswith("sha256-"), name
            assert len(package["hash"]) == 51, name
        assert packages["mcp"]["src"]["format"] == "wheel"
        assert packages["mcp-types"]["src"]["pname"] == "mcp_types"
        assert packages["nats-py"]["src"]["pname"] == "nats_py"
        assert "format" not in packages["nkeys"]["src"]
        assert {"mcp-types", "httpx2"} <= set(packages["mcp"]["dependencies"])
        assert "httpcore2" in packages["httpx2"]["dependencies"]
        assert "nkeys" in packages["nats-py"]["dependencies"]
    assert all("nixpkgs" in p for p in result["new"].values()), result["new"]
    mixed = result["mixed"]
    assert {name for name, p in mixed.items() if "nixpkgs" in p} == {
        "mcp",
        "mcp-types",
        "nats-py",
        "nkeys",
    }
    assert mixed["httpx2"]["version"] == mixed["httpcore2"]["version"] == "2.16.2"


PACKAGE_EXPR = """
{ libDir, repo }:
let
  lib = import libDir;
  fake = pname: { inherit pname; version = "999"; optional-dependencies.crypto = [ ]; };
  nixpkgsPython = lib.genAttrs [
    "anyio" "hatchling" "mcp" "mcp-types" "httpx2" "httpcore2" "nats-py" "nkeys" "pydantic"
    "prometheus-client" "structlog"
  ] fake // {
    buildPythonApplication = attrs: attrs;
  };
  python3.override =
    { self, packageOverrides }:
    {
      pkgs = lib.fix (final: nixpkgsPython // packageOverrides final nixpkgsPython);
    };
  package = import (repo + "/nix/package.nix") { inherit lib python3; };
in
{
  inherit (package) pname version pyproject pythonImportsCheck;
  inherit (package.meta) description mainProgram;
  license = package.meta.license.spdxId;
  buildSystem = map (p: p.pname) package.build-system;
  dependencies = map (p: p.pname) package.dependencies;
}
"""


def test_the_package_follows_pyproject(lib_dir: Path) -> None:
    """nix/package.nix takes name, version and license from pyproject.toml and its deps."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    package = _eval_expr(PACKAGE_EXPR, lib_dir)
    assert package["pname"] == project["name"]
    assert package["version"] == project["version"]
    assert package["license"] == project["license"]
    assert package["description"] == project["description"]
    assert package["pyproject"] is True
    assert package["buildSystem"] == ["hatchling"]
    assert package["mainProgram"] in project["scripts"]
    required = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert set(package["dependencies"]) == required
    packages = {Path(p).name for p in _pyproject_wheel_packages()}
    assert set(package["pythonImportsCheck"]) == packages


def _pyproject_wheel_packages() -> list[str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages: list[str] = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return packages


VM_EXPR = """
{ libDir, repo }:
let
  lib = import libDir;
  pkgs = {
    inherit lib;
    testers.runNixOSTest = test: test;
    writeShellScript = name: _: "/nix/store/00000000000000000000000000000000-${name}";
    curl = "curl";
  };
  test = import (repo + "/nix/tests/vm.nix") {
    inherit pkgs;
    module = "fleet-deploy-module";
    package = "fleet-deploy-package";
  };
in
{
  inherit (test) name testScript;
  nodes = builtins.attrNames test.nodes;
  users = test.nodes.nats.services.nats.settings.authorization.users;
  listener = builtins.removeAttrs test.nodes.web1.services.fleet-deploy.listener [ "enable" ];
  homelab = test.nodes.web2.services;
  seeds = lib.mapAttrsToList (_: f: toString f.source) (
    test.nodes.web1.environment.etc
    // test.nodes.web2.environment.etc
    // test.nodes.deployer.environment.etc
  );
}
"""


def test_the_vm_test_is_well_formed(lib_dir: Path) -> None:
    """The VM test has four nodes, a Python script that compiles, and subtests; web2 is
    configured with homelab-deploy's option names alone, metrics and extraArgs included, and
    the script scrapes its metrics."""
    vm = _eval_expr(VM_EXPR, lib_dir)
    assert vm["nodes"] == ["deployer", "nats", "web1", "web2"]
    compile(vm["testScript"], "nix/tests/vm.nix:testScript", "exec")
    assert vm["testScript"].count("with subtest(") >= 5
    assert "fleet-deploy deploy" in vm["testScript"]
    assert vm["listener"]["nkeyFile"].startswith("/etc/")
    assert sorted(Path(s).name for s in vm["seeds"]) == [
        "admin-deployer.seed",
        "listener-web1.seed",
        "listener-web2.seed",
        "test-deployer.seed",
    ]
    assert list(vm["homelab"]) == ["homelab-deploy"]
    homelab = vm["homelab"]["homelab-deploy"]["listener"]
    assert set(homelab) - {"metrics"} <= HOMELAB_RENAMED
    assert homelab["metrics"] == {"enable": True, "address": ":9972", "openFirewall": True}
    assert "--heartbeat-interval" in homelab["extraArgs"]
    assert "curl -sf http://127.0.0.1:9972/metrics" in vm["testScript"]
    assert "fleet_deploy_info" in vm["testScript"]


def _as_nats(permissions: UserPermissions) -> dict[str, object]:
    """``permissions`` as the NixOS NATS module's settings hold them."""
    subscribe: object = list(permissions.subscribe)
    if permissions.deny_subscribe:
        subscribe = {"allow": subscribe, "deny": list(permissions.deny_subscribe)}
    return {"publish": list(permissions.publish), "subscribe": subscribe}


def test_the_vm_nats_users_follow_the_tiered_layout(lib_dir: Path) -> None:
    """The VM's NATS server admits the committed test keys with the permissions
    `fleet-deploy nats-config` writes (its default, bound layout)."""
    users = {u["nkey"]: u["permissions"] for u in _eval_expr(VM_EXPR, lib_dir)["users"]}

    def public(name: str) -> str:
        return (KEYS_DIR / f"{name}.pub").read_text().strip()

    for host in ("web1", "web2"):
        entry = HostEntry(host, Tier.TEST, public(f"listener-{host}"), role="web")
        assert users[public(f"listener-{host}")] == _as_nats(listener_permissions(entry))
    assert users[public("test-deployer")] == _as_nats(deployer_permissions("test"))
    assert users[public("admin-deployer")] == _as_nats(deployer_permissions("admin"))


def test_the_test_seeds_match_their_public_keys() -> None:
    """Each committed test-only seed derives the public key the VM's NATS server trusts."""
    seeds = sorted(KEYS_DIR.glob("*.seed"))
    assert len(seeds) == 4
    for seed in seeds:
        derived = nkeys.from_seed(bytearray(seed.read_bytes().strip())).public_key.decode()
        assert derived == seed.with_suffix(".pub").read_text().strip(), seed.name
