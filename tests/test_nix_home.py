"""The Home Manager module renders the user service it promises, on macOS and on Linux.

nix/home-manager.nix is evaluated through nix/eval-home-module.nix, which stubs the few Home
Manager options it touches (launchd.agents, systemd.user.services, home.*, xdg.*), `lib.hm.dag`
and a `pkgs` that says which platform it is. Like tests/test_nix.py (with which it shares
tests/nix_eval.py and its `lib_dir` fixture) it needs `nix-instantiate` and `NIXPKGS_LIB`, and
builds nothing; under CI a missing tool fails instead of skipping.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from fleet_core.cli import build_parser
from fleet_core.config.resolve import listener_settings
from fleet_core.host.listener import RESTART_EXIT_CODE
from fleet_core.protocol.actions import HostKind

from .nix_eval import (
    A_SEED,
    ADMIN_KEY,
    FLAKE_PRELUDE,
    OPT,
    TEST_KEY,
    assert_fails_one_assertion,
    case_name,
    eval_expr,
    evaluate,
    lib_dir,
    parse_flags,
)

__all__ = ["lib_dir"]  # the fixture, imported for pytest to find

MAC_HOME = "/Users/alice"
LINUX_HOME = "/home/alice"
SEED = "/Users/alice/.config/fleet-deploy/listener.seed"
LINUX_SEED = "/home/alice/.config/fleet-deploy/listener.seed"
FLAKE_FILE = "/home/alice/.config/fleet-deploy/flake-url"

MAC: dict[str, Any] = {
    "enable": True,
    "hostname": "mac1",
    "tier": "test",
    "natsUrl": "nats://nats.example.com:4222",
    "nkeyFile": SEED,
    "flakeUrl": "git+https://git.example.com/alice/configs.git",
    "configuration": "alice@mac1",
}
MAC_FULL: dict[str, Any] = {
    **{k: v for k, v in MAC.items() if k != "flakeUrl"},
    "flakeUrlFile": "/Users/alice/.config/fleet-deploy/flake-url",
    "natsUrl": ["nats://nats1.example.com:4222", "nats://nats2.example.com:4222"],
    "role": "laptop",
    "timeout": 1800,
    "heartbeatInterval": 5,
    "trustedDeployerKeys": [ADMIN_KEY, TEST_KEY],
    "stateDir": "/Users/alice/Library/fleet-deploy",
    "logLevel": "debug",
    "extraArgs": ["--request-ttl", "30"],
}
# nix-darwin under a user agent: darwin-rebuild switch needs root, hence the sudo rule.
MAC_DARWIN: dict[str, Any] = {
    **{k: v for k, v in MAC.items() if k != "configuration"},
    "hostKind": "darwin",
    "extraArgs": ["--rebuild-command", "sudo -n /run/current-system/sw/bin/darwin-rebuild"],
}
LINUX: dict[str, Any] = {
    **{k: v for k, v in MAC.items() if k != "flakeUrl"},
    "hostname": "lin1",
    "nkeyFile": LINUX_SEED,
    "flakeUrlFile": FLAKE_FILE,
    "configuration": "alice@lin1",
}

# The flag each option turns into; the other options are not flags.
FLAG_FOR_OPTION = {
    "hostname": "--hostname",
    "tier": "--tier",
    "role": "--role",
    "natsUrl": "--nats-url",
    "nkeyFile": "--nkey-file",
    "flakeUrl": "--flake-url",
    "flakeUrlFile": "--flake-url-file",
    "hostKind": "--host-kind",
    "configuration": "--configuration",
    "timeout": "--timeout",
    "heartbeatInterval": "--heartbeat-interval",
    "trustedDeployerKeys": "--trusted-deployer-key",
    "stateDir": "--state-dir",
    "logLevel": "--log-level",
}
NOT_FLAGS = {"enable", "package", "extraArgs"}

# One bad setting on top of a valid case, and a piece of the assertion message it must give.
BAD_SETTINGS: dict[str, tuple[bool, dict[str, Any], str]] = {
    "no tier": (True, {"tier": None}, "tier is not set"),
    "no flake at all": (True, {"flakeUrl": None}, "set exactly one of flakeUrl"),
    "flake URL and flake URL file": (
        True,
        {"flakeUrlFile": FLAKE_FILE},
        "set exactly one of flakeUrl",
    ),
    "darwin kind on Linux": (
        False,
        {"hostKind": "darwin", "configuration": "lin1"},
        "not a Darwin system",
    ),
    "dotted darwin configuration": (
        True,
        {"hostKind": "darwin", "configuration": "mac1.local"},
        "darwin-rebuild does not quote it",
    ),
    "seed in the store": (True, {"nkeyFile": "/nix/store/0000-listener.seed"}, "outside the Nix"),
    "relative seed": (True, {"nkeyFile": "listener.seed"}, "Give the absolute path of the seed"),
    "flake URL file in the store": (
        False,
        {"flakeUrlFile": "/nix/store/0000-flake-url"},
        "flakeUrlFile is",
    ),
    "flake URL with a token": (
        True,
        {"flakeUrl": "git+https://oauth2:glpat-SECRET@git.example.com/c.git"},
        "set services.fleet-deploy.listener.flakeUrlFile instead",
    ),
    "flake URL with an attribute": (
        True,
        {"flakeUrl": "git+https://g/c.git#alice@mac1"},
        "without a '#attribute'",
    ),
    "hostile configuration": (True, {"configuration": "--impure"}, 'configuration is "--impure"'),
    "configuration with a fragment": (
        True,
        {"configuration": "a#b"},
        "letters, digits and . _ - @",
    ),
    "reserved hostname": (True, {"hostname": "all"}, 'hostname is "all"'),
    "trusted key that is a seed": (
        True,
        {"trustedDeployerKeys": [A_SEED]},
        "(a seed: a secret, left out here)",
    ),
    "relative state dir": (True, {"stateDir": "state"}, 'stateDir is "state"'),
    "seed through extraArgs": (True, {"extraArgs": ["--nkey=/x"]}, "extraArgs sets --nkey-file"),
    "host kind through extraArgs": (
        True,
        {"extraArgs": ["--host-kind", "nixos"]},
        "extraArgs sets --host-kind",
    ),
    "abbreviated configuration in extraArgs": (
        True,
        {"extraArgs": ["--conf=bob@mac1"]},
        "extraArgs sets --host-kind or --configuration",
    ),
}


CASES: dict[str, dict[str, Any]] = {
    "mac": {"darwin": True, "listener": MAC},
    "mac-full": {"darwin": True, "listener": MAC_FULL},
    "mac-darwin": {"darwin": True, "listener": MAC_DARWIN},
    "linux": {"darwin": False, "listener": LINUX},
    "disabled": {"darwin": True, "listener": {**MAC, "enable": False}},
    **{
        case_name(label): {
            "darwin": darwin,
            "listener": {**(MAC if darwin else LINUX), **override},
        }
        for label, (darwin, override, _) in BAD_SETTINGS.items()
    },
}


@pytest.fixture(scope="module")
def evaluated(lib_dir: Path) -> dict[str, Any]:
    """Every case in CASES, evaluated in one nix-instantiate call."""
    return evaluate("eval-home-module.nix", lib_dir, CASES)


def _flags(argv: list[str]) -> dict[str, list[str]]:
    """The `--flag value` pairs after `fleet-deploy listener`, values in order (every flag
    the module passes takes a value)."""
    return parse_flags(argv)


def result_configuration(argv: list[str]) -> str | None:
    """The --configuration the module passed, if any."""
    given = _flags(argv).get("--configuration")
    return given[0] if given else None


def _agent_argv(result: dict[str, Any]) -> list[str]:
    argv: list[str] = result["agent"]["config"]["ProgramArguments"]
    return argv


def _unit_argv(result: dict[str, Any]) -> list[str]:
    return shlex.split(result["service"]["Service"]["ExecStart"])


# --- the options ---------------------------------------------------------------------------


def test_every_option_is_a_flag_or_accounted_for(evaluated: dict[str, Any]) -> None:
    """The module declares exactly the options this file maps to flags."""
    assert set(evaluated["mac"]["optionNames"]) == set(FLAG_FOR_OPTION) | NOT_FLAGS


def test_the_full_configuration_passes_a_flag_for_every_option(
    evaluated: dict[str, Any],
) -> None:
    """With every option set, the agent's arguments carry each as its flag, extraArgs last."""
    assert evaluated["mac-full"]["failedAssertions"] == []
    argv = _agent_argv(evaluated["mac-full"])
    assert _flags(argv) == {
        "--hostname": ["mac1"],
        "--tier": ["test"],
        "--nats-url": ["nats://nats1.example.com:4222,nats://nats2.example.com:4222"],
        "--nkey-file": [SEED],
        "--host-kind": ["home-manager"],
        "--state-dir": ["/Users/alice/Library/fleet-deploy"],
        "--flake-url-file": [MAC_FULL["flakeUrlFile"]],
        "--configuration": ["alice@mac1"],
        "--role": ["laptop"],
        "--timeout": ["1800"],
        "--heartbeat-interval": ["5"],
        "--log-level": ["debug"],
        "--trusted-deployer-key": [ADMIN_KEY, TEST_KEY],
        "--request-ttl": ["30"],
    }
    assert argv[-2:] == MAC_FULL["extraArgs"]
    assert set(FLAG_FOR_OPTION.values()) - {"--flake-url"} <= set(_flags(argv))


# --- macOS: a launchd agent ------------------------------------------------------------------


def test_on_macos_it_is_a_launchd_agent(evaluated: dict[str, Any]) -> None:
    """A launchd agent that starts at load, is always restarted (the 75 of an upgrade
    included), runs in the background, leaves its jobs' processes alone, and logs to the
    state directory, which is also its working directory; no systemd unit."""
    result = evaluated["mac"]
    assert result["failedAssertions"] == []
    assert result["service"] is None
    assert result["agent"]["enable"] is True
    config = result["agent"]["config"]
    state = f"{MAC_HOME}/.local/state/fleet-deploy"
    assert {k: config[k] for k in ("RunAtLoad", "KeepAlive", "AbandonProcessGroup")} == {
        "RunAtLoad": True,
        "KeepAlive": True,
        "AbandonProcessGroup": True,
    }
    assert config["ProcessType"] == "Background"
    assert config["WorkingDirectory"] == state
    assert config["StandardOutPath"] == config["StandardErrorPath"] == f"{state}/listener.log"
    assert _flags(_agent_argv(result)) == {
        "--hostname": ["mac1"],
        "--tier": ["test"],
        "--nats-url": ["nats://nats.example.com:4222"],
        "--nkey-file": [SEED],
        "--host-kind": ["home-manager"],
        "--state-dir": [state],
        "--flake-url": [MAC["flakeUrl"]],
        "--configuration": ["alice@mac1"],
    }


def test_the_agent_finds_nix_and_home_manager(evaluated: dict[str, Any]) -> None:
    """launchd's bare PATH is replaced by one with the user's and the system's Nix
    profiles (home-manager, darwin-rebuild, nix) and git; it is the only variable."""
    environment = evaluated["mac"]["agent"]["config"]["EnvironmentVariables"]
    assert list(environment) == ["PATH"]
    path = environment["PATH"].split(":")
    assert f"{MAC_HOME}/.nix-profile/bin" in path
    assert "/etc/profiles/per-user/alice/bin" in path
    assert "/run/current-system/sw/bin" in path
    assert "/nix/var/nix/profiles/default/bin" in path
    assert any(p.endswith("-git/bin") for p in path)
    assert path[-1] == "/sbin"


def test_a_darwin_host_under_a_user_agent(evaluated: dict[str, Any]) -> None:
    """hostKind darwin passes --host-kind darwin and, without configuration, no
    --configuration (the listener builds #<hostname>); the sudo rule's command passes
    through extraArgs."""
    result = evaluated["mac-darwin"]
    assert result["failedAssertions"] == []
    flags = _flags(_agent_argv(result))
    assert flags["--host-kind"] == ["darwin"]
    assert "--configuration" not in flags
    assert flags["--rebuild-command"] == ["sudo -n /run/current-system/sw/bin/darwin-rebuild"]


# --- Linux: a systemd user service ---------------------------------------------------------


def test_on_linux_it_is_a_systemd_user_service(evaluated: dict[str, Any]) -> None:
    """A user service wanted by default.target, after network-online.target, always
    restarted, which a switch leaves running (it restarts itself when its unit changed);
    no launchd agent."""
    result = evaluated["linux"]
    assert result["failedAssertions"] == []
    assert result["agent"] is None
    service = result["service"]
    assert service["Install"]["WantedBy"] == ["default.target"]
    assert service["Unit"]["After"] == ["network-online.target"]
    assert service["Unit"]["X-SwitchMethod"] == "keep-old"
    assert service["Unit"]["X-RestartIfChanged"] is False
    config = service["Service"]
    assert config["Restart"] == "always"
    assert config["RestartForceExitStatus"] == str(RESTART_EXIT_CODE)
    assert config["SuccessExitStatus"] == str(RESTART_EXIT_CODE)
    state = f"{LINUX_HOME}/.local/state/fleet-deploy"
    assert config["WorkingDirectory"] == state
    assert _flags(_unit_argv(result)) == {
        "--hostname": ["lin1"],
        "--tier": ["test"],
        "--nats-url": ["nats://nats.example.com:4222"],
        "--nkey-file": [LINUX_SEED],
        "--host-kind": ["home-manager"],
        "--state-dir": [state],
        "--flake-url-file": [FLAKE_FILE],
        "--configuration": ["alice@lin1"],
        "--restart-if-changed": [
            f"{LINUX_HOME}/.config/systemd/user/fleet-deploy-listener.service"
        ],
    }


def test_the_unit_holds_no_secret(evaluated: dict[str, Any]) -> None:
    """The unit's environment is PATH alone, and its command line names the seed and the
    flake URL file by path: their contents are read by the listener, never rendered."""
    config = evaluated["linux"]["service"]["Service"]
    assert [e.partition("=")[0] for e in config["Environment"]] == ["PATH"]
    argv = _unit_argv(evaluated["linux"])
    assert argv.count(LINUX_SEED) == 1
    assert argv.count(FLAKE_FILE) == 1
    assert "--flake-url" not in argv


def test_the_state_directory_is_made_before_the_service_starts(
    evaluated: dict[str, Any],
) -> None:
    """An activation step makes the state directory (0700) after writeBoundary and before
    launchd agents or systemd user units are (re)started."""
    for case, home in (("mac", MAC_HOME), ("linux", LINUX_HOME)):
        step = evaluated[case]["activation"]
        assert step["data"].strip() == f"run mkdir -p -m 0700 {home}/.local/state/fleet-deploy"
        assert step["after"] == ["writeBoundary"]
        assert set(step["before"]) == {"setupLaunchAgents", "reloadSystemd"}


@pytest.mark.parametrize(
    ("case", "darwin"), [("mac", True), ("mac-full", True), ("mac-darwin", True), ("linux", False)]
)
def test_the_real_listener_takes_the_arguments(
    evaluated: dict[str, Any], case: str, darwin: bool, tmp_path: Path
) -> None:
    """The arguments the module renders are what `fleet-deploy listener` parses and
    accepts; under systemd --user (INVOCATION_ID, not root) a Home Manager listener runs
    rebuilds through systemd-run --user, under launchd in a session of its own."""
    result = evaluated[case]
    argv = _agent_argv(result) if darwin else _unit_argv(result)
    for flag in ("--flake-url-file",):  # a file the listener reads at start
        if flag in argv:
            url_file = tmp_path / "flake-url"
            url_file.write_text("git+https://git.example.com/alice/configs.git\n")
            argv[argv.index(flag) + 1] = str(url_file)
    flags = vars(build_parser().parse_args(argv[1:]))
    environ = {} if darwin else {"INVOCATION_ID": "0123"}
    settings = listener_settings(flags, environ=environ, systemd_booted=not darwin, root=False)
    assert settings.host_kind is HostKind(_flags(argv)["--host-kind"][0])
    assert settings.flake_configuration == (result_configuration(argv) or settings.hostname)
    assert settings.rebuild_runner == ("session" if darwin else "systemd")
    assert settings.systemd_user is (not darwin)


# --- assertions ------------------------------------------------------------------------------


@pytest.mark.parametrize("label", list(BAD_SETTINGS))
def test_a_bad_setting_fails_its_assertion(evaluated: dict[str, Any], label: str) -> None:
    """Each bad setting fails exactly one assertion, naming the option and what to change."""
    _, _, fragment = BAD_SETTINGS[label]
    assert_fails_one_assertion(evaluated[case_name(label)]["failedAssertions"], fragment, OPT)


def test_secrets_are_not_repeated_in_assertions(evaluated: dict[str, Any]) -> None:
    """Neither a token in the flake URL nor a seed among the trusted keys is printed."""
    (token,) = evaluated[case_name("flake URL with a token")]["failedAssertions"]
    assert "SECRET" not in token
    (seed,) = evaluated[case_name("trusted key that is a seed")]["failedAssertions"]
    assert A_SEED not in seed


def test_a_disabled_listener_defines_nothing(evaluated: dict[str, Any]) -> None:
    result = evaluated["disabled"]
    assert (result["agent"], result["service"], result["activation"]) == (None, None, None)
    assert result["failedAssertions"] == []


# --- the flake's export ----------------------------------------------------------------------

FLAKE_EXPR = (
    FLAKE_PRELUDE
    + """
  pkgsFor = system: {
    stdenv.hostPlatform.system = system;
    callPackage = path: _: { built = baseNameOf (toString path); };
  };
  moduleFor = system: self.homeManagerModules.default { inherit lib; pkgs = pkgsFor system; };
  package = system: (moduleFor system).services.fleet-deploy.listener.package;
in
{
  names = builtins.attrNames self.homeManagerModules;
  imports = map (p: baseNameOf (toString p)) (moduleFor "aarch64-darwin").imports;
  priority = (package "aarch64-darwin").priority;
  onDarwin = (package "aarch64-darwin").content;
  # On Linux the flake's own package: its nixpkgs is a stand-in that throws when forced.
  onLinux = (builtins.tryEval (package "x86_64-linux").content.outPath).success;
}
"""
)


def test_the_flake_exports_the_home_manager_module(lib_dir: Path) -> None:
    """homeManagerModules.fleet-deploy (and .default) import nix/home-manager.nix, with the
    package defaulting to this flake's build, or to package.nix where the flake builds none."""
    flake = eval_expr(FLAKE_EXPR, lib_dir)
    assert flake["names"] == ["default", "fleet-deploy"]
    assert flake["imports"] == ["home-manager.nix"]
    assert flake["priority"] == 1000  # mkDefault
    assert flake["onDarwin"] == {"built": "package.nix"}
    assert flake["onLinux"] is False
