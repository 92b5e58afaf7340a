"""Closure deploys as a new user meets them: the error paths of the command line and the MCP
tools say what happened in the caller's own words, and what is reported as sent was sent.

Real parts, as in ``tests/test_closure_deploy.py`` (the ``Closed`` fleet of ``closure_fleet``): a
real nats-server with the tiered permissions and the builds stream, a real builder signing
what it copies into a ``file://`` cache, real listeners fetching from it, the installed
``fleet-deploy`` as a process and real ``mcp.Client`` sessions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fleet_core.config.settings import RolloutSettings
from fleet_core.testing import publish_system

from .closure_fleet import KEY, Closed, closed, env, mcp_settings
from .conftest import scripts_dir
from .support import commit_of, session, text_of

pytestmark = pytest.mark.anyio

__all__ = ["closed"]  # the fixture


def test_store_path_of_another_host_is_refused_before_connecting(tmp_path: Path) -> None:
    """`deploy deploy.test.db1 --store-path <web1's system>` against a server that does not
    exist: the usage error (exit 2, `usage`, naming both hosts) comes before any connection
    is tried, and alone: no "deploying …" line on stdout."""
    fleet_deploy = str(scripts_dir() / "fleet-deploy")
    subprocess.run(
        [fleet_deploy, "keygen", "me", "--dir", str(tmp_path)], check=True, capture_output=True
    )
    web1 = publish_system(tmp_path / "cache", "web1", "good", signing_key=KEY)
    common = ["--nats-url", "nats://127.0.0.1:1", "--nkey-file", str(tmp_path / "me.seed")]
    argv = [fleet_deploy, "deploy", "deploy.test.db1", "--store-path", web1, *common]
    text = subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=30, check=False)
    as_json = subprocess.run(
        [*argv, "--json"], capture_output=True, text=True, env=env(), timeout=30, check=False
    )
    assert (text.returncode, text.stdout) == (2, ""), text
    assert "--store-path:" in text.stderr and "is not a system of 'db1'" in text.stderr
    assert as_json.returncode == 2, as_json
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == "usage", error
    assert "nixos-system-web1-" in error["message"]


async def test_a_rollout_stopped_by_a_failed_build_lists_no_system_as_sent(
    closed: Closed,
) -> None:
    """`--canary 1 --max-failures 0` and web2's build fails: web1 is skipped, never sent a
    request, so the "systems sent" block does not list it, and its `store_path` is null, as
    the field says of a host sent none. web1 still runs what it ran."""
    async with closed.listeners("web1", "web2"), closed.builder("--sim-fail-host", "web2"):
        before = closed.running("web1")
        flags = ["--build", "nixos", "--branch", "main", "--canary", "1", "--max-failures", "0"]
        code, out, err = await closed.cli("deploy", "deploy.test.role.web", *flags)
        as_json, dumped, _ = await closed.cli("deploy", "deploy.test.role.web", *flags, "--json")
        result, _ = await closed.build_and_deploy(
            "deploy.test.role.web", rollout=RolloutSettings(canary=1, max_failures=0)
        )
    assert code == 1 and as_json == 1, err
    assert "web1" in out and "skipped" in out
    assert "--- systems sent ---" not in out, out  # no host was sent anything
    hosts = {h["hostname"]: h for h in json.loads(dumped)["hosts"]}
    assert (hosts["web1"]["status"], hosts["web1"]["store_path"]) == ("skipped", None)
    by_name = {h.hostname: h for h in result.hosts}
    assert (by_name["web1"].status, by_name["web1"].store_path) == ("skipped", None)
    assert closed.fetched("web1") == [] and closed.running("web1") == before


async def test_the_from_build_errors_say_what_to_do(closed: Closed) -> None:
    """`--from-build` with the test key says once that only the admin key reads recorded
    builds and what to do instead; an id the stream does not hold tells to check the id (not
    to run --from-build again); `--build` of a repository no builder serves ends in one
    sentence, exit 2, nothing sent."""
    async with closed.listeners("web1"):
        before = closed.running("web1")
        test_key = await closed.cli("deploy", "deploy.test.web1", "--from-build", "f" * 32)
        unknown = await closed.cli(
            "deploy", "deploy.test.web1", "--from-build", "f" * 32, "--json", who="admin"
        )
        no_builder = await closed.cli(
            "deploy", "deploy.test.web1", "--build", "nobody", "--build-timeout", "30"
        )
    code, _, err = test_key
    assert code == 2, err
    assert err.count("may not") == 1, err  # one sentence, not the refusal nested in another
    assert "only the admin key" in err and "--build REPO" in err and "--store-path" in err
    code, out, err = unknown
    assert code == 2, err
    error = json.loads(out)["error"]
    assert error["code"] == "build_unusable"
    assert f"no build {'f' * 32} is recorded" in error["message"]
    assert "check the build id" in error["what_to_do"], error
    assert "--from-build" not in error["what_to_do"], error
    code, _, err = no_builder
    assert code == 2, err
    assert "no builder answered" in err and "Nothing was deployed" in err
    assert "?." not in err, err
    assert closed.running("web1") == before and closed.fetched("web1") == []


async def test_the_mcp_tools_speak_of_store_path_and_of_a_rollout_that_never_began(
    closed: Closed,
) -> None:
    """Through a real MCP client: another host's system passed as `store_path` is refused
    in the tool's words (`store_path`, not the CLI's `--store-path`); a rollout that the
    failed builds stopped before its first batch says that no batch started and names the
    skipped host, not "no batch has gone out yet", and reports no system sent to it."""
    other = publish_system(closed.cache, "web2", "known-good", signing_key=KEY)
    settings = mcp_settings(closed)
    listeners = closed.listeners("web1", "web2")
    builder = closed.builder("--sim-fail-host", "web2")
    async with builder, listeners, session(settings, "auto") as s:
        wrong = await s.error("deploy", hostname="web1", store_path=other)
        built = await s.call("build", repo="nixos", target="all", wait_seconds=60)
        assert not built.is_error and built.structured_content, text_of(built)
        build_id = built.structured_content["build_id"]
        report = await s.deploy(
            role="web", build_id=build_id, canary=1, max_failures=0, wait_seconds=60
        )
    assert "store_path: " in wrong and "--store-path" not in wrong, wrong
    assert "is not a system of 'web1'" in wrong
    assert report.state == "finished" and not report.ok, report.summary
    assert "no batch has gone out yet" not in report.summary, report.summary
    assert "no batch started at all" in report.summary, report.summary
    assert "skipped, never deployed: web1" in report.summary, report.summary
    (web1,) = [h for h in report.hosts if h.hostname == "web1"]
    assert (web1.status, web1.store_path) == ("skipped", None)
    assert closed.fetched("web1") == []


async def test_the_build_command_prints_a_next_step_that_deploys_what_it_built(
    closed: Closed,
) -> None:
    """`fleet-deploy build nixos web1` ends with how to deploy what it built; followed with
    the admin key and the target filled in, that command switches web1 to exactly the path
    the build printed."""
    async with closed.listeners("web1"), closed.builder():
        code, out, err = await closed.cli("build", "nixos", "web1", "--branch", "main")
        assert code == 0, err
        (step,) = [line for line in out.splitlines() if line.startswith("deploy these systems")]
        command = step.split(": ", 1)[1].split("   (")[0].split()
        assert command[:4] == ["fleet-deploy", "deploy", "TARGET", "--from-build"], step
        assert f"--build nixos --branch {commit_of('main')}" in out
        again, deployed, said = await closed.cli(
            "deploy", "deploy.test.web1", *command[3:], "--json", who="admin"
        )
    assert again == 0, said
    (host,) = json.loads(deployed)["hosts"]
    assert host["store_path"] in out and closed.running("web1") == Path(host["store_path"]).name
