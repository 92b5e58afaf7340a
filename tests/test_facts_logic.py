"""Host facts and the fleet status, pure: wire models, their parsing, and the decisions of
``fleet-deploy status`` (no server, no process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleet_core.config.resolve import listener_settings, status_settings
from fleet_core.deploy.fleet_status import fleet_status, older_version, status_table
from fleet_core.errors import UsageError
from fleet_core.protocol.facts import (
    MAX_FACT_CHARS,
    HostFacts,
    LastJob,
    generation_number,
    kernel_differs,
    parse_version_json,
)
from fleet_core.protocol.messages import (
    MAX_RECENT_JOBS,
    HostInfo,
    InvalidRequest,
    encode,
    parse_discover_request,
    parse_host_info,
)
from fleet_core.protocol.subjects import Target, Tier

pytestmark = pytest.mark.pure

NOW = 1_800_000_000.0


def host(
    name: str,
    *,
    revision: str | None = "v2",
    job: tuple[str, str, str] | None = ("switch", "v2", "completed"),
    finished_at: float = NOW - 60,
    needs_reboot: bool | None = False,
    version: str = "0.1.0",
    tier: str = "test",
    role: str | None = "web",
    facts: bool = True,
) -> HostInfo:
    """A discovery answer with facts: runs ``revision``, its last job ``(action, revision,
    status)``."""
    last = None
    if job is not None:
        action, job_revision, status = job
        last = LastJob(
            id=f"{name}-{job_revision}",
            action=action,
            revision=job_revision,
            status=status,
            error="build_failed" if status == "failed" else None,
            finished_at=finished_at,
        )
    return HostInfo(
        hostname=name,
        tier=tier,
        role=role,
        version=version,
        facts=HostFacts(
            configuration_revision=revision, needs_reboot=needs_reboot, generation=2, last_job=last
        )
        if facts
        else None,
    )


class TestWire:
    def test_an_answer_without_facts_parses_as_before(self) -> None:
        """homelab-deploy's answer (no facts, no recent jobs) parses, with both None."""
        data = json.dumps({"hostname": "web1", "tier": "test", "version": "0.9"}).encode()
        info = parse_host_info(data)
        assert info is not None and (info.facts, info.recent_jobs) == (None, None)

    def test_facts_ignore_unknown_fields_and_bound_text(self) -> None:
        """A newer listener's extra fields are ignored; an overlong path is cut."""
        long_path = "/nix/store/" + "x" * 1000
        data = json.dumps(
            {
                "hostname": "web1",
                "tier": "test",
                "facts": {"current_system": long_path, "from_the_future": 1, "generation": 3},
            }
        ).encode()
        info = parse_host_info(data)
        assert info is not None and info.facts is not None
        assert info.facts.current_system is not None
        assert len(info.facts.current_system) == MAX_FACT_CHARS
        assert info.facts.generation == 3

    def test_facts_round_trip(self) -> None:
        """What a listener encodes is what a deployer reads."""
        info = host("web1")
        assert parse_host_info(encode(info)) == info

    @pytest.mark.parametrize("count", [1, MAX_RECENT_JOBS])
    def test_recent_jobs_within_bounds_are_asked(self, count: int) -> None:
        """recent_jobs from 1 to the maximum is taken, and sent only when set."""
        body = {"reply_to": "deploy.responses.x", "recent_jobs": count}
        request = parse_discover_request(json.dumps(body).encode())
        assert request.recent_jobs == count
        plain = parse_discover_request(b'{"reply_to": "deploy.responses.x"}')
        assert "recent_jobs" not in json.loads(encode(plain))

    @pytest.mark.parametrize("count", [0, MAX_RECENT_JOBS + 1, True, "5", 2.5])
    def test_recent_jobs_out_of_bounds_are_refused(self, count: Any) -> None:
        """Zero, too many, a boolean, a string or a fraction: never answered."""
        body = {"reply_to": "deploy.responses.x", "recent_jobs": count}
        with pytest.raises(InvalidRequest, match="recent_jobs"):
            parse_discover_request(json.dumps(body).encode())


class TestMeasuring:
    @pytest.mark.parametrize(
        ("name", "target", "expected"),
        [
            ("system", "system-42-link", 42),
            ("system", "/nix/var/nix/profiles/system-7-link", 7),
            ("home-manager", "home-manager-3-link", 3),
            ("system", "home-manager-3-link", None),
            ("system", "system-x-link", None),
            ("system", "/nix/store/abc-nixos-system", None),
        ],
    )
    def test_generation_number(self, name: str, target: str, expected: int | None) -> None:
        """The number of <profile>-<N>-link, of that profile only."""
        assert generation_number(name, target) == expected

    def test_kernel_differs_only_on_kernel_initrd_or_modules(self) -> None:
        """Other entries do not count; an entry missing from both is no difference."""
        old = {"kernel": "/k1", "initrd": "/i1", "kernel-modules": "/m1", "etc": "/e1"}
        assert not kernel_differs(old, {**old, "etc": "/e2"})
        assert kernel_differs(old, {**old, "initrd": "/i2"})
        assert kernel_differs(old, {**old, "kernel-modules": None})
        assert not kernel_differs({}, {})

    def test_version_json_of_nixos_and_darwin(self) -> None:
        """nixos-version's and darwin-version's JSON; anything else gives nothing."""
        nixos = b'{"nixosVersion": "24.11.1", "configurationRevision": "abc"}'
        darwin = b'{"darwinLabel": "25.05.x", "darwinRevision": "d"}'
        assert parse_version_json(nixos) == ("24.11.1", "abc")
        assert parse_version_json(darwin) == ("25.05.x", None)
        for junk in (b"not json", b"[1]", b'{"nixosVersion": 5}', b"\xff", b"[" * 100_000):
            assert parse_version_json(junk) == (None, None)


class TestStatusDecisions:
    def test_reference_is_the_newest_deploy_and_says_so(self) -> None:
        """Without --revision: the newest switch/boot/test among the last jobs; a build
        newer still does not count."""
        hosts = [
            host("web1", job=("switch", "v2", "completed"), finished_at=NOW - 100),
            host("web2", revision="v3", job=("switch", "v3", "completed"), finished_at=NOW - 50),
            host("web3", job=("build", "v9", "completed"), finished_at=NOW - 10),
        ]
        status = fleet_status(hosts, target=None, revision=None, cli_version="0.1.0")
        assert (status.revision, status.revision_source) == ("v3", "last_deploy")
        assert status.revision_from_host == "web2"
        assert {h.hostname: h.behind for h in status.hosts} == {
            "web1": True,
            "web2": False,
            "web3": True,
        }
        assert not status.ok

    def test_all_at_the_revision_and_healthy_is_ok(self) -> None:
        status = fleet_status(
            [host("web1"), host("web2")], target=None, revision="v2", cli_version="0.1.0"
        )
        assert status.ok and status.revision_source == "flag"
        assert status.summary == "2 hosts, 2 at the revision"

    def test_a_branch_name_matches_through_the_last_completed_switch(self) -> None:
        """A host whose configuration revision is a commit runs "master" when its last
        completed switch was of master."""
        commit = "a" * 40
        status = fleet_status(
            [host("web1", revision=commit, job=("switch", "master", "completed"))],
            target=None,
            revision="master",
            cli_version="0.1.0",
        )
        assert status.hosts[0].behind is False and status.ok

    def test_a_pending_reboot_or_a_failed_deploy_is_not_ok(self) -> None:
        reboot = host("web1", needs_reboot=True)
        failed = host("web2", job=("switch", "v3", "failed"))
        status = fleet_status([reboot, failed], target=None, revision="v2", cli_version="0.1.0")
        rows = {h.hostname: h for h in status.hosts}
        assert (rows["web1"].healthy, rows["web1"].behind) == (False, False)
        assert rows["web2"].behind is False  # it still runs v2: the failed v3 did not land
        assert not rows["web2"].healthy and "last switch failed" in rows["web2"].problems
        assert not status.ok

    def test_an_unknown_revision_is_not_counted_as_at_the_revision(self) -> None:
        """No facts (an old listener) or no revision at all: behind unknown, not ok."""
        old = host("web1", facts=False)
        blind = host("web2", revision=None, job=("dry-activate", "v2", "completed"))
        status = fleet_status([old, blind], target=None, revision="v2", cli_version="0.1.0")
        assert [h.behind for h in status.hosts] == [None, None]
        assert not status.ok

    def test_a_system_given_by_path_names_no_revision(self) -> None:
        """A host pinned to a system by path (``--store-path``, its request carrying the
        default branch) neither runs "master" nor sets the reference; a closure deploy of a
        build, whose revision is the build's commit, does both."""
        plain = host("db1", revision=None, job=("switch", "master", "completed"))
        facts = plain.facts
        assert facts is not None and facts.last_job is not None
        path = "/nix/store/" + "a" * 32 + "-nixos-system-db1-initial"
        job = facts.last_job.model_copy(update={"store_path": path})
        pinned = plain.model_copy(update={"facts": facts.model_copy(update={"last_job": job})})
        older = host("web1", job=("switch", "v2", "completed"), finished_at=NOW - 600)
        status = fleet_status([pinned, older], target=None, revision=None, cli_version="0.1.0")
        assert (status.revision, status.revision_from_host) == ("v2", "web1")
        assert {h.hostname: h.behind for h in status.hosts} == {"db1": None, "web1": False}
        commit = "c" * 40
        built = job.model_copy(update={"revision": commit})
        pinned = plain.model_copy(update={"facts": facts.model_copy(update={"last_job": built})})
        status = fleet_status([pinned, older], target=None, revision=None, cli_version="0.1.0")
        assert (status.revision, status.revision_from_host) == (commit, "db1")
        assert {h.hostname: h.behind for h in status.hosts} == {"db1": False, "web1": True}

    def test_nothing_deployed_yet_is_ok_without_a_reference(self) -> None:
        status = fleet_status(
            [host("web1", job=None)], target=None, revision=None, cli_version="0.1.0"
        )
        assert status.revision is None and status.ok

    def test_an_outdated_listener_is_shown_not_failed(self) -> None:
        status = fleet_status(
            [host("web1", version="0.0.9")], target=None, revision="v2", cli_version="0.1.0"
        )
        assert status.hosts[0].outdated is True and status.ok
        assert "(outdated)" in status_table(status, now=NOW)

    @pytest.mark.parametrize(
        ("version", "than", "expected"),
        [
            ("0.1.0", "0.2.0", True),
            ("1.0", "0.9.9", False),
            ("0.1.0", "0.1.0", False),
            ("0.1.0.dev3", "0.1.1", True),
            ("", "0.1.0", None),
            ("main", "0.1.0", None),
        ],
    )
    def test_older_version(self, version: str, than: str, expected: bool | None) -> None:
        assert older_version(version, than) is expected

    def test_target_selects_tier_role_and_host(self) -> None:
        hosts = [
            host("web1"),
            host("db1", role=None),
            host("pweb1", tier="prod"),
        ]
        role = fleet_status(
            hosts, target=Target.role(Tier.TEST, "web"), revision=None, cli_version="0.1.0"
        )
        assert [h.hostname for h in role.hosts] == ["web1"]
        tier = fleet_status(hosts, target=Target.all(Tier.TEST), revision=None, cli_version="0.1.0")
        assert [h.hostname for h in tier.hosts] == ["db1", "web1"]

    def test_a_named_host_missing_is_a_row_and_not_ok(self) -> None:
        status = fleet_status(
            [host("web1")], target=Target.host(Tier.TEST, "web9"), revision=None, cli_version="0"
        )
        assert [(h.hostname, h.answered) for h in status.hosts] == [("web9", False)]
        assert not status.ok and "1 not answering" in status.summary

    def test_no_host_at_all_is_not_ok(self) -> None:
        status = fleet_status([], target=None, revision=None, cli_version="0.1.0")
        assert not status.ok and status.summary == "no host answered discovery"


class TestTable:
    def test_the_table_escapes_what_hosts_sent(self) -> None:
        """A revision with an escape sequence is shown as \\x1b, never sent raw."""
        evil = host("web1", revision="v2\x1b[2J", job=("switch", "v2\x1b[2J", "completed"))
        table = status_table(
            fleet_status([evil], target=None, revision=None, cli_version="0.1.0"), now=NOW
        )
        assert "\x1b" not in table
        assert "v2\\x1b[2J" in table

    def test_the_table_says_where_the_reference_came_from(self) -> None:
        status = fleet_status(
            [
                host("web1"),
                host(
                    "web2", revision="v1", job=("switch", "v1", "completed"), finished_at=NOW - 7200
                ),
            ],
            target=None,
            revision=None,
            cli_version="0.1.0",
        )
        table = status_table(status, now=NOW)
        lines = table.splitlines()
        assert lines[0].startswith("reference revision: v2 (the newest deploy on record, on web1")
        assert lines[1].split() == [
            "HOST",
            "TIER",
            "ROLE",
            "REVISION",
            "BEHIND",
            "REBOOT",
            "LAST",
            "DEPLOY",
            "OUTCOME",
            "LISTENER",
        ]
        assert "switch v1 2h ago" in lines[3] and "BEHIND" in lines[3]
        assert lines[-1] == "NOT OK: 2 hosts, 1 at the revision, 1 behind"

    def test_a_failed_last_deploy_names_the_commands_that_show_why(self) -> None:
        """Under the summary, each host whose last deploy failed gets the ``show`` and
        ``logs`` commands of that job (prod's with --tier); an id that is no request id
        (the host's word) gets none, and a healthy host none either."""
        hosts = [
            host("web1"),
            host("web2", job=("switch", "v2", "failed")),
            host("pweb1", tier="prod", job=("switch", "v2", "failed")),
        ]
        table = status_table(
            fleet_status(hosts, target=None, revision="v2", cli_version="0.1.0"), now=NOW
        )
        tail = table.splitlines()[-2:]
        assert tail == [
            "  pweb1: fleet-deploy show pweb1-v2 --tier prod; "
            "fleet-deploy logs pweb1-v2 --host pweb1 --tier prod",
            "  web2: fleet-deploy show web2-v2; fleet-deploy logs web2-v2 --host web2",
        ]
        odd = host("web3", job=("switch", "v2", "failed"))
        assert odd.facts is not None and odd.facts.last_job is not None
        bad = odd.model_copy(
            update={
                "facts": odd.facts.model_copy(
                    update={"last_job": odd.facts.last_job.model_copy(update={"id": "x y"})}
                )
            }
        )
        table = status_table(
            fleet_status([bad], target=None, revision="v2", cli_version="0.1.0"), now=NOW
        )
        assert table.splitlines()[-1].startswith("NOT OK:")

    def test_a_reference_found_across_tiers_says_how_to_compare_each_tier(self) -> None:
        """Without a TARGET the newest deploy may be another tier's (prod's release, while
        test runs ahead): the head says so, and names the per-tier command; one tier, no
        such line; --revision, none either (it is the user's own reference)."""
        hosts = [host("web1"), host("pweb1", tier="prod", job=("switch", "v1", "completed"))]
        table = status_table(
            fleet_status(hosts, target=None, revision=None, cli_version="0.1.0"), now=NOW
        )
        assert table.splitlines()[1] == (
            "it spans the prod and test tiers: 'status deploy.<tier>.all' compares each tier "
            "with its own last deploy"
        )
        assert table.splitlines()[2].startswith("HOST")
        for one in (
            fleet_status(hosts[:1], target=None, revision=None, cli_version="0.1.0"),
            fleet_status(hosts, target=None, revision="v2", cli_version="0.1.0"),
        ):
            assert "it spans" not in status_table(one, now=NOW)


LISTENER = {
    "hostname": "web1",
    "tier": "test",
    "nats_url": "nats://n:4222",
    "nkey_file": "/k",
    "flake_url": "git+https://g/r.git",
}


class TestFactsSettings:
    def test_nixos_reads_the_run_links_and_nixos_version(self) -> None:
        settings = listener_settings(LISTENER, environ={}).facts
        assert settings.current_system == Path("/run/current-system")
        assert settings.booted_system == Path("/run/booted-system")
        assert settings.system_profile == Path("/nix/var/nix/profiles/system")
        assert settings.version_command == ("nixos-version", "--json")

    def test_flags_move_every_link_and_the_version_program(self) -> None:
        flags = {
            **LISTENER,
            "current_system": "/sim/run/current-system",
            "booted_system": "/sim/run/booted-system",
            "system_profile": "/sim/profiles/system",
            "version_command": "/sim/bin/nixos-version --json",
        }
        settings = listener_settings(flags, environ={}).facts
        assert (settings.current_system, settings.booted_system, settings.system_profile) == (
            Path("/sim/run/current-system"),
            Path("/sim/run/booted-system"),
            Path("/sim/profiles/system"),
        )
        assert settings.version_command == ("/sim/bin/nixos-version", "--json")

    def test_darwin_has_no_booted_system_and_its_own_version_program(self) -> None:
        settings = listener_settings({**LISTENER, "host_kind": "darwin"}, environ={}).facts
        assert settings.booted_system is None
        assert settings.version_command == ("darwin-version", "--json")

    def test_home_manager_reads_its_own_profile(self) -> None:
        """The home-manager profile under $XDG_STATE_HOME (else ~/.local/state); no booted
        system, no version program unless one is given."""
        flags = {**LISTENER, "host_kind": "home-manager"}
        xdg = listener_settings(flags, environ={"XDG_STATE_HOME": "/s", "HOME": "/h"}).facts
        home = listener_settings(flags, environ={"HOME": "/home/alice"}).facts
        assert xdg.system_profile == xdg.current_system == Path("/s/nix/profiles/home-manager")
        assert home.system_profile == Path("/home/alice/.local/state/nix/profiles/home-manager")
        assert (home.booted_system, home.version_command) == (None, ())

    def test_an_unsplittable_version_command_is_a_usage_error(self) -> None:
        with pytest.raises(UsageError, match="--version-command"):
            listener_settings({**LISTENER, "version_command": "'unclosed"}, environ={})

    def test_status_settings_check_the_revision_and_resolve_the_target(self) -> None:
        flags = {"nats_url": "n", "nkey_file": "k", "target": "web", "revision": "v2"}
        settings = status_settings(
            flags, environ={"FLEET_DEPLOY_ALIAS_WEB": "deploy.test.role.web"}
        )
        assert settings.target == Target.role(Tier.TEST, "web")
        assert settings.revision == "v2"
        with pytest.raises(UsageError, match="revision"):
            status_settings({**flags, "revision": "--upload-pack=x"}, environ={})
