"""Closure deploys at the deployer, without a server: what each host is sent, who is sent
nothing, build failures against a rollout's budget, builds that name their hosts, and the
report (the wire layer itself: test_closures_protocol.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest

from fleet_core.build.protocol import (
    BuildRequest,
    BuildResult,
    BuildStatus,
    HostBuild,
    HostBuildState,
    encode_build_status,
    parse_build_request,
    parse_build_status,
)
from fleet_core.config.resolve import deploy_settings
from fleet_core.config.settings import ClosureSettings, RolloutSettings
from fleet_core.deploy.closures import (
    BUILD_FAILED,
    CLOSURES_UNSUPPORTED,
    BuildUnusable,
    Closures,
    build_from_statuses,
    closures_from_build,
    plan_closures,
    single_closure,
)
from fleet_core.deploy.report import summary
from fleet_core.deploy.rollout import budget_stop, failed_hosts, plan_rollout
from fleet_core.deploy.tracker import DeploymentTracker
from fleet_core.errors import RequestRejected, UsageError
from fleet_core.protocol.messages import (
    MAX_REQUEST_BYTES,
    MAX_STATUS_BYTES,
    HostInfo,
    Status,
    StatusKind,
)

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

COMMIT = "c" * 40
HASH = "0123456789abcdfghijklmnpqrsvwxyz"  # 32 characters of nix's base32


def system(host: str, hash_: str = HASH) -> str:
    return f"/nix/store/{hash_}-nixos-system-{host}-24.11.20241122.5e4fbfb"


def built(host: str, path: str | None = None) -> HostBuild:
    return HostBuild(host=host, state=HostBuildState.BUILT, store_path=path or system(host))


def build(*hosts: HostBuild, status: str = "completed", **fields: Any) -> BuildResult:
    return BuildResult(
        build_id="b1",
        target="build.nixos.all",
        repo="nixos",
        revision="main",
        commit=COMMIT,
        status=status,
        hosts=list(hosts),
        **fields,
    )


def info(name: str, *, closures: bool | None = True, version: str = "0.9.0") -> HostInfo:
    return HostInfo(hostname=name, tier="test", closures=closures, version=version)


class TestFromBuild:
    def test_each_built_host_gets_its_own_path_and_the_commit_is_kept(self) -> None:
        got = closures_from_build(build(built("web1"), built("web2")), ["web1", "web2"])
        assert dict(got.paths) == {"web1": system("web1"), "web2": system("web2")}
        assert dict(got.failed) == {}
        assert (got.build_id, got.commit) == ("b1", COMMIT)

    def test_a_failed_host_gets_the_builds_error_and_no_path(self) -> None:
        """Its error code and the builder's message (nix's summary) are what it ends with."""
        broken = HostBuild(
            host="web2",
            state=HostBuildState.FAILED,
            error="build_failed",
            message="error: undefined variable 'pkgs'",
        )
        got = closures_from_build(build(built("web1"), broken, status="failed"))
        assert dict(got.paths) == {"web1": system("web1")}
        assert "web2" in got.failed
        assert "build_failed" in got.failed["web2"]
        assert "undefined variable 'pkgs'" in got.failed["web2"]

    def test_a_target_host_the_build_has_no_result_of_fails(self) -> None:
        got = closures_from_build(build(built("web1")), ["web1", "web3"])
        assert set(got.paths) == {"web1"}
        assert got.failed["web3"] == "build b1 has no system of web3 (it was not built)"

    def test_the_flakes_other_hosts_are_not_taken(self) -> None:
        """A build of all (the request named too many hosts to fit) gives only the targets."""
        got = closures_from_build(build(built("web1"), built("db1")), ["web1"])
        assert set(got.paths) == {"web1"}
        assert not got.failed

    def test_a_path_that_is_not_the_hosts_own_system_fails_it(self) -> None:
        """A builder's slip (another host's system) fails that host here, not on the host:
        judged per host, by its host name and its configuration."""
        got = closures_from_build(build(built("web1", system("web2"))))
        plan = plan_closures(["web1"], got, {"web1": info("web1")})
        assert not plan.send
        [ended] = plan.ended
        assert (ended.status, ended.error) == ("failed", "wrong_host")
        assert "is not a system of 'web1'" in ended.message
        # A path given directly (no build) was judged as it was given; the host judges it.
        given = Closures(paths={"web1": system("web2")})
        assert dict(plan_closures(["web1"], given, {"web1": info("web1")}).send) == {
            "web1": system("web2")
        }

    def test_a_build_names_a_host_by_its_configuration(self) -> None:
        """A host whose listener builds another configuration (web1.example.com) gets that
        configuration's system, named after either."""
        dotted = "/nix/store/" + "b" * 32 + "-nixos-system-web1.example.com-r"
        got = closures_from_build(build(built("web1.example.com", dotted)))
        answer = info("web1").model_copy(update={"configuration": "web1.example.com"})
        plan = plan_closures(["web1"], got, {"web1": answer})
        assert dict(plan.send) == {"web1": dotted} and not plan.ended

    @pytest.mark.parametrize("status", ["no_builder", "lost", "rejected", "running"])
    def test_a_build_that_did_not_end_is_refused_whole(self, status: str) -> None:
        with pytest.raises(BuildUnusable, match="b1") as caught:
            closures_from_build(build(built("web1"), status=status, message="no builder"))
        assert caught.value.exit_code == 2

    def test_a_build_that_failed_before_any_host_is_refused_whole(self) -> None:
        """An evaluation error: no host of the target has a result; the build's error is
        the message, and nothing is deployed."""
        failed = build(status="failed", error="eval_failed", message="cannot fetch")
        with pytest.raises(BuildUnusable, match="eval_failed: cannot fetch"):
            closures_from_build(failed, ["web1"])
        with pytest.raises(BuildUnusable):
            closures_from_build(failed)


class TestGiven:
    def test_a_store_path_of_the_hosts_own_system(self) -> None:
        assert dict(single_closure("web1", system("web1")).paths) == {"web1": system("web1")}

    @pytest.mark.parametrize(
        "path",
        ["/nix/store/short-nixos-system-web1", "/etc/nixos/x", "/nix/store/" + HASH + "-x/../y"],
    )
    def test_not_a_store_path_is_a_usage_error(self, path: str) -> None:
        with pytest.raises(UsageError, match="is not a store path"):
            single_closure("web1", path)

    def test_another_hosts_system_or_no_system_is_a_usage_error(self) -> None:
        with pytest.raises(UsageError, match="not a system of 'web1'"):
            single_closure("web1", system("web2"))
        with pytest.raises(UsageError, match="not a NixOS system"):
            single_closure("web1", f"/nix/store/{HASH}-hello-2.12")

    def test_closures_hold_only_store_paths_and_cannot_be_changed(self) -> None:
        with pytest.raises(UsageError):
            Closures(paths={"web1": "/etc/passwd"})
        closures = Closures(paths={"web1": system("web1")})
        with pytest.raises(TypeError):
            closures.paths["web2"] = system("web2")  # type: ignore[index] # the test's point


class TestPlan:
    @pytest.mark.parametrize("kind", ["darwin", "home-manager"])
    def test_a_host_that_is_not_nixos_is_told_to_deploy_by_revision(self, kind: str) -> None:
        """Not "upgrade its listener": no release of it takes a closure for such a host."""
        darwin = HostInfo(hostname="mac1", tier="test", kind=kind, closures=False)
        plan = plan_closures(["mac1"], Closures(paths={"mac1": system("mac1")}), {"mac1": darwin})
        assert not plan.send
        [ended] = plan.ended
        assert (ended.status, ended.error) == ("failed", CLOSURES_UNSUPPORTED)
        assert f"a {kind} host" in ended.message and "by revision" in ended.message
        assert "upgrade" not in ended.message

    def test_who_is_sent_what_and_who_ends_unsent(self) -> None:
        closures = Closures(
            paths={h: system(h) for h in ("web1", "web2", "web3")},
            failed={"web4": "build b1 failed for web4 (build_failed): boom"},
            build_id="b1",
        )
        found = {
            "web1": info("web1"),
            "web2": info("web2", closures=None, version="0.8.0"),
            "web4": info("web4"),
            "web5": info("web5"),
        }
        plan = plan_closures(["web1", "web2", "web3", "web4", "web5"], closures, found)
        assert dict(plan.send) == {"web1": system("web1")}
        ended = {e.host: e for e in plan.ended}
        assert (ended["web2"].status, ended["web2"].error) == ("failed", CLOSURES_UNSUPPORTED)
        assert "0.8.0" in ended["web2"].message and "upgrade" in ended["web2"].message
        assert (ended["web3"].status, ended["web3"].error) == ("missing", None)
        assert (ended["web4"].status, ended["web4"].error) == ("failed", BUILD_FAILED)
        assert (
            ended["web4"].message == "not deployed: build b1 failed for web4 (build_failed): boom"
        )
        assert "build b1 has no system of web5" in ended["web5"].message
        assert set(plan.failed_first) == {"web2", "web4", "web5"}


def tracker(
    hosts: list[str],
    *,
    paths: dict[str, str] | None = None,
    batches: Mapping[str, int] | None = None,
) -> DeploymentTracker:
    """A closure deploy's tracker at time 0: a minute's deadline, 5 s to answer."""
    return DeploymentTracker(
        hosts,
        started_at=0.0,
        timeout=60,
        answer_within=5,
        silence_limit=30,
        paths=paths,
        batches=batches,
    )


class TestTracker:
    def test_hosts_that_end_unsent_are_final_before_anything_is_sent(self) -> None:
        t = tracker(["web1", "web2"], paths={"web1": system("web1")})
        changed = t.end_unsent("web2", "failed", error=BUILD_FAILED, message="not deployed: x")
        assert [(h.hostname, h.status, h.final, h.error) for h in changed] == [
            ("web2", "failed", True, BUILD_FAILED)
        ]
        assert t.end_unsent("web2", "failed", error=BUILD_FAILED, message="again") == []
        assert not t.done
        # Past the answer window only web1 can be missing: web2 was never waited for.
        assert [h.hostname for h in t.expire(6.0)] == ["web1"]
        assert t.done

    def test_each_host_keeps_its_path_through_its_statuses(self) -> None:
        t = tracker(["web1"], paths={"web1": system("web1")})
        for kind in (StatusKind.ACCEPTED, StatusKind.COMPLETED):
            t.observe(Status(hostname="web1", status=kind, request_id="d1"), 1.0)
        (host,) = t.hosts
        assert (host.status, host.store_path) == ("completed", system("web1"))
        result = t.result(
            deployment_id="d1",
            subject="deploy.test.web1",
            tier="test",
            action="switch",
            revision=COMMIT,
            now=2.0,
            build_id="b1",
            commit=COMMIT,
        )
        dumped = json.loads(result.model_dump_json())
        assert dumped["build_id"] == "b1" and dumped["commit"] == COMMIT
        assert dumped["hosts"][0]["store_path"] == system("web1")


class TestBudget:
    SETTINGS = RolloutSettings(canary=1, batch=1, max_failures=0)

    def test_build_failures_spend_the_budget_before_the_first_batch(self) -> None:
        """--max-failures 0 and one failed build: the rollout stops before any host switches."""
        plan = plan_rollout(["web1", "web2"], self.SETTINGS, failed_first=["web3"])
        assert plan.failed_first == {"web3"}
        assert "web3" not in plan.batch_of()
        t = tracker(["web3"], batches=plan.batch_of())
        t.end_unsent("web3", "failed", error=BUILD_FAILED, message="not deployed: boom")
        stop = budget_stop(plan, t.hosts)
        assert stop is not None
        assert stop.failed == ("web3",)
        assert "the failure budget (0) was spent by web3 before any batch (its build failed)" in (
            stop.reason
        )
        skipped = t.skip(f"not deployed: {stop.reason}")
        assert sorted(h.hostname for h in skipped) == ["web1", "web2"]
        assert all(h.status == "skipped" for h in skipped) and t.done

    def test_within_the_budget_the_rollout_goes_on_and_they_still_count(self) -> None:
        settings = RolloutSettings(canary=1, batch=1, max_failures=1)
        plan = plan_rollout(["web1", "web2"], settings, failed_first=["web3"])
        t = tracker(["web3"], batches=plan.batch_of())
        t.end_unsent("web3", "failed", error=BUILD_FAILED, message="not deployed")
        assert budget_stop(plan, t.hosts) is None
        assert [h.hostname for h in failed_hosts(t.hosts, first=plan.failed_first)] == ["web3"]

    def test_a_percentage_counts_the_failed_builds_among_the_targets(self) -> None:
        """50% of four target hosts is two a batch, even when one of them failed to build."""
        plan = plan_rollout(
            ["a", "b", "c"], RolloutSettings(batch=50, batch_percent=True), failed_first=["d"]
        )
        assert [b.hosts for b in plan.batches] == [("a", "b"), ("c",)]


class TestBuildRequests:
    def test_a_request_may_name_its_hosts_sorted_once(self) -> None:
        request = BuildRequest(reply_to="build.responses.r1", hosts=["web2", "web1", "web2"])
        assert request.hosts == ["web1", "web2"]
        assert parse_build_request(request.encode()).hosts == ["web1", "web2"]
        assert "hosts" not in json.loads(BuildRequest(reply_to="build.responses.r").encode())

    @pytest.mark.parametrize("hosts", ["web1", [1], ["a b"], ["../x"], ["-x"]])
    def test_hosts_that_no_installable_can_hold_are_refused(self, hosts: object) -> None:
        with pytest.raises(RequestRejected) as caught:
            BuildRequest.model_validate({"reply_to": "build.responses.r", "hosts": hosts})
        assert caught.value.code == "invalid_request"

    def test_a_thousand_long_names_do_not_fit_one_request(self) -> None:
        """Where the client falls back to asking for all (build.client)."""
        names = [f"h{n:04d}" + "x" * 58 for n in range(1000)]
        request = BuildRequest(reply_to="build.responses.r", hosts=names)
        assert len(request.encode()) > MAX_REQUEST_BYTES


class TestBuildStatuses:
    def test_a_started_status_of_ten_thousand_hosts_fits_and_counts_them(self) -> None:
        hosts = [f"host-{n:05d}-of-a-large-fleet" for n in range(10_000)]
        status = BuildStatus(
            builder="b",
            repo="nixos",
            status=StatusKind.STARTED,
            request_id="b1",
            hosts=hosts,
            skipped=[f"bad name {n}" for n in range(500)],
            message="building 10000 hosts",
        )
        data = encode_build_status(status)
        assert len(data) <= MAX_STATUS_BYTES
        parsed = parse_build_status(data)
        assert parsed is not None
        assert (parsed.hosts, parsed.host_count) == (None, 10_000)
        assert parsed.skipped is not None and len(parsed.skipped) == 20
        small = encode_build_status(status.model_copy(update={"hosts": ["web1"], "skipped": None}))
        assert json.loads(small)["hosts"] == ["web1"]

    def test_a_build_is_read_back_from_its_recorded_statuses(self) -> None:
        def status(kind: StatusKind, **fields: Any) -> bytes:
            base = {"builder": "b", "repo": "nixos", "request_id": "b1", "revision": "main"}
            return encode_build_status(BuildStatus(status=kind, **(base | fields)))

        recorded = [
            status(StatusKind.ACCEPTED, timestamp=100.0),
            status(StatusKind.STARTED, hosts=["web1", "web2"], commit=COMMIT),
            encode_build_status(
                BuildStatus(builder="b", repo="nixos", status=StatusKind.FAILED, request_id="zz")
            ),
            b"not json",
            status(StatusKind.COMPLETED, host="web1", store_path=system("web1")),
            status(StatusKind.FAILED, host="web2", error="build_failed", message="boom"),
            status(
                StatusKind.FAILED, error="build_failed", message="1 of 2 failed", timestamp=160.0
            ),
        ]
        result = build_from_statuses("b1", recorded)
        assert result is not None
        assert (result.status, result.commit, result.builder) == ("failed", COMMIT, "b")
        assert result.elapsed_s == 60.0
        got = closures_from_build(result)
        assert dict(got.paths) == {"web1": system("web1")}
        assert "boom" in got.failed["web2"]
        assert build_from_statuses("nope", recorded) is None

    def test_a_build_whose_end_was_not_recorded_is_refused(self) -> None:
        started = encode_build_status(
            BuildStatus(
                builder="b", repo="nixos", status=StatusKind.STARTED, request_id="b1", hosts=["a"]
            )
        )
        result = build_from_statuses("b1", [started])
        assert result is not None and result.status == "running"
        with pytest.raises(BuildUnusable, match="has not ended"):
            closures_from_build(result)


class TestReport:
    def test_the_summary_names_the_build_its_commit_and_each_hosts_system(self) -> None:
        t = tracker(["web1", "web2"], paths={"web1": system("web1")})
        t.end_unsent("web2", "failed", error=BUILD_FAILED, message="not deployed: \x1b[2Jboom")
        t.observe(Status(hostname="web1", status=StatusKind.COMPLETED, request_id="d1"), 1.0)
        result = t.result(
            deployment_id="d1",
            subject="deploy.test.role.web",
            tier="test",
            action="switch",
            revision=COMMIT,
            now=2.0,
            build_id="b1",
            commit=COMMIT,
        )
        text = summary(result)
        assert text.splitlines()[0].startswith(
            f"deployment d1: switch of the systems of build b1 (commit {COMMIT[:12]}) to "
            "deploy.test.role.web"
        )
        assert f"  web1                 {system('web1')}" in text.splitlines()
        assert "\x1b" not in text
        assert text.endswith("NOT OK: 1 completed, 1 failed")


class TestFlags:
    FLAGS: ClassVar[dict[str, object]] = {
        "nats_url": "nats://127.0.0.1:4222",
        "nkey_file": "/k.seed",
        "branch": None,
    }

    def closures(self, target: str, **flags: object) -> ClosureSettings | None:
        return deploy_settings({**self.FLAGS, "target": target, **flags}, environ={}).closures

    def test_each_source_alone(self) -> None:
        assert self.closures("deploy.test.all") is None
        assert self.closures("deploy.test.all", build="nixos") == ClosureSettings(
            build_repo="nixos"
        )
        assert self.closures("deploy.test.all", from_build="b1") == ClosureSettings(from_build="b1")
        path = system("web1")
        assert self.closures("deploy.test.web1", store_path=path) == ClosureSettings(
            store_path=path
        )
        timed = self.closures("deploy.test.all", build="nixos", build_timeout="60")
        assert timed is not None and timed.build_timeout == 60.0

    @pytest.mark.parametrize(
        ("target", "flags", "says"),
        [
            ("deploy.test.all", {"build": "nixos", "from_build": "b1"}, "one of --build"),
            ("deploy.test.web1", {"build": "n", "store_path": system("web1")}, "one of"),
            ("deploy.test.all", {"store_path": system("web1")}, "is a group"),
            ("deploy.test.role.web", {"store_path": system("web1")}, "is a group"),
            ("deploy.test.web1", {"store_path": "/etc/nixos/x"}, "is not a store path"),
            ("deploy.test.all", {"from_build": "../x"}, "is not a build id"),
            ("deploy.test.all", {"build": "responses"}, "invalid repository name"),
            ("deploy.test.all", {"build_timeout": "60"}, "give --build"),
            ("deploy.test.all", {"build": "nixos", "build_timeout": "0"}, "positive"),
        ],
    )
    def test_mistakes_are_usage_errors_that_say_what_to_do(
        self, target: str, flags: dict[str, object], says: str
    ) -> None:
        with pytest.raises(UsageError, match=says):
            self.closures(target, **flags)
