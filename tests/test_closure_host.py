"""Closure deploys on the host, with real parts: a real nats-server with the tiered
permissions, real listeners (in this event loop, and the installed daemon where it must be
killed), the real job runner, requests signed and published here as a deployer would, and
the host's Nix side stood in for by ``simulated_nix_store`` (the fetch from a ``file://``
cache, signatures checked) and ``simulated_system`` (a system profile whose links really
change). No nixos-rebuild runs: nothing is evaluated on the host."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from fleet_core.host.jobs.jobdir import EXIT_FILE
from fleet_core.protocol.messages import (
    Status,
    encode,
)
from fleet_core.protocol.subjects import Tier
from fleet_core.protocol.trust import bound_replies
from fleet_core.testing import (
    InstantRebuilder,
    publish_system,
    simulated_rollback,
    simulated_systemd_run_command,
)
from fleet_core.testing.simulated_nix_store import main as realise
from fleet_core.testing.simulated_nix_store import store_path_of
from fleet_core.testing.simulated_nixos_version import simulated_version_command
from fleet_core.testing.simulated_system import (
    activate,
    boot_default,
    booted_system_path,
    current,
    current_system_path,
    generations,
    profile_path,
    simulated_nix_env_command,
    simulated_systemctl_command,
    store_dir,
)

from .closure_fleet import (
    FAIL,
    KEY,
    OTHER_KEY,
    PASS,
    REVISION,
    Host,
    ask,
    asking,
    discover,
    final_of,
    host,
    signed,
    wait_final,
    web1,
)
from .conftest import FLAKE_URL, Fleet, scripts_dir
from .support import replies_on, running_daemon, wait_for_file

pytestmark = pytest.mark.anyio

__all__ = ["host"]  # the fixture


class TestActions:
    """Each action of a closure deploy leaves the host's links exactly as it should."""

    @pytest.mark.parametrize(
        ("action", "links"),
        [
            ("switch", ("new", "new", "new")),
            ("boot", ("new", "initial", "new")),
            ("test", ("initial", "new", "initial")),
            ("dry-activate", ("initial", "initial", "initial")),
            ("build", ("initial", "initial", "initial")),
        ],
    )
    async def test_the_links_after_a_closure_deploy(
        self, fleet: Fleet, host: Host, action: str, links: tuple[str, str, str]
    ) -> None:
        path = publish_system(host.cache, "web1", "release-2", signing_key=KEY)
        new = host.local(path)
        async with web1(fleet, host, checks=[PASS]):
            _, statuses = await ask(fleet, path, action)
        final = final_of(statuses)
        assert (final.status, final.error) == ("completed", None), final.message
        assert path in final.message
        named = {"new": new, "initial": host.initial}
        assert host.links() == tuple(named[which] for which in links)
        assert host.fetches() == [["--realise", path]]
        assert new.is_dir()  # fetched, whatever the action
        # The profile moves only with switch and boot, by one generation holding the path.
        moved = action in ("switch", "boot")
        assert [p for _, p in generations(host.root)] == [host.initial, *([new] if moved else [])]
        started = next(s for s in statuses if s.status == "started")
        assert started.message.endswith(f"--realise {path}")
        assert fleet.runs() == []  # no nixos-rebuild: nothing was evaluated on the host

    async def test_a_switch_runs_the_checks_and_the_new_system_reports_its_label(
        self, fleet: Fleet, host: Host
    ) -> None:
        path = publish_system(host.cache, "web1", "release-3", signing_key=KEY)
        async with web1(fleet, host, checks=[PASS]):
            _, statuses = await ask(fleet, path)
            info = await discover(fleet)
        final = final_of(statuses)
        assert final.status == "completed", final.message
        assert [(c.name, c.ok) for c in final.checks or []] == [("web-answers", True)]
        assert info.facts is not None and info.facts.configuration_revision == "release-3"

    async def test_pinning_back_to_a_system_in_the_store_needs_no_cache(
        self, fleet: Fleet, host: Host
    ) -> None:
        """A closure deploy of the system the host ran before (still in its store, in no
        cache): nix has it already, and the host switches back to exactly that."""
        path = publish_system(host.cache, "web1", "release-2", signing_key=KEY)
        initial = f"/nix/store/{host.initial.name}"
        async with web1(fleet, host, checks=[PASS]):
            _, first = await ask(fleet, path)
            _, back = await ask(fleet, initial)
        assert final_of(first).status == "completed", final_of(first).message
        assert (final_of(back).status, final_of(back).message) == (
            "completed",
            f"switch of {initial} done",
        )
        assert host.links() == (host.initial,) * 3
        new = host.local(path)
        assert [p for _, p in generations(host.root)] == [host.initial, new, host.initial]

    async def test_a_closure_job_runs_as_a_transient_unit_too(
        self, fleet: Fleet, host: Host, tmp_path: Path
    ) -> None:
        """--rebuild-runner systemd (its stand-in): the plan reaches the runner the same way."""
        path = publish_system(host.cache, "web1", "release-2", signing_key=KEY)
        units = tmp_path / "systemd-run.jsonl"
        systemd = simulated_systemd_run_command("--sim-record", str(units))
        async with web1(fleet, host, rebuild_runner="systemd", systemd_run=systemd):
            _, statuses = await ask(fleet, path)
        final = final_of(statuses)
        assert final.status == "completed", final.message
        assert host.links() == (host.local(path),) * 3
        assert len(units.read_text().splitlines()) == 1


class TestRefusedOnArrival:
    """A path that is not this host's own system is refused by name: nothing is fetched."""

    async def test_another_hosts_system_is_wrong_host(self, fleet: Fleet, host: Host) -> None:
        path = publish_system(host.cache, "web2", "release-2", signing_key=KEY)
        async with web1(fleet, host):
            _, statuses = await ask(fleet, path)
        final = final_of(statuses)
        assert (final.status, final.error) == ("rejected", "wrong_host")
        assert "nixos-system-web2-" in final.message and "'web1'" in final.message
        assert [s.status for s in statuses] == ["rejected"]  # never accepted
        assert host.fetches() == []
        assert host.links() == (host.initial, host.initial, host.initial)

    async def test_a_path_that_is_no_system_is_not_a_system(self, fleet: Fleet, host: Host) -> None:
        path = store_path_of("hello-2.12.1")
        async with web1(fleet, host):
            _, statuses = await ask(fleet, path)
        final = final_of(statuses)
        assert (final.status, final.error) == ("rejected", "not_a_system")
        assert host.fetches() == []

    async def test_a_key_not_trusted_here_gets_nothing_fetched(
        self, fleet: Fleet, host: Host
    ) -> None:
        """The admin key may publish here, but web1 trusts only the test deployer's."""
        path = publish_system(host.cache, "web1", "release-2", signing_key=KEY)
        async with web1(fleet, host):
            _, statuses = await ask(fleet, path, who="admin")
        final = final_of(statuses)
        assert (final.status, final.error) == ("rejected", "untrusted_signer")
        assert host.fetches() == []


class TestRefusedByNix:
    """What no trusted cache serves is closure_unavailable, and nothing changes."""

    @pytest.mark.parametrize(
        ("case", "said"),
        [
            ("missing", "there is no substituter that can build it"),
            ("bad-signature", "not signed by any of the keys in 'trusted-public-keys'"),
            ("untrusted-key", "not signed by any of the keys in 'trusted-public-keys'"),
        ],
    )
    async def test_unavailable(self, fleet: Fleet, host: Host, case: str, said: str) -> None:
        if case == "missing":  # built, but copied to a cache this host does not use
            path = publish_system(host.cache.with_name("elsewhere"), "web1", "r", signing_key=KEY)
        else:
            path = publish_system(
                host.cache,
                "web1",
                "r",
                signing_key=OTHER_KEY if case == "untrusted-key" else KEY,
                bad_signature=case == "bad-signature",
            )
        async with web1(fleet, host, checks=[PASS]):
            _, statuses = await ask(fleet, path)
        final = final_of(statuses)
        assert (final.status, final.error) == ("failed", "closure_unavailable"), final.message
        assert path in final.message and "Nothing was changed" in final.message
        assert any(said in line for line in final.log_tail or []), final.log_tail
        assert host.fetches() == [["--realise", path]]
        assert not host.local(path).exists()
        assert host.links() == (host.initial, host.initial, host.initial)
        assert len(generations(host.root)) == 1

    async def test_a_fetched_path_that_is_no_system_is_not_activated(
        self, fleet: Fleet, host: Host
    ) -> None:
        path = publish_system(host.cache, "web1", "r", signing_key=KEY, system=False)
        async with web1(fleet, host, checks=[PASS]):
            _, statuses = await ask(fleet, path)
        final = final_of(statuses)
        assert (final.status, final.error) == ("failed", "not_a_system"), final.message
        assert "bin/switch-to-configuration" in final.message
        assert final.message.endswith("nothing was activated")
        assert host.local(path).is_dir()  # fetched, then refused
        assert host.links() == (host.initial, host.initial, host.initial)
        assert len(generations(host.root)) == 1


class TestGuarded:
    async def test_a_failing_check_rolls_back_to_the_exact_previous_system(
        self, fleet: Fleet, host: Host
    ) -> None:
        path = publish_system(host.cache, "web1", "r", signing_key=KEY)
        async with web1(fleet, host, checks=[PASS, FAIL.__class__("db", FAIL.argv)]):
            _, statuses = await ask(fleet, path)
        final = final_of(statuses)
        assert (final.status, final.error) == ("failed", "rolled_back")
        assert final.message == f"rolled back to {host.initial}: the health check 'db' failed"
        assert final.rolled_back_to == str(host.initial)
        assert host.links() == (host.initial, host.initial, host.initial)
        # Set back by path, as a new generation: the closure's stays in the list.
        assert [p for _, p in generations(host.root)] == [
            host.initial,
            host.local(path),
            host.initial,
        ]

    async def test_a_failed_activation_rolls_back(self, fleet: Fleet, host: Host) -> None:
        path = publish_system(host.cache, "web1", "r", signing_key=KEY, fail_activation=True)
        async with web1(fleet, host, checks=[PASS]):
            _, statuses = await ask(fleet, path)
        final = final_of(statuses)
        assert (final.status, final.error) == ("failed", "rolled_back")
        assert final.message == f"rolled back to {host.initial}: the activation failed"
        assert host.links() == (host.initial, host.initial, host.initial)


class TestStops:
    async def test_the_deadline_stops_the_fetch(
        self, fleet: Fleet, host: Host, tmp_path: Path
    ) -> None:
        path = publish_system(host.cache, "web1", "r", signing_key=KEY)
        never = tmp_path / "never"
        async with web1(fleet, host, sim=["--sim-wait-for", str(never)], timeout=2.0):
            _, statuses = await ask(fleet, path)
        final = final_of(statuses)
        assert (final.status, final.error) == ("failed", "timeout"), final.message
        assert "ran longer than 2 s" in final.message and "(in its fetch step)" in final.message
        said = "fleet-deploy: the fetch step ran past the job's 2 s deadline"
        assert said in (final.log_tail or []), final.log_tail
        assert not host.local(path).exists()
        assert host.links() == (host.initial, host.initial, host.initial)

    async def test_a_cancel_during_the_fetch_stops_it_and_changes_nothing(
        self, fleet: Fleet, host: Host, tmp_path: Path
    ) -> None:
        path = publish_system(host.cache, "web1", "r", signing_key=KEY)
        gate = tmp_path / "gate"
        async with (
            web1(fleet, host, sim=["--sim-wait-for", str(gate)]),
            asking(fleet, path) as (deploy_id, replies),
        ):
            await replies.wait_for(fetching)
            async with asking(fleet, None, "cancel", revision=deploy_id) as (_, answer):
                cancelled = await wait_final(answer)
            final = await wait_final(replies)
        assert (cancelled.status, cancelled.phase) == ("completed", "stopped"), cancelled.message
        assert (final.status, final.error) == ("failed", "cancelled"), final.message
        assert not host.local(path).exists()
        assert host.links() == (host.initial, host.initial, host.initial)

    async def test_a_cancel_once_past_the_fetch_is_already_activating(
        self, fleet: Fleet, host: Host, tmp_path: Path
    ) -> None:
        """Held while it sets the profile (its nix-env waits for a file): the activation is
        not interrupted, and ends as it ends."""
        path = publish_system(host.cache, "web1", "r", signing_key=KEY)
        gate, waiting = tmp_path / "gate", tmp_path / "nix-env-waits"
        held_nix_env = (
            sys.executable,
            "-c",
            "import pathlib, sys, time\n"
            f"pathlib.Path({str(waiting)!r}).touch()\n"
            f"while not pathlib.Path({str(gate)!r}).exists(): time.sleep(0.02)\n"
            "from fleet_core.testing.simulated_nix_env import main\n"
            "sys.exit(main(sys.argv[1:]))\n",
        )
        held = replace(simulated_rollback(host.root), nix_env=held_nix_env)
        async with (
            web1(fleet, host, rollback=held),
            asking(fleet, path) as (deploy_id, replies),
        ):
            await wait_for_file(waiting, limit=20)
            async with asking(fleet, None, "cancel", revision=deploy_id) as (_, answer):
                refused = await wait_final(answer)
            gate.touch()
            final = await wait_final(replies)
        assert (refused.status, refused.error) == ("rejected", "already_activating")
        assert "activating" in refused.message
        assert (final.status, final.error) == ("completed", None), final.message
        assert host.links() == (host.local(path),) * 3


def fetching(statuses: list[Status]) -> bool:
    """Whether web1 said its fetch is under way (nix's "copying path" line)."""
    return any(s.status == "progress" and "copying path" in s.message for s in statuses)


class TestDurable:
    async def test_a_listener_killed_during_the_fetch_is_followed_to_the_true_outcome(
        self, fleet: Fleet, host: Host, tmp_path: Path
    ) -> None:
        """kill -9 of the daemon while nix fetches: the fetch runs on under the job runner,
        and the next daemon reports the switch's true end to the original requester."""
        path = publish_system(host.cache, "web1", "r", signing_key=KEY)
        gate = tmp_path / "gate"
        argv = daemon_argv(fleet, host, "--sim-wait-for", str(gate))
        request = signed(
            fleet, "deploy.test.web1", "switch", revision=REVISION, store_path=path, who="deployer"
        )
        deploy_id = request.id
        async with (
            await fleet.connect("deployer") as bus,
            replies_on(bus, bound_replies(request.reply_to, Tier.TEST)) as replies,
        ):
            async with running_daemon(argv, fleet.cli_env()) as first:
                await first.wait_for('"event": "listening"')
                await bus.publish("deploy.test.web1", encode(request))
                await replies.wait_for(fetching, 20)
                first.process.kill()
                assert await first.exit_code() == -9
            gate.touch()
            async with running_daemon(argv, fleet.cli_env()) as second:
                await second.wait_for('"event": "listening"')
                final = await wait_final(replies)
                assert second.event("job_resumed")["request_id"] == deploy_id
        assert (final.status, final.error) == ("completed", None), final.message
        assert final.message == f"switch of {path} done"
        assert host.links() == (host.local(path),) * 3
        [job] = (fleet.root / "state" / "web1" / "jobs").iterdir()
        closure = json.loads((job / EXIT_FILE).read_text())["closure"]
        assert closure["steps"] == ["fetch", "check", "set-profile", "activate"]


def daemon_argv(fleet: Fleet, host: Host, *sim: str) -> list[str]:
    """The installed ``fleet-deploy listener`` for web1 on its simulated root: every option a
    closure deploy needs, given as a user gives them."""
    root = host.root
    return fleet.listener_argv(
        "web1",
        *("--rebuild-runner", "session"),
        *("--nix-store-command", shlex.join(host.nix_store(*sim))),
        *("--store-dir", str(store_dir(root))),
        *("--system-profile", str(profile_path(root))),
        *("--current-system", str(current_system_path(root))),
        *("--booted-system", str(booted_system_path(root))),
        *("--nix-env-command", shlex.join(simulated_nix_env_command())),
        *("--systemctl-command", shlex.join(simulated_systemctl_command(root))),
        *("--version-command", shlex.join(simulated_version_command(root))),
        *("--trusted-deployer-key", fleet.seed("deployer").public_key),
        *("--confirm-timeout", "10"),
    )


class TestWhatTheHostTells:
    async def test_discovery_says_closures(self, fleet: Fleet, host: Host) -> None:
        async with web1(fleet, host):
            info = await discover(fleet)
        assert info.closures is True

    async def test_the_job_record_and_its_log_show_the_closure_job(
        self, fleet: Fleet, host: Host
    ) -> None:
        path = publish_system(host.cache, "web1", "r", signing_key=KEY)
        async with web1(fleet, host, checks=[PASS]):
            deploy_id, _ = await ask(fleet, path)
            info = await discover(fleet, job=deploy_id)
            argv = [
                str(scripts_dir() / "fleet-deploy"),
                *("logs", deploy_id, "--host", "web1"),
                *("--nats-url", fleet.url, "--nkey-file", str(fleet.keys["deployer"])),
            ]
            with anyio.fail_after(30):
                logs = await anyio.run_process(argv, check=False, env=fleet.cli_env())
        job = info.job
        assert job is not None
        assert (job.store_path, job.action, job.status) == (path, "switch", "completed")
        assert job.revision == REVISION
        assert logs.returncode == 0, logs.stderr.decode()
        shown = logs.stdout.decode()
        assert "fleet-deploy: fetch: " in shown and f"--realise {path}" in shown
        assert f"copying path '{path}'" in shown
        assert "fleet-deploy: activate: " in shown and "health check web-answers: ok" in shown


class TestTheStandIns:
    """The host's nix-store and the builder's nix copy, as nix answers; the instant one."""

    async def test_the_instant_rebuilder_completes_a_closure_deploy_at_once(
        self, fleet: Fleet, host: Host
    ) -> None:
        """For benchmarks: no process, and the path is named as a real job names it."""
        path = publish_system(host.cache, "web1", "r", signing_key=KEY)
        settings = fleet.settings("web1", store_dir=store_dir(host.root))
        async with fleet.local.listeners([settings], rebuilder=InstantRebuilder()):
            _, statuses = await ask(fleet, path, "boot")
        final = final_of(statuses)
        assert (final.status, final.message) == ("completed", f"boot of {path} done")
        assert host.fetches() == []

    def test_a_path_already_in_the_store_asks_no_substituter(self, host: Host) -> None:
        path = store_path_of("nixos-system-web1-old")
        host.local(path).mkdir(parents=True)
        assert realise(["--sim-root", str(host.root), "--realise", path]) == 0

    def test_a_nar_that_was_changed_is_a_hash_mismatch(
        self, host: Host, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = publish_system(host.cache, "web1", "r", signing_key=KEY)
        [nar] = (host.cache / "nar").iterdir()
        nar.write_text(nar.read_text().replace('"r"', '"evil"'))
        argv = list(host.nix_store()[3:])  # without the interpreter and -m module
        assert realise([*argv, "--realise", path]) == 1
        assert "hash mismatch importing path" in capsys.readouterr().err
        assert not host.local(path).exists()

    def test_the_builders_signed_copy_is_a_working_system_on_the_host(
        self, host: Host, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """What the builder's simulated nix builds and copies with --sim-signing-key, the
        host fetches: a system that knows its commit, whose switch-to-configuration
        activates, and back."""
        from fleet_core.testing.simulated_nix import main as nix

        commit = "c" * 40
        builder = ["--sim-hosts", "web1", "--sim-store", str(tmp_path / "builder-store")]
        features = ["--extra-experimental-features", "nix-command flakes"]
        toplevel = f"{FLAKE_URL}?rev={commit}#nixosConfigurations.web1.config.system.build.toplevel"
        build = ["build", "--no-link", "--print-out-paths", "-L", toplevel]
        assert nix([*builder, *features, *build]) == 0
        path = capsys.readouterr().out.strip()
        copy = ["copy", "--to", f"file://{host.cache}", path]
        assert nix([*builder, "--sim-signing-key", KEY, *features, *copy]) == 0
        assert realise([*host.nix_store()[3:], "--realise", path]) == 0
        fetched = host.local(path)
        assert (fetched / "nixos-version").read_text() == commit
        script = fetched / "bin" / "switch-to-configuration"
        assert activate(script, ["switch"]) == 0
        assert (current(host.root), boot_default(host.root)) == (fetched, fetched)
        back = host.initial / "bin" / "switch-to-configuration"
        assert activate(back, ["switch"]) == 0
        assert current(host.root) == host.initial
