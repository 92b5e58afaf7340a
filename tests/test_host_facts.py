"""Host facts in discovery: real listeners on a real nats-server, each on a simulated system
profile (``fleet_core.testing.simulated_system``) that a switch, a boot and a reboot really
change, and the packaged ``nixos-version`` stand-in reading it."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from fleet_core.config.settings import DeployTiming, FactsSettings
from fleet_core.deploy.deployer import Deployer
from fleet_core.protocol.actions import Action, HostKind
from fleet_core.protocol.facts import HostFacts
from fleet_core.protocol.messages import HostInfo, JobPhase
from fleet_core.protocol.subjects import Tier
from fleet_core.testing import (
    init_root,
    simulated_facts,
    simulated_home_manager_command,
    simulated_rollback,
)
from fleet_core.testing.simulated_system import (
    current,
    current_system_path,
    generations,
    make_system,
    profile_path,
    reboot,
    set_profile,
)

from .conftest import FAST, Fleet

pytestmark = pytest.mark.anyio


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "web1-root"
    init_root(root, "web1")
    return root


def at_once(root: Path) -> FactsSettings:
    """The simulated host's facts, its links looked at by every discovery: a simulated
    reboot leaves the listener running (a real one restarts it, and it measures anew)."""
    return replace(simulated_facts(root), recheck_after=0.0)


@asynccontextmanager
async def web1(
    fleet: Fleet, root: Path, *sim: str, facts: FactsSettings | None = None
) -> AsyncIterator[None]:
    """web1's listener on its simulated root, measuring its facts there."""
    async with fleet.listeners(
        "web1",
        sim={"web1": ["--sim-root", str(root), *sim]},
        rollback=simulated_rollback(root),
        facts=facts or simulated_facts(root),
    ):
        yield


async def discover(fleet: Fleet, *, recent_jobs: int | None = None) -> HostInfo:
    async with await fleet.connect() as bus:
        hosts = await Deployer(bus, timing=FAST).discover(Tier.TEST, recent_jobs=recent_jobs)
    [web1_info] = [h for h in hosts if h.hostname == "web1"]
    return web1_info


async def facts_of(fleet: Fleet) -> HostFacts:
    facts = (await discover(fleet)).facts
    assert facts is not None
    return facts


async def deploy(fleet: Fleet, revision: str, action: Action = Action.SWITCH) -> None:
    result = await fleet.deploy("deploy.test.web1", revision=revision, action=action)
    [host] = result.hosts
    assert host.status == "completed", host.message


class TestFactsFollowTheSystem:
    async def test_a_fresh_host_reports_what_runs_and_no_job(
        self, fleet: Fleet, root: Path
    ) -> None:
        """Before any deploy: the initial system runs and was booted, generation 1, no job."""
        async with web1(fleet, root):
            facts = await facts_of(fleet)
        assert facts.current_system == str(current(root)) == facts.booted_system
        assert (facts.generation, facts.needs_reboot, facts.last_job) == (1, False, None)
        assert facts.configuration_revision == "initial"
        assert facts.nixos_version is not None and facts.nixos_version.startswith("24.11.")
        assert facts.uptime_s is not None and facts.uptime_s >= 0

    async def test_facts_change_after_a_switch(self, fleet: Fleet, root: Path) -> None:
        """A switch moves the running system, the generation, the revision and the last job;
        the kernel is the same, so no reboot is needed."""
        async with web1(fleet, root):
            before = await facts_of(fleet)
            await deploy(fleet, "v2")
            after = await facts_of(fleet)
        assert after.current_system == str(current(root)) != before.current_system
        assert (after.generation, after.configuration_revision) == (2, "v2")
        assert after.needs_reboot is False
        assert after.last_job is not None
        assert (after.last_job.action, after.last_job.revision) == ("switch", "v2")
        assert (after.last_job.status, after.last_job.error) == ("completed", None)
        assert after.last_job.finished_at is not None

    async def test_a_switch_to_another_kernel_needs_a_reboot_until_the_reboot(
        self, fleet: Fleet, root: Path
    ) -> None:
        """The kernel of the running system differs from the booted one's until a reboot."""
        async with web1(fleet, root, "--sim-kernel", "6.12.1", facts=at_once(root)):
            await deploy(fleet, "new-kernel")
            switched = await facts_of(fleet)
            reboot(root)
            rebooted = await facts_of(fleet)
        assert switched.needs_reboot is True
        assert switched.booted_system != switched.current_system
        assert rebooted.needs_reboot is False
        assert rebooted.booted_system == rebooted.current_system == switched.current_system

    async def test_a_boot_needs_a_reboot_and_changes_what_runs_only_after_it(
        self, fleet: Fleet, root: Path
    ) -> None:
        """After a boot the profile holds a newer generation than what runs: a reboot is
        pending; the simulated reboot runs it and clears the flag."""
        async with web1(fleet, root, facts=at_once(root)):
            before = await facts_of(fleet)
            await deploy(fleet, "v3", Action.BOOT)
            booted = await facts_of(fleet)
            reboot(root)
            rebooted = await facts_of(fleet)
        assert booted.current_system == before.current_system
        assert (booted.generation, booted.needs_reboot) == (2, True)
        assert booted.configuration_revision == "initial"  # the new one does not run yet
        assert booted.last_job is not None and booted.last_job.action == "boot"
        assert rebooted.needs_reboot is False
        assert (rebooted.configuration_revision, rebooted.generation) == ("v3", 2)
        assert [n for n, _ in generations(root)] == [1, 2]

    async def test_a_test_activation_is_no_pending_reboot(self, fleet: Fleet, root: Path) -> None:
        """A test runs a system the profile does not hold; a reboot would undo it, so it is
        not reported as needing one."""
        async with web1(fleet, root):
            await deploy(fleet, "try", Action.TEST)
            facts = await facts_of(fleet)
        assert (facts.configuration_revision, facts.generation) == ("try", 1)
        assert facts.needs_reboot is False

    async def test_a_failed_deploy_is_the_last_job_with_its_error(
        self, fleet: Fleet, root: Path
    ) -> None:
        """A rebuild that fails to evaluate leaves the system alone and is the last job."""
        async with web1(fleet, root, "--sim-fail-revision", "broken"):
            await deploy(fleet, "v2")
            result = await fleet.deploy("deploy.test.web1", revision="broken")
            facts = await facts_of(fleet)
        assert result.hosts[0].status == "failed"
        assert facts.configuration_revision == "v2"
        assert facts.last_job is not None
        assert (facts.last_job.revision, facts.last_job.status) == ("broken", "failed")
        assert facts.last_job.error == "build_failed"


class TestFactsAreCached:
    async def test_a_health_check_does_not_hide_the_last_deploy(
        self, fleet: Fleet, root: Path
    ) -> None:
        """A check after a failed switch leaves the switch as the last job: a check
        rebuilds nothing, and status must still see the failure (and the revision)."""
        async with web1(fleet, root, "--sim-fail-revision", "broken"):
            failed = await fleet.deploy("deploy.test.web1", revision="broken")
            checked = await fleet.deploy("deploy.test.web1", action=Action.CHECK)
            facts = await facts_of(fleet)
            jobs = (await discover(fleet, recent_jobs=5)).recent_jobs or []
        assert (failed.hosts[0].status, checked.hosts[0].status) == ("failed", "completed")
        assert [j.action for j in jobs] == ["check", "switch"]  # the check is a job all the same
        assert facts.last_job is not None
        assert (facts.last_job.action, facts.last_job.revision) == ("switch", "broken")
        assert facts.last_job.status == "failed"

    async def test_a_change_behind_the_listeners_back_waits_for_the_recheck_or_a_job(
        self, fleet: Fleet, root: Path
    ) -> None:
        """Within recheck_after the links are not looked at again: a system set by hand is
        not seen; the end of a job of this listener makes the next discovery look at once."""
        slow = replace(simulated_facts(root), recheck_after=3600.0)
        async with web1(fleet, root, facts=slow):
            before = await facts_of(fleet)
            by_hand = make_system(root, "web1", "by-hand")
            set_profile(root, by_hand)  # nix-env --set, no switch-to-configuration: no job
            cached = await facts_of(fleet)
            await deploy(fleet, "v2")
            after = await facts_of(fleet)
        assert cached.generation == before.generation == 1
        assert after.generation == 3 and after.configuration_revision == "v2"


class TestFactsDegradeGracefully:
    async def test_a_missing_version_program_costs_only_its_facts(
        self, fleet: Fleet, root: Path, tmp_path: Path
    ) -> None:
        """No nixos-version on the host: the links are still reported, the version is None."""
        facts_settings = FactsSettings(
            current_system=current_system_path(root),
            booted_system=root / "run" / "booted-system",
            system_profile=profile_path(root),
            version_command=(str(tmp_path / "no-such-nixos-version"), "--json"),
        )
        async with web1(fleet, root, facts=facts_settings):
            facts = await facts_of(fleet)
        assert facts.current_system == str(current(root))
        assert (facts.nixos_version, facts.configuration_revision) == (None, None)

    async def test_a_version_program_printing_garbage_costs_only_its_facts(
        self, fleet: Fleet, root: Path
    ) -> None:
        """A version program whose output is not JSON: no version, no revision, an answer."""
        garbage = (sys.executable, "-c", "print('\\x1b[2J not json')")
        facts_settings = FactsSettings(
            current_system=current_system_path(root),
            booted_system=None,
            system_profile=profile_path(root),
            version_command=garbage,
        )
        async with web1(fleet, root, facts=facts_settings):
            facts = await facts_of(fleet)
        assert (facts.nixos_version, facts.configuration_revision) == (None, None)
        assert facts.needs_reboot is None  # no booted system to compare with
        assert facts.generation == 1

    async def test_a_hung_version_program_keeps_no_host_out_of_discovery(
        self, fleet: Fleet, root: Path, tmp_path: Path
    ) -> None:
        """A version program that never ends (killed at its deadline, 10 s): discovery, which
        gives up after 1 s of silence, still finds the host and its links (the answer waits
        ``version_grace``, 0.5 s); only the version is missing. One that prints in time is
        waited for."""
        hung = (sys.executable, "-c", "import time; time.sleep(120)")
        facts_settings = FactsSettings(
            current_system=current_system_path(root),
            booted_system=root / "run" / "booted-system",
            system_profile=profile_path(root),
            version_command=hung,
        )
        # The shipped discovery windows, not the tests' shorter ones.
        async with web1(fleet, root, facts=facts_settings), await fleet.connect() as bus:
            hosts = await Deployer(bus, timing=DeployTiming()).discover(Tier.TEST)
        [info] = [h for h in hosts if h.hostname == "web1"]
        assert info.facts is not None and info.facts.current_system == str(current(root))
        assert (info.facts.nixos_version, info.facts.configuration_revision) == (None, None)
        async with web1(fleet, root):  # the stand-in nixos-version, waited for
            facts = await facts_of(fleet)
        assert facts.nixos_version is not None


class TestRecentJobs:
    async def test_discovery_asked_for_recent_jobs_gets_them_newest_first(
        self, fleet: Fleet, root: Path
    ) -> None:
        """recent_jobs=N brings each host's newest N job records, newest first, with what
        each was asked and without log tails; plain discovery brings none."""
        async with web1(fleet, root, "--sim-fail-revision", "broken"):
            await deploy(fleet, "v2")
            await fleet.deploy("deploy.test.web1", revision="broken")
            await deploy(fleet, "v3", Action.BOOT)
            asked = await discover(fleet, recent_jobs=2)
            plain = await discover(fleet)
        assert plain.recent_jobs is None
        assert asked.recent_jobs is not None
        assert [(j.action, j.revision, j.status) for j in asked.recent_jobs] == [
            ("boot", "v3", "completed"),
            ("switch", "broken", "failed"),
        ]
        assert all(j.phase is JobPhase.FINISHED for j in asked.recent_jobs)
        assert all(j.log_tail is None for j in asked.recent_jobs)
        assert all(j.signer == fleet.seed("deployer").public_key for j in asked.recent_jobs)
        newest, older = asked.recent_jobs
        assert newest.started_at is not None and older.finished_at is not None
        assert newest.started_at >= older.finished_at


class TestOtherHostKinds:
    async def test_a_home_manager_host_reports_its_profile_and_no_reboot(
        self, fleet: Fleet, tmp_path: Path
    ) -> None:
        """A Home Manager listener's system is its home-manager profile's generation: the
        path and number are reported, needs_reboot and the booted system are null."""
        store = tmp_path / "store" / "0123abcd-home-manager-generation"
        store.mkdir(parents=True)
        profiles = tmp_path / "state" / "nix" / "profiles"
        profiles.mkdir(parents=True)
        (profiles / "home-manager-3-link").symlink_to(store)
        (profiles / "home-manager").symlink_to("home-manager-3-link")
        facts_settings = FactsSettings(
            current_system=profiles / "home-manager",
            booted_system=None,
            system_profile=profiles / "home-manager",
            version_command=(),
        )
        settings = fleet.local.listener_settings(
            "web1",
            host_kind=HostKind.HOME_MANAGER,
            rebuild_command=simulated_home_manager_command(),
            facts=facts_settings,
        )
        async with fleet.local.listeners([settings]):
            info = await discover(fleet)
        assert info.kind == "home-manager" and info.facts is not None
        assert (info.facts.current_system, info.facts.generation) == (str(store), 3)
        assert (info.facts.booted_system, info.facts.needs_reboot) == (None, None)
        assert info.facts.nixos_version is None
