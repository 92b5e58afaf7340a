# NixOS module: the fleet-deploy dashboard, `services.fleet-deploy.dashboard`, imported by
# ./module.nix (so `nixosModules.default` has it beside the listener and the builder).
#
# `fleet-deploy dashboard` serves a live page of the fleet over HTTP, read through NATS with
# an observer key (`access = "observer"` in the inventory: discovery and replies, no deploy
# subject), so a leaked key deploys nothing. Actions (deploy, cancel, health check) exist
# only with `allowActions`, behind a login, sent with a second key (`deployNkeyFile`).
#
# Every key and secret reaches the service as a systemd credential (`LoadCredential=`): the
# files stay `0400 root`, their paths never appear on the command line, and nothing secret
# lands in the store. As in the other modules, an option whose default is the
# application's (`listen`, `refresh`, `logLevel`) is `null` unless set, and an unset option
# passes no flag.
{
  config,
  lib,
  utils,
  ...
}:

let
  inherit (lib)
    concatMap
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
    secretPath
    ;

  cfg = config.services.fleet-deploy.dashboard;
  opt = "services.fleet-deploy.dashboard";

  # The secrets the dashboard reads, by credential name, with the flag each is passed as;
  # the action files only with allowActions (a read-only dashboard never loads them).
  secretFiles = {
    nkey = {
      path = cfg.nkeyFile;
      flag = "--nkey-file";
    };
  }
  // lib.optionalAttrs cfg.allowActions {
    deploy-nkey = {
      path = cfg.deployNkeyFile;
      flag = "--deploy-nkey-file";
    };
    password = {
      path = cfg.passwordFile;
      flag = "--password-file";
    };
    totp-secret = {
      path = cfg.totpSecretFile;
      flag = "--totp-secret-file";
    };
    session-key = {
      path = cfg.sessionKeyFile;
      flag = "--session-key-file";
    };
  };
  givenSecrets = lib.filterAttrs (_: s: s.path != null) secretFiles;

  # Action files given without allowActions: they would be ignored, which is a surprise.
  idleActionFiles = lib.filter (name: cfg.${name} != null) [
    "deployNkeyFile"
    "passwordFile"
    "totpSecretFile"
    "sessionKeyFile"
  ];

  # A Host header's name: a DNS name or IPv4 address, or an IPv6 address in brackets, with
  # an optional port (fleet_core.config.resolve._allowed_hosts checks the same).
  label = "[A-Za-z0-9][A-Za-z0-9-]{0,62}";
  isAllowedHost =
    h: builtins.match "(${label}([.]${label})*[.]?|[[][0-9A-Fa-f:.]+[]])(:[0-9]{1,5})?" h != null;
  badAllowedHosts = lib.filter (h: !(isAllowedHost h)) cfg.allowedHosts;

  # The flags whose values come from this module's options or credentials, as
  # `fleet-deploy dashboard` would take them abbreviated (down to the shortest unambiguous
  # prefix): refused in extraArgs.
  ownFlags = [
    {
      flag = "--nkey-file";
      shortest = "--n";
    }
    {
      flag = "--deploy-nkey-file";
      shortest = "--d";
    }
    {
      flag = "--password-file";
      shortest = "--p";
    }
    {
      flag = "--totp-secret-file";
      shortest = "--t";
    }
    {
      flag = "--session-key-file";
      shortest = "--s";
    }
    {
      flag = "--hash-password";
      shortest = "--h";
    }
  ];
  extraOwnFlags = lib.filter (f: fleetLib.extraArgsSet cfg.extraArgs f.flag f.shortest) ownFlags;

  dashboardArgs = [
    "dashboard"
    "--nats-url"
    (fleetLib.natsUrlArg cfg.natsUrl)
  ]
  ++ optionalFlag "--listen" cfg.listen
  ++ fleetLib.repeatedFlag "--allowed-host" cfg.allowedHosts
  ++ optionalFlag "--refresh" cfg.refresh
  ++ optionals cfg.allowActions [ "--allow-actions" ]
  ++ optionalFlag "--log-level" cfg.logLevel;
  # Each secret from the credentials directory (`%d`), which the dynamic user owns.
  credentialArgs = lib.mapAttrsToList (name: s: "${s.flag} %d/${name}") givenSecrets;
  command = [ (lib.getExe' cfg.package "fleet-deploy") ] ++ dashboardArgs;
  execStart = fleetLib.execStart utils.escapeSystemdExecArgs command credentialArgs cfg.extraArgs;

  secretPathAssertions = fleetLib.secretPathAssertions opt;
  secretOption =
    example: description:
    mkOption {
      type = types.nullOr secretPath;
      default = null;
      inherit example description;
    };
in
{
  ### Interface

  options.services.fleet-deploy.dashboard = {
    enable = mkEnableOption "the fleet-deploy dashboard, a live page of the fleet served over HTTP (read-only unless allowActions is set)";

    package = fleetLib.packageOption "nixosModules";

    natsUrl = fleetLib.natsUrlOption "dashboard";

    nkeyFile = secretOption "/run/secrets/fleet-deploy-dashboard.seed" ''
      Path to the NKey seed the dashboard reads the fleet with, outside the Nix store: an
      observer's (`access = "observer"` in the `fleet-deploy nats-config` inventory), which
      may discover and read every tier but publish no deploy, cancel or build. systemd reads
      it as root and hands it to the service as a credential (`LoadCredential=`), so the file
      can stay `0400 root`. Required.
    '';

    listen = mkOption {
      type = types.nullOr types.nonEmptyStr;
      default = null;
      example = "127.0.0.1:8420";
      description = ''
        `HOST:PORT` to serve the page on. `null` passes no `--listen`: the dashboard's own
        default, 127.0.0.1:8420, this machine only. Put a reverse proxy with TLS in front
        of it rather than listening on a public address, and name the proxy's host in
        `allowedHosts`.
      '';
    };

    allowedHosts = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "fleet.example.com" ];
      description = ''
        More names the page may be reached by (`NAME` or `NAME:PORT`, as a browser sends
        the `Host` header), such as a reverse proxy's. Requests naming any other host are
        refused, which defeats DNS rebinding; the listen address, `localhost`, `127.0.0.1`
        and `[::1]` are always allowed.
      '';
    };

    refresh = fleetLib.secondsOption "dashboard" 30 {
      description = ''
        Seconds between two discoveries of the host rows (deployments update live
        regardless). `null` passes no `--refresh`.
      '';
    };

    allowActions = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Offer deploy, cancel and health check, after a login with the password whose hash
        is in `passwordFile` (and a one-time code when `totpSecretFile` is set). They are
        sent with `deployNkeyFile`'s key and can do no more than it may. Off: the page is
        read-only and no deploying key is loaded.
      '';
    };

    deployNkeyFile = secretOption "/run/secrets/fleet-deploy-dashboard-deployer.seed" ''
      With `allowActions`: path to the NKey seed actions are sent with (a test deployer's
      keeps them to the test tier), outside the Nix store, passed as a credential.
    '';

    passwordFile = secretOption "/run/secrets/fleet-deploy-dashboard-password" ''
      With `allowActions`: path to a file holding the login's password hash, the line
      `fleet-deploy dashboard --hash-password` prints, outside the Nix store, passed as a
      credential.
    '';

    totpSecretFile = secretOption "/run/secrets/fleet-deploy-dashboard-totp" ''
      With `allowActions`: path to a file holding a base32 TOTP secret (an authenticator
      app's); the login then asks for a one-time code too. `null`: a password alone.
    '';

    sessionKeyFile = secretOption "/run/secrets/fleet-deploy-dashboard-session-key" ''
      With `allowActions`: path to a file holding the secret that signs session cookies
      (32 bytes or more, e.g. `head -c 32 /dev/urandom | base64`), so that a restart keeps
      people logged in. `null`: a random key per start.
    '';

    logLevel =
      fleetLib.logLevelOption "dashboard"
        "Log level. The dashboard logs JSON lines to the journal.";

    extraArgs = fleetLib.extraArgsOption {
      example = [
        "--refresh"
        "10"
      ];
      description = ''
        Extra arguments appended to `fleet-deploy dashboard` (each one argument, quoted for
        systemd). The key and secret files are set through their options and refused here.
      '';
    };
  };

  ### Implementation

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.nkeyFile != null;
        message = "${opt}.nkeyFile is not set. Give the path of the dashboard's NKey seed, an observer's (access = \"observer\" in the nats-config inventory; `fleet-deploy keygen` makes one), outside the Nix store: systemd passes it to the dashboard as a credential.";
      }
      {
        assertion = !cfg.allowActions || cfg.deployNkeyFile != null;
        message = "${opt}.allowActions is set but ${opt}.deployNkeyFile is not. Give the seed of the key actions are sent with, or turn allowActions off for a read-only dashboard.";
      }
      {
        assertion = !cfg.allowActions || cfg.passwordFile != null;
        message = "${opt}.allowActions is set but ${opt}.passwordFile is not. Give a file holding the line `fleet-deploy dashboard --hash-password` prints, or turn allowActions off for a read-only dashboard.";
      }
      {
        assertion = cfg.allowActions || idleActionFiles == [ ];
        message = "${opt}.${lib.head (idleActionFiles ++ [ "" ])} is set but ${opt}.allowActions is not, so it would be ignored. Set allowActions to offer actions behind a login, or remove ${lib.concatStringsSep ", " idleActionFiles}.";
      }
      {
        assertion = badAllowedHosts == [ ];
        message = "${opt}.allowedHosts has entries that are not host names: ${
          lib.concatMapStringsSep ", " (h: "\"${h}\"") badAllowedHosts
        }. Give each as a browser sends it in the Host header: NAME or NAME:PORT (fleet.example.com, [::1]:8420), without a scheme or path.";
      }
      {
        assertion = extraOwnFlags == [ ];
        message = "${opt}.extraArgs sets ${
          lib.concatMapStringsSep ", " (f: f.flag) extraOwnFlags
        }. Set the matching option instead (nkeyFile, deployNkeyFile, passwordFile, totpSecretFile, sessionKeyFile): the module passes each file as a systemd credential. --hash-password is for a terminal, not a service.";
      }
    ]
    ++ concatMap (name: secretPathAssertions name cfg.${name}) (
      lib.filter (name: cfg.${name} != null) [
        "nkeyFile"
        "deployNkeyFile"
        "passwordFile"
        "totpSecretFile"
        "sessionKeyFile"
      ]
    );

    systemd.services.fleet-deploy-dashboard = {
      description = "fleet-deploy dashboard (a live page of the fleet)";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];

      serviceConfig = {
        Type = "simple";
        ExecStart = execStart;
        # It keeps no state: a restart only makes open pages reconnect (and, with a random
        # session key, log in again).
        Restart = "on-failure";
        RestartSec = "5s";

        # Each key and secret is read by systemd (as root) and exposed read-only at
        # $CREDENTIALS_DIRECTORY/<name>, owned by the dynamic user; `%d` is that directory.
        LoadCredential = lib.mapAttrsToList (name: s: credential name s.path) givenSecrets;

        SyslogIdentifier = "fleet-deploy-dashboard";

        # Hardening, stricter than the listener's and the builder's: the dashboard writes no
        # file, runs no program and needs no device. It reads its credentials, talks to NATS
        # and serves HTTP, as a user systemd allocates (DynamicUser=) that owns nothing.
        #
        # Left off, each for a reason:
        # - PrivateNetwork, IPAddressAllow/Deny: it serves browsers and reaches NATS, both
        #   wherever the configuration says.
        # - PrivatePIDs: the dashboard would be PID 1 of a namespace, which ignores signals
        #   it has no handler for; ProtectProc=invisible already hides other processes.
        # The sandbox the other units share, and a dynamic user's (./lib.nix), and:
      }
      // fleetLib.hardening
      // fleetLib.dynamicUser
      // {
        # No netlink: it makes no interface lookups, only TCP to NATS and from browsers, and
        # AF_UNIX for the journal and the name service. (SystemCallFilter stays the shared
        # @system-service without @privileged: a narrower one could not be tried in a VM
        # here, and a refused call would fail a request, not a deploy.)
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
      };
    };
  };
}
