# NixOS VM test of closure deploys (docs/closures.md): the builder builds web1's system from
# one pinned commit and copies it, signed, to a binary cache that is served over HTTP; web1's
# listener, configured through the NixOS module, is sent that store path, fetches it with its
# own nix from its own substituters (the cache, whose key it trusts: nix's settings, not the
# module's), and switches to exactly that system, with its health checks and the confirmation
# that it reaches NATS again. Then a system signed by a key web1 does not trust, served by the
# same cache, is refused by web1's nix (`closure_unavailable`), and another host's system is
# refused by its name (the deployer checks it as the host does, and sends nothing); web1 runs
# the same system after both, and neither was added to its store.
#
# Real: the NATS server with the tiered permissions (as `fleet-deploy nats-config` writes
# them), the deployer's CLI (`fleet-deploy deploy deploy.test.web1 --build fleet`, then
# `--store-path`), the builder service through the module (a dynamic user, the signing key as
# a systemd credential), `nix copy` to the `file://` cache with that key (`secret-key=`), the
# cache served over HTTP, and on web1 the listener, the job runner, `nix-store --realise`
# (nix's own signature check), `nix-env --set` on the system profile,
# `switch-to-configuration switch`, the health checks and the rollback guard.
#
# A stand-in: evaluation, alone. A VM has no network to fetch a flake's inputs and no time to
# build a system, so the builder's `nix` is a wrapper (`closureNix`): `flake metadata` and
# `eval` are answered by the package's simulated nix (the hosts web1 and web2, a pinned
# commit), and `build` of web1's configuration hands the real nix web1's next system instead,
# a NixOS system built with this test (`system.build.fleetNext`: web1's configuration with one
# file changed, in the builder's store as a dependency of the wrapper and in no store of
# web1's); `copy` is the real `nix copy`. What the listener is sent is what a real build
# prints: the store path of a NixOS system whose name is `nixos-system-web1-<label>`.
#
# ./vm.nix tests the rest of the listener and the builder; this test keeps to closure deploys.
# The NKeys and the cache's signing key under ./keys are public test-only keys
# (see ./keys/README.md).
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

  # Installs a test secret outside the store, as a real secret would be (a copy, mode 0400).
  secretFile = file: {
    source = ./keys + "/${file}";
    mode = "0400";
  };

  # The cache's signing key: the secret half goes to the builder (a credential), the public
  # half to web1's `trusted-public-keys`.
  cacheKey = publicKey "cache-signing";
  cacheDir = "/var/cache/fleet-deploy-builder/binary-cache";
  cacheCredential = "/run/credentials/fleet-deploy-builder.service/cache-key";
  # zstd: a whole system closure goes into the cache, and xz (nix's default) would take
  # minutes in a VM.
  cacheUrl = "file://${cacheDir}?compression=zstd&secret-key=${cacheCredential}";
  cachePort = 8080;

  # The builder's calls of nix, one line each, in its state directory.
  nixCalls = "/var/lib/fleet-deploy-builder/nix.calls";

  # A health check of web1's own: a file of its configuration exists.
  marker = {
    name = "marker";
    command = [
      "${pkgs.coreutils}/bin/test"
      "-e"
      "/etc/fleet-deploy-vm/healthy"
    ];
    timeout = 10;
  };
in
pkgs.testers.runNixOSTest {
  name = "fleet-deploy-closures";

  nodes = {
    nats = {
      services.nats = {
        enable = true;
        host = "0.0.0.0";
        # Monitoring, for the test script only (not opened in the firewall).
        settings.http = "127.0.0.1:8222";
        settings.authorization.users = [
          {
            # The listener on web1: tier test, role web.
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
            # Admin deployer: deploys any tier, asks for builds.
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
            # repos = [ "fleet" ].
            nkey = publicKey "builder";
            permissions = {
              publish = [ "build.responses.>" ];
              subscribe = [ "build.fleet.*" ];
            };
          }
        ];
      };
      networking.firewall.allowedTCPPorts = [ 4222 ];
      environment.systemPackages = [ pkgs.curl ];
    };

    web1 =
      { extendModules, lib, ... }:
      let
        # web1's configuration with the file that names its system changed: what a new
        # commit of the fleet's flake would build for it. Not part of web1's own system.
        variant =
          text:
          (extendModules {
            modules = [
              {
                environment.etc."fleet-deploy-vm/system".text = lib.mkForce text;
                specialisation = lib.mkForce { };
              }
            ];
          }).config.system.build.toplevel;
      in
      {
        imports = [ module ];

        environment.etc."fleet-deploy/listener.seed" = secretFile "listener-web1.seed";

        services.fleet-deploy.listener = {
          enable = true;
          # hostname defaults to networking.hostName, "web1"
          tier = "test";
          role = "web";
          natsUrl = "nats://nats:4222";
          nkeyFile = "/etc/fleet-deploy/listener.seed";
          flakeUrl = "git+https://git.example.invalid/fleet.git";
          trustedDeployerKeys = [ (publicKey "admin-deployer") ];
          timeout = 300;
          logLevel = "debug";
          healthChecks = [ marker ];
          rollback.confirmTimeout = 60;
          # Nothing for closures: the module passes the host's own nix-store
          # (--nix-store-command, by store path), and the store is /nix/store.
        };

        # Where systems come from and whose signature counts are nix's own settings, which
        # the listener's nix-store reads like any nix command on the host. mkForce: the VM
        # has no network, and cache.nixos.org would only time out.
        nix.settings = {
          substituters = lib.mkForce [ "http://builder:${toString cachePort}" ];
          trusted-public-keys = [ cacheKey ];
          connect-timeout = 5;
        };

        environment.etc."fleet-deploy-vm/healthy".text = "";
        environment.etc."fleet-deploy-vm/system".text = "booted";

        # A test VM boots without a boot loader to install: a switch runs this instead, as
        # nixpkgs' switch-test does.
        system.build.installBootLoader = lib.mkForce (
          pkgs.writeShellScript "install-dummy-loader" ''
            echo "dummy boot loader: $1" >> /tmp/boot-loader.log
          ''
        );

        # The system the builder "builds" for web1, and one that only a key web1 does not
        # trust signs (the test script copies it to the cache with that key).
        system.build.fleetNext = variant "next";
        system.build.fleetRogue = variant "rogue";
      };

    builder =
      { nodes, ... }:
      let
        # nix for the builder: evaluation simulated, the rest real (see the top of the file).
        # argv: --extra-experimental-features 'nix-command flakes' COMMAND ARGS...
        closureNix = pkgs.writeShellScript "closure-nix" ''
          printf '%s\n' "$*" >> ${nixCalls}
          case "$3" in
            build)
              installable="''${!#}"
              attribute="''${installable#*#}"
              case "$attribute" in
                nixosConfigurations.web1.config.system.build.toplevel)
                  echo "stand-in evaluation of $installable: web1's next system" >&2
                  exec nix "$1" "$2" build --no-link --print-out-paths \
                    ${nodes.web1.system.build.fleetNext}
                  ;;
                *)
                  echo "error: flake does not provide attribute '$attribute'" >&2
                  exit 1
                  ;;
              esac
              ;;
            copy)
              exec nix "$@"
              ;;
            *)
              export PYTHONPATH=${package}/${package.python.sitePackages}
              exec ${package.python.interpreter} -m fleet_core.testing.simulated_nix \
                --sim-hosts web1,web2 "$@"
              ;;
          esac
        '';
      in
      {
        imports = [ module ];

        environment.etc."fleet-deploy/builder.seed" = secretFile "builder.seed";
        environment.etc."fleet-deploy/cache-signing.secret" = secretFile "cache-signing.secret";

        services.fleet-deploy.builder = {
          enable = true;
          natsUrl = "nats://nats:4222";
          nkeyFile = "/etc/fleet-deploy/builder.seed";
          repos.fleet = "git+https://git.example.invalid/fleet.git";
          # nix signs what it uploads with the key of `secret-key=`; the key reaches the
          # builder's dynamic user as a credential. (A builder that builds its systems itself
          # signs them with nix.settings.secret-key-files instead; here the system was built
          # outside the VM, so it is signed on upload.)
          cache = cacheUrl;
          credentials.cache-key = "/etc/fleet-deploy/cache-signing.secret";
          timeout = 600;
          heartbeatInterval = 2;
          logLevel = "debug";
          extraArgs = [
            "--nix-command"
            "${closureNix}"
          ];
        };

        # The binary cache: the builder's file:// directory, served over HTTP (root reads the
        # dynamic user's directory). A real fleet would use an S3 bucket, nix-serve or
        # harmonia; to nix on web1 they are all an HTTP binary cache.
        systemd.services.fleet-vm-binary-cache = {
          wantedBy = [ "multi-user.target" ];
          after = [ "network.target" ];
          serviceConfig.ExecStart = lib.escapeShellArgs [
            package.python.interpreter
            "-m"
            "http.server"
            (toString cachePort)
            "--directory"
            cacheDir
          ];
        };
        networking.firewall.allowedTCPPorts = [ cachePort ];

        # A whole system closure goes into the cache.
        virtualisation.diskSize = 4096;
        virtualisation.memorySize = 2048;
        # The system the test script signs with a key web1 does not trust.
        virtualisation.additionalPaths = [ nodes.web1.system.build.fleetRogue ];
      };

    deployer = {
      environment.systemPackages = [ package ];
      environment.etc."fleet-deploy/admin.seed" = secretFile "admin-deployer.seed";
    };
  };

  testScript =
    { nodes, ... }:
    ''
      import json

      NEXT = "${nodes.web1.system.build.fleetNext}"
      ROGUE = "${nodes.web1.system.build.fleetRogue}"
      OTHER_HOST = "${nodes.builder.system.build.toplevel}"
      CACHE_DIR = "${cacheDir}"
      CACHE_KEY = "${cacheKey}"
      NIX_CALLS = "${nixCalls}"
      SYSTEM_PROFILE = "/nix/var/nix/profiles/system"


      def deploy_web1(extra: str) -> tuple[int, dict]:
          """An admin closure deploy to web1 with --json: the exit status, and web1's result."""
          status, output = deployer.execute(
              "fleet-deploy deploy deploy.test.web1 --nats-url nats://nats:4222"
              " --nkey-file /etc/fleet-deploy/admin.seed --action switch --timeout 300"
              f" --json {extra}",
              timeout=900,
          )
          assert output.lstrip().startswith("{"), f"exit status {status}:\n{output}"
          hosts = {h["hostname"]: h for h in json.loads(output)["hosts"]}
          return status, hosts["web1"]


      def subscribed(subject: str) -> bool:
          """Whether some NATS connection is subscribed to subject."""
          connz = json.loads(nats.succeed("curl -sf 'http://127.0.0.1:8222/connz?subs=1'"))
          return any(
              subject in (conn.get("subscriptions_list") or [])
              for conn in connz.get("connections") or []
          )


      def system_of(link: str) -> str:
          """The store path a link on web1 resolves to."""
          return web1.succeed(f"readlink -f {link}").strip()


      def narinfo(path: str) -> str:
          """The cache's narinfo of a store path, as web1's nix reads it."""
          digest = path.removeprefix("/nix/store/").split("-", 1)[0]
          return builder.succeed(f"cat {CACHE_DIR}/{digest}.narinfo")


      def in_web1_store(path: str) -> bool:
          status, _ = web1.execute(f"nix-store --check-validity {path}")
          return status == 0


      start_all()

      with subtest("the NATS server, the listener, the builder and the cache start"):
          nats.wait_for_unit("nats.service")
          nats.wait_for_open_port(4222)
          nats.wait_for_open_port(8222)
          web1.wait_for_unit("fleet-deploy-listener.service")
          builder.wait_for_unit("fleet-deploy-builder.service")
          builder.wait_for_unit("fleet-vm-binary-cache.service")
          builder.wait_for_open_port(${toString cachePort})
          retry(lambda _: subscribed("deploy.test.web1") and subscribed("build.fleet.*"))

      with subtest("the listener fetches with the host's own nix-store, by store path"):
          unit = web1.succeed("systemctl cat fleet-deploy-listener.service")
          assert '"--nix-store-command" "/nix/store/' in unit, unit
          assert "/bin/nix-store" in unit, unit
          assert "--store-dir" not in unit, unit
          conf = web1.succeed("cat /etc/nix/nix.conf")
          assert CACHE_KEY in conf and "http://builder:${toString cachePort}" in conf, conf
          assert "require-sigs = false" not in conf, conf
          assert system_of("/run/current-system") == system_of("/run/booted-system")
          # web1 has never seen its next system, nor the rogue one.
          assert not in_web1_store(NEXT) and not in_web1_store(ROGUE)

      with subtest("the builder signs with its key as a credential, never on its command line"):
          unit = builder.succeed("systemctl cat fleet-deploy-builder.service")
          assert (
              "LoadCredential=cache-key:/etc/fleet-deploy/cache-signing.secret" in unit
          ), unit
          secret = builder.succeed("cat /etc/fleet-deploy/cache-signing.secret").strip()
          assert secret.split(":", 1)[1] not in unit

      with subtest("deploy --build: the builder builds web1, the cache serves it, web1 switches"):
          # A test VM boots without a system profile; a real host has one. Generation 1: the
          # booted system.
          web1.succeed(f"nix-env --profile {SYSTEM_PROFILE} --set /run/current-system")
          booted = system_of("/run/current-system")
          # The copy of a whole system closure takes a while in a VM.
          status, host = deploy_web1("--build fleet --build-timeout 600")
          assert status == 0, host
          assert host["status"] == "completed", host
          assert host["store_path"] == NEXT, host
          checks = {c["name"]: c["ok"] for c in host.get("checks") or []}
          assert checks == {"system-running": True, "marker": True}, host
          # Exactly the built system runs, and the profile holds it (a switch).
          assert system_of("/run/current-system") == NEXT
          assert system_of(SYSTEM_PROFILE) == NEXT
          assert web1.succeed("cat /etc/fleet-deploy-vm/system").strip() == "next"
          assert in_web1_store(NEXT)
          assert booted != NEXT
          # The builder built web1 from a pinned commit and copied that system to the cache.
          calls = builder.succeed(f"cat {NIX_CALLS}").splitlines()
          builds = [c for c in calls if " build " in f" {c} "]
          assert len(builds) == 1 and "?rev=" in builds[0], calls
          assert "#nixosConfigurations.web1.config.system.build.toplevel" in builds[0], calls
          copies = [c for c in calls if " copy " in f" {c} "]
          assert copies and all(c.endswith(f" {NEXT}") for c in copies), calls
          # What web1 fetched came from the cache, signed by the cache's key.
          info = narinfo(NEXT)
          assert f"StorePath: {NEXT}" in info, info
          key_name = CACHE_KEY.split(":", 1)[0]
          assert f"Sig: {key_name}:" in info, info
          digest = NEXT.removeprefix("/nix/store/").split("-", 1)[0]
          builder.succeed(
              f"journalctl -u fleet-vm-binary-cache -o cat | grep -q '/{digest}.narinfo'"
          )

      with subtest("a closure signed by a key web1 does not trust is refused; web1 is unchanged"):
          builder.succeed(
              "nix-store --generate-binary-cache-key rogue-1 /root/rogue.secret /root/rogue.pub"
          )
          builder.succeed(
              "nix --extra-experimental-features nix-command copy"
              f" --to 'file://{CACHE_DIR}?compression=zstd&secret-key=/root/rogue.secret'"
              f" {ROGUE}"
          )
          assert "Sig: rogue-1:" in narinfo(ROGUE)
          status, host = deploy_web1(f"--store-path {ROGUE}")
          assert status == 1, host
          assert (host["status"], host["error"]) == ("failed", "closure_unavailable"), host
          assert system_of("/run/current-system") == NEXT
          assert system_of(SYSTEM_PROFILE) == NEXT
          assert not in_web1_store(ROGUE)
          web1.succeed("systemctl is-active fleet-deploy-listener.service")

      with subtest("another host's system is refused by its name, and nothing is sent"):
          # The deployer checks the name as the host does (wrong_host), before it sends.
          status, output = deployer.execute(
              "fleet-deploy deploy deploy.test.web1 --nats-url nats://nats:4222"
              f" --nkey-file /etc/fleet-deploy/admin.seed --store-path {OTHER_HOST} 2>&1",
              timeout=120,
          )
          assert status == 2, f"exit status {status}:\n{output}"
          assert "is not a system of 'web1'" in output, output
          assert system_of("/run/current-system") == NEXT
          assert not in_web1_store(OTHER_HOST)
          digest = OTHER_HOST.removeprefix("/nix/store/").split("-", 1)[0]
          builder.fail(
              f"journalctl -u fleet-vm-binary-cache -o cat | grep -q '/{digest}.narinfo'"
          )

      with subtest("pinning back: the booted system, already in web1's store, by --store-path"):
          booted = system_of("/run/booted-system")
          status, host = deploy_web1(f"--store-path {booted}")
          assert status == 0 and host["status"] == "completed", host
          assert system_of("/run/current-system") == booted
          assert system_of(SYSTEM_PROFILE) == booted
    '';
}
