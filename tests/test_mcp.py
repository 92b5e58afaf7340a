"""The MCP server through real ``mcp.Client`` sessions, against a real nats-server.

In-process sessions run in both protocol eras (the 2026 direct path and the legacy
initialize handshake); the listeners are real, their rebuild the packaged stand-in. The
subprocess tests drive the installed ``fleet-mcp`` / ``fleet-deploy mcp`` over stdio and HTTP.
"""

from __future__ import annotations

import re
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import mcp
import pytest
from mcp.types import TextContent, TextResourceContents

from fleet_core.deploy.results import FINAL_STATES
from fleet_core.protocol.actions import Action
from fleet_core.testing.embedded_server import EmbeddedNatsServer
from fleet_mcp.link import CONNECTION_WAIT
from fleet_mcp.reports.deployment import DeploymentReport
from fleet_mcp.reports.deployment_list import DeploymentsReport
from fleet_mcp.reports.hosts import HostsReport

from .conftest import FAST, HOSTS, TEST_HOSTS, Fleet, expected_argv, scripts_dir
from .support import (
    BASE_TOOLS,
    Session,
    fleet_mcp_over_http,
    prod_witness,
    scrape,
    series,
    session,
    settings_for,
    text_of,
    value,
)

pytestmark = pytest.mark.anyio

PROD_HOSTS = sorted(h for h in HOSTS if h not in TEST_HOSTS)
_DEPLOYMENT_ID = re.compile(r"deployment ([0-9a-f]{32})")
_HOST_NOTE = re.compile(r"(?P<host>[a-z0-9-]+) (?P<status>[a-z]+)(?: — .+)?")
_ORDER = ("accepted", "started", "progress")  # then one of FINAL_STATES


@pytest.fixture(params=["auto", "legacy"], ids=["modern", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both protocol eras: "auto" is the 2026 direct path in process, "legacy" the handshake."""
    return str(request.param)


def assert_notes_keep_the_promise(s: Session, report: DeploymentReport) -> None:
    """The notes of one finished single-host deploy call keep ``Deployment.follow``'s promise:
    increasing values, the deployment named first and in every note, each host's states in
    order and never twice (only progress may repeat), and its final state reported last."""
    values = [value for value, _ in s.progress]
    assert values == sorted(set(values)), "progress must increase with every notification"
    messages = s.messages()
    prefix = f"deployment {report.deployment_id}: "
    assert messages[0] == (f"{prefix}{report.action} of {report.revision} to {report.subject}"), (
        messages
    )
    assert all(m.startswith(prefix) for m in messages), messages
    named: dict[str, list[str]] = {}
    for message in messages[1:]:
        found = _HOST_NOTE.fullmatch(message.removeprefix(prefix))
        if found is not None and "still running" not in message:
            named.setdefault(found["host"], []).append(found["status"])
    assert sorted(named) == sorted(h.hostname for h in report.hosts), messages
    for host in report.hosts:
        states = named[host.hostname]
        assert states[-1] == host.status, messages
        assert host.status in FINAL_STATES
        steps = [_ORDER.index(state) for state in states[:-1]]
        assert steps == sorted(steps), messages
        assert states.count("accepted") <= 1 and states.count("started") <= 1, messages


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TestToolList:
    async def test_without_admin_key(self, fleet: Fleet, mode: str) -> None:
        """Without the admin key the tools are list_hosts, deploy and deployment_status."""
        async with session(settings_for(fleet), mode) as s:
            tools = {t.name: t for t in (await s.client.list_tools()).tools}
            instructions = s.client.instructions or ""
        assert set(tools) == BASE_TOOLS
        assert "test" in instructions
        assert "prod" in instructions
        assert "all=true" in instructions

    async def test_annotations_and_schemas(self, fleet: Fleet, mode: str) -> None:
        """Reading tools are read-only, deploy tools destructive and closed-world; all typed."""
        async with session(settings_for(fleet, admin="admin"), mode) as s:
            tools = {t.name: t for t in (await s.client.list_tools()).tools}
        for name in ("list_hosts", "deployment_status"):
            annotations = tools[name].annotations
            assert annotations is not None
            assert annotations.read_only_hint is True
        for name in ("deploy", "deploy_admin"):
            annotations = tools[name].annotations
            assert annotations is not None
            assert annotations.destructive_hint is True
            assert annotations.open_world_hint is False
            assert annotations.read_only_hint is False
        for tool in tools.values():
            assert tool.output_schema is not None
            assert "properties" in tool.output_schema
        deploy_args = tools["deploy"].input_schema["properties"]
        assert "tier" not in deploy_args
        # nixos-rebuild's actions; check, cancel and logs are not deploys
        assert deploy_args["action"]["enum"] == [
            a.value for a in Action if a not in (Action.CHECK, Action.CANCEL, Action.LOGS)
        ]
        assert tools["deploy_admin"].input_schema["required"] == ["tier"]

    async def test_descriptions_are_plain_sentences(self, fleet: Fleet, mode: str) -> None:
        """What a model reads has no docstring indentation and no markup."""
        async with session(settings_for(fleet, admin="admin"), mode) as s:
            tools = (await s.client.list_tools()).tools
            templates = (await s.client.list_resource_templates()).resource_templates
            prompts = (await s.client.list_prompts()).prompts
        texts = [t.description or "" for t in tools]
        texts += [t.description or "" for t in templates]
        texts += [p.description or "" for p in prompts]
        texts += [
            str(field.get("description", ""))
            for t in tools
            for field in t.input_schema["properties"].values()
        ]
        assert all(texts[: len(tools)])
        for text in texts:
            assert not re.search(r"(^|\n)[ \t]", text), text
            assert not re.search(r"`|\*\*|::|^\s*[-*] ", text), text

    async def test_capabilities_have_something_behind_them(self, fleet: Fleet, mode: str) -> None:
        """Tools, resources and prompts are advertised, and each lists something; nothing
        else is (no logging or completions to offer)."""
        async with session(settings_for(fleet), mode) as s:
            capabilities = s.client.server_capabilities
            templates = (await s.client.list_resource_templates()).resource_templates
            prompts = (await s.client.list_prompts()).prompts
        assert capabilities.tools is not None
        assert [t.uri_template for t in templates] == ["fleet://deployments/{deployment_id}"]
        assert [p.name for p in prompts] == ["deploy_safely"]
        assert capabilities.resources is not None and capabilities.prompts is not None
        assert not capabilities.resources.subscribe  # no events behind them: none promised
        assert not capabilities.resources.list_changed
        assert not capabilities.prompts.list_changed
        assert not capabilities.tools.list_changed
        assert capabilities.logging is None
        assert capabilities.completions is None

    async def test_with_admin_key(self, fleet: Fleet, mode: str) -> None:
        """With --enable-admin and a loadable admin seed, deploy_admin is listed too."""
        async with session(settings_for(fleet, admin="admin"), mode) as s:
            names = {t.name for t in (await s.client.list_tools()).tools}
            instructions = s.client.instructions or ""
        assert names == BASE_TOOLS | {"deploy_admin"}
        assert "deploy_admin" in instructions

    async def test_enable_admin_without_key_is_startup_error(self, fleet: Fleet) -> None:
        """fleet-mcp --enable-admin without an admin key exits 2 and says which flag is missing."""
        argv = [
            str(scripts_dir() / "fleet-mcp"),
            "--enable-admin",
            "--nats-url",
            fleet.url,
            "--nkey-file",
            str(fleet.keys["deployer"]),
        ]
        with anyio.fail_after(30):
            done = await anyio.run_process(argv, check=False, env=fleet.cli_env())
        assert done.returncode == 2
        assert b"--enable-admin needs the admin key" in done.stderr
        assert b"--admin-nkey-file" in done.stderr
        assert done.stdout == b""

    async def test_enable_admin_from_environment_without_key(self, fleet: Fleet) -> None:
        """FLEET_DEPLOY_ENABLE_ADMIN=true, no key: the same startup error via fleet-deploy mcp."""
        done = await fleet.cli(
            "mcp",
            FLEET_DEPLOY_NATS_URL=fleet.url,
            FLEET_DEPLOY_NKEY_FILE=str(fleet.keys["deployer"]),
            FLEET_DEPLOY_ENABLE_ADMIN="true",
        )
        assert done.returncode == 2
        assert b"needs the admin key" in done.stderr

    async def test_unloadable_admin_key_is_startup_error(self, fleet: Fleet) -> None:
        """An admin seed others can read is refused at start, with the chmod that fixes it."""
        fleet.keys["admin"].chmod(0o644)
        argv = [
            str(scripts_dir() / "fleet-mcp"),
            "--enable-admin",
            "--admin-nkey-file",
            str(fleet.keys["admin"]),
            "--nats-url",
            fleet.url,
            "--nkey-file",
            str(fleet.keys["deployer"]),
        ]
        with anyio.fail_after(30):
            done = await anyio.run_process(argv, check=False, env=fleet.cli_env())
        assert done.returncode == 2
        assert b"chmod 600" in done.stderr


class TestDeploy:
    async def test_test_host(self, fleet: Fleet, mode: str) -> None:
        """deploy(hostname=web1) returns a structured result, and notes that keep the promise."""
        async with fleet.listeners("web1"), session(settings_for(fleet), mode) as s:
            report = await s.deploy(hostname="web1")
        assert report.state == "finished"
        assert report.ok
        assert (report.subject, report.tier, report.action, report.revision) == (
            "deploy.test.web1",
            "test",
            "switch",
            "master",
        )
        assert report.counts == {"completed": 1}
        [host] = report.hosts
        assert host.hostname == "web1"
        assert host.status == "completed"
        assert host.final
        assert host.message.startswith("switch of master done: /nix/store/")
        assert host.duration_s is not None
        assert host.duration_s > 0
        assert report.next_step == "Nothing to wait for: every host completed."
        assert "finished OK" in report.summary
        assert fleet.runs() == [expected_argv("web1")]
        assert_notes_keep_the_promise(s, report)
        assert s.messages()[-1].endswith("web1 completed")  # its message is host output

    async def test_role_branch_and_action(self, fleet: Fleet, mode: str) -> None:
        """A role deploy passes branch and action through to every test host of the role."""
        async with fleet.listeners(*HOSTS), session(settings_for(fleet), mode) as s:
            report = await s.deploy(role="web", branch="release/2024.11", action="boot")
        assert report.ok
        assert report.counts == {"completed": 3}
        assert sorted(fleet.runs()) == sorted(
            expected_argv(h, "release/2024.11", "boot") for h in ("web1", "web2", "web3")
        )

    async def test_failing_host_log_tail_reaches_the_model(self, fleet: Fleet, mode: str) -> None:
        """A host whose build fails reports build_failed, nix's error and the log tail."""
        async with (
            fleet.listeners("web1", "web2", sim={"web2": ["--sim-fail"]}),
            session(settings_for(fleet), mode) as s,
        ):
            result = await s.call("deploy", role="web")
        assert not result.is_error
        report = DeploymentReport.model_validate(result.structured_content)
        assert report.state == "finished"
        assert not report.ok
        assert report.counts == {"completed": 1, "failed": 1}
        web2 = next(h for h in report.hosts if h.hostname == "web2")
        assert web2.status == "failed"
        assert web2.error == "build_failed"
        assert "undefined variable 'webroot'" in web2.message
        assert any("error: undefined variable 'webroot'" in line for line in web2.log_tail)
        assert "web2 failed" in report.summary
        assert "log_tail" in report.summary
        # What a model reads when the client shows it only the text content:
        assert "error: undefined variable 'webroot'" in text_of(result)

    async def test_list_hosts(self, fleet: Fleet, mode: str) -> None:
        """list_hosts shows every test listener with tier, role, busy, version and that deploy
        reaches it; the test key's server shows no prod host, and asking for prod says why."""
        async with fleet.listeners(*HOSTS), session(settings_for(fleet), mode) as s:
            everything = await s.call("list_hosts", tier=None)
            test_only = await s.call("list_hosts", tier="test")
            prod = await s.error("list_hosts", tier="prod")
        report = HostsReport.model_validate(everything.structured_content)
        assert sorted(h.hostname for h in report.hosts) == TEST_HOSTS
        web1 = next(h for h in report.hosts if h.hostname == "web1")
        assert (web1.tier, web1.role, web1.busy) == ("test", "web", False)
        assert web1.version
        assert all(h.reachable_by == ["deploy"] for h in report.hosts)
        filtered = HostsReport.model_validate(test_only.structured_content)
        assert sorted(h.hostname for h in filtered.hosts) == TEST_HOSTS
        assert filtered.tier == "test"
        assert "prod tier are not shown" in report.summary
        assert "test tier only" in prod and "deploy_admin" in prod
        assert fleet.runs() == []

    async def test_list_hosts_with_the_admin_key_marks_what_each_tool_reaches(
        self, fleet: Fleet, mode: str
    ) -> None:
        """With the admin key every tier is listed, and each host says which tools reach it:
        test hosts both, prod hosts only deploy_admin."""
        settings = settings_for(fleet, admin="admin")
        async with fleet.listeners(*HOSTS), session(settings, mode) as s:
            report = HostsReport.model_validate((await s.call("list_hosts")).structured_content)
            prod = HostsReport.model_validate(
                (await s.call("list_hosts", tier="prod")).structured_content
            )
        reach = {h.hostname: h.reachable_by for h in report.hosts}
        assert reach == {
            **{h: ["deploy", "deploy_admin"] for h in TEST_HOSTS},
            **{h: ["deploy_admin"] for h in PROD_HOSTS},
        }
        assert sorted(h.hostname for h in prod.hosts) == PROD_HOSTS
        assert "not shown" not in report.summary


class TestProductionIsOutOfReach:
    """``deploy`` never reaches prod — even when the server's key could (the admin key)."""

    @pytest.mark.parametrize("key", ["deployer", "admin"])
    @pytest.mark.parametrize(
        ("arguments", "reached"),
        [
            ({"hostname": "pweb1"}, []),
            ({"hostname": "pdb1"}, []),
            ({"role": "web"}, ["web1", "web2", "web3"]),
            ({"all": True}, TEST_HOSTS),
        ],
        ids=["prod-hostname", "prod-hostname-2", "role-shared-with-prod", "all"],
    )
    async def test_targets(
        self, fleet: Fleet, mode: str, key: str, arguments: dict[str, Any], reached: list[str]
    ) -> None:
        """Prod hostnames, a role prod shares, and all: only test hosts run, prod sees nothing."""
        async with (
            fleet.listeners(*HOSTS),
            prod_witness(fleet) as prod_subjects,
            session(settings_for(fleet, key=key), mode) as s,
        ):
            report = await s.deploy(**arguments)
        assert report.tier == "test"
        assert report.subject.startswith("deploy.test.")
        assert fleet.hosts_run() == reached
        assert prod_subjects == []
        if not reached:
            [host] = report.hosts
            assert host.status == "missing"
            assert not report.ok
            assert "test tier" in report.summary
            # The names that do answer, but no guess: the model asks the user.
            assert "Hosts there: " in report.summary and "Did you mean" not in report.summary
            assert "list_hosts" in report.next_step
            assert "Never deploy to another host or role in its place" in report.next_step

    @pytest.mark.parametrize(
        ("arguments", "hint"),
        [
            ({"hostname": "pweb1", "tier": "prod"}, "always targets the test tier"),
            ({"hostname": "deploy.prod.pweb1"}, "invalid hostname"),
            ({"hostname": "pweb1.>"}, "invalid hostname"),
            ({"hostname": "*"}, "invalid hostname"),
            ({"hostname": ">"}, "invalid hostname"),
            ({"role": "web.>"}, "invalid role"),
            ({"role": "*"}, "invalid role"),
            ({"hostname": "all"}, "pass all=true instead"),
            ({"subject": "deploy.prod.all"}, "has no argument 'subject'"),
        ],
    )
    async def test_hostile_arguments(
        self, fleet: Fleet, mode: str, arguments: dict[str, Any], hint: str
    ) -> None:
        """Subjects, wildcards and a tier smuggled into deploy are tool errors; nothing runs."""
        async with (
            fleet.listeners(*PROD_HOSTS),
            prod_witness(fleet) as prod_subjects,
            session(settings_for(fleet, key="admin"), mode) as s,
        ):
            message = await s.error("deploy", **arguments)
        assert hint in message
        assert prod_subjects == []
        assert fleet.runs() == []


# (tool, arguments, the whole message or parts of it): every tool, a wrong type for each kind
# of argument, bounds on either side, missing arguments, several mistakes in one call.
ARGUMENT_MISTAKES: list[tuple[str, dict[str, Any], str | tuple[str, ...]]] = [
    (
        "list_hosts",
        {"tier": 5},
        "list_hosts: tier must be 'test' or 'prod' or be left out, not the number 5.",
    ),
    ("list_hosts", {"tier": ["prod"]}, ("tier must be 'test' or 'prod'", "not the list")),
    (
        "deploy",
        {"all": "yes"},
        "deploy: all must be true or false (a JSON boolean), not the string 'yes'.",
    ),
    ("deploy", {"all": 1}, ("all must be true or false", "not the number 1.")),
    ("deploy", {"all": "true"}, ("all must be true or false", "not the string 'true'.")),
    ("deploy", {"hostname": 1}, ("hostname must be a string (deploy one host", "left out")),
    (
        "deploy",
        {"hostname": "web1", "wait_seconds": 901},
        "deploy: wait_seconds must be a number from 0 to 900 (seconds this call waits for "
        "the result); 901 is too large.",
    ),
    (
        "deploy",
        {"hostname": "web1", "wait_seconds": "45"},
        ("wait_seconds must be a number from 0 to 900", "not the string '45'."),
    ),
    (
        "deploy",
        {"hostname": "web1", "action": 3},
        (
            "action must be one of 'switch', 'boot', 'test', 'dry-activate' or 'build', "
            "not the number 3.",
        ),
    ),
    (
        "deploy",
        {"role": True, "branch": None},
        (
            "role must be a string",
            "not true.",
            "branch must be a string (branch, tag or full 40-character commit hash",
            "not null.",
        ),
    ),
    (
        "deploy",
        {"all": "yes", "wait_seconds": 901, "tier": "prod"},
        "deploy: all must be true or false (a JSON boolean), not the string 'yes'. "
        "wait_seconds must be a number from 0 to 900 (seconds this call waits for the "
        "result); 901 is too large. "
        "deploy has no argument 'tier': it takes hostname, all, role, branch, action, "
        "canary, batch_size, batch_percent, max_failures, build_id, store_path, wait_seconds. "
        "deploy always "
        "targets the test tier; production cannot be reached "
        "with it (only a person-enabled deploy_admin can).",
    ),
    ("deploy_admin", {"all": True}, "deploy_admin: tier is required: send 'test' or 'prod'."),
    (
        "deploy_admin",
        {"tier": 1, "all": "yes", "wait_seconds": -1},
        (
            "tier must be 'test' or 'prod', not the number 1.",
            "all must be true or false",
            "-1 is too small.",
        ),
    ),
    (
        "deployment_status",
        {"deployment_id": 7},
        (
            "deployment_id must be a string (the deployment_id a deploy call returned) or "
            "be left out, not the number 7.",
        ),
    ),
    (
        "deployment_status",
        {"wait_seconds": 10_000},
        ("wait_seconds must be a number from 0 to 900", "10000 is too large."),
    ),
    (
        "list_deployments",
        {"limit": "three"},
        "list_deployments: limit must be a whole number from 1 to 40 (how many to list), "
        "not the string 'three'.",
    ),
    ("list_deployments", {"limit": 2.5}, ("limit must be a whole number", "not the number 2.5.")),
    ("list_deployments", {"limit": 0}, ("limit must be a whole number", "0 is too small.")),
    (
        "cancel_deployment",
        {},
        "cancel_deployment: deployment_id is required: send a string (the deployment_id a "
        "deploy call returned).",
    ),
    (
        "cancel_deployment",
        {"deployment_id": 7},
        ("deployment_id must be a string", "not the number 7."),
    ),
    ("list_deployments", {"limit": 41}, ("limit must be a whole number", "41 is too large.")),
    (
        "fleet_status",
        {"tier": "staging"},
        ("tier must be 'test' or 'prod'", "not 'staging'"),
    ),
    ("fleet_status", {"revision": 42}, ("revision must be a string", "not the number 42.")),
    ("deployment_history", {"limit": 21}, ("limit must be a whole number", "21 is too large.")),
    (
        "deployment_history",
        {"tier": "staging"},
        ("tier must be 'test' or 'prod'", "not 'staging'"),
    ),
    ("deployment_history", {"hostname": 7}, ("hostname must be a string", "not the number 7.")),
    (
        "deployment_logs",
        {"hostname": "web1"},
        "deployment_logs: deployment_id is required: send a string (the deployment_id a "
        "deploy call returned).",
    ),
    (
        "deployment_logs",
        {"deployment_id": "abc", "hostname": "web1", "lines": 5000},
        ("lines must be a whole number", "5000 is too large."),
    ),
    (
        "build",
        {},
        "build: repo is required: send a string (the repository to build, by the name the "
        "builder was given for it, e.g. 'nixos').",
    ),
    (
        "build",
        {"repo": 1, "target": ["web1"]},
        (
            "repo must be a string",
            "not the number 1.",
            "target must be a string ('all' or the name of one",
            "not the list ['web1'].",
        ),
    ),
    (
        "build",
        {"repo": "nixos", "wait_seconds": 901},
        ("wait_seconds must be a number from 0 to 900", "901 is too large."),
    ),
    (
        "build_status",
        {"build_id": 1},
        (
            "build_id must be a string (the build_id a build call returned) or be left "
            "out, not the number 1.",
        ),
    ),
    (
        "build_status",
        {"wait_seconds": -0.5},
        ("wait_seconds must be a number", "-0.5 is too small."),
    ),
]
PYDANTIC_WORDS = (
    "validation error",
    "pydantic",
    "type=",
    "input_value",
    "Input should",
    "Field required",
)


def assert_plain_words(tool: str, message: str) -> None:
    """``message`` is this server's own sentence about ``tool``'s arguments, not pydantic's."""
    assert message.startswith(f"{tool}: "), message
    assert not any(word in message for word in PYDANTIC_WORDS), message
    assert f"{tool}Arguments" not in message and "http" not in message, message
    assert "\n" not in message


class TestArguments:
    @pytest.mark.parametrize(
        ("arguments", "hint"),
        [
            ({}, "pass exactly one of hostname='web1'"),
            ({"hostname": "web1", "role": "web"}, "not hostname and role"),
            ({"hostname": "web1", "all": True}, "not hostname and all"),
            ({"hostname": "", "role": ""}, "pass exactly one of"),
            ({"hostname": "web1", "action": "rollback"}, "use one of switch, boot, test"),
            ({"hostname": "web1", "branch": "--upload-pack=evil"}, "not a branch, tag or full"),
            ({"hostname": "web1", "branch": "master;reboot"}, "not a branch, tag or full"),
            ({"hostname": "web1", "branch": "../../etc"}, "not a branch, tag or full"),
            ({"hostname": "web1", "branch": "main#pdb1"}, "not a branch, tag or full"),
            ({"hostname": "web1", "wait_seconds": -1}, "wait_seconds must be a number from 0"),
        ],
    )
    async def test_bad_arguments_say_what_to_send(
        self, fleet: Fleet, mode: str, arguments: dict[str, Any], hint: str
    ) -> None:
        """Bad targets, actions and branches are tool errors naming what to send instead."""
        async with fleet.listeners("web1"), session(settings_for(fleet), mode) as s:
            message = await s.error("deploy", **arguments)
        assert hint in message
        assert fleet.runs() == []

    async def test_deploy_admin_needs_a_valid_tier(self, fleet: Fleet, mode: str) -> None:
        """deploy_admin refuses a tier other than test or prod, and a missing one."""
        async with session(settings_for(fleet, admin="admin"), mode) as s:
            assert "tier must be 'test' or 'prod'" in await s.error(
                "deploy_admin", tier="staging", all=True
            )
            missing = await s.error("deploy_admin", all=True)
        assert missing == "deploy_admin: tier is required: send 'test' or 'prod'."

    async def test_every_tool_says_which_argument_is_wrong_and_what_to_send(
        self, fleet: Fleet, mode: str
    ) -> None:
        """A wrong type, a value out of bounds, a missing argument, several at once: for
        every tool, one plain sentence per argument naming it and what to send, in the words
        of the schema the model read; no pydantic text. A host listens: nothing runs."""
        settings = replace(settings_for(fleet, admin="admin"), enable_builds=True)
        async with fleet.listeners("web1"), session(settings, mode) as s:
            names = {t.name for t in (await s.client.list_tools()).tools}
            said = {
                (tool, repr(arguments)): await s.error(tool, **arguments)
                for tool, arguments, _ in ARGUMENT_MISTAKES
            }
        assert {tool for tool, _, _ in ARGUMENT_MISTAKES} == names
        for tool, arguments, expected in ARGUMENT_MISTAKES:
            message = said[tool, repr(arguments)]
            assert_plain_words(tool, message)
            if isinstance(expected, str):
                assert message == expected, (arguments, message)
            else:
                assert all(part in message for part in expected), (arguments, message)
        assert fleet.runs() == []


class TestAdmin:
    async def test_admin_key_deploys_prod(self, fleet: Fleet, mode: str) -> None:
        """deploy_admin with the real admin key deploys a prod host."""
        async with (
            fleet.listeners("pweb1", "web1"),
            session(settings_for(fleet, admin="admin"), mode) as s,
        ):
            report = await s.deploy("deploy_admin", tier="prod", hostname="pweb1")
        assert report.ok
        assert report.subject == "deploy.prod.pweb1"
        assert fleet.runs() == [expected_argv("pweb1")]

    @pytest.mark.parametrize("target", [{"hostname": "pweb1"}, {"all": True}])
    async def test_test_tier_key_as_admin_key_is_refused_fast(
        self, fleet: Fleet, mode: str, target: dict[str, Any]
    ) -> None:
        """An "admin" key NATS allows only the test tier gets a clear, fast permission error."""
        async with (
            fleet.listeners(*HOSTS),
            session(settings_for(fleet, admin="deployer"), mode) as s,
        ):
            await s.call("list_hosts")  # connected, so the clock measures the refusal only
            started = anyio.current_time()
            with anyio.fail_after(10):
                message = await s.error("deploy_admin", tier="prod", **target)
            took = anyio.current_time() - started
            [brief] = DeploymentsReport.model_validate(
                (await s.call("list_deployments")).structured_content
            ).deployments
            with pytest.raises(mcp.MCPError, match="refused this MCP server's admin key"):
                await s.client.read_resource(brief.resource)
        assert brief.state == "finished" and not brief.ok
        assert brief.error is not None and "refused" in brief.error
        assert "refused" in message
        assert "admin key" in message
        assert "nothing was deployed" in message
        assert re.search(
            r"by deployment [0-9a-f]{32} \(switch of master to deploy\.prod\.", message
        )
        assert "Next step:" in message
        # Under FAST.answer_within (5 s): the refusal, not a host that never answered.
        assert took < FAST.answer_within
        assert fleet.runs() == []


class TestWaiting:
    async def test_pending_then_status(self, fleet: Fleet, mode: str, tmp_path: Path) -> None:
        """A deploy outlasting wait_seconds returns 'running'; deployment_status gets the end."""
        release = tmp_path / "release-web1"
        sim = {"web1": ["--sim-wait-for", str(release)]}
        async with fleet.listeners("web1", sim=sim), session(settings_for(fleet), mode) as s:
            pending = await s.deploy(hostname="web1", wait_seconds=1)
            assert pending.state == "running"
            assert not pending.ok
            assert all(not h.final for h in pending.hosts)
            assert pending.next_step is not None
            assert "deployment_status" in pending.next_step
            assert pending.deployment_id in pending.next_step
            release.touch()
            final = await s.deploy(
                "deployment_status", deployment_id=pending.deployment_id, wait_seconds=30
            )
        assert final.deployment_id == pending.deployment_id
        assert final.state == "finished"
        assert final.ok
        assert final.counts == {"completed": 1}
        assert fleet.runs() == [expected_argv("web1")]

    async def test_status_without_id_follows_latest(
        self, fleet: Fleet, mode: str, tmp_path: Path
    ) -> None:
        """deployment_status with no id follows the most recent deployment of the server."""
        release = tmp_path / "release-web1"
        sim = {"web1": ["--sim-wait-for", str(release)]}
        async with fleet.listeners("web1", sim=sim), session(settings_for(fleet), mode) as s:
            assert "No deployment has been started" in await s.error("deployment_status")
            pending = await s.deploy(hostname="web1", wait_seconds=0)
            release.touch()
            final = await s.deploy("deployment_status", wait_seconds=30)
        assert final.deployment_id == pending.deployment_id
        assert final.ok

    async def test_status_without_id_prefers_the_running_one_to_a_rejected_duplicate(
        self, fleet: Fleet, mode: str, tmp_path: Path
    ) -> None:
        """A second deploy to a busy host is rejected at once; deployment_status without an
        id still follows the first, which is running, and list_deployments shows both."""
        release = tmp_path / "release-web1"
        sim = {"web1": ["--sim-wait-for", str(release)]}
        async with fleet.listeners("web1", sim=sim), session(settings_for(fleet), mode) as s:
            first = await s.deploy(hostname="web1", wait_seconds=0)
            with anyio.fail_after(30):  # the first reached web1 before the duplicate is sent
                while not [h for h in first.hosts if h.status in ("started", "progress")]:
                    first = await s.deploy(
                        "deployment_status", deployment_id=first.deployment_id, wait_seconds=0.2
                    )
            duplicate = await s.deploy(hostname="web1", wait_seconds=30)
            assert duplicate.state == "finished"
            assert [h.status for h in duplicate.hosts] == ["rejected"]
            listed = DeploymentsReport.model_validate(
                (await s.call("list_deployments")).structured_content
            )
            followed = await s.deploy("deployment_status", wait_seconds=0)
            release.touch()
            final = await s.deploy("deployment_status", wait_seconds=30)
        assert [d.deployment_id for d in listed.deployments] == [
            duplicate.deployment_id,
            first.deployment_id,
        ]
        assert [d.state for d in listed.deployments] == ["finished", "running"]
        assert first.deployment_id in listed.next_step
        assert followed.deployment_id == first.deployment_id
        assert followed.state == "running"
        assert final.deployment_id == first.deployment_id
        assert final.ok

    async def test_each_deployment_is_a_resource(
        self, fleet: Fleet, mode: str, tmp_path: Path
    ) -> None:
        """A client can reattach through resources: every deployment of the server is listed
        as fleet://deployments/<id>, and reading it gives the report deployment_status does."""
        release = tmp_path / "release-web1"
        sim = {"web1": ["--sim-wait-for", str(release)]}
        async with fleet.listeners("web1", sim=sim), session(settings_for(fleet), mode) as s:
            assert (await s.client.list_resources()).resources == []
            pending = await s.deploy(hostname="web1", wait_seconds=0)
            uri = f"fleet://deployments/{pending.deployment_id}"
            listed = (await s.client.list_resources()).resources
            running = await s.client.read_resource(uri)
            release.touch()
            await s.deploy("deployment_status", wait_seconds=30)
            finished = await s.client.read_resource(uri)
            with pytest.raises(mcp.MCPError, match=r"No deployment '0+' is known"):
                await s.client.read_resource("fleet://deployments/" + "0" * 32)
        assert [str(r.uri) for r in listed] == [uri]
        assert listed[0].mime_type == "application/json"
        assert "running" in (listed[0].description or "")
        states = []
        for read in (running, finished):
            [content] = read.contents
            assert isinstance(content, TextResourceContents)
            states.append(DeploymentReport.model_validate_json(content.text))
        assert [r.state for r in states] == ["running", "finished"]
        assert states[1].ok
        assert states[1].deployment_id == pending.deployment_id

    async def test_the_deploy_safely_prompt(self, fleet: Fleet, mode: str) -> None:
        """The prompt walks a model through list, dry run on one host, that host, the rest;
        without the admin key it says production is out of reach."""
        async with session(settings_for(fleet), mode) as s:
            test_only = await s.client.get_prompt(
                "deploy_safely", {"branch": "release-1", "target": "role web"}
            )
        async with session(settings_for(fleet, admin="admin"), mode) as s:
            admin = await s.client.get_prompt(
                "deploy_safely", {"branch": "release-1", "target": "role web"}
            )
        texts = []
        for prompt in (test_only, admin):
            [message] = prompt.messages
            assert message.role == "user"
            assert isinstance(message.content, TextContent)
            texts.append(message.content.text)
        steps = ["list_hosts", "dry-activate", "action='switch'", "Stop at the first step"]
        for text in texts:
            assert "Deploy release-1 to role web" in text
            positions = [text.index(step) for step in steps]
            assert positions == sorted(positions)
        assert "a person must enable deploy_admin" in texts[0]
        assert "tier='prod'" in texts[1]

    async def test_unknown_deployment_id(self, fleet: Fleet, mode: str) -> None:
        """An id this server never issued is a tool error that says where ids come from."""
        async with session(settings_for(fleet), mode) as s:
            message = await s.error("deployment_status", deployment_id="0" * 32)
        assert "No deployment '" + "0" * 32 + "' is known to this server" in message
        assert "list_deployments" in message

    async def test_cancelled_call_stops_waiting_not_the_deployment(
        self, fleet: Fleet, mode: str, tmp_path: Path
    ) -> None:
        """Cancelling the deploy call ends the call; the deployment runs on and completes."""
        release = tmp_path / "release-web1"
        sim = {"web1": ["--sim-wait-for", str(release)]}
        started = anyio.Event()
        ids: list[str] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            found = _DEPLOYMENT_ID.search(message or "")
            if found:
                ids.append(found.group(1))
            if re.search(r": web1 (started|progress)\b", message or ""):
                started.set()  # its latest state is always reported, whichever came last

        async with fleet.listeners("web1", sim=sim), session(settings_for(fleet), mode) as s:
            call = anyio.CancelScope()

            async def deploy() -> None:
                with call:
                    await s.client.call_tool(
                        "deploy", {"hostname": "web1"}, progress_callback=on_progress
                    )

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(deploy)
                with anyio.fail_after(15):
                    await started.wait()
                call.cancel()
            assert call.cancelled_caught
            release.touch()
            final = await s.deploy("deployment_status", deployment_id=ids[0], wait_seconds=30)
        assert final.state == "finished"
        assert final.ok
        assert fleet.runs() == [expected_argv("web1")]

    async def test_heartbeat_progress_while_nothing_changes(
        self, fleet: Fleet, mode: str, tmp_path: Path
    ) -> None:
        """While a host is quiet, progress notifications keep coming at the heartbeat."""
        release = tmp_path / "release-web1"
        sim = {"web1": ["--sim-wait-for", str(release)]}
        async with (
            fleet.listeners("web1", sim=sim),
            session(replace(settings_for(fleet), heartbeat=0.2), mode) as s,
        ):
            pending = await s.deploy(hostname="web1", wait_seconds=2)
            release.touch()
            final = await s.deploy("deployment_status", wait_seconds=30)
        assert pending.state == "running"
        assert final.ok
        beats = [m for m in s.messages() if "still running" in m]
        assert len(beats) >= 2, s.messages()


class TestNatsDown:
    async def test_tools_listed_and_calls_say_nats_is_unreachable(
        self, fleet: Fleet, mode: str
    ) -> None:
        """With NATS down at start the tools are listed; calls are clear tool errors, as soon
        as the connection attempt they asked for fails, not after the whole wait."""
        url = f"nats://127.0.0.1:{free_port()}"
        async with session(settings_for(fleet, url=url), mode) as s:
            names = {t.name for t in (await s.client.list_tools()).tools}
            started = anyio.current_time()
            listing = await s.error("list_hosts")
            took = anyio.current_time() - started
            deploying = await s.error("deploy", hostname="web1")
        assert names == BASE_TOOLS
        assert "No NATS connection, so nothing was listed" in listing
        assert "cannot reach the NATS server" in listing
        assert f"--nats-url (FLEET_DEPLOY_NATS_URL, now {url})" in listing
        assert "accepts this server's key U" in listing
        assert took < CONNECTION_WAIT, took
        assert "nothing was deployed" in deploying

    async def test_connects_once_nats_comes_up(self, fleet: Fleet, mode: str) -> None:
        """A NATS server that starts after the MCP server is used on the next call."""
        port = free_port()
        settings = settings_for(fleet, url=f"nats://127.0.0.1:{port}")
        late = EmbeddedNatsServer(
            fleet.root / "late-nats", fleet.server.config_path.read_text(), port=port
        )
        async with session(settings, mode) as s:
            assert "No NATS connection" in await s.error("list_hosts")
            late.start()
            try:
                result = await s.call("list_hosts")
            finally:
                late.stop()
        assert not result.is_error, text_of(result)
        assert HostsReport.model_validate(result.structured_content).hosts == []


class TestSubprocess:
    async def test_fleet_mcp_over_stdio(self, fleet: Fleet, mode: str) -> None:
        """The installed fleet-mcp serves over stdio: tools listed, a test deploy completes."""
        params = mcp.StdioServerParameters(
            command=str(scripts_dir() / "fleet-mcp"),
            args=["--nats-url", fleet.url, "--nkey-file", str(fleet.keys["deployer"])],
            env=fleet.cli_env(),
        )
        notes: list[str] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            notes.append(message or "")

        async with fleet.listeners("web1"), mcp.Client(params, mode=mode) as client:
            with anyio.fail_after(60):
                names = {t.name for t in (await client.list_tools()).tools}
                result = await client.call_tool(
                    "deploy", {"hostname": "web1"}, progress_callback=on_progress
                )
        assert names == BASE_TOOLS
        assert not result.is_error, text_of(result)
        report = DeploymentReport.model_validate(result.structured_content)
        assert report.ok
        assert report.hosts[0].status == "completed"
        assert any("web1 completed" in m for m in notes)
        assert fleet.runs() == [expected_argv("web1")]

    async def test_argument_mistakes_over_stdio(self, fleet: Fleet) -> None:
        """The installed fleet-mcp, over stdio, words argument mistakes itself: the user's
        report (all="yes", wait_seconds=901), a missing tier and several mistakes at once."""
        params = mcp.StdioServerParameters(
            command=str(scripts_dir() / "fleet-mcp"),
            args=[
                *("--nats-url", fleet.url, "--nkey-file", str(fleet.keys["deployer"])),
                *("--enable-admin", "--admin-nkey-file", str(fleet.keys["admin"])),
                "--enable-builds",
            ],
            env=fleet.cli_env(),
        )
        calls: list[tuple[str, dict[str, Any]]] = [
            ("deploy", {"all": "yes"}),
            ("deploy", {"hostname": "web1", "wait_seconds": 901}),
            ("deploy_admin", {"all": True}),
            ("list_deployments", {"limit": "three"}),
            ("build", {"target": 1, "wait_seconds": "45"}),
        ]
        async with mcp.Client(params) as client:
            with anyio.fail_after(60):
                results = [await client.call_tool(tool, arguments) for tool, arguments in calls]
        for (tool, _), result in zip(calls, results, strict=True):
            assert result.is_error
            assert_plain_words(tool, text_of(result))
        said = [text_of(result) for result in results]
        assert said[:4] == [
            "deploy: all must be true or false (a JSON boolean), not the string 'yes'.",
            "deploy: wait_seconds must be a number from 0 to 900 (seconds this call waits for "
            "the result); 901 is too large.",
            "deploy_admin: tier is required: send 'test' or 'prod'.",
            "list_deployments: limit must be a whole number from 1 to 40 (how many to list), "
            "not the string 'three'.",
        ]
        sentences = [  # one for each argument, in the schema's order
            "build: repo is required: send a string (the repository to build",
            ". target must be a string ('all' or the name of one",
            "), not the number 1. wait_seconds must be a number from 0 to 900",
            "), not the string '45'.",
        ]
        at = [said[4].find(sentence) for sentence in sentences]
        assert at == sorted(at) and at[0] == 0 and said[4].endswith(sentences[-1]), said[4]
        assert fleet.runs() == []

    async def test_fleet_deploy_mcp_from_environment(self, fleet: Fleet) -> None:
        """fleet-deploy mcp reads FLEET_DEPLOY_* and registers deploy_admin with the admin key."""
        params = mcp.StdioServerParameters(
            command=str(scripts_dir() / "fleet-deploy"),
            args=["mcp"],
            env=fleet.cli_env(
                FLEET_DEPLOY_NATS_URL=fleet.url,
                FLEET_DEPLOY_NKEY_FILE=str(fleet.keys["deployer"]),
                FLEET_DEPLOY_ENABLE_ADMIN="true",
                FLEET_DEPLOY_ADMIN_NKEY_FILE=str(fleet.keys["admin"]),
            ),
        )
        async with mcp.Client(params) as client:
            with anyio.fail_after(60):
                names = {t.name for t in (await client.list_tools()).tools}
        assert names == BASE_TOOLS | {"deploy_admin"}

    async def test_fleet_mcp_over_streamable_http(self, fleet: Fleet) -> None:
        """fleet-mcp --http HOST:PORT serves streamable HTTP at /mcp, and at /metrics the
        counts of its tool calls and deployments, every series there from zero."""
        async with fleet.listeners("db1"), fleet_mcp_over_http(fleet) as port:
            async with mcp.Client(f"http://127.0.0.1:{port}/mcp") as client:
                with anyio.fail_after(30):
                    names = {t.name for t in (await client.list_tools()).tools}
                    result = await client.call_tool("list_hosts", {"tier": "test"})
                    deployed = await client.call_tool("deploy", {"hostname": "db1"})
                    missed = await client.call_tool("deploy", {"hostname": "nosuch"})
            with anyio.fail_after(30):
                metrics = series(await anyio.to_thread.run_sync(scrape, port))
        assert names == BASE_TOOLS
        report = HostsReport.model_validate(result.structured_content)
        assert [h.hostname for h in report.hosts] == ["db1"]
        assert DeploymentReport.model_validate(deployed.structured_content).ok
        assert not DeploymentReport.model_validate(missed.structured_content).ok
        calls = "fleet_deploy_mcp_tool_calls_total"
        assert value(metrics, calls, tool="list_hosts") == 1
        assert value(metrics, calls, tool="deploy") == 2
        assert value(metrics, calls, tool="deployment_status") == 0
        done = "fleet_deploy_mcp_deployments_total"
        switch = {"tier": "test", "action": "switch"}
        assert value(metrics, done, **switch, outcome="completed") == 1
        assert value(metrics, done, **switch, outcome="failed") == 1
        assert value(metrics, done, tier="prod", action="boot", outcome="error") == 0
        assert sum(v for (name, _), v in metrics.items() if name == done) == 2
