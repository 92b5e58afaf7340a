"""The NixOS module's dashboard, `services.fleet-deploy.dashboard`, evaluated offline (nixpkgs'
lib and the stubs of nix/eval-module.nix; no nixpkgs, no builder): the command line it
writes is one `fleet-deploy dashboard` takes, every key and secret travels as a systemd
credential, mistakes fail an assertion that says what to change, and the unit is hardened.

Needs `nix-instantiate` and `NIXPKGS_LIB` (tests/nix_eval.py skips without them, and fails
under CI)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from fleet_core.cli import build_parser
from fleet_core.config.options import DASHBOARD
from fleet_core.config.resolve import dashboard_settings
from fleet_core.config.settings import DashboardSettings

from .nix_eval import (
    FAKE_EXE,
    assert_fails_one_assertion,
    evaluate,
    lib_dir,
    parse_flags,
)

__all__ = ["lib_dir"]  # the fixture, imported for pytest to find

DOPT = "services.fleet-deploy.dashboard"
CREDENTIALS = "/run/credentials/fleet-deploy-dashboard.service"
SEED = "/run/secrets/fleet-deploy-dashboard.seed"
MINIMAL: dict[str, Any] = {
    "enable": True,
    "natsUrl": "nats://nats.example.com:4222",
    "nkeyFile": SEED,
}
FULL: dict[str, Any] = {
    **MINIMAL,
    "natsUrl": ["nats://nats1.example.com:4222", "nats://nats2.example.com:4222"],
    "listen": "127.0.0.1:9420",
    "allowedHosts": ["fleet.example.com", "fleet.example.com:8443"],
    "refresh": 15,
    "allowActions": True,
    "deployNkeyFile": "/run/secrets/dash-deployer.seed",
    "passwordFile": "/run/secrets/dash-password",
    "totpSecretFile": "/run/secrets/dash-totp",
    "sessionKeyFile": "/run/secrets/dash-session",
    "logLevel": "warning",
    "extraArgs": ["--refresh", "20"],
}
# The flag each option becomes; the options that are none are NOT_FLAGS.
FLAG_FOR_OPTION = {
    "natsUrl": "--nats-url",
    "nkeyFile": "--nkey-file",
    "listen": "--listen",
    "allowedHosts": "--allowed-host",
    "refresh": "--refresh",
    "allowActions": "--allow-actions",
    "deployNkeyFile": "--deploy-nkey-file",
    "passwordFile": "--password-file",
    "totpSecretFile": "--totp-secret-file",
    "sessionKeyFile": "--session-key-file",
    "logLevel": "--log-level",
}
NOT_FLAGS = {"enable", "package", "extraArgs"}
SWITCHES = ("--allow-actions",)

BAD_SETTINGS: dict[str, tuple[dict[str, Any], str]] = {
    "no seed": ({"nkeyFile": None}, "nkeyFile is not set"),
    "seed in the store": ({"nkeyFile": "/nix/store/0000-dash.seed"}, "points into the Nix store"),
    "relative seed": ({"nkeyFile": "secrets/dash.seed"}, "must be an absolute path"),
    "actions without a deploy key": (
        {"allowActions": True, "passwordFile": "/run/secrets/p"},
        "deployNkeyFile is not",
    ),
    "actions without a password": (
        {"allowActions": True, "deployNkeyFile": "/run/secrets/d.seed"},
        "passwordFile is not",
    ),
    "action files without actions": (
        {"passwordFile": "/run/secrets/p", "totpSecretFile": "/run/secrets/t"},
        "allowActions is not, so it would be ignored",
    ),
    "password file in the store": (
        {
            "allowActions": True,
            "deployNkeyFile": "/run/secrets/d.seed",
            "passwordFile": "/nix/store/0000-password",
        },
        "passwordFile points into the Nix store",
    ),
    "allowed host with a scheme": (
        {"allowedHosts": ["https://fleet.example.com"]},
        '"https://fleet.example.com"',
    ),
    "seed through extraArgs": ({"extraArgs": ["--nkey=/root/dash.seed"]}, "sets --nkey-file"),
    "password through extraArgs": (
        {"extraArgs": ["--password-file", "/root/pw"]},
        "sets --password-file",
    ),
    "hash-password in a service": ({"extraArgs": ["--hash-password"]}, "--hash-password"),
}

CASES: dict[str, Any] = {
    "dash-minimal": {"dashboard": MINIMAL},
    "dash-full": {"dashboard": FULL},
    "dash-disabled": {"dashboard": {**MINIMAL, "enable": False}},
    "dash-none": {},
    **{
        f"dash-bad-{label.replace(' ', '-')}": {"dashboard": {**MINIMAL, **bad}}
        for label, (
            bad,
            _,
        ) in BAD_SETTINGS.items()
    },
}


@pytest.fixture(scope="module")
def evaluated(lib_dir: Path) -> dict[str, Any]:
    """Every case, evaluated in one nix-instantiate call."""
    return evaluate("eval-module.nix", lib_dir, CASES)


def argv(service: dict[str, Any]) -> list[str]:
    return shlex.split(service["serviceConfig"]["ExecStart"])


def flags(service: dict[str, Any]) -> dict[str, list[str]]:
    return parse_flags(argv(service), "dashboard", SWITCHES)


def test_every_option_is_a_flag_the_command_takes(evaluated: dict[str, Any]) -> None:
    """The module declares exactly the options mapped to flags here (and three that are
    none), and each of those flags is one `fleet-deploy dashboard` declares."""
    assert set(evaluated["dash-minimal"]["dashboardOptionNames"]) == set(FLAG_FOR_OPTION) | (
        NOT_FLAGS
    )
    assert set(FLAG_FOR_OPTION.values()) <= {option.flag for option in DASHBOARD.options}


def test_a_minimal_configuration_leaves_the_defaults_to_the_application(
    evaluated: dict[str, Any],
) -> None:
    """With a URL and a seed only: those two flags, the seed from the credentials directory,
    and nothing else — listen address, refresh and log level are the dashboard's own."""
    service = evaluated["dash-minimal"]["dashboardService"]
    assert flags(service) == {
        "--nats-url": ["nats://nats.example.com:4222"],
        "--nkey-file": ["%d/nkey"],
    }
    assert service["serviceConfig"]["LoadCredential"] == [f"nkey:{SEED}"]
    assert evaluated["dash-minimal"]["failedAssertions"] == []


def test_a_full_configuration_passes_every_option_and_each_secret_as_a_credential(
    evaluated: dict[str, Any],
) -> None:
    """Every option becomes its flag, each file a credential read from `%d`, extraArgs last;
    no secret's path is on the command line."""
    service = evaluated["dash-full"]["dashboardService"]
    assert flags(service) == {
        "--nats-url": ["nats://nats1.example.com:4222,nats://nats2.example.com:4222"],
        "--listen": ["127.0.0.1:9420"],
        "--allowed-host": ["fleet.example.com", "fleet.example.com:8443"],
        "--refresh": ["15", "20"],
        "--allow-actions": [],
        "--log-level": ["warning"],
        "--nkey-file": ["%d/nkey"],
        "--deploy-nkey-file": ["%d/deploy-nkey"],
        "--password-file": ["%d/password"],
        "--totp-secret-file": ["%d/totp-secret"],
        "--session-key-file": ["%d/session-key"],
    }
    assert argv(service)[-2:] == ["--refresh", "20"]
    assert sorted(service["serviceConfig"]["LoadCredential"]) == sorted(
        [
            f"nkey:{SEED}",
            "deploy-nkey:/run/secrets/dash-deployer.seed",
            "password:/run/secrets/dash-password",
            "totp-secret:/run/secrets/dash-totp",
            "session-key:/run/secrets/dash-session",
        ]
    )
    assert "/run/secrets" not in service["serviceConfig"]["ExecStart"]
    assert evaluated["dash-full"]["failedAssertions"] == []


def test_the_command_line_is_one_the_dashboard_resolves(evaluated: dict[str, Any]) -> None:
    """The full unit's ExecStart, with `%d` as systemd expands it, parses with the real
    `fleet-deploy` parser and resolves to the settings the options describe."""
    words = [w.replace("%d", CREDENTIALS) for w in argv(evaluated["dash-full"]["dashboardService"])]
    assert words[0] == FAKE_EXE
    parsed = vars(build_parser().parse_args(words[1:]))
    assert parsed.pop("command") == "dashboard"
    settings = dashboard_settings(parsed, environ={})
    assert isinstance(settings, DashboardSettings)
    assert settings.listen == ("127.0.0.1", 9420)
    assert settings.refresh == 20.0  # extraArgs come last, and win
    assert settings.allowed_hosts == ("fleet.example.com", "fleet.example.com:8443")
    assert settings.allow_actions
    assert settings.connection.nkey_file == Path(CREDENTIALS) / "nkey"
    assert settings.password_file == Path(CREDENTIALS) / "password"
    assert settings.session_key_file == Path(CREDENTIALS) / "session-key"


@pytest.mark.parametrize("label", list(BAD_SETTINGS))
def test_a_mistake_fails_one_assertion_that_says_what_to_change(
    evaluated: dict[str, Any], label: str
) -> None:
    """Each bad setting fails exactly one assertion, about the dashboard's options."""
    _, fragment = BAD_SETTINGS[label]
    failed = evaluated[f"dash-bad-{label.replace(' ', '-')}"]["failedAssertions"]
    assert_fails_one_assertion(failed, fragment, DOPT)


def test_a_disabled_dashboard_defines_no_unit(evaluated: dict[str, Any]) -> None:
    """Disabled, or never mentioned: no unit, and no assertion fails."""
    for case in ("dash-disabled", "dash-none"):
        assert evaluated[case]["dashboardService"] is None, case
        assert evaluated[case]["failedAssertions"] == [], case


HARDENING = {
    "DynamicUser": True,
    "CapabilityBoundingSet": "",
    "NoNewPrivileges": True,
    "ProtectSystem": "strict",
    "ProtectHome": True,
    "PrivateTmp": True,
    "PrivateDevices": True,
    "PrivateUsers": True,
    "ProtectProc": "invisible",
    "MemoryDenyWriteExecute": True,
    "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6"],
    "SystemCallFilter": ["@system-service", "~@privileged"],
    "RestrictSUIDSGID": True,
    "LockPersonality": True,
    "UMask": "0077",
}


@pytest.mark.parametrize("case", ["dash-minimal", "dash-full"])
def test_the_unit_is_hardened(evaluated: dict[str, Any], case: str) -> None:
    """A dynamic user without capabilities, read-only system, no devices, no netlink, no
    privileged system calls, no writable-and-executable memory; it starts after the network
    and restarts after a failure."""
    service = evaluated[case]["dashboardService"]
    config = service["serviceConfig"]
    assert {k: config.get(k) for k in HARDENING} == HARDENING
    assert "StateDirectory" not in config  # it keeps nothing
    assert config["Restart"] == "on-failure"
    assert "network-online.target" in service["after"]
