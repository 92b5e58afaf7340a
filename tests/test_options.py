"""The option declarations: parsers and help come from them, and so do the settings' defaults.

Pure: no server, no subprocess. The CLI tests drive the same parsers through the real
console scripts.
"""

from __future__ import annotations

import argparse
import re

import pytest

from fleet_core.cli import build_parser
from fleet_core.config import resolve as settings_module
from fleet_core.config.options import COMMANDS, ENV_PREFIX, Command, Option, add_arguments, command
from fleet_core.errors import UsageError
from fleet_mcp.cli import build_parser as build_mcp_parser

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

ALL_OPTIONS = [(c.name, o) for c in COMMANDS for o in c.options]
_IDS = [f"{name}:{option.name}" for name, option in ALL_OPTIONS]


def help_of(declared: Command) -> str:
    """The --help text of a command as a user sees it, unwrapped."""
    if declared.name == "mcp":
        text = build_mcp_parser().format_help()
    else:
        parser = build_parser()
        sub = next(
            action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
        )
        text = sub.choices[declared.name].format_help()
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize(("name", "option"), ALL_OPTIONS, ids=_IDS)
def test_help_names_flag_variable_and_default(name: str, option: Option) -> None:
    """Every option's --help shows its flag, its FLEET_DEPLOY_ variable and its constant default."""
    text = help_of(command(name))
    shown = (option.metavar or option.name) if option.kind == "positional" else option.flag
    assert shown in text
    if option.variable is not None:
        assert f"[env {option.variable}]" in text
        assert option.variable.startswith(ENV_PREFIX)
    if option.required:
        assert "(required)" in text
    elif option.default_text is not None:
        assert f"(default: {option.default_text})" in text


@pytest.mark.parametrize(
    ("option", "shown"),
    [
        (Option("timeout", "t", default=600.0), "600"),
        (Option("delay", "d", default=0.15), "0.15"),
        (Option("subject", "s", default=("a", "b")), "a b"),
        (Option("state", "s", default=1, shown_default="$STATE_DIRECTORY"), "$STATE_DIRECTORY"),
        (Option("json", "j", kind="switch"), None),
    ],
)
def test_default_text_comes_from_the_constant(option: Option, shown: str | None) -> None:
    """Whole seconds read as integers, tuples as words; a switch shows no default."""
    assert option.default_text == shown


def test_settings_fall_back_to_the_declared_defaults() -> None:
    """With no flag and no variable, each settings object holds the declared constants."""
    listener = settings_module.listener_settings(
        {
            "hostname": "web1",
            "tier": "test",
            "nats_url": "nats://n",
            "nkey_file": "/k",
            "flake_url": "git+https://g/r",
        },
        environ={},
    )
    declared = {o.name: o.default for o in command("listener").options}
    assert listener.timeout == declared["timeout"]
    assert listener.deploy_subject_templates == declared["deploy_subject"]
    assert listener.discover_subject == declared["discover_subject"]
    assert listener.rebuild_command == (declared["rebuild_command"],)
    assert listener.log_level == declared["log_level"]
    mcp = settings_module.mcp_settings({"nats_url": "n", "nkey_file": "k"}, environ={})
    declared = {o.name: o.default for o in command("mcp").options}
    assert (mcp.heartbeat, mcp.deploy_timeout) == (
        declared["heartbeat"],
        declared["deploy_timeout"],
    )


def test_a_variable_is_read_like_its_flag() -> None:
    """A bad value from the environment gets the same check as the flag, naming the variable."""
    flags = {"target": "deploy.test.all", "nats_url": "n", "nkey_file": "k"}
    with pytest.raises(UsageError, match="FLEET_DEPLOY_TIMEOUT must be a number"):
        settings_module.deploy_settings(flags, environ={"FLEET_DEPLOY_TIMEOUT": "soon"})
    with pytest.raises(UsageError, match="--timeout must be a number"):
        settings_module.deploy_settings({**flags, "timeout": "soon"}, environ={})


def test_parsers_keep_values_as_text() -> None:
    """The parser converts nothing: settings see text or None, whatever the option."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, command("deploy").options)
    flags = vars(parser.parse_args(["deploy.test.all", "--timeout", "30", "--expect", "a"]))
    assert flags["timeout"] == "30"
    assert flags["expect"] == ["a"]
    assert flags["branch"] is None and flags["json"] is None


def test_every_command_is_declared_once() -> None:
    """Command names are unique, and each command's option names are unique."""
    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names))
    for declared in COMMANDS:
        options = [o.name for o in declared.options]
        assert len(options) == len(set(options)), declared.name


def test_homelab_deploy_counterparts_are_the_ones_it_reads() -> None:
    """Only the variables homelab-deploy reads with the same meaning fall back to it: its
    deploy command's five. The listener's --timeout (a rebuild's deadline) is not its
    HOMELAB_DEPLOY_TIMEOUT (a deployer's wait), and the sandbox reads nothing."""
    declared = {(c.name, o.legacy_variable) for c in COMMANDS for o in c.options}
    assert {v for _, v in declared if v} == {
        "HOMELAB_DEPLOY_NATS_URL",
        "HOMELAB_DEPLOY_NKEY_FILE",
        "HOMELAB_DEPLOY_BRANCH",
        "HOMELAB_DEPLOY_ACTION",
        "HOMELAB_DEPLOY_TIMEOUT",
    }
    assert ("deploy", "HOMELAB_DEPLOY_TIMEOUT") in declared
    assert ("listener", "HOMELAB_DEPLOY_TIMEOUT") not in declared
    for declared_command in COMMANDS:
        for option in declared_command.options:
            if option.legacy_variable is not None:
                assert option.variable is not None
                assert option.legacy_variable.removeprefix("HOMELAB_DEPLOY_") == (
                    option.variable.removeprefix(ENV_PREFIX)
                )
