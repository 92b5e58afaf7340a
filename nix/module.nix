# NixOS module: the fleet-deploy listener, `services.fleet-deploy.listener`; it imports the
# builder, `services.fleet-deploy.builder`, from ./builder.nix, and the dashboard,
# `services.fleet-deploy.dashboard`, from ./dashboard.nix.
#
# Option names follow homelab-deploy's module, and its `services.homelab-deploy.listener.*`
# options are accepted too, each renamed to the option of the same name here with a warning
# (./homelab-compat.nix holds that table, and the builder's), so a homelab-deploy
# configuration evaluates unchanged.
#
# Defaults live once, in the application. An option whose default is the application's
# (`timeout`, `deploySubjects`, `discoverSubject`, `logLevel`, `rollback.confirmTimeout`, a
# health check's `timeout`) is `null` unless set, and an unset option passes no flag (or, in
# the health checks file, no field). Two exceptions, which the module itself needs to know:
# `stateDir`, because systemd creates that directory (StateDirectory=), and
# `metrics.address`, because `metrics.openFirewall` opens its port; both are always passed.
# The built-in `system-running` check (`systemRunningCheck`) is the module's own: the
# listener runs no check unless told, so its settings are defaults of the module.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:

let
  inherit (lib)
    literalExpression
    literalMD
    mkEnableOption
    mkIf
    mkOption
    optionals
    types
    ;
  fleetLib = import ./lib.nix { inherit lib; };
  inherit (fleetLib)
    credential
    optionalFlag
    repeatedFlag
    secretPath
    ;

  cfg = config.services.fleet-deploy.listener;
  opt = "services.fleet-deploy.listener";

  extraArgsSet = fleetLib.extraArgsSet cfg.extraArgs;

  # The port of `metrics.address`, or null when the address is not `[HOST]:PORT` as the
  # listener takes it (fleet_core.config.settings.parse_listen_address): `:9972` (every address),
  # `127.0.0.1:9972`, `metrics.example.com:9972`, `[::1]:9972`.
  metricsPort =
    let
      # A host name or IPv4 address, or an IPv6 address (with a zone) in brackets.
      # (`[[]` and `[]]` are the brackets themselves: POSIX regexes have no `\\]`.)
      host = "[A-Za-z0-9][A-Za-z0-9._-]*|[[][0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?[]]";
      parts = builtins.match "(${host})?:([0-9]{1,5})" cfg.metrics.address;
      port = lib.toIntBase10 (lib.last parts);
    in
    if parts != null && port >= 1 && port <= 65535 then port else null;

  # A subject the listener subscribes to: dot-separated tokens, none empty, no whitespace,
  # and no wildcard (a listener on `deploy.test.*` would run every test host's deploys).
  # The templates `<hostname>`, `<tier>` and `<role>` are fine: the listener expands them.
  subjectProblem =
    s:
    let
      expanded = lib.replaceStrings [ "<hostname>" "<tier>" "<role>" ] [ "h" "t" "r" ] s;
    in
    if s == "" then
      "is empty"
    else if builtins.match ".*[[:space:]].*" s != null then
      "contains whitespace"
    else if builtins.elem "" (lib.splitString "." s) then
      "has an empty token (a leading, trailing or doubled dot)"
    else if builtins.match ".*[*>].*" expanded != null then
      "has a wildcard (* or >)"
    else
      null;

  badDeploySubjects = lib.filter (s: subjectProblem s != null) (
    if cfg.deploySubjects == null then [ ] else cfg.deploySubjects
  );

  # The health checks file (`--health-checks`), in the store: the built-in check, then
  # `healthChecks` (./lib.nix renders it). No checks at all pass no flag.
  checkCount = (if cfg.systemRunningCheck.enable then 1 else 0) + builtins.length cfg.healthChecks;
  healthChecksFile = pkgs.writeText "fleet-deploy-health-checks.json" (
    fleetLib.healthChecksJson cfg
  );

  # What the listener would refuse in the file (fleet_core.config.resolve._health_checks), and
  # what it would take but could never work, found here so that the build says which check
  # and what to change. Each check is named in messages by its name, or by its place in the
  # list (from 1) when it has none.
  blank = s: builtins.match "[[:space:]]*" s != null;
  labelledChecks = lib.imap1 (
    i: check:
    check
    // {
      label = if blank check.name then "check ${toString i}" else "\"${check.name}\"";
    }
  ) cfg.healthChecks;
  labels = lib.concatMapStringsSep ", " (check: check.label);
  namelessChecks = lib.filter (check: blank check.name) labelledChecks;
  # No program: an empty list, or an empty first element.
  programlessChecks = lib.filter (
    check: check.command == [ ] || blank (lib.head check.command)
  ) labelledChecks;
  # A program with whitespace in it is a command line given as one string: run without a
  # shell, it would be looked for as a program of that whole name.
  commandLineChecks = lib.filter (
    check:
    check.command != [ ]
    && !(blank (lib.head check.command))
    && builtins.match ".*[[:space:]].*" (lib.head check.command) != null
  ) labelledChecks;
  untimelyChecks = lib.filter (check: check.timeout != null && check.timeout <= 0) labelledChecks;
  checkNames =
    lib.optional cfg.systemRunningCheck.enable fleetLib.systemRunningCheckName
    ++ lib.filter (name: !(blank name)) (map (check: check.name) cfg.healthChecks);
  duplicateCheckNames = lib.unique (
    lib.filter (name: lib.count (other: other == name) checkNames > 1) checkNames
  );
  # A failed unit as `systemctl list-units --failed` names it, with its type: the built-in
  # check compares these names with that list, so `nginx` would never match `nginx.service`.
  unitTypes = "service|socket|device|mount|automount|swap|target|path|timer|slice|scope";
  badIgnoredUnits = lib.filter (
    unit: builtins.match "[^[:space:]/]+[.](${unitTypes})" unit == null
  ) cfg.systemRunningCheck.ignoreUnits;

  # The command line without the seed, the flake URL file and extraArgs. Unset options pass
  # no flag.
  listenerArgs = [
    "listener"
    "--hostname"
    cfg.hostname
    "--tier"
    cfg.tier
    "--nats-url"
    (fleetLib.natsUrlArg cfg.natsUrl)
    "--state-dir"
    cfg.stateDir
  ]
  ++ optionalFlag "--flake-url" cfg.flakeUrl
  ++ optionalFlag "--role" cfg.role
  ++ optionalFlag "--timeout" cfg.timeout
  ++ optionals (cfg.deploySubjects != null) (repeatedFlag "--deploy-subject" cfg.deploySubjects)
  ++ optionalFlag "--discover-subject" cfg.discoverSubject
  ++ optionalFlag "--log-level" cfg.logLevel
  ++ repeatedFlag "--trusted-deployer-key" cfg.trustedDeployerKeys
  ++ optionals cfg.metrics.enable [
    "--metrics-enabled"
    "--metrics-addr"
    cfg.metrics.address
  ]
  # Rebuilds run as transient units (systemd-run), outside this unit's cgroup: a restart or
  # crash of the listener never stops a switch. Explicit rather than `auto`: where systemd
  # could not be detected, deploys fail to start, loudly, rather than run where a restart of
  # this unit would kill them.
  ++ [
    "--rebuild-runner"
    "systemd"
  ]
  ++ optionals cfg.restartOnUpgrade [
    "--restart-if-changed"
    unitFile
  ]
  # After a switch or test, the job runner (in the rebuild's unit) runs the checks, waits for
  # the listener's confirmation and, when either fails, re-activates the exact system it
  # recorded before the rebuild (fleet_core.host.jobs.activation). The file is a store path,
  # so a change of checks changes this unit (see restartOnUpgrade).
  ++ optionalFlag "--health-checks" (if checkCount > 0 then healthChecksFile else null)
  ++ optionals (!cfg.rollback.enable) [ "--no-rollback" ]
  ++ optionalFlag "--confirm-timeout" cfg.rollback.confirmTimeout
  # The rollback's nix-env and the built-in check's systemctl: the host's own (nix.package,
  # systemd.package), by store path, so that taking a system back depends on no PATH lookup.
  ++ [
    "--nix-env-command"
    (lib.getExe' config.nix.package "nix-env")
    "--systemctl-command"
    (lib.getExe' config.systemd.package "systemctl")
  ]
  # A closure deploy (docs/closures.md) fetches the store path it was sent with the host's own
  # nix-store (`--realise`), by store path like nix-env. It substitutes from the host's
  # `nix.settings.substituters` and accepts only what a key of its
  # `nix.settings.trusted-public-keys` signed: nix's settings, read by nix itself, so the
  # module adds no option for them. `--store-dir` stays the listener's default, /nix/store,
  # which is every NixOS host's store.
  ++ [
    "--nix-store-command"
    (lib.getExe' config.nix.package "nix-store")
  ]
  # Discovery's host facts: the running system's own nixos-version, which describes it (the
  # links it reads, /run/current-system, /run/booted-system and the system profile, are the
  # listener's defaults on NixOS).
  ++ [
    "--version-command"
    "/run/current-system/sw/bin/nixos-version --json"
  ];

  # The unit file as systemd reads it: a symlink into the store that a switch re-points. Its
  # ExecStart names the package's store path, and it holds the environment and PATH, so a
  # new package, new options or a new PATH all change it.
  unitFile = "/etc/systemd/system/fleet-deploy-listener.service";

  # The seed and the flake URL file, read from the credentials directory (`%d`).
  credentialArgs = [
    "--nkey-file %d/nkey"
  ]
  ++ optionals (cfg.flakeUrlFile != null) [ "--flake-url-file %d/flake-url" ];
  command = [ (lib.getExe' cfg.package "fleet-deploy") ] ++ listenerArgs;
  execStart = fleetLib.execStart utils.escapeSystemdExecArgs command credentialArgs cfg.extraArgs;
in
{
  imports = [
    # homelab-deploy's option names, renamed to these (with a warning) or refused with what
    # to do instead.
    ./homelab-compat.nix
    # The build service, `services.fleet-deploy.builder`.
    ./builder.nix
    # The live page of the fleet, `services.fleet-deploy.dashboard`.
    ./dashboard.nix
  ];

  ### Interface

  options.services.fleet-deploy.listener = {
    enable = mkEnableOption "the fleet-deploy listener, which runs `nixos-rebuild` when a deploy request reaches this host over NATS";

    package = fleetLib.packageOption "nixosModules";

    hostname = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = literalExpression "config.networking.hostName";
      example = "web1";
      description = ''
        This host's name in deploy subjects (`deploy.<tier>.<hostname>`) and in the flake
        attribute the listener builds (`<flakeUrl>#<hostname>`). One subject token:
        letters, digits, `_` and `-`, at most 63 characters; not `all` or `role`.
      '';
    };

    tier = mkOption {
      type = types.enum [
        "test"
        "prod"
      ];
      example = "prod";
      description = "The deployment tier this host belongs to.";
    };

    role = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "dns";
      description = ''
        Role for role-based targeting (`deploy.<tier>.role.<role>`); one subject token.
        `null` means no role: subject templates that use `<role>` are skipped.
      '';
    };

    natsUrl = fleetLib.natsUrlOption "listener";

    nkeyFile = mkOption {
      type = secretPath;
      example = "/run/secrets/fleet-deploy-listener.seed";
      description = ''
        Path to this listener's NKey seed, outside the Nix store (for example a sops-nix or
        agenix secret). systemd reads it as root and hands it to the service as a
        credential (`LoadCredential=`), so the file itself can stay `0400 root`.
      '';
    };

    flakeUrl = mkOption {
      type = types.nullOr types.nonEmptyStr;
      default = null;
      example = "git+https://git.example.com/user/nixos-configs.git";
      description = ''
        Flake holding this host's configuration, without a revision or attribute: the
        listener appends `?ref=<revision>#<hostname>` (or `&ref=` after an existing query).
        It lands in the world-readable store and on the listener's command line: a URL with
        a token (`git+https://user:TOKEN@…`) goes in `flakeUrlFile` instead. Set exactly one
        of the two.
      '';
    };

    flakeUrlFile = mkOption {
      type = types.nullOr secretPath;
      default = null;
      example = "/run/secrets/fleet-deploy-flake-url";
      description = ''
        Path of a file holding the flake URL (one line), outside the Nix store, for a URL that
        carries a token. systemd reads it as root and hands it to the listener as a credential
        (`LoadCredential=`), so the URL never reaches the store, the unit file or a command
        line of the listener or its job runner. `nixos-rebuild`'s own command line still holds
        it while a rebuild runs: prefer a git credential helper or a netrc file for private
        repositories (see the security documentation). Set exactly one of `flakeUrl` and
        `flakeUrlFile`.
      '';
    };

    trustedDeployerKeys = fleetLib.trustedDeployerKeysOption ''
        Public NKeys (`U…`) of the deployers allowed to deploy to this host. Given any, the
        listener accepts only requests signed by one of them, for the subject they arrived on,
        within their lifetime, once (fleet-deploy signs every request with its key); given
        none, unsigned requests are accepted. A host serves one tier, so this is its tier's
        list: on a test host the admin key and the test-tier (assistant) key, on a prod host
        the admin key alone — then even a leaked listener key, or a NATS config looser than
        the one `fleet-deploy nats-config` writes, cannot deploy production.
      '';

    timeout = fleetLib.secondsOption "listener" 600 {
      example = 1800;
      description = ''
        Seconds a rebuild may run before its whole process group is killed. `null` passes
        no `--timeout`, so the listener uses its own default.
      '';
    };

    deploySubjects = mkOption {
      type = types.nullOr (types.listOf types.str);
      default = null;
      defaultText = literalMD ''
        `null`: the listener's built-in templates,
        `[ "deploy.<tier>.<hostname>" "deploy.<tier>.all" "deploy.<tier>.role.<role>" ]`
      '';
      example = [
        "deploy.<tier>.<hostname>"
        "deploy.<tier>.all"
      ];
      description = ''
        Subjects to subscribe to. `<hostname>`, `<tier>` and `<role>` are expanded by the
        listener; a template with `<role>` is skipped when `role` is `null`. A list replaces
        the defaults entirely; `null` keeps them.
      '';
    };

    discoverSubject = mkOption {
      type = types.nullOr types.str;
      default = null;
      defaultText = literalMD "`null`: the listener's built-in `deploy.discover`";
      description = "Subject on which the listener answers discovery requests.";
    };

    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        GIT_SSH_COMMAND = "ssh -i /etc/ssh/fleet-deploy_ed25519";
      };
      description = ''
        Extra environment variables for the listener and the rebuilds it runs. Not for
        secrets: they end up in the world-readable unit file.
      '';
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/fleet-deploy";
      description = ''
        Directory for job logs and state. It must lie under `/var/lib`, where systemd
        creates it (`StateDirectory=`) owned by root and private to it.
      '';
    };

    logLevel =
      fleetLib.logLevelOption "listener"
        "Log level. The listener logs JSON lines to the journal.";

    restartOnUpgrade = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Restart the listener after a deploy (`switch` or `test`) changed its own unit, which
        also changes whenever its package, options or `PATH` change. The listener compares
        its unit file before and after the switch; when it changed, it reports the deploy's
        final status first and then exits with status 75, which systemd restarts
        (`RestartForceExitStatus`). A switch never restarts the listener by itself
        (`restartIfChanged = false`). With `false`, a changed listener takes effect at the
        next reboot or manual restart.
      '';
    };

    healthChecks = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            name = mkOption {
              type = types.str;
              example = "web";
              description = ''
                The check's name in the deploy's status and the job's log; one of its own
                among this host's checks (`system-running` is the built-in check's while
                `systemRunningCheck.enable` is on).
              '';
            };
            command = mkOption {
              type = types.listOf types.str;
              example = literalExpression ''
                [
                  (lib.getExe pkgs.curl)
                  "--fail"
                  "--silent"
                  "http://127.0.0.1:8080/health"
                ]
              '';
              description = ''
                The program and its arguments, one element each: an argv, run without a
                shell, never a command line to split. The check passes when it exits 0.
                Name the program by its store path (`lib.getExe pkgs.curl`,
                `"''${pkgs.coreutils}/bin/test"`): the check's `PATH` is the listener's unit's,
                little more than coreutils, systemd, nix, git and ssh. For a pipe or a
                condition, name a shell yourself: `[ "''${pkgs.bash}/bin/bash" "-c" "…" ]`.
              '';
            };
            timeout = mkOption {
              type = types.nullOr types.number;
              default = null;
              defaultText = literalMD "`null`: the listener's default (60 seconds)";
              example = 10;
              description = ''
                Seconds the check may run; one still running then is stopped and fails.
                `null` leaves it to the listener.
              '';
            };
          };
        }
      );
      default = [ ];
      example = literalExpression ''
        [
          {
            name = "web";
            command = [
              (lib.getExe pkgs.curl)
              "--fail"
              "--silent"
              "--max-time"
              "5"
              "http://127.0.0.1:8080/health"
            ];
            timeout = 10;
          }
          {
            name = "dns";
            command = [
              (lib.getExe' pkgs.dnsutils "dig")
              "+short"
              "+time=2"
              "@127.0.0.1"
              "example.com"
            ];
          }
        ]
      '';
      description = ''
        Health checks that must pass before a `switch` or `test` stands. After the new system
        is active, the deploy's job runner runs `systemRunningCheck` and then these, in order,
        each within its timeout, as root in the rebuild's transient unit
        (`fleet-deploy-job-<id>`), outside the listener's sandbox; every check runs, and the
        deploy's status lists each one's result. One that fails fails the deploy and, with
        `rollback.enable`, re-activates the exact system that ran before.

        The checks that judge a deploy are the ones of the system it replaces (of the
        listener that takes it): a check a deploy adds or changes judges the deploys after
        it. The module writes them to a JSON file in the Nix store (`--health-checks`), which
        every local user can read: no secret in a command.
      '';
    };

    systemRunningCheck = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Run the built-in check `system-running` first: `systemctl is-system-running`, asked
          until the system has left `starting` and `initializing` (for at most `timeout`), must
          say `running`; `degraded` fails unless every failed unit is one of `ignoreUnits`.
          So a switch after which a unit failed does not stand.
        '';
      };

      ignoreUnits = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "systemd-networkd-wait-online.service" ];
        description = ''
          Failed units that do not fail the built-in check, by their full names as
          `systemctl list-units --failed` shows them (`foo.service`, not `foo`).
        '';
      };

      timeout = mkOption {
        type = types.number;
        default = 120;
        description = ''
          Seconds the built-in check waits for the system to leave `starting` or
          `initializing` (a deploy soon after a boot) before it fails.
        '';
      };
    };

    rollback = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          After a `switch` or `test` whose activation fails, whose health check fails, or
          whose new system does not let the listener reach NATS again within
          `confirmTimeout`, re-activate the exact system that ran before (the store path
          recorded before the rebuild, never "the previous generation"). The job runner does
          it on the host, without the listener. With `false` (`--no-rollback`) the checks
          still run and a failure still fails the deploy, but the new system stays. A
          deployer can turn it off for one deploy (`fleet-deploy deploy --no-rollback`),
          never on for a host where it is off.
        '';
      };

      confirmTimeout = fleetLib.secondsOption "listener" 120 {
        example = 300;
        description = ''
          Seconds the new system has, after its checks passed, for the listener to confirm
          that it reaches NATS again; without that word, the previous system is re-activated.
          Keep deployers' `--timeout` above the rebuild, the checks and this together. `null`
          passes no `--confirm-timeout`, so the listener uses its own default.
        '';
      };
    };

    metrics = {
      enable = mkEnableOption "Prometheus metrics from the listener, served over HTTP at `/metrics` on `metrics.address`";

      address = mkOption {
        type = types.str;
        default = ":9972";
        example = "127.0.0.1:9972";
        description = ''
          Where the listener serves metrics: `HOST:PORT`, `[IPV6]:PORT`, or `:PORT` for every
          address of this host. The module needs the port for `openFirewall`, so it always
          passes this address (`--metrics-addr`) rather than leave the default to the
          listener.
        '';
      };

      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Open the port of `metrics.address` in the firewall (TCP), so that a Prometheus
          server on another host can scrape it. Has an effect only with `metrics.enable`.
        '';
      };
    };

    extraArgs = fleetLib.extraArgsOption {
      example = [
        "--heartbeat-interval"
        "5"
        "--rebuild-command"
        "nixos-rebuild --show-trace"
      ];
      description = ''
        Extra arguments appended to `fleet-deploy listener` (each one argument, quoted for
        systemd). What has an option of its own is set through that option instead: the seed,
        the flake URL, the rebuild runner and the metrics address are refused here.
      '';
    };
  };

  ### Implementation

  config = mkIf cfg.enable {
    assertions = [
      (fleetLib.absolutePathAssertion opt "nkeyFile" cfg.nkeyFile)
      (fleetLib.outsideStoreAssertion opt "nkeyFile" "seed" cfg.nkeyFile)
      (fleetLib.hostnameAssertion opt cfg.hostname
        " It defaults to networking.hostName; set either."
      )
      (fleetLib.roleAssertion opt cfg.role fleetLib.tokenRule)
      (fleetLib.flakeUrlSourceAssertion opt cfg)
      (fleetLib.flakeUrlPinnableAssertion opt cfg.flakeUrl "hostname")
      (fleetLib.flakeUrlPasswordAssertion opt cfg.flakeUrl
        "by every local user in the Nix store, the unit file and the listener's command line"
      )
      (fleetLib.absolutePathAssertion opt "flakeUrlFile" cfg.flakeUrlFile)
      (fleetLib.outsideStoreAssertion opt "flakeUrlFile" "file" cfg.flakeUrlFile)
      (fleetLib.trustedKeysAssertion opt cfg.trustedDeployerKeys true)
      {
        assertion = cfg.deploySubjects != [ ];
        message = "${opt}.deploySubjects is an empty list, which the listener would take as its default subjects. Set it to null to use the defaults, or list the subjects to subscribe to.";
      }
      {
        assertion = badDeploySubjects == [ ];
        message = "${opt}.deploySubjects has invalid subjects: ${
          lib.concatMapStringsSep "; " (s: "\"${s}\" ${subjectProblem s}") badDeploySubjects
        }. Use dot-separated tokens without whitespace or wildcards.";
      }
      {
        assertion = cfg.discoverSubject == null || subjectProblem cfg.discoverSubject == null;
        message = "${opt}.discoverSubject \"${toString cfg.discoverSubject}\" ${
          toString (subjectProblem (toString cfg.discoverSubject))
        }. Use dot-separated tokens without whitespace or wildcards, or null for the default.";
      }
      {
        assertion =
          builtins.match "/var/lib/[^/]+(/[^/]+)*" cfg.stateDir != null
          && !(builtins.elem ".." (lib.splitString "/" cfg.stateDir));
        message = "${opt}.stateDir is \"${cfg.stateDir}\". It must be a directory under /var/lib (such as /var/lib/fleet-deploy), without '..' or a trailing '/', because systemd creates it with StateDirectory=.";
      }
      {
        assertion = namelessChecks == [ ];
        message = "${opt}.healthChecks has checks without a name: ${labels namelessChecks} (counting from 1). Give each check a name: the deploy's status reports each check by it.";
      }
      {
        assertion = duplicateCheckNames == [ ];
        message = "${opt}.healthChecks has more than one check named ${
          lib.concatMapStringsSep ", " (name: "\"${name}\"") duplicateCheckNames
        }. Give each check a name of its own${
          lib.optionalString (builtins.elem fleetLib.systemRunningCheckName duplicateCheckNames)
            " (\"${fleetLib.systemRunningCheckName}\" is the built-in check's, while systemRunningCheck.enable is on)"
        }: the deploy's status reports each check by it.";
      }
      {
        assertion = programlessChecks == [ ];
        message = "${opt}.healthChecks has checks without a program to run: ${labels programlessChecks}. Set command to the program and its arguments, one element each, such as [ \"\${pkgs.curl}/bin/curl\" \"--fail\" \"http://127.0.0.1:8080/health\" ].";
      }
      {
        assertion = commandLineChecks == [ ];
        message = "${opt}.healthChecks has checks whose command is a command line in one string: ${
          lib.concatMapStringsSep ", " (
            check: "${check.label} (${builtins.toJSON (lib.head check.command)})"
          ) commandLineChecks
        }. command is an argv, run without a shell: give the program and each argument as an element of its own, such as [ \"\${pkgs.curl}/bin/curl\" \"--fail\" \"http://127.0.0.1:8080/health\" ], or name a shell yourself ([ \"\${pkgs.bash}/bin/bash\" \"-c\" \"...\" ]).";
      }
      {
        assertion = untimelyChecks == [ ];
        message = "${opt}.healthChecks has checks whose timeout is not a positive number of seconds: ${
          lib.concatMapStringsSep ", " (
            check: "${check.label} (${builtins.toJSON check.timeout})"
          ) untimelyChecks
        }. Give a positive number of seconds, or null for the listener's default.";
      }
      {
        assertion = cfg.systemRunningCheck.timeout > 0;
        message = "${opt}.systemRunningCheck.timeout is ${builtins.toJSON cfg.systemRunningCheck.timeout}. Give a positive number of seconds: how long the check waits for the system to finish starting.";
      }
      {
        assertion = badIgnoredUnits == [ ];
        message = "${opt}.systemRunningCheck.ignoreUnits has names that are not unit names as systemctl lists failed units: ${
          lib.concatMapStringsSep ", " builtins.toJSON badIgnoredUnits
        }. Give each unit's full name with its type, such as \"nginx.service\".";
      }
      {
        # `--heal` is the shortest prefix the listener's parser takes (`--hea` is also
        # --heartbeat-interval).
        assertion = !(checkCount > 0 && extraArgsSet "--health-checks" "--heal");
        message = "${opt}.extraArgs sets --health-checks, while the module passes its own file of checks. Set ${opt}.healthChecks (and systemRunningCheck) instead.";
      }
      (fleetLib.seedFlagAssertion opt cfg.extraArgs true)
      (fleetLib.flakeUrlFlagAssertion opt cfg.extraArgs)
      {
        assertion = !(extraArgsSet "--rebuild-runner" "--rebuild-r");
        message = "${opt}.extraArgs sets --rebuild-runner. Remove it: the module always runs rebuilds as transient systemd units, and hardens the listener's own unit on that ground; a rebuild run inside that unit would inherit its sandbox and could not activate the new system.";
      }
      {
        assertion = !(cfg.metrics.enable && extraArgsSet "--metrics-addr" "--metrics-a");
        message = "${opt}.extraArgs sets --metrics-addr while ${opt}.metrics.enable is on. Set ${opt}.metrics.address instead, so that the listener and metrics.openFirewall agree on the port.";
      }
      {
        assertion = !cfg.metrics.enable || metricsPort != null;
        message = "${opt}.metrics.address is \"${cfg.metrics.address}\", which is not an address the listener can serve metrics on. Give HOST:PORT, [IPV6]:PORT or :PORT (every address), with a port from 1 to 65535: for example \":9972\" or \"127.0.0.1:9972\".";
      }
    ];

    networking.firewall.allowedTCPPorts = optionals (
      cfg.metrics.enable && cfg.metrics.openFirewall && metricsPort != null
    ) [ metricsPort ];

    systemd.services.fleet-deploy-listener = {
      description = "fleet-deploy listener (deploys this host's NixOS configuration on request)";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];

      # A switch must not restart the listener in the middle of the deploy it is reporting
      # on. The rebuild itself would survive (it runs in a transient unit of its own,
      # fleet-deploy-job-<id>, and a restarted listener re-attaches to it), but the deploy
      # would lose its listener exactly while activating. So the switch leaves the listener
      # alone, and the listener restarts itself: after a switch or test that changed this unit
      # (or, through it, the package), it reports the final status, then exits 75
      # (--restart-if-changed, option restartOnUpgrade), which systemd restarts below.
      restartIfChanged = false;

      # Tools the rebuild needs: nix and git fetch the flake (ssh for git+ssh:// URLs); and
      # systemd-run, which starts each rebuild as a transient unit (the rebuild gets this
      # PATH and the environment below through --setenv).
      path = [
        config.systemd.package
        config.nix.package
        pkgs.git
        pkgs.openssh
        config.system.build.nixos-rebuild
      ];

      environment = cfg.environment;

      serviceConfig = {
        Type = "simple";
        ExecStart = execStart;
        Restart = "always";
        RestartSec = "5s";
        # 75 is how the listener asks to be restarted after a switch changed its own unit
        # (restartOnUpgrade). Restart=always restarts it anyway; this keeps that true if
        # Restart is ever narrowed, and SuccessExitStatus keeps it out of the failed state.
        RestartForceExitStatus = "75";
        SuccessExitStatus = "75";

        # The seed is read by systemd (as root) and exposed read-only at
        # $CREDENTIALS_DIRECTORY/nkey, mode 0400; `%d` is that directory. The listener never
        # opens the original path, and the path never appears on its command line.
        # The flake URL file, when given, the same way, as $CREDENTIALS_DIRECTORY/flake-url.
        LoadCredential = [
          (credential "nkey" cfg.nkeyFile)
        ]
        ++ optionals (cfg.flakeUrlFile != null) [ (credential "flake-url" cfg.flakeUrlFile) ];

        StateDirectory = lib.removePrefix "/var/lib/" cfg.stateDir;
        StateDirectoryMode = "0700";

        # stdout and stderr go to the journal (the default); the listener writes JSON lines
        # there when not on a TTY.
        SyslogIdentifier = "fleet-deploy-listener";

        # Hardening. The module always passes `--rebuild-runner systemd` (extraArgs may not
        # change it), so each rebuild runs in a transient unit of its own,
        # fleet-deploy-job-<id>, which PID 1 starts with none of this unit's settings:
        # activation, the boot loader and nix never run in this sandbox, and the listener
        # can be confined to what it does itself. That is: talk to NATS, serve metrics, ask
        # PID 1 over its private socket (or D-Bus) for transient units (systemd-run), read
        # and signal the job runners of those units through /proc, and keep job records in
        # stateDir. Starting a root unit is root's power by design, so this sandbox guards
        # against a bug short of running code in the listener (a stray write, a confused
        # read, a runaway library), not against code that already runs in it.
        #
        # Left off, each for a reason:
        # - User=/DynamicUser=, PrivateUsers, CapabilityBoundingSet: systemd-run must reach
        #   PID 1 as root of the host's user namespace. It connects to PID 1's private
        #   socket, which only root may use, and falls back to D-Bus, where PID 1 wants
        #   CAP_SYS_ADMIN (or a polkit rule) to start a unit. A bounding set that keeps
        #   CAP_SYS_ADMIN would bound little, and none bounds a listener that can start a
        #   root unit; the Protect* settings below already drop CAP_SYS_MODULE,
        #   CAP_SYS_TIME, CAP_SYSLOG, CAP_MKNOD and CAP_SYS_RAWIO.
        # - PrivatePIDs: the listener reads the job runner's /proc/<pid>/cmdline, in the
        #   job's unit, to re-attach to a running job after a restart, and signals what is
        #   left of a job whose runner died.
        # - ProtectProc=invisible: it hides nothing from root that keeps CAP_SYS_PTRACE, and
        #   without CAP_SYS_PTRACE it would hide the job runner, whose capabilities exceed
        #   the listener's, for the same reason.
        # - PrivateTmp: when stateDir refuses a job record, the job directory falls back to
        #   /tmp, where the runner, outside this unit's namespace, must find it at the same
        #   path; /tmp stays writable (ReadWritePaths) for that reason.
        # - PrivateNetwork, IPAddressAllow/Deny: NATS servers and Prometheus may be anywhere.
        # - SystemCallFilter beyond @system-service minus @privileged: systemd-run (sd-bus
        #   credential passing, rlimits) and Python's subprocess need the rest of that set.
        # Seccomp filters (SystemCallFilter, MemoryDenyWriteExecute, RestrictNamespaces, …)
        # also bind systemd-run, which the listener runs as a child; it needs nothing they
        # refuse. The job's unit is started by PID 1 and inherits none of them.
        # The sandbox itself is the one the builder's unit has too (./lib.nix), and:
        ReadWritePaths = [ "/tmp" ];
      }
      // fleetLib.hardening;
    };
  };
}
