"""Builds without a server: subjects, requests, statuses and the nix argv (the tracker:
test_build_tracker.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet_core.build.protocol import (
    NIX_FEATURES,
    BuildRequest,
    BuildStatus,
    build_argv,
    copy_argv,
    encode_build_status,
    flake_at,
    is_build_reply_subject,
    list_argv,
    metadata_argv,
    must_pin,
    parse_build_request,
    parse_build_status,
    parse_build_target,
    parse_configuration_names,
    parse_locked_commit,
    parse_store_path,
    target_of_subject,
    validate_repo,
)
from fleet_core.cli import build_parser
from fleet_core.config.resolve import builder_settings
from fleet_core.config.settings import BuilderSettings
from fleet_core.errors import RequestRejected, UsageError
from fleet_core.protocol.messages import MAX_STATUS_BYTES, InvalidRequest, StatusKind

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

COMMIT = "a" * 40
NIX = ("nix",)
FEATURES = list(NIX_FEATURES)
URL = "git+https://git.example.com/nixos.git"


class TestSubjects:
    def test_targets_and_their_subjects(self) -> None:
        assert parse_build_target("nixos").subject == "build.nixos.all"
        assert parse_build_target("nixos", "web1").subject == "build.nixos.web1"
        assert parse_build_target("nixos", "web1").host == "web1"
        assert parse_build_target("nixos", "all").host is None

    @pytest.mark.parametrize("repo", ["", "responses", "a.b", "a*", ">", "-x", "a b", "x" * 64])
    def test_a_repository_name_is_one_plain_token(self, repo: str) -> None:
        with pytest.raises(UsageError, match="invalid repository name"):
            validate_repo(repo)

    @pytest.mark.parametrize("host", ["role", "a.b", "*", "web1 ", "-web"])
    def test_a_host_is_a_hostname_token(self, host: str) -> None:
        with pytest.raises(UsageError):
            parse_build_target("nixos", host)

    def test_a_subject_gives_its_target_or_an_invalid_request(self) -> None:
        assert target_of_subject("build.nixos.web1") == parse_build_target("nixos", "web1")
        for subject in ("build.nixos", "build.nixos.web1.x", "deploy.nixos.all", "build.a*.all"):
            with pytest.raises(RequestRejected) as caught:
                target_of_subject(subject)
            assert caught.value.code == "invalid_request"

    @pytest.mark.parametrize(
        ("subject", "usable"),
        [
            ("build.responses.abc", True),
            ("build.responses.abc.def", True),
            ("build.responses.", False),
            ("build.responses.*", False),
            ("build.responses.>", False),
            ("deploy.responses.abc", False),
            ("build.nixos.all", False),
            (None, False),
        ],
    )
    def test_only_build_responses_can_be_answered(self, subject: object, usable: bool) -> None:
        assert is_build_reply_subject(subject) is usable


class TestRequests:
    def test_a_request_round_trips_without_nulls(self) -> None:
        request = BuildRequest(revision="main", reply_to="build.responses.r1", id="r1")
        assert json.loads(request.encode()) == {
            "revision": "main",
            "reply_to": "build.responses.r1",
            "id": "r1",
        }
        assert parse_build_request(request.encode()) == request
        bare = BuildRequest(reply_to="build.responses.r1")
        assert json.loads(bare.encode()) == {"revision": "master", "reply_to": "build.responses.r1"}

    def test_the_nats_reply_subject_stands_in_for_reply_to(self) -> None:
        request = parse_build_request(b"{}", nats_reply="build.responses.x")
        assert request.reply_to == "build.responses.x"

    @pytest.mark.parametrize(
        ("body", "code", "answered"),
        [
            (b"[]", "invalid_request", True),
            (b"\xff", "invalid_request", True),
            (b"[" * 5000 + b"]" * 5000, "invalid_request", True),
            (b"{" + b" " * 70000 + b"}", "invalid_request", True),
            (b'{"revision": "a;b"}', "invalid_revision", True),
            (b'{"revision": "--impure"}', "invalid_revision", True),
            (b'{"revision": "main#x"}', "invalid_revision", True),
            (b'{"revision": 7}', "invalid_revision", True),
            (b'{"id": "../x"}', "invalid_request", True),
            (b'{"reply_to": "deploy.responses.x"}', "invalid_request", False),
            (b'{"reply_to": "build.nixos.all"}', "invalid_request", False),
        ],
    )
    def test_hostile_requests_are_refused_and_answered_only_on_build_responses(
        self, body: bytes, code: str, answered: bool
    ) -> None:
        with pytest.raises(InvalidRequest) as caught:
            parse_build_request(body, nats_reply="build.responses.r")
        assert caught.value.code == code
        assert (caught.value.reply_to is not None) is answered


class TestArgv:
    def test_the_revision_is_pinned_by_ref_or_rev(self) -> None:
        assert flake_at(URL, "main") == f"{URL}?ref=main"
        assert flake_at(URL, COMMIT) == f"{URL}?rev={COMMIT}"
        assert flake_at(URL + "?dir=hosts", "main") == f"{URL}?dir=hosts&ref=main"
        with pytest.raises(RequestRejected):
            flake_at(URL, "main&rev=evil")

    def test_every_step_is_an_argv(self) -> None:
        pinned = flake_at(URL, COMMIT)
        assert metadata_argv(NIX, URL, "main") == [
            "nix",
            *FEATURES,
            "flake",
            "metadata",
            "--json",
            "--refresh",
            f"{URL}?ref=main",
        ]
        assert list_argv(NIX, pinned) == [
            "nix",
            *FEATURES,
            "eval",
            "--json",
            f"{pinned}#nixosConfigurations",
            "--apply",
            "builtins.attrNames",
        ]
        assert build_argv(NIX, pinned, "web1") == [
            "nix",
            *FEATURES,
            "build",
            "--no-link",
            "--print-out-paths",
            "-L",
            f"{pinned}#nixosConfigurations.web1.config.system.build.toplevel",
        ]
        assert copy_argv(NIX, "s3://cache", "/nix/store/x") == [
            "nix",
            *FEATURES,
            "copy",
            "--to",
            "s3://cache",
            "/nix/store/x",
        ]

    def test_a_dotted_name_is_quoted_as_nixos_rebuild_quotes_it(self) -> None:
        assert build_argv(NIX, URL, "web1.example.com")[-1] == (
            f'{URL}#nixosConfigurations."web1.example.com".config.system.build.toplevel'
        )

    @pytest.mark.parametrize("name", ['web1".config', "a..b", "-x", "a b", "a@b", "x" * 64, ""])
    def test_a_name_that_could_break_the_attribute_path_is_refused(self, name: str) -> None:
        with pytest.raises(UsageError, match="cannot be built"):
            build_argv(NIX, URL, name)

    def test_only_git_hosted_flakes_must_be_pinned(self) -> None:
        for url in (URL, "github:org/nixos", "git+ssh://git@host/r", "gitlab:o/r"):
            assert must_pin(url)
        for url in ("path:/srv/nixos", "/srv/nixos", "https://example.com/nixos.tar.gz"):
            assert not must_pin(url)


class TestNixOutput:
    def test_the_locked_commit(self) -> None:
        assert parse_locked_commit(json.dumps({"locked": {"rev": COMMIT}})) == COMMIT
        assert parse_locked_commit(json.dumps({"locked": {"path": "/src"}})) is None
        assert parse_locked_commit(json.dumps({"locked": {"rev": "main; x"}})) is None
        assert parse_locked_commit("not json") is None
        assert parse_locked_commit("[]") is None

    def test_configuration_names_set_apart_what_cannot_be_built(self) -> None:
        text = json.dumps(["web1", "db-1", "all", "a.b", "user@mac", 'x"y'])
        assert parse_configuration_names(text) == (
            ["web1", "db-1", "all", "a.b"],
            ["user@mac", 'x"y'],
        )
        for bad in ("{}", "nope", '["a", 1]'):
            with pytest.raises(ValueError, match="JSON list"):
                parse_configuration_names(bad)

    def test_the_store_path_is_the_last_one_printed(self) -> None:
        path = "/nix/store/" + "a" * 32 + "-nixos-system-web1-25.05"
        assert parse_store_path(["warning: dirty", path, ""]) == path
        assert parse_store_path(["/nix/store/short-x", "no path"]) is None
        assert parse_store_path([]) is None


def _status(kind: StatusKind, host: str | None = None, **fields: object) -> BuildStatus:
    return BuildStatus.model_validate(
        {"builder": "b1", "repo": "nixos", "status": kind, "host": host, "request_id": "r1"}
        | fields
    )


class TestStatusEncoding:
    def test_a_huge_tail_is_cut_to_the_limit_oldest_first(self) -> None:
        status = _status(
            StatusKind.FAILED, "a", log_tail=[f"line {n} " + "x" * 1000 for n in range(200)]
        )
        data = encode_build_status(status)
        assert len(data) <= MAX_STATUS_BYTES
        decoded = parse_build_status(data)
        assert decoded is not None and decoded.log_tail
        assert decoded.log_tail[-1].startswith("line 199 ")

    def test_a_long_message_is_cut(self) -> None:
        decoded = parse_build_status(
            encode_build_status(_status(StatusKind.PROGRESS, message="m" * 10**5))
        )
        assert decoded is not None and len(decoded.message) == 2000

    @pytest.mark.parametrize(
        "data", [b"", b"[]", b'{"status": "done"}', b"x" * (MAX_STATUS_BYTES + 1)]
    )
    def test_what_is_not_a_status_is_none(self, data: bytes) -> None:
        assert parse_build_status(data) is None


class TestBuilderSettings:
    """``fleet-deploy builder``'s flags and files become settings, or a clear error."""

    @staticmethod
    def settings(*args: str) -> BuilderSettings:
        flags = vars(build_parser().parse_args(["builder", "--nats-url", "nats://n:4222", *args]))
        return builder_settings(flags, environ={})

    def test_repositories_from_flags_and_a_file(self, tmp_path: Path) -> None:
        repos = tmp_path / "repos.toml"
        repos.write_text('[repos]\nprivate = "git+https://u:T@git.example.com/p.git"\n')
        repos.chmod(0o600)
        got = self.settings(
            "--nkey-file", "k", "--repo", f"nixos={URL}", "--repos-file", str(repos)
        )
        assert dict(got.repos) == {
            "nixos": URL,
            "private": "git+https://u:T@git.example.com/p.git",
        }
        assert "u:T@" not in repr(got)

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
    def test_a_repositories_file_others_may_read_is_refused(
        self, tmp_path: Path, mode: int
    ) -> None:
        repos = tmp_path / "repos.toml"
        repos.write_text(f'[repos]\nnixos = "{URL}"\n')
        repos.chmod(mode)
        with pytest.raises(UsageError, match=r"chmod 600"):
            self.settings("--nkey-file", "k", "--repos-file", str(repos))

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            ((), "give the builder a repository"),
            (("--repo", "nixos"), "give NAME=FLAKE_URL"),
            (("--repo", f"a={URL}", "--repo", f"a={URL}"), "given twice"),
            (("--repo", f"responses={URL}"), "not 'responses'"),
            (("--repo", f"nixos={URL}#web1"), "without '#<host>'"),
            (("--repo", f"nixos={URL}?ref=main"), "already pins ref= or rev="),
            (("--repo", f"nixos={URL}", "--cache", "https://u:pw@cache.example.com"), "--cache"),
            (("--repo", f"nixos={URL}", "--timeout", "0"), "--timeout"),
            (("--repo", f"nixos={URL}", "--nix-command", ""), "--nix-command"),
        ],
    )
    def test_bad_settings_say_what_to_change(self, args: tuple[str, ...], message: str) -> None:
        with pytest.raises(UsageError, match=message) as caught:
            self.settings("--nkey-file", "k", *args)
        assert "pw@" not in str(caught.value)
