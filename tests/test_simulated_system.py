"""The simulated system profile: switch, boot, test and a rollback change real links below a
host's own root, through the stand-ins run as real processes (nixos-rebuild, nix-env, a
system's switch-to-configuration, systemctl); and a cut network closes the host's path to a
real nats-server until the rollback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketStream

from fleet_core.testing import (
    FLAKE_URL,
    host_link,
    init_root,
    make_system,
    set_profile,
    simulated_nix_env_command,
    simulated_rebuild_command,
    simulated_systemctl_command,
)
from fleet_core.testing.embedded_server import EmbeddedNatsServer
from fleet_core.testing.simulated_network import CHECK_INTERVAL
from fleet_core.testing.simulated_system import (
    boot_default,
    booted,
    current,
    current_system_path,
    generations,
    profile,
    profile_path,
    reboot,
    store_dir,
)

HOST = "web1"
LIMIT = 60.0  # the deadline of every process a test runs


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=LIMIT, check=False)


def rebuild(
    root: Path, action: str, *sim: str, revision: str = "v2"
) -> subprocess.CompletedProcess[str]:
    """The simulated nixos-rebuild of HOST under ``root``, as the listener runs it."""
    reference = f"{FLAKE_URL}?ref={revision}#{HOST}"
    argv = simulated_rebuild_command("--sim-root", str(root), *sim)
    return run(*argv, action, "--flake", reference, "--refresh")


def links(root: Path) -> dict[str, Path | None]:
    """Every link of the root, resolved to its store path."""
    return {
        "profile": profile(root),
        "current": current(root),
        "booted": booted(root),
        "boot": boot_default(root),
    }


def switch_to_configuration(system: Path, action: str) -> subprocess.CompletedProcess[str]:
    return run(str(system / "bin" / "switch-to-configuration"), action)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A host root as a host is before its first deploy: one system, one generation."""
    path = tmp_path / HOST
    init_root(path, HOST)
    return path


def initial(root: Path) -> Path:
    return make_system(root, HOST, "initial")


class TestRoot:
    def test_init_points_every_link_at_the_initial_system(self, tmp_path: Path) -> None:
        """A new root has one system labelled initial: generation 1, running, booted and
        booted next; its links are absolute but the profile's, relative as nix writes it."""
        system = init_root(tmp_path, HOST)
        assert system.parent == store_dir(tmp_path)
        assert system.name.endswith(f"-nixos-system-{HOST}-initial")
        assert (system / "nixos-version").read_text() == "initial"
        assert links(tmp_path) == dict.fromkeys(("profile", "current", "booted", "boot"), system)
        assert generations(tmp_path) == [(1, system)]
        assert profile_path(tmp_path).readlink() == Path("system-1-link")
        assert current_system_path(tmp_path).readlink() == system

    def test_init_keeps_an_existing_root(self, root: Path) -> None:
        """A second init of a root that was deployed to changes nothing."""
        assert rebuild(root, "switch").returncode == 0
        before = links(root), generations(root)
        assert init_root(root, HOST) == initial(root)
        assert (links(root), generations(root)) == before

    def test_a_system_is_named_by_its_inputs(self, root: Path) -> None:
        """The same host, label and markers give the same store path; another marker another;
        its switch-to-configuration is executable and the markers are files."""
        system = make_system(root, HOST, "v2", degraded=["a.service", "b.service"])
        assert make_system(root, HOST, "v2", degraded=["a.service", "b.service"]) == system
        assert make_system(root, HOST, "v2") != system
        assert (system / "bin" / "switch-to-configuration").stat().st_mode & 0o111
        assert (system / "sim" / "degraded").read_text().split() == ["a.service", "b.service"]
        cut = make_system(root, HOST, "feature/x", cut_network=True)
        assert cut.name.endswith("-nixos-system-web1-feature-x")
        assert (cut / "nixos-version").read_text() == "feature/x"
        assert (cut / "sim" / "cut-network").exists()

    def test_an_interpreter_path_with_a_space_gets_a_shell_script(
        self, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Where no shebang can name the interpreter, switch-to-configuration is a /bin/sh
        script that runs it, and works the same."""
        wrapper = tmp_path / "with space" / "python"
        wrapper.parent.mkdir()
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        wrapper.chmod(0o755)
        monkeypatch.setattr(sys, "executable", str(wrapper))
        system = make_system(root, HOST, "spaced")
        script = system / "bin" / "switch-to-configuration"
        assert script.read_text().startswith("#!/bin/sh\n")
        assert switch_to_configuration(system, "test").returncode == 0
        assert current(root) == system


class TestRebuild:
    def test_switch_adds_a_generation_and_changes_what_runs_and_boots(self, root: Path) -> None:
        """switch: a new generation holds the new system, which runs and boots next; what
        was booted stays; the output is nixos-rebuild's and the system's activation's."""
        done = rebuild(root, "switch")
        assert done.returncode == 0, done.stderr
        system = make_system(root, HOST, "v2")
        assert links(root) == {
            "profile": system,
            "current": system,
            "booted": initial(root),
            "boot": system,
        }
        assert generations(root) == [(1, initial(root)), (2, system)]
        lines = done.stdout.splitlines()
        for line in ("building the system configuration...", "updating GRUB 2 menu..."):
            assert line in lines
        assert "activating the configuration..." in lines
        assert lines[-1] == f"Done. The new configuration is {system}"

    def test_test_changes_only_what_runs(self, root: Path) -> None:
        """test: the new system runs; the profile and the boot default stay."""
        assert rebuild(root, "test").returncode == 0
        system = make_system(root, HOST, "v2")
        old = initial(root)
        assert links(root) == {"profile": old, "current": system, "booted": old, "boot": old}
        assert generations(root) == [(1, old)]

    def test_boot_changes_the_profile_and_the_boot_default_only(self, root: Path) -> None:
        """boot: a new generation and the boot default; what runs stays, and nothing is
        activated."""
        done = rebuild(root, "boot")
        assert done.returncode == 0
        system = make_system(root, HOST, "v2")
        old = initial(root)
        assert links(root) == {"profile": system, "current": old, "booted": old, "boot": system}
        assert "activating the configuration..." not in done.stdout

    def test_a_reboot_after_boot_runs_the_new_system(self, root: Path) -> None:
        """After boot, a reboot makes the boot default the booted and the running system."""
        assert rebuild(root, "boot").returncode == 0
        system = make_system(root, HOST, "v2")
        assert reboot(root) == system
        assert links(root) == dict.fromkeys(("profile", "current", "booted", "boot"), system)

    def test_dry_activate_changes_nothing(self, root: Path) -> None:
        """dry-activate builds and says what it would do, and every link stays."""
        before = links(root), generations(root)
        done = rebuild(root, "dry-activate")
        assert done.returncode == 0
        assert "would activate the configuration..." in done.stdout.splitlines()
        assert (links(root), generations(root)) == before

    def test_an_evaluation_error_changes_nothing(self, root: Path) -> None:
        """--sim-fail fails before anything is built: no system, no link changed."""
        before = links(root), generations(root), sorted(store_dir(root).iterdir())
        done = rebuild(root, "switch", "--sim-fail")
        assert done.returncode == 1
        assert "error: undefined variable 'webroot'" in done.stderr
        assert (links(root), generations(root), sorted(store_dir(root).iterdir())) == before

    def test_a_failed_activation_changes_the_links_and_fails(self, root: Path) -> None:
        """A system whose activation fails is still the profile's, runs and boots next, as on
        a host; the unit's failure and nixos-rebuild's warning are printed, exit 1."""
        done = rebuild(root, "switch", "--sim-fail-activation")
        assert done.returncode == 1
        system = make_system(root, HOST, "v2", fail_activation=True)
        assert links(root) == {
            "profile": system,
            "current": system,
            "booted": initial(root),
            "boot": system,
        }
        assert "warning: the following units failed: foo.service" in done.stderr
        assert done.stderr.rstrip().endswith(
            "warning: error(s) occurred while switching to the new configuration"
        )
        assert "Done." not in done.stdout

    def test_markers_apply_only_to_the_revision_named(self, root: Path) -> None:
        """With --sim-marker-revision the markers go to that revision's system alone."""
        marked = ("--sim-cut-network", "--sim-marker-revision", "bad")
        assert rebuild(root, "switch", *marked, revision="good").returncode == 0
        assert current(root) == make_system(root, HOST, "good")
        assert rebuild(root, "switch", *marked, revision="bad").returncode == 0
        assert current(root) == make_system(root, HOST, "bad", cut_network=True)

    def test_build_prints_the_store_path_last_and_changes_nothing(self, root: Path) -> None:
        """build makes the system and names it on its last line; no link changes."""
        before = links(root), generations(root)
        done = rebuild(root, "build")
        assert done.returncode == 0
        system = Path(done.stdout.splitlines()[-1])
        assert system == make_system(root, HOST, "v2")
        assert (system / "bin" / "switch-to-configuration").is_file()
        assert (links(root), generations(root)) == before

    def test_a_new_root_is_initialised_by_the_first_rebuild(self, tmp_path: Path) -> None:
        """A rebuild under a root that does not exist yet starts from the initial system."""
        assert rebuild(tmp_path / "new", "switch").returncode == 0
        assert [n for n, _ in generations(tmp_path / "new")] == [1, 2]


class TestRollback:
    def test_nix_env_set_then_switch_to_configuration_rolls_back_every_link(
        self, root: Path
    ) -> None:
        """After a switch, nix-env --set to the previous store path and that path's
        switch-to-configuration switch (reached through the profile link) bring every link
        back, in a new generation, as a rollback does on a host."""
        previous = initial(root)
        assert rebuild(root, "switch").returncode == 0
        assert current(root) != previous
        argv = (*simulated_nix_env_command(), "--profile", str(profile_path(root)))
        rolled = run(*argv, "--set", str(previous))
        assert (rolled.returncode, rolled.stdout, rolled.stderr) == (0, "", "")
        done = switch_to_configuration(profile_path(root), "switch")
        assert done.returncode == 0, done.stderr
        assert links(root) == dict.fromkeys(("profile", "current", "booted", "boot"), previous)
        new = make_system(root, HOST, "v2")
        assert generations(root) == [(1, previous), (2, new), (3, previous)]

    def test_nix_env_refuses_what_is_not_a_store_path(self, root: Path, tmp_path: Path) -> None:
        """nix-env --set fails with nix's words and exit 1 for a store path that is not
        there and for a path outside the store, and leaves the profile alone."""
        missing = store_dir(root) / f"{'0' * 32}-nixos-system-{HOST}-gone"
        argv = (*simulated_nix_env_command(), "-p", str(profile_path(root)), "--set")
        gone = run(*argv, str(missing))
        assert (gone.returncode, gone.stderr) == (
            1,
            f"error: path '{missing}' does not exist and cannot be created\n",
        )
        outside = run(*argv, str(tmp_path))
        assert outside.returncode == 1
        assert f"error: path '{tmp_path}' is not in the Nix store" in outside.stderr
        assert generations(root) == [(1, initial(root))]

    def test_list_generations_marks_the_current_one(self, root: Path) -> None:
        """--list-generations prints each generation, the profile's marked current."""
        set_profile(root, make_system(root, HOST, "v2"))
        set_profile(root, initial(root))
        argv = (*simulated_nix_env_command(), "-p", str(profile_path(root)))
        listed = run(*argv, "--list-generations").stdout.splitlines()
        assert [line.split()[0] for line in listed] == ["1", "2", "3"]
        assert [line.endswith("(current)") for line in listed] == [False, False, True]

    def test_setting_the_newest_generation_again_adds_none(self, root: Path) -> None:
        """As nix does, --set of what the newest generation holds makes no new one."""
        system = make_system(root, HOST, "v2")
        assert set_profile(root, system) == 2
        assert set_profile(root, system) == 2
        assert set_profile(root, current_system_path(root)) == 3  # a link to a store path


class TestActivation:
    def test_dry_activate_changes_nothing(self, root: Path) -> None:
        """switch-to-configuration dry-activate says what it would do and changes no link."""
        system = make_system(root, HOST, "v2", degraded=["db.service"])
        before = links(root)
        done = switch_to_configuration(system, "dry-activate")
        assert done.returncode == 0
        assert done.stdout.splitlines() == [
            "would activate the configuration...",
            "would restart the following units: nginx.service",
            "would start the following units: db.service",
        ]
        assert links(root) == before

    def test_an_unknown_action_prints_the_usage(self, root: Path) -> None:
        """Like the real one, it names its actions and exits 1 for another."""
        done = switch_to_configuration(initial(root), "reboot")
        assert done.returncode == 1
        assert "[switch|boot|test|dry-activate]" in done.stderr

    def test_a_failed_activation_exits_4_after_changing_the_links(self, root: Path) -> None:
        """switch-to-configuration of a failing system makes it run, then exits 4 naming
        its failed units, as the real one does when units fail to start."""
        system = make_system(root, HOST, "v2", degraded=["db.service"], fail_activation=True)
        done = switch_to_configuration(system, "test")
        assert done.returncode == 4
        assert "warning: the following units failed: db.service" in done.stderr
        assert current(root) == system


class TestSystemctl:
    def test_a_healthy_system_is_running(self, root: Path) -> None:
        """is-system-running says running, exit 0; no unit is failed."""
        running = run(*simulated_systemctl_command(root), "is-system-running", "--wait")
        assert (running.returncode, running.stdout) == (0, "running\n")
        argv = (*simulated_systemctl_command(root), "list-units", "--failed", "--plain")
        assert run(*argv, "--no-legend").stdout == ""

    def test_a_system_with_failed_units_is_degraded(self, root: Path) -> None:
        """Once a system with failed units runs, is-system-running says degraded (exit 1)
        and list-units lists them as systemctl does; after a rollback it is running again."""
        assert rebuild(root, "test", "--sim-degraded", "db.service").returncode == 0
        systemctl = simulated_systemctl_command(root)
        degraded = run(*systemctl, "is-system-running")
        assert (degraded.returncode, degraded.stdout) == (1, "degraded\n")
        failed = run(*systemctl, "list-units", "--state=failed", "--plain", "--no-legend")
        assert (failed.returncode, failed.stdout) == (0, "db.service loaded failed failed Db\n")
        assert switch_to_configuration(initial(root), "test").returncode == 0
        assert run(*systemctl, "is-system-running").stdout == "running\n"

    def test_a_system_is_starting_just_after_a_switch(self, root: Path) -> None:
        """With --sim-starting-for, a system that just began to run is starting (exit 1)."""
        assert rebuild(root, "test").returncode == 0
        systemctl = simulated_systemctl_command(root, "--sim-starting-for", "600")
        state = run(*systemctl, "is-system-running")
        assert (state.returncode, state.stdout) == (1, "starting\n")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNatsServer]:
    with EmbeddedNatsServer(tmp_path / "nats", "") as server:
        yield server


async def info_line(stream: SocketStream) -> bytes:
    """The first line a NATS server sends: INFO {...}."""
    received = b""
    while b"\r\n" not in received:
        received += await stream.receive()
    return received.partition(b"\r\n")[0]


async def until_closed(stream: SocketStream) -> None:
    """Read until the other end closes the connection."""
    try:
        while True:
            await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return


async def connect_when_open(port: int) -> SocketStream:
    """Connect once the link's port takes connections again (within the caller's deadline):
    it reopens within the link's interval after the rollback."""
    while True:
        try:
            return await anyio.connect_tcp("127.0.0.1", port)
        except OSError:
            await anyio.sleep(CHECK_INTERVAL)


@pytest.mark.anyio
class TestHostLink:
    async def test_a_cut_network_closes_the_path_to_nats_until_a_rollback(
        self, root: Path, nats_server: EmbeddedNatsServer
    ) -> None:
        """Through the link a client reads the server's INFO; once a cut-network system
        runs, the open connection ends and the port refuses; after the rollback to the
        previous system the same port takes connections again and they read INFO."""
        server_port = int(nats_server.url.rpartition(":")[2])
        cut = make_system(root, HOST, "v2", cut_network=True)
        async with host_link(root, "127.0.0.1", server_port) as port:
            assert f"{port}" == str(int(port))
            with anyio.fail_after(10):
                first = await anyio.connect_tcp("127.0.0.1", port)
                async with first:
                    assert (await info_line(first)).startswith(b"INFO {")
                    done = await anyio.run_process(
                        [str(cut / "bin" / "switch-to-configuration"), "test"], check=False
                    )
                    assert done.returncode == 0
                    await until_closed(first)
                assert port.cuts == 1
                with pytest.raises(OSError, match=r"refused|failed"):
                    await anyio.connect_tcp("127.0.0.1", port)
                previous = initial(root)
                await anyio.run_process([str(previous / "bin" / "switch-to-configuration"), "test"])
                again = await connect_when_open(port)
                async with again:
                    assert (await info_line(again)).startswith(b"INFO {")
            assert (port.links, port.cuts) == (2, 1)
