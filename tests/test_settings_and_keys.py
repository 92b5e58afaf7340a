"""Settings from flags and environment, and seed files — both without a server."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fleet_core.config.options import DEFAULT_LISTENER_TIMEOUT, DEFAULT_STATE_DIR, command
from fleet_core.config.resolve import (
    choose_rebuild_runner,
    deploy_settings,
    listener_settings,
    mcp_settings,
    sandbox_settings,
)
from fleet_core.config.settings import SandboxSettings
from fleet_core.errors import KeyFileError, UsageError
from fleet_core.keys import Seed, generate_seed, load_seed, write_seed
from fleet_core.protocol.actions import Action
from fleet_core.protocol.subjects import Target, Tier

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

LISTENER = {
    "hostname": "web1",
    "tier": "test",
    "nats_url": "nats://n:4222",
    "nkey_file": "/k",
    "flake_url": "git+https://g/r.git",
}
DEPLOY = {"target": "deploy.test.all", "nats_url": "n", "nkey_file": "k"}
MCP = {"nats_url": "n", "nkey_file": "k"}


class TestListenerSettings:
    def test_defaults(self) -> None:
        """Unset options take the named defaults; subjects are expanded."""
        settings = listener_settings(LISTENER, environ={})
        assert settings.timeout == DEFAULT_LISTENER_TIMEOUT
        assert settings.state_dir == DEFAULT_STATE_DIR
        assert settings.rebuild_command == ("nixos-rebuild",)
        assert settings.subjects == ("deploy.test.web1", "deploy.test.all")

    def test_systemd_state_directory(self) -> None:
        """systemd's $STATE_DIRECTORY is the default state dir under a unit."""
        settings = listener_settings(LISTENER, environ={"STATE_DIRECTORY": "/var/lib/fd:/x"})
        assert settings.state_dir == Path("/var/lib/fd")

    def test_flags_override_environment(self) -> None:
        """A flag beats FLEET_DEPLOY_*; the variable beats the default."""
        env = {"FLEET_DEPLOY_TIMEOUT": "30", "FLEET_DEPLOY_ROLE": "dns"}
        settings = listener_settings({**LISTENER, "timeout": "45"}, environ=env)
        assert (settings.timeout, settings.role) == (45.0, "dns")

    def test_rebuild_command_is_split_not_shelled(self) -> None:
        """--rebuild-command is split like a shell would, quotes respected."""
        settings = listener_settings(
            {**LISTENER, "rebuild_command": "sudo -n '/run/current system/sw/bin/nixos-rebuild'"},
            environ={},
        )
        assert settings.rebuild_command == (
            "sudo",
            "-n",
            "/run/current system/sw/bin/nixos-rebuild",
        )

    def test_custom_subjects(self) -> None:
        """--deploy-subject replaces the default templates."""
        settings = listener_settings(
            {**LISTENER, "role": "dns", "deploy_subject": ["fleet.<tier>.<role>.<hostname>"]},
            environ={},
        )
        assert settings.subjects == ("fleet.test.dns.web1",)

    @pytest.mark.parametrize(
        ("override", "message"),
        [
            ({"hostname": None}, "--hostname is required"),
            ({"tier": "staging"}, "--tier 'staging' is not one of test, prod"),
            ({"hostname": "all"}, "cannot be a hostname"),
            ({"role": "a.b"}, "invalid role"),
            ({"timeout": "0"}, "positive"),
            ({"flake_url": "x#y"}, "without '#<host>'"),
            ({"rebuild_command": "'unclosed"}, "cannot be split"),
        ],
    )
    def test_invalid(self, override: dict[str, str | None], message: str) -> None:
        """Each bad setting is a UsageError that names it."""
        with pytest.raises(UsageError, match=message):
            listener_settings({**LISTENER, **override}, environ={})


class TestListenerFlagsOfHomelabDeploy:
    def test_heartbeat_interval(self) -> None:
        """--heartbeat-interval (or FLEET_DEPLOY_HEARTBEAT_INTERVAL) sets how often a running
        job's progress goes out; 10 s by default; a non-positive one names its source."""
        assert listener_settings(LISTENER, environ={}).heartbeat_interval == 10.0
        flagged = listener_settings({**LISTENER, "heartbeat_interval": "2.5"}, environ={})
        assert flagged.heartbeat_interval == 2.5
        env = {"FLEET_DEPLOY_HEARTBEAT_INTERVAL": "4"}
        assert listener_settings(LISTENER, environ=env).heartbeat_interval == 4.0
        with pytest.raises(UsageError, match="--heartbeat-interval must be a positive"):
            listener_settings({**LISTENER, "heartbeat_interval": "0"}, environ={})

    def test_debug_is_log_level_debug(self) -> None:
        """--debug (or FLEET_DEPLOY_DEBUG=true) logs at debug level, whatever --log-level."""
        assert listener_settings(LISTENER, environ={}).log_level == "info"
        both = {**LISTENER, "debug": True, "log_level": "warning"}
        assert listener_settings(both, environ={}).log_level == "debug"
        env = {"FLEET_DEPLOY_DEBUG": "true"}
        assert listener_settings(LISTENER, environ=env).log_level == "debug"
        with pytest.raises(UsageError, match="FLEET_DEPLOY_DEBUG='loud' is not a boolean"):
            listener_settings(LISTENER, environ={"FLEET_DEPLOY_DEBUG": "loud"})

    @pytest.mark.parametrize(
        ("address", "expected"),
        [
            (None, ("", 9972)),  # homelab-deploy's default, :9972
            (":9100", ("", 9100)),
            ("127.0.0.1:9972", ("127.0.0.1", 9972)),
            ("metrics.lan:80", ("metrics.lan", 80)),
            ("[::1]:9972", ("::1", 9972)),
            ("[::]:9972", ("::", 9972)),
        ],
    )
    def test_metrics_address(self, address: str | None, expected: tuple[str, int]) -> None:
        """--metrics-addr takes HOST:PORT, [IPV6]:PORT or :PORT (every address); it is used
        only with --metrics-enabled."""
        flags = {**LISTENER, "metrics_addr": address}
        assert listener_settings(flags, environ={}).metrics_addr is None
        enabled = listener_settings({**flags, "metrics_enabled": True}, environ={})
        assert enabled.metrics_addr == expected
        env = {"FLEET_DEPLOY_METRICS_ENABLED": "1"}
        assert listener_settings(flags, environ=env).metrics_addr == expected

    @pytest.mark.parametrize(
        ("address", "message"),
        [
            ("9972", "must be HOST:PORT or :PORT"),
            (":0", "a port from 1 to 65535"),
            (":99999", "a port from 1 to 65535"),
            (":" + "9" * 5000, "a port from 1 to 65535"),
            (":\u00b2", "a port from 1 to 65535"),
            ("host:http", "must be HOST:PORT or :PORT"),
            ("::1:9972", "an IPv6 address goes in brackets"),
            ("my host:9972", "is not a host name or address"),
        ],
    )
    def test_a_bad_metrics_address_is_refused_even_with_metrics_off(
        self, address: str, message: str
    ) -> None:
        """A bad address is a usage error naming the flag or variable it came from, caught
        before the day metrics are turned on."""
        with pytest.raises(UsageError, match="^" + re.escape(f"--metrics-addr {address!r}")):
            listener_settings({**LISTENER, "metrics_addr": address}, environ={})
        with pytest.raises(UsageError, match=re.escape(message)):
            listener_settings({**LISTENER, "metrics_addr": address}, environ={})
        with pytest.raises(UsageError, match=r"^FLEET_DEPLOY_METRICS_ADDR "):
            listener_settings(LISTENER, environ={"FLEET_DEPLOY_METRICS_ADDR": address})


HOMELAB = {
    "HOMELAB_DEPLOY_NATS_URL": "nats://homelab:4222",
    "HOMELAB_DEPLOY_NKEY_FILE": "/homelab.seed",
    "HOMELAB_DEPLOY_BRANCH": "v1",
    "HOMELAB_DEPLOY_ACTION": "boot",
    "HOMELAB_DEPLOY_TIMEOUT": "60",
}


class TestHomelabDeployVariables:
    """homelab-deploy's HOMELAB_DEPLOY_* variables stand in for ours: flag, then
    FLEET_DEPLOY_*, then HOMELAB_DEPLOY_*, then the default."""

    def test_each_counterpart_is_read_when_ours_is_unset(self) -> None:
        """Server, key, branch, action and timeout of a deploy come from HOMELAB_DEPLOY_*."""
        settings = deploy_settings({"target": "deploy.test.all"}, environ=HOMELAB)
        assert settings.connection.nats_urls == ("nats://homelab:4222",)
        assert settings.connection.nkey_file == Path("/homelab.seed")
        assert (settings.revision, settings.action, settings.timeout) == ("v1", Action.BOOT, 60)

    def test_ours_wins_and_a_flag_wins_over_both(self) -> None:
        """FLEET_DEPLOY_X beats HOMELAB_DEPLOY_X; a flag beats both; an empty one of ours
        counts as unset."""
        env = {
            **HOMELAB,
            "FLEET_DEPLOY_NATS_URL": "nats://fleet:4222",
            "FLEET_DEPLOY_BRANCH": "v2",
            "FLEET_DEPLOY_ACTION": "",
        }
        settings = deploy_settings({"target": "deploy.test.all", "timeout": "5"}, environ=env)
        assert settings.connection.nats_urls == ("nats://fleet:4222",)
        assert (settings.revision, settings.action, settings.timeout) == ("v2", Action.BOOT, 5)

    def test_an_error_names_the_variable_that_was_read(self) -> None:
        """A bad value is reported under the variable it came from — and one that lost to
        ours is never read."""
        flags = {"target": "deploy.test.all"}
        with pytest.raises(UsageError, match=r"^HOMELAB_DEPLOY_TIMEOUT must be a number"):
            deploy_settings(flags, environ={**HOMELAB, "HOMELAB_DEPLOY_TIMEOUT": "soon"})
        with pytest.raises(UsageError, match=r"^HOMELAB_DEPLOY_NATS_URL: 'ftp://x'"):
            deploy_settings(flags, environ={**HOMELAB, "HOMELAB_DEPLOY_NATS_URL": "ftp://x"})
        env = {**HOMELAB, "HOMELAB_DEPLOY_TIMEOUT": "soon", "FLEET_DEPLOY_TIMEOUT": "9"}
        assert deploy_settings(flags, environ=env).timeout == 9

    def test_only_the_same_meaning_falls_back(self) -> None:
        """HOMELAB_DEPLOY_TIMEOUT is a deployer's wait: it never becomes a listener's rebuild
        deadline. Server and key mean the same for every command."""
        env = {**HOMELAB, "HOMELAB_DEPLOY_TIMEOUT": "5"}
        flags = {k: v for k, v in LISTENER.items() if k not in ("nats_url", "nkey_file")}
        settings = listener_settings(flags, environ=env)
        assert settings.timeout == DEFAULT_LISTENER_TIMEOUT
        assert settings.nats_urls == ("nats://homelab:4222",)
        mcp = mcp_settings({}, environ=env)
        assert mcp.connection.nkey_file == Path("/homelab.seed")

    def test_transient_units_get_neither_prefix(self) -> None:
        """The listener's own settings, ours or homelab-deploy's, stay out of the
        environment a transient unit is given."""
        env = {"PATH": "/bin", "FLEET_DEPLOY_ROLE": "web", **HOMELAB}
        settings = listener_settings({**LISTENER, "rebuild_runner": "systemd"}, environ=env)
        assert settings.rebuild_env == ("PATH",)

    def test_aliases_of_both_are_merged_and_ours_wins(self) -> None:
        """FLEET_DEPLOY_ALIAS_<NAME> and HOMELAB_DEPLOY_ALIAS_<NAME> both define targets; for
        the same NAME ours wins; a bad subject names the variable it came from."""
        env = {
            "FLEET_DEPLOY_ALIAS_WEB": "deploy.test.role.web",
            "HOMELAB_DEPLOY_ALIAS_WEB": "deploy.prod.role.web",
            "HOMELAB_DEPLOY_ALIAS_PROD_DNS": "deploy.prod.role.dns",
            "HOMELAB_DEPLOY_ALIAS_BROKEN": "deploy.staging.all",
        }
        flags = {"nats_url": "n", "nkey_file": "k"}
        target = deploy_settings({**flags, "target": "web"}, environ=env).target
        assert target == Target.role(Tier.TEST, "web")
        target = deploy_settings({**flags, "target": "prod-dns"}, environ=env).target
        assert target == Target.role(Tier.PROD, "dns")
        with pytest.raises(UsageError, match=r"^HOMELAB_DEPLOY_ALIAS_BROKEN: 'deploy\.staging"):
            deploy_settings({**flags, "target": "broken"}, environ=env)
        with pytest.raises(UsageError, match="define the alias: export FLEET_DEPLOY_ALIAS_NOPE="):
            deploy_settings({**flags, "target": "nope"}, environ=env)
        # No alias can be named test.all: the subject it looks like is offered instead.
        with pytest.raises(UsageError, match=r"did you mean 'deploy\.test\.all'\?$"):
            deploy_settings({**flags, "target": "test.all"}, environ=env)

    def test_the_sandbox_reads_neither(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The sandbox declares no variable, so no fallback either, and reads none."""
        assert not [o.name for o in command("sandbox").options if o.variables]
        monkeypatch.setenv("HOMELAB_DEPLOY_HOSTS", "4")
        monkeypatch.setenv("FLEET_DEPLOY_HOSTS", "4")
        assert sandbox_settings({}) == SandboxSettings()


class TestRebuildRunnerSettings:
    @pytest.mark.parametrize(
        ("invocation_id", "booted", "root", "expected"),
        [
            ("abc", True, True, "systemd"),
            (None, True, True, "session"),  # not started by a service manager
            ("abc", False, True, "session"),  # a user manager in a container, say
            ("abc", True, False, "session"),  # systemd-run would need polkit
        ],
    )
    def test_auto_means_systemd_for_a_root_service_of_a_systemd_system(
        self, invocation_id: str | None, booted: bool, root: bool, expected: str
    ) -> None:
        """auto picks systemd only with $INVOCATION_ID, /run/systemd/system and root."""
        chosen = choose_rebuild_runner(
            "auto", invocation_id=invocation_id, systemd_booted=booted, root=root
        )
        assert chosen == expected
        assert (
            choose_rebuild_runner("session", invocation_id="x", systemd_booted=True, root=True)
            == "session"
        )
        assert (
            choose_rebuild_runner("systemd", invocation_id=None, systemd_booted=False, root=False)
            == "systemd"
        )

    def test_the_environment_for_transient_units_leaves_out_systemd_s_own(self) -> None:
        """A transient unit gets the listener's variables by name, minus per-unit ones."""
        env = {"PATH": "/bin", "GIT_SSH_COMMAND": "ssh", "INVOCATION_ID": "1", "NOTIFY_SOCKET": "s"}
        settings = listener_settings({**LISTENER, "rebuild_runner": "systemd"}, environ=env)
        assert settings.rebuild_runner == "systemd"
        assert settings.rebuild_env == ("GIT_SSH_COMMAND", "PATH")

    def test_restart_if_changed_takes_absolute_paths(self) -> None:
        """--restart-if-changed is repeatable, and a relative path is a usage error."""
        unit = "/etc/systemd/system/fleet-deploy-listener.service"
        settings = listener_settings({**LISTENER, "restart_if_changed": [unit, "/b"]}, environ={})
        assert settings.restart_if_changed == (Path(unit), Path("/b"))
        with pytest.raises(UsageError, match="must be an absolute path"):
            listener_settings({**LISTENER, "restart_if_changed": ["unit"]}, environ={})
        with pytest.raises(UsageError, match="FLEET_DEPLOY_REBUILD_RUNNER 'docker' is not one"):
            listener_settings(LISTENER, environ={"FLEET_DEPLOY_REBUILD_RUNNER": "docker"})


class TestDeploySettings:
    def test_environment(self) -> None:
        """Every deploy flag has its FLEET_DEPLOY_ variable."""
        env = {
            "FLEET_DEPLOY_NATS_URL": "nats://n",
            "FLEET_DEPLOY_NKEY_FILE": "/k",
            "FLEET_DEPLOY_BRANCH": "main",
            "FLEET_DEPLOY_ACTION": "boot",
            "FLEET_DEPLOY_TIMEOUT": "60",
        }
        settings = deploy_settings({"target": "deploy.test.all"}, environ=env)
        assert settings.target == Target.all(Tier.TEST)
        assert (settings.revision, settings.action, settings.timeout) == ("main", Action.BOOT, 60)

    def test_expect_list(self) -> None:
        """--expect takes repeated and comma-separated host names, validated."""
        settings = deploy_settings({**DEPLOY, "expect": ["a,b", "c"]}, environ={})
        assert settings.expect == ("a", "b", "c")
        with pytest.raises(UsageError):
            deploy_settings({**DEPLOY, "expect": ["a.b"]}, environ={})

    def test_bad_action(self) -> None:
        """An unknown action from the environment is a usage error listing the actions."""
        with pytest.raises(UsageError, match="switch, boot, test, dry-activate, build"):
            deploy_settings(DEPLOY, environ={"FLEET_DEPLOY_ACTION": "reboot"})


class TestMcpSettings:
    def test_admin_needs_its_key(self) -> None:
        """--enable-admin without an admin key is a startup error saying so."""
        with pytest.raises(UsageError, match="--enable-admin needs the admin key"):
            mcp_settings({**MCP, "enable_admin": True}, environ={})

    def test_admin_key_alone_does_not_enable_admin(self) -> None:
        """An admin key without --enable-admin is not used."""
        settings = mcp_settings({**MCP, "admin_nkey_file": "/a"}, environ={})
        assert settings.admin_nkey_file is None

    def test_admin_from_environment(self) -> None:
        """FLEET_DEPLOY_ENABLE_ADMIN and FLEET_DEPLOY_ADMIN_NKEY_FILE enable admin."""
        env = {"FLEET_DEPLOY_ENABLE_ADMIN": "true", "FLEET_DEPLOY_ADMIN_NKEY_FILE": "/a"}
        settings = mcp_settings(MCP, environ=env)
        assert settings.admin_nkey_file == Path("/a")
        with pytest.raises(UsageError, match="not a boolean"):
            mcp_settings(MCP, environ={"FLEET_DEPLOY_ENABLE_ADMIN": "maybe"})

    def test_http_address(self) -> None:
        """--http takes HOST:PORT."""
        assert mcp_settings({**MCP, "http": "127.0.0.1:8000"}, environ={}).http == (
            "127.0.0.1",
            8000,
        )
        for bad in ("8000", "127.0.0.1:\u00b2", "127.0.0.1:\u0663", "127.0.0.1:" + "9" * 5000):
            with pytest.raises(UsageError, match="HOST:PORT"):
                mcp_settings({**MCP, "http": bad}, environ={})


class TestKeys:
    def test_generate_write_load(self, tmp_path: Path) -> None:
        """A generated seed is written 0600 and loads back to the same public key."""
        seed = generate_seed()
        path = tmp_path / "k.seed"
        write_seed(path, seed)
        assert path.stat().st_mode & 0o777 == 0o600
        assert load_seed(path).public_key == seed.public_key
        assert seed.public_key.startswith("U") and len(seed.public_key) == 56

    def test_never_overwrites(self, tmp_path: Path) -> None:
        """Writing over an existing seed file is refused."""
        path = tmp_path / "k.seed"
        write_seed(path, generate_seed())
        before = path.read_text()
        with pytest.raises(KeyFileError, match="already exists"):
            write_seed(path, generate_seed())
        assert path.read_text() == before

    def test_secret_stays_out_of_repr(self) -> None:
        """Neither repr nor str of a Seed shows the secret."""
        seed = generate_seed()
        assert seed.reveal() not in repr(seed) and seed.reveal() not in str(seed)

    @pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
    def test_open_modes_refused(self, tmp_path: Path, mode: int) -> None:
        """Group- or world-readable seed files are refused with the chmod to run."""
        path = tmp_path / "k.seed"
        write_seed(path, generate_seed())
        path.chmod(mode)
        with pytest.raises(KeyFileError, match="chmod 600"):
            load_seed(path)

    def test_missing_unreadable_and_malformed(self, tmp_path: Path) -> None:
        """Missing, unreadable, directory and non-seed files each get a clear error."""
        with pytest.raises(KeyFileError, match="does not exist"):
            load_seed(tmp_path / "nope")
        with pytest.raises(KeyFileError, match="not a regular file"):
            load_seed(tmp_path)
        bad = tmp_path / "bad.seed"
        bad.write_text("SUAAAA")
        bad.chmod(0o600)
        with pytest.raises(KeyFileError, match="is corrupted"):
            load_seed(bad)
        public = tmp_path / "pub"
        public.write_text(generate_seed().public_key)
        public.chmod(0o600)
        with pytest.raises(KeyFileError, match="keygen"):
            load_seed(public)
        if os.geteuid() != 0:  # root reads anything; the mode check above still applies
            locked = tmp_path / "locked.seed"
            write_seed(locked, generate_seed())
            locked.chmod(0o000)
            with pytest.raises(KeyFileError, match="cannot read"):
                load_seed(locked)

    def test_every_single_character_change_is_caught(self) -> None:
        """No one-character change of a seed loads as another key: it is refused as corrupted.

        (nkeys alone loads most of them as a different valid key.)
        """
        seed = generate_seed()
        secret = seed.reveal()
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
        changed = 0
        messages: set[str] = set()
        for index in range(2, len(secret)):  # past the "SU" prefix, which has its own check
            for letter in alphabet.replace(secret[index], ""):
                variant = secret[:index] + letter + secret[index + 1 :]
                try:
                    loaded = Seed.from_string(variant)
                except KeyFileError as exc:
                    messages.add(str(exc).split(" (")[0])
                    changed += 1
                    continue
                # Only the unused low bits of the last character may change nothing.
                assert loaded.public_key == seed.public_key, (index, letter)
        assert changed >= (len(secret) - 3) * (len(alphabet) - 1)
        assert messages == {"a generated seed is corrupted"}

    def test_corrupted_seed_file_says_so(self, tmp_path: Path) -> None:
        """A seed file with a wrong checksum names the file and says it is corrupted."""
        secret = generate_seed().reveal()
        flipped = "A" if secret[10] != "A" else "B"
        path = tmp_path / "k.seed"
        path.write_text(secret[:10] + flipped + secret[11:] + "\n")
        path.chmod(0o600)
        with pytest.raises(KeyFileError, match=f"NKey seed file {path} is corrupted"):
            load_seed(path)

    def test_utf16_and_bom_files(self, tmp_path: Path) -> None:
        """A UTF-16 seed file is a clear error; a UTF-8 byte-order mark is tolerated."""
        seed = generate_seed()
        utf16 = tmp_path / "utf16.seed"
        utf16.write_bytes(seed.reveal().encode("utf-16"))
        utf16.chmod(0o600)
        with pytest.raises(KeyFileError, match="UTF-16"):
            load_seed(utf16)
        bom = tmp_path / "bom.seed"
        bom.write_bytes(b"\xef\xbb\xbf" + seed.reveal().encode() + b"\r\n")
        bom.chmod(0o600)
        assert load_seed(bom).public_key == seed.public_key
        binary = tmp_path / "binary.seed"
        binary.write_bytes(b"SU\x00\x9f")
        binary.chmod(0o600)
        with pytest.raises(KeyFileError, match="not ASCII"):
            load_seed(binary)

    def test_seed_from_string_strips_whitespace(self) -> None:
        """Seeds with trailing newlines (as editors write them) load."""
        seed = generate_seed()
        assert Seed.from_string(seed.reveal() + "\n\n").public_key == seed.public_key


def test_log_level_from_the_environment_is_checked() -> None:
    """An unknown FLEET_DEPLOY_LOG_LEVEL is a usage error naming the choices."""
    with pytest.raises(UsageError, match="debug, info, warning, error"):
        listener_settings(LISTENER, environ={"FLEET_DEPLOY_LOG_LEVEL": "verbose"})
