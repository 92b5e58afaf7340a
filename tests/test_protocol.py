"""The pure protocol modules — subjects, messages, rebuild argv — tested without a server."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from fleet_core.bus import Bus
from fleet_core.deploy.deployer import Deployer
from fleet_core.errors import RequestRejected, UsageError, only_fleet_error
from fleet_core.host.jobs.rebuild import build_argv, flake_reference
from fleet_core.protocol.actions import (
    Action,
    redact,
    validate_action,
    validate_flake_url,
    validate_revision,
)
from fleet_core.protocol.messages import (
    MAX_REQUEST_BYTES,
    MAX_STATUS_BYTES,
    DeployRequest,
    DiscoverRequest,
    InvalidRequest,
    Status,
    StatusKind,
    encode,
    encode_status,
    parse_deploy_request,
    parse_discover_request,
    parse_host_info,
    parse_status,
)
from fleet_core.protocol.subjects import (
    Target,
    Tier,
    alias_env_name,
    expand_templates,
    is_reply_subject,
    parse_target,
    resolve_target,
    validate_hostname,
)
from fleet_core.setup.nats_config import (
    BuilderEntry,
    inventory_toml,
    parse_inventory,
    render_authorization,
)

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

REPLY = "deploy.responses.0123abcd"


class TestSubjects:
    def test_default_templates_expand(self) -> None:
        """The three default templates expand for a host with a role."""
        subjects = expand_templates(
            ("deploy.<tier>.<hostname>", "deploy.<tier>.all", "deploy.<tier>.role.<role>"),
            hostname="web1",
            tier=Tier.PROD,
            role="dns",
        )
        assert subjects == ("deploy.prod.web1", "deploy.prod.all", "deploy.prod.role.dns")

    def test_role_template_skipped_without_role(self) -> None:
        """A <role> template is skipped when the host has no role."""
        subjects = expand_templates(
            ("deploy.<tier>.<hostname>", "deploy.<tier>.role.<role>"),
            hostname="db1",
            tier=Tier.TEST,
            role=None,
        )
        assert subjects == ("deploy.test.db1",)

    @pytest.mark.parametrize("template", ["deploy.<tier>.<host>", "deploy.*", "deploy.>", "a..b"])
    def test_bad_templates_are_refused(self, template: str) -> None:
        """Unknown placeholders and wildcards are refused at start."""
        with pytest.raises(UsageError):
            expand_templates((template,), hostname="h", tier=Tier.TEST, role=None)

    @pytest.mark.parametrize(
        "name", ["all", "role", "", "a.b", "a*", "a>", "a b", "-x", "_x", "x" * 64, "wéb"]
    )
    def test_invalid_hostnames(self, name: str) -> None:
        """Dots, wildcards, spaces, 'all' and 'role' can never be hostnames."""
        with pytest.raises(UsageError):
            validate_hostname(name)

    @pytest.mark.parametrize("name", ["web1", "w", "x" * 63, "db-1", "db_1", "1web"])
    def test_valid_hostnames(self, name: str) -> None:
        """Ordinary host names are one subject token."""
        assert validate_hostname(name) == name

    @pytest.mark.parametrize(
        ("subject", "target"),
        [
            ("deploy.test.web1", Target("deploy.test.web1", Tier.TEST, "host", "web1")),
            ("deploy.prod.all", Target("deploy.prod.all", Tier.PROD, "all")),
            ("deploy.test.role.dns", Target("deploy.test.role.dns", Tier.TEST, "role", "dns")),
        ],
    )
    def test_parse_target(self, subject: str, target: Target) -> None:
        """Each subject shape parses to its target kind."""
        assert parse_target(subject) == target

    @pytest.mark.parametrize(
        "subject",
        [
            "deploy.dev.web1",
            "deploy.test",
            "deploy.test.role",
            "deploy.test.a.b",
            "other.test.web1",
            "deploy.test.role.a.b",
            "deploy.test.*",
            "deploy.test.>",
        ],
    )
    def test_parse_target_refuses(self, subject: str) -> None:
        """Anything but the three shapes is a usage error."""
        with pytest.raises(UsageError):
            parse_target(subject)

    def test_alias_names(self) -> None:
        """Alias names are upper-cased and '-' becomes '_'."""
        assert alias_env_name("prod-dns") == "FLEET_DEPLOY_ALIAS_PROD_DNS"

    def test_resolve_alias(self) -> None:
        """An alias resolves through the environment mapping it is given."""
        env = {"FLEET_DEPLOY_ALIAS_PROD_DNS": "deploy.prod.role.dns"}
        assert resolve_target("prod-dns", env) == Target.role(Tier.PROD, "dns")
        with pytest.raises(UsageError, match="FLEET_DEPLOY_ALIAS_TEST"):
            resolve_target("test", {})

    @pytest.mark.parametrize(
        ("value", "ok"),
        [
            (REPLY, True),
            ("deploy.responses.a.b", True),
            ("deploy.responses.", False),
            ("deploy.responses.>", False),
            ("deploy.responses.*", False),
            ("_INBOX.x", False),
            ("deploy.responses.a b", False),
            (None, False),
            (5, False),
        ],
    )
    def test_reply_subjects(self, value: object, ok: bool) -> None:
        """Only literal subjects under deploy.responses. are reply subjects."""
        assert is_reply_subject(value) is ok


class TestRevision:
    @pytest.mark.parametrize(
        "revision",
        [
            "master",
            "main",
            "release/24.11",
            "v1.2.3",
            "v1.0.0-rc1",
            "feature_x",
            "a+b",
            "0123456789abcdef0123456789abcdef01234567",
        ],
    )
    def test_accepted(self, revision: str) -> None:
        """Branches, tags and commits pass."""
        assert validate_revision(revision) == revision

    @pytest.mark.parametrize(
        "revision",
        [
            "--option",
            "-x",
            "; rm -rf /",
            "$(id)",
            "`id`",
            "../x",
            "a/../b",
            "main#x",
            "main?rev=1",
            "main&ref=x",
            "",
            "a" * 256,
            "a b",
            "a\nb",
            "a//b",
            "a/",
            "a.",
            "a.lock",
            ".hidden",
            "a/.b",
            "ref=main",
            "x@{1}",
            "~1",
            "^",
        ],
    )
    def test_refused(self, revision: str) -> None:
        """Anything that could change the flake URL or add an argument is invalid_revision."""
        with pytest.raises(RequestRejected) as caught:
            validate_revision(revision)
        assert caught.value.code == "invalid_revision"

    @pytest.mark.parametrize("value", [42, None, ["main"], {"a": 1}, 1.5, True])
    def test_non_strings_refused(self, value: object) -> None:
        """A revision that is not a string is invalid_revision."""
        with pytest.raises(RequestRejected, match="non-empty string"):
            validate_revision(value)

    def test_actions(self) -> None:
        """The five actions pass; anything else is invalid_action."""
        assert [validate_action(a.value) for a in Action] == list(Action)
        with pytest.raises(RequestRejected) as caught:
            validate_action("reboot")
        assert caught.value.code == "invalid_action"


class TestArgv:
    def test_branch(self) -> None:
        """A branch becomes ref=, with --refresh last."""
        argv = build_argv(
            ("nixos-rebuild",),
            Action.SWITCH,
            flake_url="git+https://g/r.git",
            revision="main",
            configuration="web1",
        )
        assert argv == [
            "nixos-rebuild",
            "switch",
            "--flake",
            "git+https://g/r.git?ref=main#web1",
            "--refresh",
        ]

    def test_commit_uses_rev(self) -> None:
        """A full commit hash becomes rev=."""
        commit = "a" * 40
        assert flake_reference("git+https://g/r.git", commit, "h") == (
            f"git+https://g/r.git?rev={commit}#h"
        )

    def test_existing_query_uses_ampersand(self) -> None:
        """A flake URL with a query gets '&' before ref=."""
        assert flake_reference("git+ssh://g/r?dir=hosts", "main", "h") == (
            "git+ssh://g/r?dir=hosts&ref=main#h"
        )

    def test_command_with_arguments(self) -> None:
        """A rebuild command with fixed arguments keeps them in front."""
        argv = build_argv(
            ("sudo", "-n", "nixos-rebuild"),
            Action.BUILD,
            flake_url="f",
            revision="m",
            configuration="h",
        )
        assert argv[:4] == ["sudo", "-n", "nixos-rebuild", "build"]

    @pytest.mark.parametrize(
        "url", ["", "github:o/r#host", "git+https://g/r?ref=main", "path with space"]
    )
    def test_bad_flake_urls(self, url: str) -> None:
        """A flake URL with a fragment, a pinned ref or spaces is refused."""
        with pytest.raises(UsageError):
            validate_flake_url(url)


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


class TestDeployRequestParsing:
    def test_defaults(self) -> None:
        """Action and revision default to switch and master; unknown fields are ignored."""
        request = parse_deploy_request(body(reply_to=REPLY, note="later", extra=[1]))
        assert request == DeployRequest(action=Action.SWITCH, revision="master", reply_to=REPLY)

    def test_nats_reply_is_a_fallback(self) -> None:
        """Without reply_to in the body, a deploy.responses. NATS reply subject is used."""
        assert parse_deploy_request(body(), nats_reply=REPLY).reply_to == REPLY

    def test_body_reply_wins(self) -> None:
        """reply_to in the body wins over the NATS reply subject."""
        other = REPLY + "x"
        assert parse_deploy_request(body(reply_to=other), nats_reply=REPLY).reply_to == other

    @pytest.mark.parametrize(
        ("data", "code", "reply"),
        [
            (b"nope", "invalid_request", REPLY),
            (b"[]", "invalid_request", REPLY),
            (b"\xff", "invalid_request", REPLY),
            (b"{" + b" " * MAX_REQUEST_BYTES + b"}", "invalid_request", REPLY),
            (body(reply_to="_INBOX.x"), "invalid_request", None),
            (body(reply_to=REPLY, action="reboot"), "invalid_action", REPLY),
            (body(reply_to=REPLY, revision="$(id)"), "invalid_revision", REPLY),
            (body(reply_to=REPLY, id="a" * 65), "invalid_request", REPLY),
            (body(reply_to=REPLY, id=7), "invalid_request", REPLY),
        ],
    )
    def test_rejections(self, data: bytes, code: str, reply: str | None) -> None:
        """Each malformed request gets its code, and a reply subject only when usable."""
        with pytest.raises(InvalidRequest) as caught:
            parse_deploy_request(data, nats_reply=REPLY)
        assert (caught.value.code, caught.value.reply_to) == (code, reply)

    def test_hostile_reply_to_overrides_good_nats_reply(self) -> None:
        """A bad reply_to in the body is never answered, even with a good NATS reply."""
        with pytest.raises(InvalidRequest) as caught:
            parse_deploy_request(body(reply_to="deploy.prod.x"), nats_reply=REPLY)
        assert caught.value.reply_to is None


class TestRequestModels:
    @pytest.mark.parametrize(
        ("fields", "code"),
        [
            ({"reply_to": "_INBOX.x"}, "invalid_request"),
            ({"reply_to": REPLY, "id": "a b"}, "invalid_request"),
            ({"reply_to": REPLY, "action": "reboot"}, "invalid_action"),
            ({"reply_to": REPLY, "action": None}, "invalid_action"),
            ({"reply_to": REPLY, "revision": "--option"}, "invalid_revision"),
            ({"reply_to": "_INBOX.x", "revision": "--option"}, "invalid_request"),
        ],
    )
    def test_building_one_validates_it(self, fields: dict[str, object], code: str) -> None:
        """A DeployRequest cannot be built from bad fields; the first bad one names the code."""
        with pytest.raises(RequestRejected) as caught:
            DeployRequest.model_validate(fields)
        assert caught.value.code == code

    def test_wire_format_is_homelab_deploys(self) -> None:
        """A request encodes as action, revision, reply_to, id (in order); a null id is omitted."""
        reply = "deploy.responses.d1"
        request = DeployRequest(action=Action.BOOT, revision="main", reply_to=reply, id="d1")
        data = json.loads(encode(request))
        assert list(data.items()) == [
            ("action", "boot"),
            ("revision", "main"),
            ("reply_to", reply),
            ("id", "d1"),
        ]
        assert parse_deploy_request(encode(request)) == request
        assert json.loads(encode(DeployRequest(reply_to=REPLY))) == {
            "action": "switch",
            "revision": "master",
            "reply_to": REPLY,
        }

    def test_a_request_with_an_id_answers_on_its_ids_reply_subject(self) -> None:
        """An id names the reply subject: another request's reply subject under one's own
        id is refused, and the refusal names no reply subject to send it to."""
        body = json.dumps({"reply_to": "deploy.responses.someone-elses", "id": "mine"})
        with pytest.raises(InvalidRequest) as refused:
            parse_deploy_request(body.encode())
        assert (refused.value.reply_to, refused.value.request_id) == (None, "mine")

    def test_discovery_request_wire_format(self) -> None:
        """A discovery request carries a tier only when it has one."""
        assert json.loads(encode(DiscoverRequest(reply_to=REPLY))) == {"reply_to": REPLY}
        scoped = DiscoverRequest(reply_to=REPLY, tier=Tier.PROD)
        assert json.loads(encode(scoped)) == {"reply_to": REPLY, "tier": "prod"}
        assert parse_discover_request(encode(scoped)) == scoped

    @pytest.mark.anyio
    @pytest.mark.parametrize(
        ("revision", "action", "deployment_id", "message"),
        [
            ("$(id)", Action.SWITCH, None, "is not a branch, tag or full commit"),
            ("main", "reboot", None, "unknown action 'reboot'"),
            ("main", Action.SWITCH, "a.b", "deployment id 'a.b' must be 1-64 letters"),
        ],
    )
    async def test_the_deployer_refuses_bad_input_before_publishing(
        self, revision: str, action: Action, deployment_id: str | None, message: str
    ) -> None:
        """Bad deployer input is a UsageError raised before the bus is touched."""
        untouchable = cast(Bus, object())  # any use of it would raise AttributeError
        with pytest.raises(UsageError, match=message):
            await Deployer(untouchable).deploy(
                Target.host(Tier.TEST, "web1"),
                revision=revision,
                action=action,
                timeout=5,
                deployment_id=deployment_id,
            )


class TestOtherMessages:
    def test_status_round_trip_keeps_null_error(self) -> None:
        """A status serialises with an explicit null error and parses back equal."""
        status = Status(hostname="web1", status=StatusKind.COMPLETED, message="done")
        data = encode(status)
        assert json.loads(data)["error"] is None
        assert parse_status(data) == status

    def test_status_ignores_unknown_fields(self) -> None:
        """A newer listener's extra fields do not break an older deployer."""
        parsed = parse_status(body(hostname="h", status="progress", future={"x": 1}))
        assert parsed is not None and parsed.status is StatusKind.PROGRESS

    @pytest.mark.parametrize(
        "data", [b"", b"[]", body(hostname="h"), body(hostname="h", status="weird"), b"x" * 70000]
    )
    def test_garbage_status_is_none(self, data: bytes) -> None:
        """Anything that is not a status is ignored, not raised."""
        assert parse_status(data) is None

    @pytest.mark.parametrize(
        "data",
        [
            body(hostname="h", status="completed", duration_s=12),
            body(hostname="h\u00e9\n", status="failed", error="x", log_tail=["a", "\x1b[31m"]),
            b'{"hostname": "a", "hostname": "b", "status": "started"}',
            body(hostname="h", status="progress", duration_s=1e308, phase=None),
            body(hostname="h", status="completed", checks=[{"name": "c", "ok": True}]),
            body(hostname="h", status="completed", duration_s="12"),
        ],
    )
    def test_the_fast_parse_reads_what_the_careful_one_does(self, data: bytes) -> None:
        """``parse_status`` tries pydantic's JSON parser first: it must read every status
        as ``json.loads`` and validation read it before."""
        try:
            careful: Status | None = Status.model_validate(json.loads(data))
        except ValueError:
            careful = None
        assert parse_status(data) == careful

    def test_final_statuses(self) -> None:
        """Only rejected, completed and failed are final."""
        finals = {k for k in StatusKind if Status(hostname="h", status=k).is_final}
        assert finals == {StatusKind.REJECTED, StatusKind.COMPLETED, StatusKind.FAILED}

    def test_discovery(self) -> None:
        """Discovery requests need a reply subject; tier is optional and checked."""
        assert parse_discover_request(body(reply_to=REPLY, tier="prod")).tier is Tier.PROD
        assert parse_discover_request(b"{}", nats_reply=REPLY).tier is None
        with pytest.raises(InvalidRequest):
            parse_discover_request(body(reply_to=REPLY, tier="dev"))
        with pytest.raises(InvalidRequest):
            parse_discover_request(body(reply_to="elsewhere"))
        info = parse_host_info(body(hostname="h", tier="test", busy=True, extra=1))
        assert info is not None and info.busy and info.deploy_subjects == []
        assert parse_host_info(b"[]") is None

    @pytest.mark.parametrize(
        "fields",
        [
            {"job": "../../etc/passwd"},
            {"job": 7},
            {"hosts": "web1"},
            {"hosts": [1, 2]},
            {"hosts": ["h"] * 5001},
        ],
    )
    def test_hostile_job_queries_are_refused(self, fields: dict[str, Any]) -> None:
        """A job query's id must be a request id and its hosts a bounded list of names."""
        with pytest.raises(InvalidRequest):
            parse_discover_request(body(reply_to=REPLY, **fields))

    def test_job_query_round_trip(self) -> None:
        """A job query parses back to what the deployer encoded; old answers lack a job."""
        query = DiscoverRequest(reply_to=REPLY, tier=Tier.TEST, job="abc", hosts=["web1"])
        assert parse_discover_request(encode(query)) == query
        old = parse_host_info(body(hostname="h", tier="test"))
        assert old is not None and old.job is None and old.running_job is None


class TestHostileShapes:
    def test_deep_nesting_is_refused_not_raised(self) -> None:
        """JSON nested past the parser's stack is an invalid message everywhere, never a crash."""
        deep = b"[" * 60000
        with pytest.raises(InvalidRequest, match="nests too deeply"):
            parse_deploy_request(deep, nats_reply=REPLY)
        with pytest.raises(InvalidRequest):
            parse_discover_request(deep, nats_reply=REPLY)
        assert parse_status(deep) is None
        assert parse_host_info(deep) is None

    def test_status_stays_under_the_size_limit(self) -> None:
        """A tail of control characters (6 bytes each in JSON) is trimmed to fit, newest kept."""
        tail = [f"{i:03d}" + "\x01" * 1000 for i in range(30)]
        status = Status(hostname="h", status=StatusKind.FAILED, error="build_failed", log_tail=tail)
        assert len(encode(status)) > MAX_STATUS_BYTES
        data = encode_status(status)
        assert len(data) <= MAX_STATUS_BYTES
        kept = parse_status(data)
        assert kept is not None and kept.log_tail
        assert kept.log_tail[-1] == tail[-1]
        assert encode_status(Status(hostname="h", status=StatusKind.COMPLETED)) == encode(
            Status(hostname="h", status=StatusKind.COMPLETED)
        )

    @pytest.mark.parametrize(
        ("text", "shown"),
        [
            (
                "git+https://oauth2:TOKEN@git.example.com/r.git",
                "git+https://***@git.example.com/r.git",
            ),
            ("unpacking 'git+ssh://git@host/r?ref=m'", "unpacking 'git+ssh://***@host/r?ref=m'"),
            (
                "git+https://git.example.com/r.git?ref=main#h",
                "git+https://git.example.com/r.git?ref=main#h",
            ),
            ("error: a@b is not a URL", "error: a@b is not a URL"),
        ],
    )
    def test_redact(self, text: str, shown: str) -> None:
        """User info in URLs is masked wherever it appears in a line; nothing else changes."""
        assert redact(text) == shown


class TestInventory:
    KEY = "U" + "A" * 55

    def test_deployer_names_cannot_inject_config(self) -> None:
        """A deployer name with a newline (a quoted TOML key) is refused, not written out."""
        text = f'[deployers."x\\nlisten: 0.0.0.0:4222"]\naccess = "test"\nnkey = "{self.KEY}"\n'
        with pytest.raises(UsageError, match="deployer name"):
            parse_inventory(text)

    def test_rendered_blocks(self) -> None:
        """Each host gets exactly its own subjects; deployers get their tier's."""
        text = (
            f'[hosts.web1]\ntier = "test"\nrole = "web"\nnkey = "{self.KEY}"\n'
            f'[deployers.ci]\naccess = "admin"\nnkey = "U{"B" * 55}"\n'
        )
        rendered = render_authorization(parse_inventory(text))
        assert (
            'subscribe: ["deploy.test.web1", "deploy.test.all", "deploy.test.role.web", '
            '"deploy.discover.test"]' in rendered
        )
        assert (
            'publish: ["deploy.responses.*.test.web1", "deploy.responses.*.test.web1.log"]'
            in rendered
        )
        assert (
            'publish: { allow: ["deploy.>", "build.*.*", "$JS.API.>"], '
            'deny: ["build.responses.>"] }'
        ) in rendered
        homelab = render_authorization(parse_inventory(text), "homelab")
        assert 'publish: ["deploy.responses.>", "deploy.discover"]' in homelab

    def test_test_deployer_reads_test_replies_only(self) -> None:
        """Under the bound layout the test key subscribes to bare and test-tier replies (and
        to no discovery subject), and a deny keeps prod replies from a deploy.responses.>
        that deploy.responses.* admits; under homelab-deploy's layout it reads every reply."""
        text = f'[deployers.ai]\naccess = "test"\nnkey = "{self.KEY}"\n'
        assert (
            'subscribe: { allow: ["deploy.responses.*", "deploy.responses.*.test.*", '
            '"deploy.responses.*.test.*.log", "build.responses.*"], '
            'deny: ["deploy.responses.*.prod.>"] }'
        ) in render_authorization(parse_inventory(text))
        assert (
            'subscribe: ["deploy.responses.>", "deploy.discover", "build.responses.*"]'
            in render_authorization(parse_inventory(text), "homelab")
        )

    def test_builders_hear_their_repositories_and_answer_on_build_responses(self) -> None:
        """A builder subscribes to build.<repo>.* for its repositories only and publishes
        only answers; every deployer may ask for builds but never answer one."""
        text = (
            f'[builders.ci]\nrepos = ["nixos", "home"]\nnkey = "{self.KEY}"\n'
            f'[deployers.ai]\naccess = "test"\nnkey = "U{"B" * 55}"\n'
        )
        inventory = parse_inventory(text)
        assert inventory.builders == (BuilderEntry("ci", self.KEY, ("nixos", "home")),)
        rendered = render_authorization(inventory)
        assert "# builder ci (repos nixos, home)" in rendered
        assert 'publish: ["build.responses.>"]' in rendered
        assert 'subscribe: ["build.nixos.*", "build.home.*"]' in rendered
        assert (
            'publish: { allow: ["deploy.test.>", "deploy.discover.test", "build.*.*"], '
            'deny: ["build.responses.>"] }'
        ) in rendered
        assert parse_inventory(inventory_toml(inventory)) == inventory

    @pytest.mark.parametrize(
        ("entry", "message"),
        [
            ('repos = []\nnkey = "{key}"', "repos must be a list"),
            ('repos = "nixos"\nnkey = "{key}"', "repos must be a list"),
            ('repos = ["responses"]\nnkey = "{key}"', "not 'responses'"),
            ('repos = ["a.b"]\nnkey = "{key}"', "invalid repository name"),
            ('repos = ["nixos"]\nnkey = "SU..."', "nkey must be a user public key"),
        ],
    )
    def test_a_bad_builder_entry_is_refused_by_place(self, entry: str, message: str) -> None:
        text = "[builders.ci]\n" + entry.format(key=self.KEY) + "\n"
        with pytest.raises(UsageError, match=message) as caught:
            parse_inventory(text)
        assert "[builders.ci]" in str(caught.value)


def test_only_fleet_error_unwraps_task_groups() -> None:
    """A group of FleetErrors gives its first; a group with anything else is re-raised."""
    first, second = UsageError("a"), RequestRejected("invalid_action", "b")
    assert (
        only_fleet_error(BaseExceptionGroup("g", [first, ExceptionGroup("h", [second])])) is first
    )
    mixed = ExceptionGroup("g", [first, ValueError("bug")])
    with pytest.raises(ExceptionGroup):
        only_fleet_error(mixed)
