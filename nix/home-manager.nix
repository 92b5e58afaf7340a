# Home Manager module: the fleet-deploy listener as a user service, `services.fleet-deploy.listener`.
#
# For hosts that are not NixOS: a Mac whose user configuration Home Manager manages
# (NixFleet's macOS path), a nix-darwin Mac, or a Linux machine with Home Manager. The listener
# runs `home-manager switch --flake <url>?ref=<rev>#<configuration> --refresh` (hostKind
# "home-manager") or `darwin-rebuild` (hostKind "darwin") when a deploy request reaches it.
# It runs as the user: a launchd agent on macOS, a `systemd --user` service on Linux.
#
# Option names follow ./module.nix (the NixOS module) where they mean the same. Options whose
# default belongs to the application (`timeout`, `heartbeatInterval`, `logLevel`,
# `configuration`) are `null` unless set, and an unset option passes no flag. The seed and a
# flake URL with a token are read by the listener from files outside the Nix store: only
# their paths reach the command line, never their contents.
{
  config,
  lib,
  pkgs,
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
    isAbsoluteOutsideStore
    optionalFlag
    repeatedFlag
    secretPath
    ;

  cfg = config.services.fleet-deploy.listener;
  opt = "services.fleet-deploy.listener";
  isDarwin = pkgs.stdenv.hostPlatform.isDarwin;

  extraArgsSet = fleetLib.extraArgsSet cfg.extraArgs;

  # The listener's own rule (src/fleet_core/protocol/actions.py): a configuration is a flake attribute
  # that can hold Home Manager's user@host but nothing that ends the fragment or becomes an
  # argument. (A host name or role is one subject token: fleetLib.isToken.)
  isConfiguration = s: builtins.match "[A-Za-z0-9][A-Za-z0-9._@-]{0,62}" s != null;

  # The unit file as systemd --user reads it: a symlink into the store that a switch
  # re-points, so a new package or new options change what it resolves to.
  unitFile = "${config.xdg.configHome}/systemd/user/fleet-deploy-listener.service";

  listenerArgs = [
    "listener"
    "--hostname"
    cfg.hostname
    "--tier"
    (toString cfg.tier)
    "--nats-url"
    (fleetLib.natsUrlArg cfg.natsUrl)
    # A path: the listener reads the seed from it (and refuses a file others may read).
    "--nkey-file"
    cfg.nkeyFile
    "--host-kind"
    cfg.hostKind
    "--state-dir"
    cfg.stateDir
  ]
  ++ optionalFlag "--flake-url" cfg.flakeUrl
  ++ optionalFlag "--flake-url-file" cfg.flakeUrlFile
  ++ optionalFlag "--configuration" cfg.configuration
  ++ optionalFlag "--role" cfg.role
  ++ optionalFlag "--timeout" cfg.timeout
  ++ optionalFlag "--heartbeat-interval" cfg.heartbeatInterval
  ++ optionalFlag "--log-level" cfg.logLevel
  ++ repeatedFlag "--trusted-deployer-key" cfg.trustedDeployerKeys
  # systemd --user does not restart the listener when a switch changes it (X-SwitchMethod
  # below), so that a deploy never loses its listener while it activates: the listener
  # restarts itself after such a switch, once it has reported it (exit 75, restarted by
  # Restart=always). launchd has no such choice: Home Manager reloads a changed agent, and
  # the job, in a session of its own, runs on and is reported by the restarted listener.
  ++ optionals (!isDarwin) [
    "--restart-if-changed"
    unitFile
  ];

  argv = [ (lib.getExe' cfg.package "fleet-deploy") ] ++ listenerArgs ++ cfg.extraArgs;

  # Where the rebuild finds home-manager, darwin-rebuild, nix and git: a launchd agent starts
  # with launchd's bare PATH, and a user manager outside NixOS with little more.
  searchPath = lib.concatStringsSep ":" [
    "${config.home.profileDirectory}/bin"
    "/etc/profiles/per-user/${config.home.username}/bin"
    "/run/current-system/sw/bin"
    "/nix/var/nix/profiles/default/bin"
    "${lib.getBin pkgs.git}/bin"
    "/usr/local/bin"
    "/usr/bin"
    "/bin"
    "/usr/sbin"
    "/sbin"
  ];

  logFile = "${cfg.stateDir}/listener.log";
in
{
  ### Interface

  options.services.fleet-deploy.listener = {
    enable = mkEnableOption "the fleet-deploy listener, which runs `home-manager switch` (or `darwin-rebuild`) when a deploy request reaches this host over NATS";

    package = fleetLib.packageOption "homeManagerModules";

    hostname = mkOption {
      type = types.str;
      example = "mac1";
      description = ''
        This host's name in deploy subjects (`deploy.<tier>.<hostname>`), and the flake
        attribute built unless `configuration` is set. One subject token: letters, digits,
        `_` and `-`, at most 63 characters; not `all` or `role`.
      '';
    };

    tier = mkOption {
      type = types.nullOr (
        types.enum [
          "test"
          "prod"
        ]
      );
      default = null;
      example = "test";
      description = "The deployment tier this host belongs to (required).";
    };

    role = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "laptop";
      description = "Role for role-based targeting (`deploy.<tier>.role.<role>`); one subject token.";
    };

    natsUrl = mkOption {
      type = fleetLib.natsUrlType;
      example = "nats://nats.example.com:4222";
      description = "URL of the NATS server, or the URLs of several servers of one cluster.";
    };

    nkeyFile = mkOption {
      type = secretPath;
      example = "/Users/alice/.config/fleet-deploy/listener.seed";
      description = ''
        Path to this listener's NKey seed, outside the Nix store, readable by this user
        alone (mode 0600; the listener refuses a seed others may read). The listener reads
        the file; only the path is on its command line.
      '';
    };

    flakeUrl = mkOption {
      type = types.nullOr types.nonEmptyStr;
      default = null;
      example = "git+https://git.example.com/alice/configs.git";
      description = ''
        Flake holding this host's configuration, without a revision or attribute: the
        listener appends `?ref=<revision>#<configuration>`. It lands in the Nix store and on
        the listener's command line: a URL with a token goes in `flakeUrlFile`. Set exactly
        one of the two.
      '';
    };

    flakeUrlFile = mkOption {
      type = types.nullOr secretPath;
      default = null;
      example = "/Users/alice/.config/fleet-deploy/flake-url";
      description = ''
        Path of a file holding the flake URL (one line), outside the Nix store, for a URL that
        carries a token: the listener reads it once at start. Set exactly one of `flakeUrl`
        and `flakeUrlFile`.
      '';
    };

    hostKind = mkOption {
      type = types.enum [
        "home-manager"
        "darwin"
      ];
      default = "home-manager";
      description = ''
        What a deploy runs: `home-manager switch` (`"home-manager"`, macOS or Linux) or
        `darwin-rebuild switch` (`"darwin"`, macOS with nix-darwin, which needs root: see
        the documentation). Neither has `boot` or `test`: the listener rejects those
        actions.
      '';
    };

    configuration = mkOption {
      type = types.nullOr types.str;
      default = null;
      defaultText = literalMD "`null`: the listener builds `#<hostname>`";
      example = "alice@mac1";
      description = ''
        The flake attribute to build (`homeConfigurations."<configuration>"` for Home
        Manager, `darwinConfigurations.<configuration>` for nix-darwin): letters, digits,
        `.`, `_`, `-` and `@`.
      '';
    };

    timeout = fleetLib.secondsOption "listener" 600 {
      description = "Seconds a rebuild may run before its whole process group is killed.";
    };

    heartbeatInterval = fleetLib.secondsOption "listener" 10 {
      description = "While a deploy runs, send its progress at least this often, in seconds.";
    };

    trustedDeployerKeys = fleetLib.trustedDeployerKeysOption ''
      Public NKeys (`U…`) of the deployers allowed to deploy this host; given any, only
      requests signed by one of them are accepted. Empty accepts unsigned requests.
    '';

    stateDir = mkOption {
      type = types.str;
      default = "${config.xdg.stateHome}/fleet-deploy";
      defaultText = literalExpression ''"''${config.xdg.stateHome}/fleet-deploy"'';
      description = ''
        Directory for job records and logs, and the listener's working directory (where
        `home-manager build` leaves its `result`); the listener's own log is `listener.log`
        in it on macOS. Created at activation, mode 0700.
      '';
    };

    logLevel = fleetLib.logLevelOption "listener" "Log level.";

    extraArgs = fleetLib.extraArgsOption {
      example = [
        "--rebuild-command"
        "sudo -n /run/current-system/sw/bin/darwin-rebuild"
      ];
      description = ''
        Extra arguments appended to `fleet-deploy listener`. What has an option of its own
        (the seed, the flake URL, the host kind) is refused here.
      '';
    };
  };

  ### Implementation

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.tier != null;
        message = "${opt}.tier is not set. Set it to \"test\" or \"prod\": the tier decides which deployers may reach this host.";
      }
      (fleetLib.flakeUrlSourceAssertion opt cfg)
      {
        assertion = cfg.hostKind != "darwin" || isDarwin;
        message = "${opt}.hostKind is \"darwin\", which runs darwin-rebuild, but this is not a Darwin system. Use hostKind = \"home-manager\" here.";
      }
      {
        assertion = isAbsoluteOutsideStore cfg.nkeyFile;
        message = "${opt}.nkeyFile is \"${cfg.nkeyFile}\". Give the absolute path of the seed, outside the Nix store (which every local user can read), as a string.";
      }
      {
        assertion = cfg.flakeUrlFile == null || isAbsoluteOutsideStore cfg.flakeUrlFile;
        message = "${opt}.flakeUrlFile is \"${toString cfg.flakeUrlFile}\". Give the absolute path of the file, outside the Nix store, as a string.";
      }
      (fleetLib.flakeUrlPinnableAssertion opt cfg.flakeUrl "configuration")
      (fleetLib.flakeUrlPasswordAssertion opt cfg.flakeUrl
        "in the Nix store and on the listener's command line"
      )
      (fleetLib.hostnameAssertion opt cfg.hostname "")
      (fleetLib.roleAssertion opt cfg.role "letters, digits, '_' and '-'")
      {
        assertion = cfg.configuration == null || isConfiguration cfg.configuration;
        message = "${opt}.configuration is \"${toString cfg.configuration}\". Use 1-63 letters, digits and . _ - @ (such as alice@mac1), starting with a letter or digit.";
      }
      {
        # darwin-rebuild writes darwinConfigurations.<name> unquoted (the listener's rule).
        assertion =
          cfg.hostKind != "darwin"
          || cfg.configuration == null
          || builtins.match "[A-Za-z0-9_-]+" cfg.configuration != null;
        message = "${opt}.configuration is \"${toString cfg.configuration}\", but darwin-rebuild does not quote it: for hostKind \"darwin\" use letters, digits, _ and - only (such as mac1).";
      }
      (fleetLib.trustedKeysAssertion opt cfg.trustedDeployerKeys false)
      {
        assertion = isAbsoluteOutsideStore cfg.stateDir;
        message = "${opt}.stateDir is \"${cfg.stateDir}\". Give an absolute path outside the Nix store, such as \"\${config.xdg.stateHome}/fleet-deploy\".";
      }
      (fleetLib.seedFlagAssertion opt cfg.extraArgs false)
      (fleetLib.flakeUrlFlagAssertion opt cfg.extraArgs)
      {
        # The shortest prefixes the listener's parser takes for each (--host is ambiguous).
        assertion = !(extraArgsSet "--host-kind" "--host-" || extraArgsSet "--configuration" "--c");
        message = "${opt}.extraArgs sets --host-kind or --configuration. Set ${opt}.hostKind or ${opt}.configuration instead.";
      }
    ];

    # The state directory holds the launchd agent's log and is the working directory of
    # both services, so it must exist before either starts.
    home.activation.fleet-deploy-state-dir =
      lib.hm.dag.entryBetween [ "setupLaunchAgents" "reloadSystemd" ] [ "writeBoundary" ]
        ''
          run mkdir -p -m 0700 ${lib.escapeShellArg cfg.stateDir}
        '';

    launchd.agents.fleet-deploy-listener = mkIf isDarwin {
      enable = true;
      config = {
        ProgramArguments = argv;
        RunAtLoad = true;
        # Restart it whenever it exits, including the 75 it exits with to be restarted.
        KeepAlive = true;
        ProcessType = "Background";
        # launchd stops what is left of a job's process group when the job exits; the
        # rebuild runs in a session of its own (--rebuild-runner auto is "session" here),
        # and this keeps launchd from reaching anything else the listener started.
        AbandonProcessGroup = true;
        WorkingDirectory = cfg.stateDir;
        StandardOutPath = logFile;
        StandardErrorPath = logFile;
        # No secrets here: the plist is in the Nix store.
        EnvironmentVariables.PATH = searchPath;
      };
    };

    systemd.user.services.fleet-deploy-listener = mkIf (!isDarwin) {
      Unit = {
        Description = "fleet-deploy listener (deploys this user's Home Manager configuration on request)";
        # A user manager has no network-online.target of its own on most systems: this
        # orders nothing there, and Restart= below covers a network that comes up late.
        After = [ "network-online.target" ];
        # A switch must not restart the listener while it reports that very deploy; it
        # restarts itself afterwards (--restart-if-changed). X-RestartIfChanged is the same
        # for Home Manager's older, systemctl-based switch.
        X-SwitchMethod = "keep-old";
        X-RestartIfChanged = false;
      };
      Service = {
        ExecStart = fleetLib.escapeSystemdExecArgs argv;
        Restart = "always";
        RestartSec = "5s";
        RestartForceExitStatus = "75";
        SuccessExitStatus = "75";
        WorkingDirectory = cfg.stateDir;
        # PATH only: the unit file is in the Nix store, so no secret belongs here.
        Environment = [ "PATH=${searchPath}" ];
      };
      Install.WantedBy = [ "default.target" ];
    };
  };
}
