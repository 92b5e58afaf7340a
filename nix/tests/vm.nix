# NixOS VM test: a NATS server with homelab-deploy's tiered permissions, two hosts running
# the listener through the NixOS module, a build host running the builder through it, and a
# deployer that deploys and builds with the CLI.
# `web1` is configured with fleet-deploy's options; `web2` exactly as a homelab-deploy user
# configures homelab-deploy (`services.homelab-deploy.listener`, metrics and extraArgs
# included), and serves metrics through its firewall.
#
# The host's rebuild is a stand-in with nixos-rebuild's interface that records its argv, so
# the test checks the whole request path (deployer → NATS → listener → rebuild → status →
# deployer) without building a system inside the VM. It runs as a transient unit
# (fleet-deploy-job-<id>), outside the listener's sandbox (it proves so by writing to
# /var/lib, which the listener's unit sees read-only), can be held open (/tmp/hold-rebuild)
# so the listener can be restarted in the middle of a deploy, and can activate a real system
# (/tmp/switch-to) so a deploy can change the listener's own unit, or switch to a system that
# fails its health checks.
#
# Rollback: web1's listener has a health check of its own (`marker`: a file of web1's
# configuration exists) besides the built-in `system-running`, and web1 has two
# specialisations, `good` and `bad`; `bad` drops that file. The stand-in activates either as
# nixos-rebuild would (`test`: switch-to-configuration test; `switch`, once the host has a
# system profile: nix-env --set, then switch-to-configuration switch), and the test checks
# that the real job runner takes a `bad` switch back to the exact system that ran before it
# (`good`, by store path, though the profile's previous generation is the booted system),
# that the deployer hears failed/rolled_back, and that --no-rollback only reports.
#
# `builder` runs the build service through the module (`services.fleet-deploy.builder`), as
# its dynamic user, with the package's stand-in for nix (fleet_core.testing.simulated_nix: a flake
# with the hosts web1 and web2, which records each call and "copies" to a file:// cache by
# writing a .narinfo), so the deployer's `fleet-deploy build` goes the whole way (deployer →
# NATS → builder → nix → cache → statuses → deployer) without evaluating a flake.
#
# The NKeys under ./keys are public test-only keys (see ./keys/README.md).
{
  pkgs,
  # nixosModules.default of this flake
  module,
  # packages.<system>.default of this flake
  package,
}:

let
  inherit (pkgs) lib;

  publicKey = name: lib.fileContents (./keys + "/${name}.pub");

  # Installs a test seed outside the store, as a real secret would be (a copy, mode 0400).
  seedFile = name: {
    source = ./keys + "/${name}.seed";
    mode = "0400";
  };

  # nixos-rebuild's stand-in: one line per call with its arguments, then success.
  standInRebuild = pkgs.writeShellScript "stand-in-nixos-rebuild" ''
    printf '%s\n' "$*" >> /tmp/stand-in-rebuild.argv
    echo "stand-in nixos-rebuild: $*"
    # A real switch writes /etc, /boot and /nix/var: the rebuild must not run in the
    # listener's sandbox (ProtectSystem=strict), where this would fail.
    if ! touch /var/lib/stand-in-rebuild-unsandboxed; then
      echo "stand-in nixos-rebuild: running inside the listener's sandbox" >&2
      exit 1
    fi
    while [ -e /tmp/hold-rebuild ]; do sleep 0.2; done
    if [ -e /tmp/switch-to ]; then
      target="$(cat /tmp/switch-to)"
      if [ "$1" = switch ] && [ -e /nix/var/nix/profiles/system ]; then
        # As nixos-rebuild switch: the system profile, then the boot entry and activation.
        nix-env --profile /nix/var/nix/profiles/system --set "$target" || exit
        "$target/bin/switch-to-configuration" switch || exit
      else
        "$target/bin/switch-to-configuration" test || exit
      fi
    fi
    echo "Done. The new configuration is /nix/store/00000000000000000000000000000000-stand-in"
  '';

  # nix's stand-in for the builder: the package's simulated nix (standard library only, so
  # the package's Python with the package's own site-packages is enough). It records every
  # call in the builder's state directory.
  standInNix = pkgs.writeShellScript "stand-in-nix" ''
    export PYTHONPATH=${package}/${package.python.sitePackages}
    exec ${package.python.interpreter} -m fleet_core.testing.simulated_nix --sim-hosts web1,web2 \
      --sim-record /var/lib/fleet-deploy-builder/nix.argv "$@"
  '';

  # The repositories file's URL carries a (fake) token: the test checks that it reaches nix
  # but neither the unit file nor the builder's command line.
  privateRepo = "git+https://oauth2:TEST-TOKEN@git.example.invalid/private.git";
in
pkgs.testers.runNixOSTest {
  name = "fleet-deploy";

  nodes = {
    nats = {
      services.nats = {
        enable = true;
        # The history streams (docs/history.md); `fleet-deploy history --setup` makes them.
        jetstream = true;
        host = "0.0.0.0";
        settings = {
          # Monitoring, for the test script only (not opened in the firewall).
          http = "127.0.0.1:8222";
          authorization.users = [
            {
              # The listener on web1: tier test, role web. As `fleet-deploy nats-config`
              # writes it: it answers only on reply subjects bound to its tier and name, and
              # hears discovery only on its tier's subject.
              nkey = publicKey "listener-web1";
              permissions = {
                publish = [
                  "deploy.responses.*.test.web1"
                  "deploy.responses.*.test.web1.log"
                ];
                subscribe = [
                  "deploy.test.web1"
                  "deploy.test.all"
                  "deploy.test.role.web"
                  "deploy.discover.test"
                ];
              };
            }
            {
              # The listener on web2, the same for tier test, role web.
              nkey = publicKey "listener-web2";
              permissions = {
                publish = [
                  "deploy.responses.*.test.web2"
                  "deploy.responses.*.test.web2.log"
                ];
                subscribe = [
                  "deploy.test.web2"
                  "deploy.test.all"
                  "deploy.test.role.web"
                  "deploy.discover.test"
                ];
              };
            }
            {
              # Test-tier deployer (the MCP key). It may ask for builds (they change no
              # host) but never answer one.
              nkey = publicKey "test-deployer";
              permissions = {
                publish = {
                  allow = [
                    "deploy.test.>"
                    "deploy.discover.test"
                    "build.*.*"
                  ];
                  deny = [ "build.responses.>" ];
                };
                # Bare and test-tier replies only; the deny keeps prod's out of a
                # deploy.responses.> subscription, which deploy.responses.* admits.
                subscribe = {
                  allow = [
                    "deploy.responses.*"
                    "deploy.responses.*.test.*"
                    "deploy.responses.*.test.*.log"
                    "build.responses.*"
                  ];
                  deny = [ "deploy.responses.*.prod.>" ];
                };
              };
            }
            {
              # Admin deployer.
              nkey = publicKey "admin-deployer";
              permissions = {
                publish = {
                  allow = [
                    "deploy.>"
                    "build.*.*"
                    "$JS.API.>"
                  ];
                  deny = [ "build.responses.>" ];
                };
                subscribe = [
                  "deploy.>"
                  "build.responses.*"
                ];
              };
            }
            {
              # The builder, as `fleet-deploy nats-config` writes [builders.builder] with
              # repos = [ "fleet" "private" ]: it hears build requests for its repositories
              # and alone may answer them.
              nkey = publicKey "builder";
              permissions = {
                publish = [ "build.responses.>" ];
                subscribe = [
                  "build.fleet.*"
                  "build.private.*"
                ];
              };
            }
          ];
        };
      };
      networking.firewall.allowedTCPPorts = [ 4222 ];
      environment.systemPackages = [ pkgs.curl ];
    };

    web1 = {
      imports = [ module ];

      environment.etc."fleet-deploy/listener.seed" = seedFile "listener-web1";

      services.fleet-deploy.listener = {
        enable = true;
        # hostname defaults to networking.hostName, "web1"
        tier = "test";
        role = "web";
        natsUrl = "nats://nats:4222";
        nkeyFile = "/etc/fleet-deploy/listener.seed";
        flakeUrl = "git+https://git.example.invalid/fleet.git";
        # A test host trusts the admin and the test-tier deployer: every deploy below is
        # signed by the CLI with the key it connects with.
        trustedDeployerKeys = [
          (publicKey "admin-deployer")
          (publicKey "test-deployer")
        ];
        timeout = 120;
        logLevel = "debug";
        # After the built-in system-running check: a file of this configuration exists (the
        # `bad` specialisation drops it). Its program by store path, as the module asks.
        healthChecks = [
          {
            name = "marker";
            command = [
              "${pkgs.coreutils}/bin/test"
              "-e"
              "/etc/fleet-deploy-vm/healthy"
            ];
            timeout = 10;
          }
        ];
        rollback.confirmTimeout = 60;
        extraArgs = [
          "--rebuild-command"
          "${standInRebuild}"
        ];
      };

      environment.etc."fleet-deploy-vm/healthy".text = "";
      environment.etc."fleet-deploy-vm/system".text = "booted";

      # A test VM boots without a boot loader to install: `switch` and `boot` (the stand-in's
      # switch, and a rollback's) run this instead, as nixpkgs' switch-test does.
      system.build.installBootLoader = lib.mkForce (
        pkgs.writeShellScript "install-dummy-loader" ''
          echo "dummy boot loader: $1" >> /tmp/boot-loader.log
        ''
      );

      # The same host with one listener setting changed, to switch to.
      specialisation.changed.configuration = {
        services.fleet-deploy.listener.logLevel = lib.mkForce "info";
      };

      # Two systems to deploy, with the same listener: one that passes web1's checks, and one
      # that fails `marker`.
      specialisation.good.configuration = {
        environment.etc."fleet-deploy-vm/system".text = lib.mkForce "good";
      };
      specialisation.bad.configuration = {
        environment.etc."fleet-deploy-vm/system".text = lib.mkForce "bad";
        environment.etc."fleet-deploy-vm/healthy".enable = lib.mkForce false;
      };
    };

    # A host as homelab-deploy's users configure it: only homelab-deploy's option names,
    # which fleet-deploy's module renames to its own (with a warning at build time).
    web2 = {
      imports = [ module ];

      environment.etc."homelab-deploy/listener.seed" = seedFile "listener-web2";
      environment.systemPackages = [ pkgs.curl ];

      services.homelab-deploy.listener = {
        enable = true;
        tier = "test";
        role = "web";
        natsUrl = "nats://nats:4222";
        nkeyFile = "/etc/homelab-deploy/listener.seed";
        flakeUrl = "git+https://git.example.invalid/fleet.git";
        timeout = 120;
        metrics = {
          enable = true;
          address = ":9972";
          openFirewall = true;
        };
        extraArgs = [
          "--debug"
          "--heartbeat-interval"
          "5"
          "--rebuild-command"
          "${standInRebuild}"
        ];
      };
    };

    builder = {
      imports = [ module ];

      environment.etc."fleet-deploy/builder.seed" = seedFile "builder";
      # A real one would be a secret outside the store (sops-nix, agenix); this one's token
      # is fake.
      environment.etc."fleet-deploy/builder-repos.toml" = {
        text = ''
          [repos]
          private = "${privateRepo}"
        '';
        mode = "0400";
      };

      services.fleet-deploy.builder = {
        enable = true;
        # name defaults to networking.hostName, "builder"
        natsUrl = "nats://nats:4222";
        nkeyFile = "/etc/fleet-deploy/builder.seed";
        repos.fleet = "git+https://git.example.invalid/fleet.git";
        reposFile = "/etc/fleet-deploy/builder-repos.toml";
        # The cache directory systemd gives the dynamic user: writable in its sandbox.
        cache = "file:///var/cache/fleet-deploy-builder/binary-cache";
        timeout = 120;
        heartbeatInterval = 2;
        logLevel = "debug";
        extraArgs = [
          "--nix-command"
          "${standInNix}"
        ];
      };
    };

    deployer = {
      environment.systemPackages = [
        package
        pkgs.curl
      ];
      environment.etc."fleet-deploy/admin.seed" = seedFile "admin-deployer";
      environment.etc."fleet-deploy/test.seed" = seedFile "test-deployer";
    };
  };

  testScript = ''
    import json
    import re

    ARGV_LOG = "/tmp/stand-in-rebuild.argv"
    EXPECTED_ARGV = (
        "switch --flake git+https://git.example.invalid/fleet.git?ref=master#web1 --refresh"
    )
    LISTENER_SUBJECTS = [
        "deploy.test.web1",
        "deploy.test.all",
        "deploy.test.role.web",
        "deploy.discover.test",  # the bare deploy.discover is refused it, by design
    ]


    def deploy(target: str, key: str, action: str = "switch", extra: str = "") -> str:
        return (
            f"fleet-deploy deploy {target} --nats-url nats://nats:4222"
            f" --nkey-file /etc/fleet-deploy/{key}.seed"
            f" --branch master --action {action} --timeout 60{extra}"
        )


    def deploy_web1(action: str, extra: str = "") -> tuple[int, dict]:
        """An admin deploy to web1 with --json: the exit status, and web1's result."""
        status, output = deployer.execute(
            deploy("deploy.test.web1", "admin", action, " --json" + extra), timeout=120
        )
        hosts = {h["hostname"]: h for h in json.loads(output)["hosts"]}
        return status, hosts["web1"]


    SYSTEM_PROFILE = "/nix/var/nix/profiles/system"


    def system_of(link: str) -> str:
        """The store path a link on web1 resolves to."""
        return web1.succeed(f"readlink -f {link}").strip()


    def checked(host: dict) -> dict[str, bool]:
        return {c["name"]: c["ok"] for c in host.get("checks") or []}


    def listener_connections() -> set[int]:
        """Client ids of NATS connections subscribed to every listener subject."""
        connz = json.loads(nats.succeed("curl -sf 'http://127.0.0.1:8222/connz?subs=1'"))
        return {
            conn["cid"]
            for conn in connz.get("connections") or []
            if set(LISTENER_SUBJECTS) <= set(conn.get("subscriptions_list") or [])
        }


    def subscribed(subject: str) -> bool:
        """Whether some NATS connection is subscribed to subject."""
        connz = json.loads(nats.succeed("curl -sf 'http://127.0.0.1:8222/connz?subs=1'"))
        return any(
            subject in (conn.get("subscriptions_list") or [])
            for conn in connz.get("connections") or []
        )


    def rebuild_calls() -> int:
        return int(web1.succeed(f"grep -cxF -- '{EXPECTED_ARGV}' {ARGV_LOG} || true").strip())


    def listener_pid() -> str:
        return web1.succeed("systemctl show -P MainPID fleet-deploy-listener.service").strip()


    def unit_property(machine, name: str) -> str:
        return machine.succeed(f"systemctl show -P {name} fleet-deploy-listener.service").strip()


    def running_jobs() -> str:
        return web1.succeed(
            "systemctl list-units --no-legend --state=running 'fleet-deploy-job-*' || true"
        )


    BUILDER_UNIT = "fleet-deploy-builder.service"
    NIX_CALLS = "/var/lib/fleet-deploy-builder/nix.argv"
    BINARY_CACHE = "/var/cache/fleet-deploy-builder/binary-cache"


    def build(repo: str, target: str, key: str) -> dict:
        """Asks the builder for a build with the CLI; its JSON result."""
        output = deployer.succeed(
            f"fleet-deploy build {repo} {target} --nats-url nats://nats:4222"
            f" --nkey-file /etc/fleet-deploy/{key}.seed --branch master --timeout 120 --json",
            timeout=180,
        )
        return json.loads(output)


    def built_hosts(result: dict) -> dict[str, str]:
        return {h["host"]: h["state"] for h in result["hosts"]}


    def nix_calls() -> list[list[str]]:
        """The stand-in nix's argv of every call so far, --sim-* flags left out, after the
        experimental features each call must enable (a stock nix has neither)."""
        lines = builder.succeed(f"cat {NIX_CALLS} || true").splitlines()
        argvs = [json.loads(line)["argv"] for line in lines if line.strip()]
        features = ["--extra-experimental-features", "nix-command flakes"]
        assert all(argv[:2] == features for argv in argvs), argvs
        return [argv[2:] for argv in argvs]


    def builder_pid() -> str:
        return builder.succeed(f"systemctl show -P MainPID {BUILDER_UNIT}").strip()


    def builder_connections() -> set[int]:
        """Client ids of NATS connections subscribed to both of the builder's repositories."""
        connz = json.loads(nats.succeed("curl -sf 'http://127.0.0.1:8222/connz?subs=1'"))
        return {
            conn["cid"]
            for conn in connz.get("connections") or []
            if {"build.fleet.*", "build.private.*"} <= set(conn.get("subscriptions_list") or [])
        }


    start_all()

    with subtest("the NATS server starts"):
        nats.wait_for_unit("nats.service")
        nats.wait_for_open_port(4222)
        nats.wait_for_open_port(8222)

    with subtest("the listener unit survives switches and gets its seed as a credential"):
        web1.wait_for_unit("fleet-deploy-listener.service")
        unit = web1.succeed("systemctl cat fleet-deploy-listener.service")
        assert "X-RestartIfChanged=false" in unit, unit
        assert "LoadCredential=nkey:/etc/fleet-deploy/listener.seed" in unit, unit
        assert "--nkey-file %d/nkey" in unit, unit
        assert "Restart=always" in unit, unit
        assert "RestartForceExitStatus=75" in unit, unit
        assert "--rebuild-runner" in unit and "--restart-if-changed" in unit, unit
        web1.succeed("test -d /var/lib/fleet-deploy")

    with subtest("the listener runs sandboxed"):
        for name, value in {
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "NoNewPrivileges": "yes",
            "PrivateDevices": "yes",
            "ProtectKernelModules": "yes",
            "MemoryDenyWriteExecute": "yes",
            "ProtectClock": "yes",
            "UMask": "0077",
        }.items():
            assert unit_property(web1, name) == value, (name, unit_property(web1, name))
        print(web1.succeed("systemd-analyze security fleet-deploy-listener.service || true"))

    with subtest("the listener has the module's checks, and the host's nix-env and systemctl"):
        unit = web1.succeed("systemctl cat fleet-deploy-listener.service")
        match = re.search(r'"--health-checks" "(/nix/store/[^"]+)"', unit)
        assert match, unit
        checks = json.loads(web1.succeed(f"cat {match[1]}"))
        assert [c["name"] for c in checks] == ["system-running", "marker"], checks
        assert checks[0]["builtin"] == "system-running", checks
        assert checks[1]["command"][1:] == ["-e", "/etc/fleet-deploy-vm/healthy"], checks
        assert re.search(r'"--nix-env-command" "/nix/store/[^"]+/bin/nix-env"', unit), unit
        assert re.search(r'"--systemctl-command" "/nix/store/[^"]+/bin/systemctl"', unit), unit
        assert '"--confirm-timeout" "60"' in unit and "--no-rollback" not in unit, unit
        # Every switch or test that activates a system below runs the built-in check, which
        # a degraded VM would fail: say so here, with the failed units.
        state = web1.succeed("systemctl is-system-running --wait || true").strip()
        failed = web1.succeed("systemctl list-units --failed --plain --no-legend || true")
        assert state == "running", f"web1 is {state}: {failed}"

    with subtest("the listener subscribes to its subjects with its own key"):
        retry(lambda _: len(listener_connections()) == 1)

    with subtest("an admin deploy to the host completes, its rebuild outside the sandbox"):
        deployer.succeed(deploy("deploy.test.web1", "admin"), timeout=120)
        assert rebuild_calls() == 1, web1.succeed(f"cat {ARGV_LOG}")
        web1.succeed("test -e /var/lib/stand-in-rebuild-unsandboxed")

    with subtest("a host configured for homelab-deploy runs the same listener"):
        web2.wait_for_unit("fleet-deploy-listener.service")
        unit = web2.succeed("systemctl cat fleet-deploy-listener.service")
        assert "LoadCredential=nkey:/etc/homelab-deploy/listener.seed" in unit, unit
        assert '"--metrics-enabled" "--metrics-addr" ":9972"' in unit, unit
        assert '"--debug" "--heartbeat-interval" "5"' in unit, unit
        assert unit_property(web2, "ProtectSystem") == "strict"
        web2.wait_for_open_port(9972)
        retry(lambda _: subscribed("deploy.test.web2"))
        deployer.succeed(deploy("deploy.test.web2", "admin"), timeout=120)
        expected = EXPECTED_ARGV.replace("#web1", "#web2")
        web2.succeed(f"grep -qxF -- '{expected}' {ARGV_LOG}")

    with subtest("the homelab-style host serves its metrics, through its firewall"):
        local = web2.succeed("curl -sf http://127.0.0.1:9972/metrics")
        assert 'fleet_deploy_info{' in local and 'hostname="web2"' in local, local
        assert 'fleet_deploy_deployments_total{' in local, local
        remote = deployer.succeed("curl -sf --max-time 10 http://web2:9972/metrics")
        assert "fleet_deploy_info" in remote, remote
        # web1 has metrics off: nothing listens there.
        deployer.fail("curl -sf --max-time 5 http://web1:9972/metrics")

    with subtest("the test-tier key deploys the whole test tier, both hosts"):
        output = deployer.succeed(deploy("deploy.test.all", "test"), timeout=120)
        assert "web1" in output and "web2" in output, output
        assert rebuild_calls() == 2, web1.succeed(f"cat {ARGV_LOG}")

    with subtest("the test-tier key cannot deploy prod, and says so at once"):
        status, output = deployer.execute(deploy("deploy.prod.web1", "test"), timeout=60)
        assert status == 2, f"exit status {status}, expected 2:\n{output}"
        assert rebuild_calls() == 2

    with subtest("the history records a deploy; the test key reads the hosts' records"):
        nats_args = "--nats-url nats://nats:4222 --nkey-file /etc/fleet-deploy"
        deployer.succeed(f"fleet-deploy history --setup {nats_args}/admin.seed")
        status, output = deployer.execute(deploy("deploy.test.web1", "test", extra=" --json"))
        assert status == 0, output
        deployment = json.loads(output)["deployment_id"]
        shown = json.loads(
            deployer.succeed(f"fleet-deploy show {deployment} --json {nats_args}/admin.seed")
        )
        assert [d["id"] for d in shown["deployments"]] == [deployment], shown
        assert shown["sources"] == {"test": "jetstream", "prod": "jetstream"}, shown
        assert shown["deployments"][0]["targets"] == ["deploy.test.web1"], shown
        # The test key may use no JetStream API (docs/history.md): the test hosts' own job
        # records answer it, and prod's it cannot read at all.
        mine = json.loads(
            deployer.succeed(f"fleet-deploy show {deployment} --json {nats_args}/test.seed")
        )
        assert [d["id"] for d in mine["deployments"]] == [deployment], mine
        assert mine["sources"] == {"test": "job_records"}, mine
        assert mine["unreadable_tiers"] == ["prod"], mine

    with subtest("discovery says what web1 runs, read from its own links"):
        hosts = json.loads(deployer.succeed(f"fleet-deploy hosts --json {nats_args}/admin.seed"))
        facts = next(h["facts"] for h in hosts if h["hostname"] == "web1")
        assert facts["current_system"] == web1.succeed("readlink -f /run/current-system").strip()
        assert facts["booted_system"] == web1.succeed("readlink -f /run/booted-system").strip()
        assert facts["last_job"]["id"] == deployment, facts

    with subtest("a switch that changes the unit does not restart the listener"):
        before = web1.succeed("systemctl show -P MainPID fleet-deploy-listener.service").strip()
        web1.succeed("/run/booted-system/specialisation/changed/bin/switch-to-configuration test")
        after = web1.succeed("systemctl show -P MainPID fleet-deploy-listener.service").strip()
        assert before == after, f"listener restarted by the switch: {before} -> {after}"
        assert '"info"' in web1.succeed("systemctl cat fleet-deploy-listener.service")

    with subtest("a killed listener comes back (Restart=always) and deploys again"):
        old = listener_connections()
        web1.succeed("systemctl kill --signal=SIGKILL fleet-deploy-listener.service")
        retry(lambda _: len(listener_connections() - old) == 1)
        deployer.succeed(deploy("deploy.test.web1", "admin"), timeout=120)
        assert rebuild_calls() == 3, web1.succeed(f"cat {ARGV_LOG}")

    with subtest("a listener restarted mid-deploy leaves the rebuild running and reports it"):
        web1.succeed("touch /tmp/hold-rebuild")
        deployer.succeed(
            f"({deploy('deploy.test.web1', 'admin')} > /tmp/held.out 2>&1;"
            " echo $? > /tmp/held.rc) > /dev/null 2>&1 &"
        )
        web1.wait_until_succeeds("test -n \"$(systemctl list-units --no-legend"
                                 " --state=running 'fleet-deploy-job-*')\"", timeout=60)
        before = listener_pid()
        web1.succeed("systemctl restart fleet-deploy-listener.service")
        web1.wait_for_unit("fleet-deploy-listener.service")
        assert listener_pid() != before, "the listener was not restarted"
        assert "fleet-deploy-job-" in running_jobs(), "the restart stopped the rebuild"
        web1.succeed("rm /tmp/hold-rebuild")
        deployer.wait_until_succeeds("test -e /tmp/held.rc", timeout=120)
        output = deployer.succeed("cat /tmp/held.out")
        assert deployer.succeed("cat /tmp/held.rc").strip() == "0", output
        assert "completed" in output, output
        assert rebuild_calls() == 4, web1.succeed(f"cat {ARGV_LOG}")
        web1.succeed(
            "journalctl -u fleet-deploy-listener -o cat | grep -q job_left_running"
        )

    with subtest("a deploy that changes the listener's unit is reported, then it restarts"):
        # The listener runs the 'changed' specialisation's unit; the booted system's differs.
        web1.succeed("echo /run/booted-system > /tmp/switch-to")
        before = listener_pid()
        deployer.succeed(deploy("deploy.test.web1", "admin"), timeout=120)
        web1.succeed("rm /tmp/switch-to")
        web1.wait_until_succeeds(
            f"test \"$(systemctl show -P MainPID fleet-deploy-listener.service)\" != {before}"
            " && systemctl is-active fleet-deploy-listener.service",
            timeout=60,
        )
        web1.succeed(
            "journalctl -u fleet-deploy-listener -o cat | grep -q restarting_after_upgrade"
        )
        assert '"debug"' in web1.succeed("systemctl cat fleet-deploy-listener.service")
        assert rebuild_calls() == 5, web1.succeed(f"cat {ARGV_LOG}")

    with subtest("a test of a healthy system passes its checks and stands"):
        retry(lambda _: len(listener_connections()) == 1)  # the listener restarted just now
        # A test VM boots without a system profile; a real host has one, which a switch sets
        # and a rollback sets back. Generation 1: the booted system.
        web1.succeed(f"nix-env --profile {SYSTEM_PROFILE} --set /run/current-system")
        booted = system_of("/run/booted-system")
        good = system_of("/run/booted-system/specialisation/good")
        bad = system_of("/run/booted-system/specialisation/bad")
        assert system_of("/run/current-system") == system_of(SYSTEM_PROFILE) == booted
        web1.succeed(f"echo {good} > /tmp/switch-to")
        status, host = deploy_web1("test")
        web1.succeed("rm /tmp/switch-to")
        assert status == 0 and host["status"] == "completed", host
        assert checked(host) == {"system-running": True, "marker": True}, host
        assert system_of("/run/current-system") == good
        assert system_of(SYSTEM_PROFILE) == booted  # test leaves the profile alone
        web1.succeed("journalctl -u fleet-deploy-listener -o cat | grep -q activation_confirmed")

    with subtest("a switch that fails a health check goes back to the exact system that ran"):
        web1.succeed(f"echo {bad} > /tmp/switch-to")
        status, host = deploy_web1("switch")
        web1.succeed("rm /tmp/switch-to")
        assert status == 1, host
        assert (host["status"], host["error"]) == ("failed", "rolled_back"), host
        assert host["rolled_back_to"] == good, host
        assert f"rolled back to {good}" in host["message"], host
        assert "'marker'" in host["message"], host
        assert checked(host) == {"system-running": True, "marker": False}, host
        # The system that ran before the deploy runs again (good, though the profile's
        # previous generation is the booted system), and the profile holds what it held
        # (the booted system), not the bad system the switch had set.
        assert system_of("/run/current-system") == good
        assert system_of(SYSTEM_PROFILE) == booted
        web1.succeed("test -e /etc/fleet-deploy-vm/healthy")
        assert web1.succeed("cat /etc/fleet-deploy-vm/system").strip() == "good"
        web1.succeed("systemctl is-active fleet-deploy-listener.service")

    with subtest("with --no-rollback a failed check is reported and the new system stays"):
        web1.succeed(f"echo {bad} > /tmp/switch-to")
        status, host = deploy_web1("test", " --no-rollback")
        web1.succeed("rm /tmp/switch-to")
        assert status == 1, host
        assert (host["status"], host["error"]) == ("failed", "check_failed"), host
        assert host.get("rolled_back_to") is None, host
        assert "not rolled back" in host["message"], host
        assert checked(host) == {"system-running": True, "marker": False}, host
        assert system_of("/run/current-system") == bad
        # Back to good by hand, for what follows.
        web1.succeed(f"{good}/bin/switch-to-configuration test")
        assert system_of("/run/current-system") == good

    with subtest("the builder runs as a dynamic user, its seed and repositories as credentials"):
        builder.wait_for_unit(BUILDER_UNIT)
        unit = builder.succeed(f"systemctl cat {BUILDER_UNIT}")
        assert "LoadCredential=nkey:/etc/fleet-deploy/builder.seed" in unit, unit
        assert "LoadCredential=repos:/etc/fleet-deploy/builder-repos.toml" in unit, unit
        assert "--nkey-file %d/nkey" in unit and "--repos-file %d/repos" in unit, unit
        assert '"--repo" "fleet=git+https://git.example.invalid/fleet.git"' in unit, unit
        assert "TEST-TOKEN" not in unit, unit
        for name, value in {
            "DynamicUser": "yes",
            "PrivateUsers": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "NoNewPrivileges": "yes",
            "PrivateDevices": "yes",
            "MemoryDenyWriteExecute": "yes",
            "CapabilityBoundingSet": "",
            "Restart": "on-failure",
        }.items():
            actual = builder.succeed(f"systemctl show -P {name} {BUILDER_UNIT}").strip()
            assert actual == value, (name, actual)
        pid = builder_pid()
        user = builder.succeed(f"stat -c %U /proc/{pid}").strip()
        assert user == "fleet-deploy-builder", user
        cmdline = builder.succeed(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
        assert "--repos-file" in cmdline and "TEST-TOKEN" not in cmdline, cmdline
        print(builder.succeed(f"systemd-analyze security {BUILDER_UNIT} || true"))

    with subtest("the builder subscribes to its repositories with its own key"):
        retry(lambda _: len(builder_connections()) == 1)

    with subtest("an admin build of every host succeeds, each copied to the cache"):
        result = build("fleet", "all", "admin")
        assert built_hosts(result) == {"web1": "built", "web2": "built"}, result
        calls = nix_calls()
        assert calls[0] == [
            "flake",
            "metadata",
            "--json",
            "--refresh",
            "git+https://git.example.invalid/fleet.git?ref=master",
        ], calls
        assert [c[0] for c in calls] == ["flake", "eval", "build", "copy", "build", "copy"]
        assert all(
            c[1:3] == ["--to", f"file://{BINARY_CACHE}"] for c in calls if c[0] == "copy"
        ), calls
        narinfos = builder.succeed(f"ls {BINARY_CACHE}").split()
        assert len(narinfos) == 2 and all(n.endswith(".narinfo") for n in narinfos), narinfos

    with subtest("the test-tier key builds a repository of the repositories file"):
        result = build("private", "web1", "test")
        assert built_hosts(result) == {"web1": "built"}, result
        # The URL with its token reached nix through the credential, not the command line.
        assert any("oauth2:TEST-TOKEN@" in " ".join(c) for c in nix_calls()[6:])

    with subtest("a killed builder comes back (Restart=on-failure) and builds again"):
        old = builder_connections()
        builder.succeed(f"systemctl kill --signal=SIGKILL {BUILDER_UNIT}")
        retry(lambda _: len(builder_connections() - old) == 1)
        result = build("fleet", "web2", "admin")
        assert built_hosts(result) == {"web2": "built"}, result
  '';
}
