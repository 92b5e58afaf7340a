"""The client configurations in examples/mcp launch a working fleet-mcp, exactly as written.

Each example is read the way its client reads it — ``mcpServers`` (Claude Desktop, Cursor),
``servers`` with ``type: "stdio"`` (VS Code), and the ``claude mcp add`` command that
``claude-code.sh`` runs (recorded by a stand-in ``claude``) — with its placeholders replaced
by a real fleet: the documented home directory becomes a temporary one holding the fleet's
seeds and a link to the installed ``fleet-mcp``, the example NATS URL the fleet's. Then the
command, arguments and environment it names are launched over stdio with the Python MCP
client, which lists the tools and lists hosts. The permission rule in
``claude-code-settings.json`` must name deploy_admin as Claude Code composes it from the
server name the examples use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import mcp
import pytest
from mcp.types import Tool

from .conftest import Fleet, scripts_dir

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "mcp"
DOCS = REPO / "docs" / "mcp.md"
SERVER_NAME = "fleet-deploy"
BASE_TOOLS = {"list_hosts", "deploy", "deployment_status"}
# The placeholders the examples use, and what stands for them here.
EXAMPLE_URL = "nats://nats.example.internal:4222"
EXAMPLE_HOMES = ("${userHome}", "/home/me")
JSON_EXAMPLES = {  # file: the key its client keeps servers under
    "claude_desktop_config.json": "mcpServers",
    "vscode-mcp.json": "servers",
    "cursor-mcp.json": "mcpServers",
}


@dataclass
class Launch:
    """What a client starts: the server's name in its config, command, args and env."""

    name: str
    command: str
    args: list[str]
    env: dict[str, str]


@pytest.fixture
def home(fleet: Fleet, tmp_path: Path) -> Path:
    """The home directory the examples assume, made real: the fleet's seeds where the
    examples look for them, and fleet-mcp where `pip install --user` would put it."""
    home = tmp_path / "home"
    keys = home / ".config" / "fleet-deploy"
    keys.mkdir(parents=True)
    for name, who in (("assistant.seed", "deployer"), ("assistant-admin.seed", "admin")):
        shutil.copyfile(fleet.keys[who], keys / name)
        (keys / name).chmod(0o600)
    bin_dir = home / ".local" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "fleet-mcp").symlink_to(scripts_dir() / "fleet-mcp")
    return home


def substitute(value: str, fleet: Fleet, home: Path) -> str:
    for placeholder in EXAMPLE_HOMES:
        value = value.replace(placeholder, str(home))
    value = value.replace(EXAMPLE_URL, fleet.url)
    assert "${" not in value, f"a variable this test does not know: {value}"
    assert "example.internal" not in value, f"a placeholder left: {value}"
    return value


def from_json(file: str, fleet: Fleet, home: Path) -> Launch:
    """The one server of a JSON example, as its client reads it, placeholders replaced."""
    config = json.loads((EXAMPLES / file).read_text())
    servers: Mapping[str, dict[str, Any]] = config[JSON_EXAMPLES[file]]
    [(name, server)] = servers.items()
    if file == "vscode-mcp.json":
        assert server["type"] == "stdio"  # VS Code requires it
    assert server.get("type", "stdio") == "stdio"
    return Launch(
        name=name,
        command=substitute(server["command"], fleet, home),
        args=[substitute(arg, fleet, home) for arg in server.get("args", [])],
        env={k: substitute(v, fleet, home) for k, v in server.get("env", {}).items()},
    )


async def tools_of(launch: Launch) -> dict[str, Tool]:
    """Start the launch as a stdio client does (its env over the client's default one), list
    the tools, and list hosts: a NATS URL or key that does not work is a tool error there."""
    params = mcp.StdioServerParameters(command=launch.command, args=launch.args, env=launch.env)
    async with mcp.Client(params) as client:
        with anyio.fail_after(60):
            tools = {t.name: t for t in (await client.list_tools()).tools}
            hosts = await client.call_tool("list_hosts", {})
    assert not hosts.is_error, hosts.content
    return tools


# -- the JSON configurations ---------------------------------------------------------------------


@pytest.mark.parametrize("file", sorted(JSON_EXAMPLES))
async def test_json_example_launches_the_test_tier_server(
    file: str, fleet: Fleet, home: Path
) -> None:
    """Claude Desktop's, VS Code's and Cursor's config start fleet-mcp with the test key."""
    launch = from_json(file, fleet, home)
    assert launch.name == SERVER_NAME
    assert launch.env["FLEET_DEPLOY_NKEY_FILE"] == str(home / ".config/fleet-deploy/assistant.seed")
    tools = await tools_of(launch)
    assert set(tools) >= BASE_TOOLS
    assert "deploy_admin" not in tools


# -- Claude Code -------------------------------------------------------------------------------


def claude_code(home: Path, url: str, tmp_path: Path, *args: str) -> tuple[int, str, list[str]]:
    """Run claude-code.sh with a stand-in `claude` that records its argv; the script's exit
    code, its stderr and the recorded `claude` argv ([] when it did not get that far)."""
    stub_dir = tmp_path / "stub-bin"
    stub_dir.mkdir(exist_ok=True)
    record = tmp_path / "claude-argv.json"
    stub = stub_dir / "claude"
    stub.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    stub.chmod(0o755)
    env = {
        "PATH": os.pathsep.join([str(stub_dir), str(scripts_dir()), "/usr/bin", "/bin"]),
        "HOME": str(home),
        "NATS_URL": url,
    }
    done = subprocess.run(
        ["sh", str(EXAMPLES / "claude-code.sh"), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    argv: list[str] = json.loads(record.read_text()) if record.exists() else []
    return done.returncode, done.stderr, argv


def parse_mcp_add(argv: list[str]) -> tuple[str, Launch]:
    """`claude mcp add [options] <name> -- <command> [args...]` as Claude Code reads it: the
    scope and the server it adds."""
    assert argv[:2] == ["mcp", "add"], argv
    split = argv.index("--")
    options, server = argv[2:split], argv[split + 1 :]
    values: dict[str, str] = {}
    names: list[str] = []
    tokens = iter(options)
    for token in tokens:
        if token in ("-t", "--transport", "-s", "--scope"):
            values[token.lstrip("-")[0]] = next(tokens)
        else:
            # -e/--env takes several values and would swallow the name: not used.
            assert not token.startswith("-"), f"unexpected option {token} in {argv}"
            names.append(token)
    assert values.get("t") == "stdio", argv
    [name] = names
    command, *args = server
    return values["s"], Launch(name=name, command=command, args=args, env={})


async def test_claude_code_adds_the_test_tier_server(
    fleet: Fleet, home: Path, tmp_path: Path
) -> None:
    """claude-code.sh adds fleet-deploy for every project, with fleet-mcp's full path from PATH
    and the seed from the documented place; the server it names starts and works."""
    code, stderr, argv = claude_code(home, fleet.url, tmp_path)
    assert code == 0, stderr
    scope, launch = parse_mcp_add(argv)
    assert (scope, launch.name) == ("user", SERVER_NAME)
    assert launch.command == str(scripts_dir() / "fleet-mcp")
    assert launch.args == [
        *("--nats-url", fleet.url),
        *("--nkey-file", str(home / ".config/fleet-deploy/assistant.seed")),
    ]
    tools = await tools_of(launch)
    assert set(tools) >= BASE_TOOLS
    assert "deploy_admin" not in tools


async def test_claude_code_admin_and_the_permission_rule(
    fleet: Fleet, home: Path, tmp_path: Path
) -> None:
    """claude-code.sh --admin adds the same server name for this project only, with
    deploy_admin; the settings' ask rule names deploy_admin as Claude Code composes it
    (mcp__<server>__<tool>), and what the rules allow without asking only reads."""
    code, stderr, argv = claude_code(home, fleet.url, tmp_path, "--admin")
    assert code == 0, stderr
    assert "claude-code-settings.json" in stderr
    scope, launch = parse_mcp_add(argv)
    assert (scope, launch.name) == ("local", SERVER_NAME)
    assert launch.args[-3:] == [
        "--enable-admin",
        "--admin-nkey-file",
        str(home / ".config/fleet-deploy/assistant-admin.seed"),
    ]
    tools = await tools_of(launch)
    assert BASE_TOOLS | {"deploy_admin"} <= set(tools)

    rules = json.loads((EXAMPLES / "claude-code-settings.json").read_text())["permissions"]
    prefix = f"mcp__{launch.name}__"
    assert rules["ask"] == [f"{prefix}deploy_admin"]
    for rule in rules.get("allow", []):
        assert rule.startswith(prefix), rule
        tool = tools[rule.removeprefix(prefix)]
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint is True, f"{rule} is allowed but not read-only"
    assert "deny" not in rules


def test_claude_code_without_a_seed_adds_nothing(tmp_path: Path) -> None:
    """With no seed where it looks, the script says which variable to set and adds nothing."""
    code, stderr, argv = claude_code(tmp_path / "empty-home", EXAMPLE_URL, tmp_path)
    assert code == 1
    assert "NKEY_FILE" in stderr
    assert argv == []


# -- the examples and the docs ---------------------------------------------------------------


def test_docs_show_and_link_the_examples() -> None:
    """docs/mcp.md links every example, and shows each JSON one as it is in its file."""
    page = DOCS.read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(\.\./examples/mcp/([^)\s]+)\)", page))
    assert linked == {p.name for p in EXAMPLES.iterdir()}
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", page, flags=re.DOTALL)]
    for file in (*JSON_EXAMPLES, "claude-code-settings.json"):
        assert json.loads((EXAMPLES / file).read_text()) in blocks, f"docs/mcp.md shows no {file}"
