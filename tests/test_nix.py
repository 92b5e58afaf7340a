"""The Nix side: every .nix file parses, and the NixOS module renders the unit it promises.

No nixpkgs and no builder are needed. The parse test needs only `nix-instantiate` (Debian's
`nix-bin`). The evaluation tests also need nixpkgs' `lib`: set `NIXPKGS_LIB` to a checkout of
nix-community/nixpkgs.lib (the directory holding `lib/`; CI uses ../shared/nixpkgs-lib, beside
the repository). They evaluate nix/module.nix through nix/eval-module.nix, which stubs the few
NixOS options the module touches, and evaluate flake.nix, nix/package.nix,
nix/python-deps.nix and nix/tests/vm.nix against stand-ins for nixpkgs: that checks their
structure and wiring but builds nothing. `nix flake check` on a Nix machine (package build, VM
test) does the rest.

A test whose tool is missing is skipped with the command that provides it; under CI it fails
instead. Every nix-instantiate call uses `--store dummy://`, so no Nix daemon or store is
touched. tests/nix_eval.py, shared with tests/test_nix_home.py, says more.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import nkeys
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from fleet_core.protocol.subjects import Tier
from fleet_core.setup.nats_config import (
    BuilderEntry,
    HostEntry,
    UserPermissions,
    builder_permissions,
    deployer_permissions,
    listener_permissions,
)

from .nix_eval import (
    A_SEED,
    ADMIN_KEY,
    FLAKE_PRELUDE,
    KEYS_DIR,
    OPT,
    REPO,
    TEST_KEY,
    assert_fails_one_assertion,
    case_name,
    eval_cases,
    eval_expr,
    evaluate,
    lib_dir,
    parse_flags,
    run_nix,
)
from .tools import missing_tool

__all__ = ["lib_dir"]  # the fixture, imported for pytest to find

HARNESS = "eval-module.nix"
SEED = "/run/secrets/fleet-deploy-listener.seed"
FLAKE_FILE = "/run/secrets/fleet-deploy-flake-url"
# Programs of health checks, as a configuration names them: by store path.
CURL = "/nix/store/00000000000000000000000000000000-curl/bin/curl"
DIG = "/nix/store/00000000000000000000000000000000-dnsutils/bin/dig"
# nix.package and systemd.package of the harness's stubs.
NIX_ENV = "/nix/store/00000000000000000000000000000000-nix/bin/nix-env"
NIX_STORE = "/nix/store/00000000000000000000000000000000-nix/bin/nix-store"
SYSTEMCTL = "/nix/store/00000000000000000000000000000000-systemd/bin/systemctl"

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
    "healthChecks": [
        {
            "name": "web",
            "command": [CURL, "--fail", "--silent", "http://127.0.0.1:8080/health"],
            "timeout": 2.5,
        },
        {"name": "dns", "command": [DIG, "+short", "@127.0.0.1", "example.com"]},
    ],
    "systemRunningCheck": {
        "enable": True,
        "ignoreUnits": ["systemd-networkd-wait-online.service"],
        "timeout": 300,
    },
    "rollback": {"enable": False, "confirmTimeout": 600},
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
    # The checks go to the listener as one file, the built-in check first.
    "healthChecks": "--health-checks",
    "systemRunningCheck.enable": "--health-checks",
    "systemRunningCheck.ignoreUnits": "--health-checks",
    "systemRunningCheck.timeout": "--health-checks",
    "rollback.enable": "--no-rollback",
    "rollback.confirmTimeout": "--confirm-timeout",
}
NOT_FLAGS = {"enable", "package", "environment", "extraArgs", "metrics.openFirewall"}
# Flags without a value.
SWITCHES = {"--metrics-enabled", "--debug", "--no-rollback"}
# Passed whatever the options: rebuilds run as transient units; restartOnUpgrade watches this;
# a rollback and the built-in check run the host's own nix-env and systemctl, a closure deploy
# its own nix-store; discovery's facts come from the running system's own nixos-version.
UNIT_FILE = "/etc/systemd/system/fleet-deploy-listener.service"
ALWAYS = {
    "--rebuild-runner": ["systemd"],
    "--restart-if-changed": [UNIT_FILE],
    "--nix-env-command": [NIX_ENV],
    "--systemctl-command": [SYSTEMCTL],
    "--nix-store-command": [NIX_STORE],
    "--version-command": ["/run/current-system/sw/bin/nixos-version --json"],
}
# The health checks file's name in the store, and what it holds unless told otherwise: the
# built-in check alone.
CHECKS_FILE_NAME = "fleet-deploy-health-checks.json"
DEFAULT_CHECKS = [
    {"name": "system-running", "builtin": "system-running", "ignore_units": [], "timeout": 120}
]
# One check, valid, to change one thing of in BAD_SETTINGS.
A_CHECK: dict[str, Any] = {"name": "web", "command": [CURL, "--fail", "http://127.0.0.1/"]}

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
    "check without a name": (
        {"healthChecks": [A_CHECK, {**A_CHECK, "name": ""}]},
        "healthChecks has checks without a name: check 2 (counting from 1)",
    ),
    "check with a blank name": (
        {"healthChecks": [{**A_CHECK, "name": " "}]},
        "without a name: check 1",
    ),
    "two checks of one name": (
        {"healthChecks": [A_CHECK, {**A_CHECK, "command": [DIG]}]},
        'healthChecks has more than one check named "web". Give each check a name of its own:',
    ),
    "check named like the built-in check": (
        {"healthChecks": [{**A_CHECK, "name": "system-running"}]},
        '("system-running" is the built-in check\'s, while systemRunningCheck.enable is on)',
    ),
    "check with an empty command": (
        {"healthChecks": [{**A_CHECK, "command": []}]},
        'healthChecks has checks without a program to run: "web". Set command to the program',
    ),
    "check with an empty program": (
        {"healthChecks": [{**A_CHECK, "command": ["", "--fail"]}]},
        'without a program to run: "web"',
    ),
    "check command as one string": (
        {"healthChecks": [{**A_CHECK, "command": ["curl --fail http://127.0.0.1/"]}]},
        'a command line in one string: "web" ("curl --fail http://127.0.0.1/"). command is an '
        "argv, run without a shell",
    ),
    "check with a zero timeout": (
        {"healthChecks": [{**A_CHECK, "timeout": 0}]},
        'timeout is not a positive number of seconds: "web" (0). Give a positive number',
    ),
    "check with a negative timeout": (
        {"healthChecks": [{**A_CHECK, "timeout": -1.5}]},
        '"web" (-1.5)',
    ),
    "built-in check with a zero timeout": (
        {"systemRunningCheck": {"timeout": 0}},
        "systemRunningCheck.timeout is 0. Give a positive number of seconds",
    ),
    "ignored unit without its type": (
        {"systemRunningCheck": {"ignoreUnits": ["nginx.service", "nginx"]}},
        'ignoreUnits has names that are not unit names as systemctl lists failed units: "nginx". '
        'Give each unit\'s full name with its type, such as "nginx.service"',
    ),
    "health checks file through extraArgs": (
        {"extraArgs": ["--health-checks", "/etc/fleet-deploy/checks.json"]},
        "extraArgs sets --health-checks, while the module passes its own file of checks",
    ),
    "abbreviated health checks flag in extraArgs": (
        {"extraArgs": ["--heal=/etc/fleet-deploy/checks.json"]},
        "extraArgs sets --health-checks",
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
    "check command as a string": (
        {"healthChecks": [{**A_CHECK, "command": "curl --fail http://127.0.0.1/"}]},
        f"{OPT}.healthChecks",
    ),
    "check timeout as a string": (
        {"healthChecks": [{**A_CHECK, "timeout": "60"}]},
        f"{OPT}.healthChecks",
    ),
    "zero confirmation timeout": ({"rollback": {"confirmTimeout": 0}}, f"{OPT}.rollback"),
    "built-in check timeout as a string": (
        {"systemRunningCheck": {"timeout": "2m"}},
        f"{OPT}.systemRunningCheck.timeout",
    ),
}


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
    "builder.package": (
        {"builder": {"package": "homelab-deploy"}},
        "set that option to use another build of fleet-deploy",
    ),
}

# --- the builder -------------------------------------------------------------------------

BOPT = "services.fleet-deploy.builder"
BUILDER_SEED = "/run/secrets/fleet-deploy-builder.seed"
REPOS_FILE = "/run/secrets/fleet-deploy-builder-repos.toml"
BUILDER_CREDENTIALS_DIR = "/run/credentials/fleet-deploy-builder.service"

BUILDER_MINIMAL: dict[str, Any] = {
    "enable": True,
    "natsUrl": "nats://nats.example.com:4222",
    "nkeyFile": BUILDER_SEED,
    "repos": {"nixos-servers": "git+https://git.example.com/infra/nixos.git"},
}
BUILDER_FULL: dict[str, Any] = {
    **BUILDER_MINIMAL,
    "name": "ci",
    "natsUrl": ["nats://nats1.example.com:4222", "nats://nats2.example.com:4222"],
    "repos": {
        "nixos-servers": "git+https://git.example.com/infra/nixos.git",
        "edge": "github:example/edge?dir=hosts",
    },
    "reposFile": REPOS_FILE,
    "cache": "s3://nix-cache?region=eu-west-1",
    "timeout": 7200,
    "heartbeatInterval": 5,
    "logLevel": "warning",
    "environment": {"AWS_SHARED_CREDENTIALS_FILE": f"{BUILDER_CREDENTIALS_DIR}/aws"},
    "credentials": {"aws": "/run/secrets/nix-cache-aws", "git-ssh-key": "/run/secrets/git-key"},
    "extraArgs": ["--nix-command", "nix --option max-jobs 4"],
}
# Only the repositories file: the repos option may stay empty then.
BUILDER_FILE_ONLY: dict[str, Any] = {
    **{k: v for k, v in BUILDER_MINIMAL.items() if k != "repos"},
    "reposFile": REPOS_FILE,
}

# The flag each builder option turns into; the other options are not flags.
BUILDER_FLAG_FOR_OPTION = {
    "name": "--name",
    "natsUrl": "--nats-url",
    "nkeyFile": "--nkey-file",
    "repos": "--repo",
    "reposFile": "--repos-file",
    "cache": "--cache",
    "timeout": "--timeout",
    "heartbeatInterval": "--heartbeat-interval",
    "logLevel": "--log-level",
}
BUILDER_NOT_FLAGS = {"enable", "package", "environment", "credentials", "extraArgs"}

# One bad setting on top of BUILDER_MINIMAL (and networking.hostName = "ci1"), and a piece of
# the assertion message it must produce.
BUILDER_BAD_SETTINGS: dict[str, tuple[dict[str, Any], str]] = {
    "builder without a seed": ({"nkeyFile": None}, "nkeyFile is not set"),
    "builder seed in the store": (
        {"nkeyFile": "/nix/store/0000-builder.seed"},
        "nkeyFile points into the Nix store",
    ),
    "relative builder seed path": ({"nkeyFile": "secrets/builder.seed"}, "must be an absolute"),
    "builder without repositories": ({"repos": {}}, "give the builder at least one repository"),
    "repositories file in the store": (
        {"reposFile": "/nix/store/0000-repos.toml"},
        "reposFile points into the Nix store",
    ),
    "relative repositories file": (
        {"reposFile": "secrets/repos.toml"},
        "reposFile must be an absolute path",
    ),
    "repository name with a dot": (
        {"repos": {"nixos.servers": "git+https://git.example.com/nixos.git"}},
        'not valid repository names: "nixos.servers"',
    ),
    "repository named responses": (
        {"repos": {"responses": "git+https://git.example.com/nixos.git"}},
        'not valid repository names: "responses"',
    ),
    "repository name too long": (
        {"repos": {"r" * 64: "git+https://git.example.com/nixos.git"}},
        "not valid repository names",
    ),
    "repository URL with a token": (
        {"repos": {"private": "git+https://oauth2:glpat-SECRET@git.example.com/nixos.git"}},
        "the URL of private carries a password or token",
    ),
    "repository URL with an attribute": (
        {"repos": {"nixos": "git+https://git.example.com/nixos.git#web1"}},
        "the URL of nixos names a '#attribute'",
    ),
    "repository URL with a ref": (
        {"repos": {"nixos": "git+https://git.example.com/nixos.git?ref=main"}},
        "a ref= or rev=",
    ),
    "cache URL with a password": (
        {"cache": "https://upload:SECRET@cache.example.com"},
        "cache carries a password or token",
    ),
    "builder name with a dot": ({"name": "ci.example.com"}, 'name is "ci.example.com"'),
    "credential named nkey": (
        {"credentials": {"nkey": "/run/secrets/other.seed"}},
        'cannot name a credential: "nkey"',
    ),
    "credential name with a slash": (
        {"credentials": {"aws/creds": "/run/secrets/aws"}},
        'cannot name a credential: "aws/creds"',
    ),
    "credential in the store": (
        {"credentials": {"aws": "/nix/store/0000-aws"}},
        '"aws" must be an absolute path outside the Nix store',
    ),
    "builder seed through extraArgs": (
        {"extraArgs": ["--nkey=/root/builder.seed"]},
        "extraArgs sets --nkey-file",
    ),
    "repositories file through extraArgs": (
        {"extraArgs": ["--repos-file", "/root/repos.toml"]},
        "extraArgs sets --repos-file",
    ),
    "abbreviated repositories file in extraArgs": (
        {"extraArgs": ["--repos=/root/repos.toml"]},
        "extraArgs sets --repos-file",
    ),
}

# Builder settings the option types reject before any assertion runs.
BUILDER_BAD_TYPES: dict[str, tuple[dict[str, Any], str]] = {
    "builder seed path that is not a string": (
        {"nkeyFile": 42},
        "outside the Nix store, given as a string",
    ),
    "zero builder timeout": ({"timeout": 0}, f"{BOPT}.timeout"),
    "zero heartbeat interval": ({"heartbeatInterval": 0}, f"{BOPT}.heartbeatInterval"),
    "unknown builder log level": ({"logLevel": "verbose"}, f"{BOPT}.logLevel"),
    "repository URL that is not a string": ({"repos": {"nixos": 1}}, f"{BOPT}.repos"),
    "empty cache URL": ({"cache": ""}, f"{BOPT}.cache"),
}

# A builder as homelab-deploy's users configure it, with what fleet-deploy's builder needs
# and homelab-deploy's names cannot say (the repositories) set under services.fleet-deploy.
HOMELAB_BUILDER: dict[str, Any] = {
    "enable": True,
    "natsUrl": "nats://nats.example.com:4222",
    "nkeyFile": "/run/secrets/homelab-deploy-builder-nkey",
    "timeout": 5400,
    "environment": {"AWS_PROFILE": "nix-cache"},
    "extraArgs": ["--debug", "--heartbeat-interval", "5"],
}
# homelab-deploy's builder options, each renamed to fleet-deploy's option of the same name.
HOMELAB_BUILDER_RENAMED = {"enable", "natsUrl", "nkeyFile", "timeout", "environment", "extraArgs"}

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
    # No check at all: no file, no flag; and then extraArgs may name a file of its own.
    "no-checks": {
        "hostName": "web1",
        "listener": {
            **MINIMAL,
            "systemRunningCheck": {"enable": False},
            "extraArgs": ["--health-checks", "/etc/fleet-deploy/checks.json"],
        },
    },
    # Declared checks alone, without the built-in one.
    "custom-checks-only": {
        "hostName": "web1",
        "listener": {
            **MINIMAL,
            "systemRunningCheck": {"enable": False},
            "healthChecks": [{**A_CHECK, "name": "system-running"}],
        },
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
        case_name(f"homelab {path}"): {
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
        case_name(label): {"hostName": "web1", "listener": {**MINIMAL, **override}}
        for label, (override, _) in BAD_SETTINGS.items()
    },
    "builder-full": {"hostName": "ignored-hostname", "builder": BUILDER_FULL},
    "builder-minimal": {"hostName": "ci1", "builder": BUILDER_MINIMAL},
    "builder-file-only": {"hostName": "ci1", "builder": BUILDER_FILE_ONLY},
    "builder-no-hostname": {"hostName": "", "builder": BUILDER_MINIMAL},
    "builder-disabled": {"hostName": "ci1", "builder": {**BUILDER_MINIMAL, "enable": False}},
    "builder-escaping": {
        "hostName": "ci1",
        "builder": {
            **BUILDER_MINIMAL,
            "nkeyFile": "/run/secrets/fleet%builder.seed",
            "repos": {"nixos": "git+https://git.example.com/nixos%20configs.git"},
            "extraArgs": ["--nix-command", "nix --option cores $CORES"],
        },
    },
    # Both services on one host: neither changes the other.
    "listener-and-builder": {"hostName": "web1", "listener": MINIMAL, "builder": BUILDER_MINIMAL},
    "homelab-builder": {
        "hostName": "ci1",
        "homelab": {"builder": HOMELAB_BUILDER},
        "builder": {"repos": BUILDER_MINIMAL["repos"]},
    },
    **{
        case_name(label): {"hostName": "ci1", "builder": {**BUILDER_MINIMAL, **override}}
        for label, (override, _) in BUILDER_BAD_SETTINGS.items()
    },
}


# --- helpers -----------------------------------------------------------------------------


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


def _flags(service: dict[str, Any], command: str = "listener") -> dict[str, list[str]]:
    """ExecStart's `--flag value` pairs after `fleet-deploy <command>`, values in order; a
    switch (SWITCHES) has no value, so its list stays empty."""
    return parse_flags(_argv(service), command, SWITCHES)


def _checks_file(result: dict[str, Any]) -> str:
    """The store path of the health checks file the module rendered for a case: the harness's
    writeText names a file by the hash of its text, so this path in ExecStart means that text
    is the file's."""
    digest = hashlib.sha256(result["healthChecksJson"].encode()).hexdigest()[:32]
    return f"/nix/store/{digest}-{CHECKS_FILE_NAME}"


def _checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The health checks file of a case, as the listener reads it."""
    checks: list[dict[str, Any]] = json.loads(result["healthChecksJson"])
    return checks


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(lib_dir: Path) -> dict[str, Any]:
    """Every case in CASES, evaluated in one nix-instantiate call."""
    return evaluate(HARNESS, lib_dir, CASES)


# --- parsing -----------------------------------------------------------------------------


def test_every_nix_file_parses() -> None:
    """Every .nix file in the repository passes `nix-instantiate --parse`."""
    files = _nix_files()
    expected = {
        "flake.nix",
        "nix/module.nix",
        "nix/package.nix",
        "nix/tests/vm.nix",
        "nix/tests/closures.nix",
    }
    assert expected <= {p.relative_to(REPO).as_posix() for p in files}, files
    failures = []
    for path in files:
        result = run_nix("--parse", str(path))
        if result.returncode != 0:
            failures.append(f"{path.relative_to(REPO)}:\n{result.stderr}")
    assert not failures, "\n".join(failures)


# --- the generated unit ------------------------------------------------------------------


def test_every_option_is_a_flag_or_accounted_for(evaluated: dict[str, Any]) -> None:
    """The module declares exactly the listener options this file maps to flags, and each of
    those flags, and each flag the module always passes, is one `fleet-deploy listener`
    takes."""
    from fleet_core.config.options import LISTENER

    declared = set(evaluated["minimal"]["optionNames"])
    assert declared == set(FLAG_FOR_OPTION) | NOT_FLAGS
    taken = {option.flag for option in LISTENER.options}
    assert set(FLAG_FOR_OPTION.values()) | set(ALWAYS) <= taken


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
        "--health-checks": [_checks_file(evaluated["full"])],
        "--no-rollback": [],
        "--confirm-timeout": ["600"],
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
        "--health-checks": [_checks_file(evaluated["minimal"])],
        **ALWAYS,
    }
    assert _checks(evaluated["minimal"]) == DEFAULT_CHECKS
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
    from fleet_core.host.listener import RESTART_EXIT_CODE

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
    (token,) = evaluated[case_name("flake URL with a token")]["failedAssertions"]
    assert "SECRET" not in token
    (seed,) = evaluated[case_name("trusted key that is a seed")]["failedAssertions"]
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


# --- health checks and rollback ----------------------------------------------------------


def test_the_checks_file_holds_the_built_in_check_then_the_declared_ones(
    evaluated: dict[str, Any],
) -> None:
    """healthChecks and systemRunningCheck become one JSON file in the store, passed as
    --health-checks: the built-in check first, then each declared check in order, its
    command an argv, its timeout only where set."""
    result = evaluated["full"]
    assert _flags(result["service"])["--health-checks"] == [_checks_file(result)]
    assert _checks(result) == [
        {
            "name": "system-running",
            "builtin": "system-running",
            "ignore_units": ["systemd-networkd-wait-online.service"],
            "timeout": 300,
        },
        {
            "name": "web",
            "command": [CURL, "--fail", "--silent", "http://127.0.0.1:8080/health"],
            "timeout": 2.5,
        },
        {"name": "dns", "command": [DIG, "+short", "@127.0.0.1", "example.com"]},
    ]


def test_the_built_in_check_is_the_listeners_system_running(evaluated: dict[str, Any]) -> None:
    """The default check names the listener's built-in check, by the word it reads."""
    from fleet_core.config.options import SYSTEM_RUNNING_CHECK

    (default,) = _checks(evaluated["minimal"])
    assert default["builtin"] == default["name"] == SYSTEM_RUNNING_CHECK


def test_without_checks_no_file_is_passed(evaluated: dict[str, Any]) -> None:
    """With the built-in check off and no healthChecks the module writes no file and passes
    no --health-checks of its own, so one in extraArgs is the only one."""
    result = evaluated["no-checks"]
    assert result["healthChecksJson"] == "[]"
    assert _flags(result["service"])["--health-checks"] == ["/etc/fleet-deploy/checks.json"]
    assert _argv(result["service"])[-2:] == ["--health-checks", "/etc/fleet-deploy/checks.json"]


def test_declared_checks_stand_alone_without_the_built_in_one(evaluated: dict[str, Any]) -> None:
    """With the built-in check off, the file holds the declared checks alone, and its name is
    free for one of them."""
    result = evaluated["custom-checks-only"]
    assert _checks(result) == [{**A_CHECK, "name": "system-running"}]
    assert _flags(result["service"])["--health-checks"] == [_checks_file(result)]


def test_rollback_is_the_listeners_unless_turned_off(evaluated: dict[str, Any]) -> None:
    """By default neither --no-rollback nor --confirm-timeout is passed (the listener rolls
    back, after its own confirmation timeout); rollback.enable = false passes --no-rollback,
    and confirmTimeout its seconds."""
    minimal = _flags(evaluated["minimal"]["service"])
    assert "--no-rollback" not in minimal
    assert "--confirm-timeout" not in minimal
    full = _flags(evaluated["full"]["service"])
    assert full["--no-rollback"] == []
    assert full["--confirm-timeout"] == ["600"]


@pytest.mark.parametrize("case", ["minimal", "full", "homelab", "no-checks"])
def test_rollback_and_the_built_in_check_run_the_hosts_own_tools(
    evaluated: dict[str, Any], case: str
) -> None:
    """nix-env (a rollback's `--profile … --set`) and systemctl (the built-in check) are
    nix.package's and systemd.package's, by store path, whatever the other options."""
    flags = _flags(evaluated[case]["service"])
    assert flags["--nix-env-command"] == [NIX_ENV]
    assert flags["--systemctl-command"] == [SYSTEMCTL]


@pytest.mark.parametrize("case", ["minimal", "full", "homelab"])
def test_a_closure_deploy_fetches_with_the_hosts_own_nix_store(
    evaluated: dict[str, Any], case: str, tmp_path: Path
) -> None:
    """A closure deploy's fetch runs nix.package's nix-store by store path, and the store is
    the listener's default, /nix/store: the real listener takes exactly that from the command
    line the module renders. Substituters and trusted keys are nix's settings, no flag."""
    from fleet_core.cli import build_parser
    from fleet_core.config.resolve import listener_settings

    result = evaluated[case]
    flags = _flags(result["service"])
    assert flags["--nix-store-command"] == [NIX_STORE]
    assert "--store-dir" not in flags
    assert not {f for f in flags if "substituter" in f or "public-key" in f}
    argv = _argv(result["service"])
    checks_file = tmp_path / CHECKS_FILE_NAME
    checks_file.write_text(result["healthChecksJson"])
    argv[argv.index("--health-checks") + 1] = str(checks_file)
    parsed = vars(build_parser().parse_args(argv[1:]))
    settings = listener_settings(
        parsed, environ={"INVOCATION_ID": "0123"}, systemd_booted=True, root=True
    )
    assert settings.nix_store_command == (NIX_STORE,)
    assert settings.store_dir == Path("/nix/store")


@pytest.mark.parametrize("case", ["minimal", "full", "custom-checks-only"])
def test_the_real_listener_takes_the_checks_and_the_rollback_flags(
    evaluated: dict[str, Any], case: str, tmp_path: Path
) -> None:
    """The command line and the checks file the module renders are what `fleet-deploy
    listener` parses and accepts: its rollback settings are the options' values."""
    from fleet_core.cli import build_parser
    from fleet_core.config.resolve import listener_settings

    result = evaluated[case]
    argv = _argv(result["service"])
    checks_file = tmp_path / CHECKS_FILE_NAME
    checks_file.write_text(result["healthChecksJson"])
    argv[argv.index("--health-checks") + 1] = str(checks_file)
    flags = vars(build_parser().parse_args(argv[1:]))
    settings = listener_settings(
        flags, environ={"INVOCATION_ID": "0123"}, systemd_booted=True, root=True
    )
    rollback = settings.rollback
    assert rollback.enabled is (case != "full")
    assert rollback.nix_env == (NIX_ENV,)
    assert rollback.systemctl == (SYSTEMCTL,)
    declared = _checks(result)
    assert [c.name for c in rollback.checks] == [c["name"] for c in declared]
    for check, entry in zip(rollback.checks, declared, strict=True):
        assert check.builtin == entry.get("builtin")
        assert check.argv == tuple(entry.get("command", ()))
        assert check.ignore_units == tuple(entry.get("ignore_units", ()))
        if "timeout" in entry:
            assert check.timeout == entry["timeout"]
    if case == "full":
        assert rollback.confirm_timeout == 600


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
        "no-checks",
        "custom-checks-only",
        "homelab",
        "homelab-metrics-flags",
    ):
        assert evaluated[case]["failedAssertions"] == [], case


@pytest.mark.parametrize("label", list(BAD_SETTINGS))
def test_a_bad_setting_fails_its_assertion(evaluated: dict[str, Any], label: str) -> None:
    """Each bad setting fails exactly one assertion, naming the option and what to change."""
    _, fragment = BAD_SETTINGS[label]
    assert_fails_one_assertion(evaluated[case_name(label)]["failedAssertions"], fragment, OPT)


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
        "--health-checks": [_checks_file(result)],
        **ALWAYS,
        "--nkey-file": ["%d/nkey"],
        "--debug": [],
        "--heartbeat-interval": ["5"],
    }
    assert _checks(result) == DEFAULT_CHECKS
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
    renamed |= {f"builder.{name}" for name in HOMELAB_BUILDER_RENAMED}
    assert declared == renamed | set(HOMELAB_REMOVED)
    assert set(evaluated["minimal"]["optionNames"]) >= HOMELAB_RENAMED
    assert set(evaluated["minimal"]["builderOptionNames"]) >= HOMELAB_BUILDER_RENAMED
    # By convention: each builder row is a listener row's name too.
    assert HOMELAB_BUILDER_RENAMED <= HOMELAB_RENAMED


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
    (message,) = evaluated[case_name(f"homelab {path}")]["failedAssertions"]
    assert f"`services.homelab-deploy.{path}'" in message, message
    assert "no longer has any effect" in message, message
    assert fragment in " ".join(message.split()), message


@pytest.mark.parametrize("label", list(BAD_TYPES))
def test_a_bad_option_type_is_rejected(lib_dir: Path, label: str) -> None:
    """A value of the wrong type stops evaluation with an error naming the option."""
    override, fragment = BAD_TYPES[label]
    result = eval_cases(HARNESS, lib_dir, {"case": {"listener": {**MINIMAL, **override}}})
    assert result.returncode != 0, result.stdout
    assert fragment in result.stderr, result.stderr


# --- the builder ---------------------------------------------------------------------------


def test_every_builder_option_is_a_flag_or_accounted_for(evaluated: dict[str, Any]) -> None:
    """The module declares exactly the builder options this file maps to flags, and each of
    those flags is one `fleet-deploy builder` takes."""
    from fleet_core.config.options import BUILDER

    declared = set(evaluated["builder-minimal"]["builderOptionNames"])
    assert declared == set(BUILDER_FLAG_FOR_OPTION) | BUILDER_NOT_FLAGS
    taken = {option.flag for option in BUILDER.options}
    assert set(BUILDER_FLAG_FOR_OPTION.values()) <= taken


def test_full_builder_configuration_passes_a_flag_for_every_option(
    evaluated: dict[str, Any],
) -> None:
    """With every builder option set, ExecStart carries each one as its flag (a repository
    as NAME=URL), the credentials from %d, extraArgs last."""
    service = evaluated["builder-full"]["builderService"]
    assert _flags(service, "builder") == {
        "--name": ["ci"],
        "--nats-url": ["nats://nats1.example.com:4222,nats://nats2.example.com:4222"],
        "--repo": [
            "edge=github:example/edge?dir=hosts",
            "nixos-servers=git+https://git.example.com/infra/nixos.git",
        ],
        "--cache": ["s3://nix-cache?region=eu-west-1"],
        "--timeout": ["7200"],
        "--heartbeat-interval": ["5"],
        "--log-level": ["warning"],
        "--nkey-file": ["%d/nkey"],
        "--repos-file": ["%d/repos"],
        "--nix-command": ["nix --option max-jobs 4"],
    }
    assert _argv(service)[-2:] == BUILDER_FULL["extraArgs"]
    assert set(BUILDER_FLAG_FOR_OPTION.values()) <= set(_flags(service, "builder"))
    assert evaluated["builder-full"]["failedAssertions"] == []


def test_minimal_builder_configuration_leaves_defaults_to_the_application(
    evaluated: dict[str, Any],
) -> None:
    """Unset builder options pass no flag, and the name comes from networking.hostName."""
    result = evaluated["builder-minimal"]
    assert _flags(result["builderService"], "builder") == {
        "--name": ["ci1"],
        "--nats-url": ["nats://nats.example.com:4222"],
        "--repo": ["nixos-servers=git+https://git.example.com/infra/nixos.git"],
        "--nkey-file": ["%d/nkey"],
    }
    assert result["failedAssertions"] == []
    assert result["warnings"] == []
    # The builder alone: no listener unit.
    assert result["service"] is None


def test_the_builder_secrets_are_credentials_not_arguments(evaluated: dict[str, Any]) -> None:
    """The seed, the repositories file and each of `credentials` are loaded with
    LoadCredential; no path of theirs is on the command line, only %d/nkey and %d/repos."""
    service = evaluated["builder-full"]["builderService"]
    config = service["serviceConfig"]
    assert config["LoadCredential"] == [
        f"nkey:{BUILDER_SEED}",
        f"repos:{REPOS_FILE}",
        "aws:/run/secrets/nix-cache-aws",
        "git-ssh-key:/run/secrets/git-key",
    ]
    exec_start = config["ExecStart"]
    assert " --nkey-file %d/nkey --repos-file %d/repos " in exec_start
    for path in (BUILDER_SEED, REPOS_FILE, "/run/secrets/nix-cache-aws", "/run/secrets/git-key"):
        assert path not in exec_start, path
    # A credential's fixed path, as `environment` names it.
    assert service["environment"]["AWS_SHARED_CREDENTIALS_FILE"] == f"{BUILDER_CREDENTIALS_DIR}/aws"


def test_the_repositories_file_alone_is_enough(evaluated: dict[str, Any]) -> None:
    """reposFile without repos: no --repo at all, the file as a credential, no assertion."""
    result = evaluated["builder-file-only"]
    flags = _flags(result["builderService"], "builder")
    assert "--repo" not in flags
    assert flags["--repos-file"] == ["%d/repos"]
    assert result["builderService"]["serviceConfig"]["LoadCredential"] == [
        f"nkey:{BUILDER_SEED}",
        f"repos:{REPOS_FILE}",
    ]
    assert result["failedAssertions"] == []


def test_a_token_in_a_repository_or_cache_url_is_not_repeated(evaluated: dict[str, Any]) -> None:
    """The assertions that refuse a repository URL or a cache URL with a secret name the
    repository (or the option), never the secret."""
    (repo,) = evaluated[case_name("repository URL with a token")]["failedAssertions"]
    assert "SECRET" not in repo and "glpat" not in repo
    assert f"{BOPT}.reposFile" in repo
    (cache,) = evaluated[case_name("cache URL with a password")]["failedAssertions"]
    assert "SECRET" not in cache


def test_the_builder_talks_to_the_nix_daemon_from_its_own_directories(
    evaluated: dict[str, Any],
) -> None:
    """nix (the host's), git and ssh are on the PATH; nix uses the daemon, and its home and
    cache are the state and cache directories systemd creates for the dynamic user; the
    environment option adds to these."""
    service = evaluated["builder-full"]["builderService"]
    names = {entry.rsplit("-", 1)[-1] for entry in service["path"]}
    assert {"nix", "git", "openssh"} <= names
    config = service["serviceConfig"]
    assert config["StateDirectory"] == config["CacheDirectory"] == "fleet-deploy-builder"
    assert config["StateDirectoryMode"] == config["CacheDirectoryMode"] == "0700"
    assert service["environment"] == {
        "NIX_REMOTE": "daemon",
        "HOME": "/var/lib/fleet-deploy-builder",
        "XDG_CACHE_HOME": "/var/cache/fleet-deploy-builder",
        **BUILDER_FULL["environment"],
    }


def test_the_builder_restarts_on_failure_once_the_network_is_online(
    evaluated: dict[str, Any],
) -> None:
    """The builder's unit starts at boot after network-online.target, restarts on failure,
    and logs to the journal under its own name."""
    service = evaluated["builder-minimal"]["builderService"]
    assert "network-online.target" in service["wants"]
    assert "network-online.target" in service["after"]
    assert service["wantedBy"] == ["multi-user.target"]
    config = service["serviceConfig"]
    assert config["Restart"] == "on-failure"
    assert config["SyslogIdentifier"] == "fleet-deploy-builder"


def test_builder_option_values_cannot_become_systemd_specifiers(
    evaluated: dict[str, Any],
) -> None:
    """`%` and `$` in builder option values are escaped, as for the listener."""
    config = evaluated["builder-escaping"]["builderService"]["serviceConfig"]
    assert '"nixos=git+https://git.example.com/nixos%%20configs.git"' in config["ExecStart"]
    assert '"nix --option cores $$CORES"' in config["ExecStart"]
    assert config["LoadCredential"] == ["nkey:/run/secrets/fleet%%builder.seed"]


def test_a_disabled_builder_defines_no_unit(evaluated: dict[str, Any]) -> None:
    """With enable = false the module adds no builder unit and no assertion."""
    assert evaluated["builder-disabled"]["builderService"] is None
    assert evaluated["builder-disabled"]["failedAssertions"] == []
    assert evaluated["minimal"]["builderService"] is None


def test_the_listener_and_the_builder_share_a_host(evaluated: dict[str, Any]) -> None:
    """Both services on one host: each unit is what it is alone."""
    both = evaluated["listener-and-builder"]
    assert both["failedAssertions"] == []
    assert both["service"] == evaluated["minimal"]["service"]
    assert _flags(both["builderService"], "builder")["--name"] == ["web1"]


# Sandboxing for a service that only asks the nix-daemon to build, as a dynamic user.
BUILDER_HARDENING = {
    "DynamicUser": True,
    "CapabilityBoundingSet": "",
    "PrivateUsers": True,
    "ProtectSystem": "strict",
    "ProtectHome": True,
    "PrivateTmp": True,
    "ProtectProc": "invisible",
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
    "RemoveIPC": True,
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
# What it must not set (nix/builder.nix says why): NATS, git and caches may be anywhere; a
# PID namespace would make Python PID 1; a static user is not needed.
BUILDER_NOT_HARDENED = {"PrivateNetwork", "IPAddressDeny", "PrivatePIDs", "User"}


@pytest.mark.parametrize("case", ["builder-minimal", "builder-full", "homelab-builder"])
def test_the_builder_unit_is_hardened(evaluated: dict[str, Any], case: str) -> None:
    """The builder's unit runs as a dynamic user without capabilities, in the sandbox a
    nix-daemon client allows."""
    config = evaluated[case]["builderService"]["serviceConfig"]
    assert {k: config.get(k) for k in BUILDER_HARDENING} == BUILDER_HARDENING
    assert not BUILDER_NOT_HARDENED & set(config)


def test_valid_builder_configurations_pass_every_assertion(evaluated: dict[str, Any]) -> None:
    for case in (
        "builder-full",
        "builder-minimal",
        "builder-file-only",
        "builder-escaping",
        "listener-and-builder",
        "homelab-builder",
    ):
        assert evaluated[case]["failedAssertions"] == [], case


@pytest.mark.parametrize("label", list(BUILDER_BAD_SETTINGS))
def test_a_bad_builder_setting_fails_its_assertion(evaluated: dict[str, Any], label: str) -> None:
    """Each bad builder setting fails exactly one assertion, naming the option and what to
    change."""
    _, fragment = BUILDER_BAD_SETTINGS[label]
    assert_fails_one_assertion(evaluated[case_name(label)]["failedAssertions"], fragment, BOPT)


def test_an_empty_hostname_points_the_builder_at_networking_hostname(
    evaluated: dict[str, Any],
) -> None:
    (message,) = evaluated["builder-no-hostname"]["failedAssertions"]
    assert 'name is ""' in message
    assert "networking.hostName" in message


@pytest.mark.parametrize("label", list(BUILDER_BAD_TYPES))
def test_a_bad_builder_option_type_is_rejected(lib_dir: Path, label: str) -> None:
    """A builder value of the wrong type stops evaluation with an error naming the option."""
    override, fragment = BUILDER_BAD_TYPES[label]
    result = eval_cases(HARNESS, lib_dir, {"case": {"builder": {**BUILDER_MINIMAL, **override}}})
    assert result.returncode != 0, result.stdout
    assert fragment in result.stderr, result.stderr


def test_a_homelab_deploy_builder_configuration_runs_the_builder(
    evaluated: dict[str, Any],
) -> None:
    """homelab-deploy's builder options, unchanged, reach fleet-deploy's builder, each with a
    warning naming its new name."""
    result = evaluated["homelab-builder"]
    service = result["builderService"]
    assert _flags(service, "builder") == {
        "--name": ["ci1"],
        "--nats-url": ["nats://nats.example.com:4222"],
        "--repo": ["nixos-servers=git+https://git.example.com/infra/nixos.git"],
        "--timeout": ["5400"],
        "--nkey-file": ["%d/nkey"],
        "--debug": [],
        "--heartbeat-interval": ["5"],
    }
    assert _argv(service)[-3:] == HOMELAB_BUILDER["extraArgs"]
    assert service["serviceConfig"]["LoadCredential"] == [f"nkey:{HOMELAB_BUILDER['nkeyFile']}"]
    assert service["environment"]["AWS_PROFILE"] == "nix-cache"
    expected = sorted(
        f"The option `services.homelab-deploy.builder.{name}' defined in `<unknown-file>' "
        f"has been renamed to `{BOPT}.{name}'."
        for name in HOMELAB_BUILDER
    )
    assert sorted(result["warnings"]) == expected
    assert set(HOMELAB_BUILDER) == HOMELAB_BUILDER_RENAMED


# --- the flake, the Python overlay and the VM test, against stand-ins for nixpkgs ---------

FLAKE_EXPR = (
    FLAKE_PRELUDE
    + """
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
)


def test_the_flake_declares_its_outputs_for_both_systems(lib_dir: Path) -> None:
    """flake.nix offers package, app, module, dev shell, formatter and checks on both Linuxes."""
    flake = eval_expr(FLAKE_EXPR, lib_dir)
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
    assert flake["checks"] == {s: ["closures", "package", "vm"] for s in systems}
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
    result = eval_expr(OVERLAY_EXPR, lib_dir)
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
    "prometheus-client" "structlog" "starlette" "uvicorn" "sse-starlette"
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
    package = eval_expr(PACKAGE_EXPR, lib_dir)
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
    # The script's text is forced, so what it interpolates must exist.
    writeShellScript =
      name: text: builtins.seq text "/nix/store/00000000000000000000000000000000-${name}";
    curl = "curl";
    coreutils = "/nix/store/00000000000000000000000000000000-coreutils";
  };
  test = import (repo + "/nix/tests/vm.nix") {
    inherit pkgs;
    module = "fleet-deploy-module";
    # Like the package: a derivation's outPath, and passthru.python.
    package = {
      outPath = "/nix/store/00000000000000000000000000000000-fleet-deploy";
      python = {
        interpreter = "/nix/store/00000000000000000000000000000000-python3/bin/python3.13";
        sitePackages = "lib/python3.13/site-packages";
      };
    };
  };
  etc = lib.foldl' (all: node: all // test.nodes.${node}.environment.etc or { }) { } (
    builtins.attrNames test.nodes
  );
in
{
  inherit (test) name testScript;
  nodes = builtins.attrNames test.nodes;
  users = test.nodes.nats.services.nats.settings.authorization.users;
  listener = builtins.removeAttrs test.nodes.web1.services.fleet-deploy.listener [ "enable" ];
  web1Etc = test.nodes.web1.environment.etc;
  installBootLoader = test.nodes.web1.system.build.installBootLoader;
  specialisations = builtins.mapAttrs (_: s: s.configuration) test.nodes.web1.specialisation;
  homelab = test.nodes.web2.services;
  builder = test.nodes.builder.services.fleet-deploy.builder;
  builderImports = test.nodes.builder.imports;
  seeds = map (f: toString f.source) (lib.filter (f: f ? source) (builtins.attrValues etc));
  etcModes = lib.mapAttrs (_: f: f.mode or null) etc;
}
"""


def test_the_vm_test_is_well_formed(lib_dir: Path) -> None:
    """The VM test has four nodes, a Python script that compiles, and subtests; web2 is
    configured with homelab-deploy's option names alone, metrics and extraArgs included, and
    the script scrapes its metrics."""
    vm = eval_expr(VM_EXPR, lib_dir)
    assert vm["nodes"] == ["builder", "deployer", "nats", "web1", "web2"]
    compile(vm["testScript"], "nix/tests/vm.nix:testScript", "exec")
    assert vm["testScript"].count("with subtest(") >= 5
    assert "fleet-deploy deploy" in vm["testScript"]
    assert vm["listener"]["nkeyFile"].startswith("/etc/")
    assert sorted(Path(s).name for s in vm["seeds"]) == [
        "admin-deployer.seed",
        "builder.seed",
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


def test_the_vm_test_deploys_a_bad_system_and_sees_it_rolled_back(lib_dir: Path) -> None:
    """web1 has a health check of its own, on a file of its configuration that the `bad`
    specialisation drops, a `good` specialisation beside it and a stand-in boot loader; the
    script deploys good (test), then bad (switch), and expects failed/rolled_back with good
    running again, then bad with --no-rollback, which stays."""
    vm = eval_expr(VM_EXPR, lib_dir)
    (marker,) = vm["listener"]["healthChecks"]
    program, *arguments = marker["command"]
    assert program == "/nix/store/00000000000000000000000000000000-coreutils/bin/test"
    assert arguments == ["-e", "/etc/fleet-deploy-vm/healthy"]
    assert "fleet-deploy-vm/healthy" in vm["web1Etc"]
    specialisations = vm["specialisations"]
    assert set(specialisations) == {"changed", "good", "bad"}
    dropped = specialisations["bad"]["environment"]["etc"]["fleet-deploy-vm/healthy"]["enable"]
    assert dropped == {"_type": "override", "content": False, "priority": 50}
    assert "fleet-deploy-vm/healthy" not in specialisations["good"].get("environment", {}).get(
        "etc", {}
    )
    assert vm["installBootLoader"]["content"].endswith("-install-dummy-loader")
    # The listener is the same in both, so neither deploy restarts it.
    assert "services" not in specialisations["good"]
    assert "services" not in specialisations["bad"]
    script = vm["testScript"]
    for expected in (
        'deploy_web1("test")',
        'deploy_web1("switch")',
        'deploy_web1("test", " --no-rollback")',
        '("failed", "rolled_back")',
        '("failed", "check_failed")',
        'host["rolled_back_to"] == good',
        "nix-env --profile {SYSTEM_PROFILE} --set /run/current-system",
    ):
        assert expected in script, expected


# VM_EXPR with each shell script standing for its own text, where a node names it.
VM_SCRIPTS_EXPR = VM_EXPR.replace(
    """writeShellScript =
      name: text: builtins.seq text "/nix/store/00000000000000000000000000000000-${name}";""",
    "writeShellScript = name: text: text;",
)


def test_the_vm_tests_shell_scripts_parse(lib_dir: Path) -> None:
    """The stand-ins for nixos-rebuild, nix and the boot loader are valid bash, and the
    rebuild's stand-in activates as nixos-rebuild does: a switch sets the system profile
    before switch-to-configuration switch, and a failed step fails the rebuild."""
    bash = shutil.which("bash")
    if bash is None:
        missing_tool("bash is not installed", "apt-get install -y bash")
    assert "writeShellScript = name: text: text;" in VM_SCRIPTS_EXPR
    vm = eval_expr(VM_SCRIPTS_EXPR, lib_dir)
    scripts = {
        "stand-in-nixos-rebuild": vm["listener"]["extraArgs"][1],
        "stand-in-nix": vm["builder"]["extraArgs"][1],
        "install-dummy-loader": vm["installBootLoader"]["content"],
    }
    for name, text in scripts.items():
        checked = subprocess.run(
            [bash, "-n"], input=text, capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, f"{name}: {checked.stderr}"
    rebuild = scripts["stand-in-nixos-rebuild"]
    assert 'nix-env --profile /nix/var/nix/profiles/system --set "$target" || exit' in rebuild
    assert '"$target/bin/switch-to-configuration" switch || exit' in rebuild
    assert '"$target/bin/switch-to-configuration" test || exit' in rebuild


def test_the_vm_hosts_listener_passes_the_modules_checks(lib_dir: Path) -> None:
    """web1's listener settings, evaluated by the real module with the offline stubs, trip no
    assertion and give the listener the built-in check, then web1's own, and the rollback
    settings the script expects."""
    vm = eval_expr(VM_EXPR, lib_dir)
    result = evaluate(
        HARNESS,
        lib_dir,
        {"web1": {"hostName": "web1", "listener": {**vm["listener"], "enable": True}}},
    )["web1"]
    assert result["failedAssertions"] == []
    assert [c["name"] for c in _checks(result)] == ["system-running", "marker"]
    flags = _flags(result["service"])
    assert flags["--health-checks"] == [_checks_file(result)]
    assert flags["--confirm-timeout"] == ["60"]
    assert "--no-rollback" not in flags


def test_the_vm_test_runs_the_builder_through_the_module(lib_dir: Path) -> None:
    """The builder node runs the builder through the module with the package's stand-in
    nix, both ways of giving repositories, a seed and a repositories file outside the store
    and readable by root alone; a deployer builds with `fleet-deploy build <repo> all`."""
    vm = eval_expr(VM_EXPR, lib_dir)
    builder = vm["builder"]
    assert vm["builderImports"] == ["fleet-deploy-module"]
    assert builder["enable"] is True
    assert builder["nkeyFile"].startswith("/etc/")
    assert builder["reposFile"].startswith("/etc/")
    assert list(builder["repos"]) == ["fleet"]
    assert builder["cache"].startswith("file:///var/cache/fleet-deploy-builder/")
    assert builder["extraArgs"][0] == "--nix-command"
    assert builder["extraArgs"][1].endswith("-stand-in-nix")
    assert vm["etcModes"]["fleet-deploy/builder-repos.toml"] == "0400"
    script = vm["testScript"]
    assert "fleet-deploy build {repo} {target}" in script
    assert 'build("fleet", "all", "admin")' in script
    assert 'build("private", "web1", "test")' in script


def _as_nats(permissions: UserPermissions) -> dict[str, object]:
    """``permissions`` as the NixOS NATS module's settings hold them."""
    subscribe: object = list(permissions.subscribe)
    if permissions.deny_subscribe:
        subscribe = {"allow": subscribe, "deny": list(permissions.deny_subscribe)}
    publish: object = list(permissions.publish)
    if permissions.deny_publish:
        publish = {"allow": publish, "deny": list(permissions.deny_publish)}
    return {"publish": publish, "subscribe": subscribe}


def test_the_vm_nats_users_follow_the_tiered_layout(lib_dir: Path) -> None:
    """The VM's NATS server admits the committed test keys with the permissions
    `fleet-deploy nats-config` writes (its default, bound layout)."""
    users = {u["nkey"]: u["permissions"] for u in eval_expr(VM_EXPR, lib_dir)["users"]}

    def public(name: str) -> str:
        return (KEYS_DIR / f"{name}.pub").read_text().strip()

    for host in ("web1", "web2"):
        entry = HostEntry(host, Tier.TEST, public(f"listener-{host}"), role="web")
        assert users[public(f"listener-{host}")] == _as_nats(listener_permissions(entry))
    assert users[public("test-deployer")] == _as_nats(deployer_permissions("test"))
    assert users[public("admin-deployer")] == _as_nats(deployer_permissions("admin"))
    builder = BuilderEntry("builder", public("builder"), repos=("fleet", "private"))
    assert users[public("builder")] == _as_nats(builder_permissions(builder))
    assert len(users) == 5


def test_the_test_seeds_match_their_public_keys() -> None:
    """Each committed test-only seed derives the public key the VM's NATS server trusts."""
    seeds = sorted(KEYS_DIR.glob("*.seed"))
    assert len(seeds) == 5
    for seed in seeds:
        derived = nkeys.from_seed(bytearray(seed.read_bytes().strip())).public_key.decode()
        assert derived == seed.with_suffix(".pub").read_text().strip(), seed.name
