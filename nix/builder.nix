# NixOS module: the fleet-deploy builder, `services.fleet-deploy.builder`, imported by
# ./module.nix (so `nixosModules.default` has both services).
#
# `fleet-deploy builder` answers `build.<repo>.<host|all>` requests over NATS: it runs
# `nix flake metadata`, `nix eval`, `nix build` of each host's
# `nixosConfigurations.<host>.config.system.build.toplevel` and, with `cache`, `nix copy --to`
# that binary cache, so that the hosts download their systems instead of building them.
#
# nix runs as a client of the host's nix-daemon, which does the building; so the service
# needs no privilege of its own and runs as a dynamic user (DynamicUser=) in a sandbox. What
# `nix copy --to` needs to reach the cache (AWS credentials, an ssh key) comes in through
# `credentials` and `environment`; see the hardening notes below.
#
# As in the listener's module, an option whose default is the application's (`timeout`,
# `heartbeatInterval`, `logLevel`) is `null` unless set, and an unset option passes no flag.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:

let
  inherit (lib)
    concatMap
    literalExpression
    mkEnableOption
    mkIf
    mkOption
    optionals
    types
    ;
  fleetLib = import ./lib.nix { inherit lib; };
  inherit (fleetLib)
    credential
    hasPassword
    isAbsoluteOutsideStore
    optionalFlag
    secretPath
    ;

  cfg = config.services.fleet-deploy.builder;
  opt = "services.fleet-deploy.builder";

  # Where systemd puts this unit's credentials ($CREDENTIALS_DIRECTORY, `%d`): a fixed path,
  # so `environment` and `cache` can name a credential in it.
  credentialsDir = "/run/credentials/fleet-deploy-builder.service";
  # The builder's home (nix's XDG state, data and config: profiles, trusted flake settings)
  # and nix's cache (fetched git repositories, tarballs, the evaluation cache). systemd
  # creates both, owned by the dynamic user (StateDirectory=, CacheDirectory=).
  stateDir = "/var/lib/fleet-deploy-builder";
  cacheDir = "/var/cache/fleet-deploy-builder";

  # A repository becomes the <repo> of `build.<repo>.*`, one subject token, and the builder's
  # name is its [builders.<name>] in the inventory, one token too (fleetLib.isToken);
  # `responses` would collide with `build.responses.>`, where the answers go.
  badRepoNames = lib.filter (n: !(fleetLib.isToken n) || n == "responses") (
    lib.attrNames cfg.repos
  );

  # URLs with a secret (`user:token@`), which would sit in the store and on the builder's
  # command line, where every local user can read it; URLs the builder cannot pin.
  reposWithPassword = lib.filter (n: hasPassword cfg.repos.${n}) (lib.attrNames cfg.repos);
  reposNotPinnable = lib.filter (n: !(fleetLib.isPinnable cfg.repos.${n})) (
    lib.attrNames cfg.repos
  );
  cacheHasPassword = cfg.cache != null && hasPassword cfg.cache;

  # A credential name becomes a file name under the credentials directory; `nkey` and
  # `repos` are the module's own.
  badCredentialNames = lib.filter (
    n: builtins.match "[A-Za-z0-9_][A-Za-z0-9_.-]*" n == null || n == "nkey" || n == "repos"
  ) (lib.attrNames cfg.credentials);
  badCredentialPaths = lib.filter (n: !(isAbsoluteOutsideStore cfg.credentials.${n})) (
    lib.attrNames cfg.credentials
  );

  # The command line without the seed, the repositories file and extraArgs. Unset options
  # pass no flag.
  builderArgs = [
    "builder"
    "--name"
    cfg.name
    "--nats-url"
    (fleetLib.natsUrlArg cfg.natsUrl)
  ]
  ++ concatMap (name: [
    "--repo"
    "${name}=${cfg.repos.${name}}"
  ]) (lib.attrNames cfg.repos)
  ++ optionalFlag "--cache" cfg.cache
  ++ optionalFlag "--timeout" cfg.timeout
  ++ optionalFlag "--heartbeat-interval" cfg.heartbeatInterval
  ++ optionalFlag "--log-level" cfg.logLevel;

  # The seed and the repositories file, read from the credentials directory (`%d`), which
  # the builder's dynamic user owns.
  credentialArgs = [
    "--nkey-file %d/nkey"
  ]
  ++ optionals (cfg.reposFile != null) [ "--repos-file %d/repos" ];
  command = [ (lib.getExe' cfg.package "fleet-deploy") ] ++ builderArgs;
  execStart = fleetLib.execStart utils.escapeSystemdExecArgs command credentialArgs cfg.extraArgs;

  secretPathAssertions = fleetLib.secretPathAssertions opt;
in
{
  ### Interface

  options.services.fleet-deploy.builder = {
    enable = mkEnableOption "the fleet-deploy builder, which builds the fleet's system closures (and copies them to a binary cache) when a build request reaches it over NATS";

    package = fleetLib.packageOption "nixosModules";

    name = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = literalExpression "config.networking.hostName";
      example = "ci";
      description = ''
        This builder's name in build statuses and logs: the `[builders.<name>]` of the
        `fleet-deploy nats-config` inventory. Letters, digits, `_` and `-`, at most 63
        characters.
      '';
    };

    natsUrl = fleetLib.natsUrlOption "builder";

    nkeyFile = mkOption {
      type = types.nullOr secretPath;
      default = null;
      example = "/run/secrets/fleet-deploy-builder.seed";
      description = ''
        Path to this builder's NKey seed, outside the Nix store (for example a sops-nix or
        agenix secret). systemd reads it as root and hands it to the service as a credential
        (`LoadCredential=`), so the file itself can stay `0400 root`. Required.
      '';
    };

    repos = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        nixos-servers = "git+https://git.example.com/infra/nixos.git";
      };
      description = ''
        The repositories to build, by name: each name is the `<repo>` of the
        `build.<repo>.<host|all>` requests the builder answers (one subject token: letters,
        digits, `_` and `-`, at most 63 characters, not `responses`), each value a flake
        without a revision or attribute (the builder pins the revision and adds
        `#nixosConfigurations.<host>…`). These land in the world-readable store and on the
        builder's command line: a URL with a token (`git+https://user:TOKEN@…`) goes in
        `reposFile` instead. Set this, `reposFile`, or both (with different names).
      '';
    };

    reposFile = mkOption {
      type = types.nullOr secretPath;
      default = null;
      example = "/run/secrets/fleet-deploy-builder-repos.toml";
      description = ''
        Path of a TOML file of more repositories, outside the Nix store, for URLs that carry
        a token: a `[repos]` table of `NAME = "FLAKE_URL"` lines. systemd reads it as root and
        hands it to the builder as a credential (`LoadCredential=`), so the URLs never reach
        the store, the unit file or a command line.
      '';
    };

    cache = mkOption {
      type = types.nullOr types.nonEmptyStr;
      default = null;
      example = "s3://nix-cache?region=eu-west-1";
      description = ''
        Binary cache to `nix copy --to` each built closure, as a nix store URL
        (`s3://bucket?region=…`, `ssh-ng://cache.example.com`, `file:///srv/cache`). `null`:
        build only. The paths are copied with the signatures they have: sign them with
        `nix.settings.secret-key-files` on this host, or the hosts using the cache will not
        trust them. The copy runs as the builder's dynamic user: give it the cache's
        credentials through `credentials` and `environment` (see the documentation).
      '';
    };

    timeout = fleetLib.secondsOption "builder" 3600 {
      example = 7200;
      description = ''
        Seconds one nix step (fetching the flake, listing its hosts, one host's build, one
        copy) may run before its whole process group is killed. `null` passes no
        `--timeout`, so the builder uses its own default.
      '';
    };

    heartbeatInterval = fleetLib.secondsOption "builder" 10 {
      description = ''
        While a build runs, the builder sends its progress at least this often, in seconds.
        A requester that hears nothing for 3.5 intervals (35 s at least) reports the build
        lost.
      '';
    };

    logLevel =
      fleetLib.logLevelOption "builder"
        "Log level. The builder logs JSON lines to the journal.";

    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = {
        AWS_SHARED_CREDENTIALS_FILE = "/run/credentials/fleet-deploy-builder.service/aws";
        GIT_SSH_COMMAND = "ssh -i /run/credentials/fleet-deploy-builder.service/git-ssh-key";
      };
      description = ''
        Extra environment variables for the builder and the nix commands it runs, for
        example to point the AWS SDK or git at a credential. Not for secrets: they end up in
        the world-readable unit file; put a secret in `credentials` and name its path here.
      '';
    };

    credentials = mkOption {
      type = types.attrsOf secretPath;
      default = { };
      example = {
        aws = "/run/secrets/nix-cache-aws-credentials";
        git-ssh-key = "/run/secrets/fleet-deploy-builder-git-ssh-key";
      };
      description = ''
        Secrets the nix commands need (an AWS credentials file for an `s3://` cache, an ssh
        key for an `ssh-ng://` cache or a `git+ssh://` flake), by name, each an absolute path
        outside the Nix store. systemd reads each one as root and hands it to the service,
        readable by its dynamic user alone, as
        `/run/credentials/fleet-deploy-builder.service/<name>` (`LoadCredential=`): name that
        path in `environment` or in `cache` (`ssh-ng://…?ssh-key=…`).
      '';
    };

    extraArgs = fleetLib.extraArgsOption {
      example = [
        "--nix-command"
        "nix --option max-jobs 4"
      ];
      description = ''
        Extra arguments appended to `fleet-deploy builder` (each one argument, quoted for
        systemd). The seed and the repositories file are set through their options and
        refused here.
      '';
    };
  };

  ### Implementation

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.nkeyFile != null;
        message = "${opt}.nkeyFile is not set. Give the path of the builder's NKey seed (`fleet-deploy keygen` makes one), outside the Nix store: systemd passes it to the builder as a credential.";
      }
    ]
    ++ optionals (cfg.nkeyFile != null) (secretPathAssertions "nkeyFile" cfg.nkeyFile)
    ++ optionals (cfg.reposFile != null) (secretPathAssertions "reposFile" cfg.reposFile)
    ++ [
      {
        assertion = cfg.repos != { } || cfg.reposFile != null;
        message = "${opt}.repos and ${opt}.reposFile are both empty: give the builder at least one repository, in repos (name = flake URL) or, for a URL with a token, in the TOML file reposFile.";
      }
      {
        assertion = fleetLib.isToken cfg.name;
        message = "${opt}.name is \"${cfg.name}\", which is not a valid builder name. Use ${fleetLib.tokenRule}. It defaults to networking.hostName; set either.";
      }
      {
        assertion = badRepoNames == [ ];
        message = "${opt}.repos has names that are not valid repository names: ${
          lib.concatMapStringsSep ", " (n: "\"${n}\"") badRepoNames
        }. Each becomes one NATS subject token (build.<repo>.<host>): use 1-63 letters, digits, '-' or '_', starting with a letter or digit, and not \"responses\".";
      }
      {
        # The message names the repositories, never their URLs: they hold a secret.
        assertion = reposWithPassword == [ ];
        message = "${opt}.repos: the URL of ${lib.concatStringsSep ", " reposWithPassword} carries a password or token (user:secret@), which would be readable by every local user in the Nix store, the unit file and the builder's command line. Put it in the TOML file ${opt}.reposFile instead, or use a git credential helper.";
      }
      {
        assertion = reposNotPinnable == [ ];
        message = "${opt}.repos: the URL of ${lib.concatStringsSep ", " reposNotPinnable} names a '#attribute', a ref= or rev=, or has spaces. Give each flake without them: the builder pins the revision and adds #nixosConfigurations.<host> itself.";
      }
      {
        assertion = !cacheHasPassword;
        message = "${opt}.cache carries a password or token (user:secret@), which would be readable by every local user in the Nix store, the unit file and the builder's command line. Give the cache's credentials through ${opt}.credentials (a file the builder's nix reads, such as an AWS credentials file or a netrc file) instead.";
      }
      {
        assertion = badCredentialNames == [ ];
        message = "${opt}.credentials has names that cannot name a credential: ${
          lib.concatMapStringsSep ", " (n: "\"${n}\"") badCredentialNames
        }. Use letters, digits, '_', '.' and '-' (each becomes a file name), and not \"nkey\" or \"repos\", which the module uses itself.";
      }
      {
        assertion = badCredentialPaths == [ ];
        message = "${opt}.credentials: ${
          lib.concatMapStringsSep ", " (n: "\"${n}\"") badCredentialPaths
        } must be an absolute path outside the Nix store, which every local user can read (for example a sops-nix or agenix secret under /run/secrets), given as a string.";
      }
      (fleetLib.seedFlagAssertion opt cfg.extraArgs true)
      {
        # `--repo` itself is allowed: it is what the repos option passes.
        assertion = !(fleetLib.extraArgsSet cfg.extraArgs "--repos-file" "--repos");
        message = "${opt}.extraArgs sets --repos-file. Set ${opt}.reposFile instead: the module passes the file as a systemd credential, which its dynamic user can read.";
      }
    ];

    systemd.services.fleet-deploy-builder = {
      description = "fleet-deploy builder (builds the fleet's system closures on request)";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];

      # nix, the client of the host's nix-daemon (config.nix.package, the daemon's own nix);
      # git and ssh, which nix runs to fetch git and git+ssh flakes and to reach ssh-ng://
      # caches.
      path = [
        config.nix.package
        pkgs.git
        pkgs.openssh
      ];

      environment = {
        # Always the daemon: the store is read-only in this sandbox, and a dynamic user
        # could not write it anyway.
        NIX_REMOTE = "daemon";
        # nix keeps its git clones, tarballs and evaluation cache under $XDG_CACHE_HOME/nix
        # (kept across restarts, so a build fetches only new commits), and its profiles and
        # settings under $HOME.
        HOME = stateDir;
        XDG_CACHE_HOME = cacheDir;
      }
      // cfg.environment;

      serviceConfig = {
        Type = "simple";
        ExecStart = execStart;
        # A build is not durable: a builder that stops reports its unfinished hosts
        # cancelled, and the build is asked for again. After a crash, come back.
        Restart = "on-failure";
        RestartSec = "5s";

        # The seed is read by systemd (as root) and exposed read-only at
        # $CREDENTIALS_DIRECTORY/nkey, owned by the dynamic user; `%d` is that directory.
        # The builder never opens the original path, and the path never appears on its
        # command line. The repositories file and `credentials` the same way.
        LoadCredential =
          optionals (cfg.nkeyFile != null) [ (credential "nkey" cfg.nkeyFile) ]
          ++ optionals (cfg.reposFile != null) [ (credential "repos" cfg.reposFile) ]
          ++ lib.mapAttrsToList credential cfg.credentials;

        StateDirectory = "fleet-deploy-builder";
        StateDirectoryMode = "0700";
        CacheDirectory = "fleet-deploy-builder";
        CacheDirectoryMode = "0700";

        # stdout and stderr go to the journal (the default); the builder writes JSON lines
        # there when not on a TTY.
        SyslogIdentifier = "fleet-deploy-builder";

        # Hardening. The builder builds nothing itself: `nix build` asks the nix-daemon,
        # which builds in its own sandbox as its own build users, and the builder's nix only
        # evaluates the flake, fetches its sources (into the store, through the daemon) and
        # uploads paths it reads from the daemon to the cache. So the service needs no
        # privilege: it runs as a user systemd allocates for it (DynamicUser=), which any
        # host's nix-daemon accepts as a client (allowed-users defaults to `*`; where it is
        # narrowed, add "fleet-deploy-builder", the dynamic user's name), and which owns
        # only its state, its cache and its credentials. It needs: NATS, the flakes' git
        # servers and the cache over the network; the daemon's socket; writes in its state
        # and cache directories.
        #
        # Left off, each for a reason:
        # - PrivateNetwork, IPAddressAllow/Deny: NATS, git servers and the cache may be
        #   anywhere (S3's endpoints, an EC2 instance's metadata service for its role).
        # - PrivatePIDs: the builder would be PID 1 of a PID namespace, which ignores signals
        #   it has no handler for and must reap orphans (nix's git and ssh children) that
        #   Python leaves as zombies; ProtectProc=invisible already hides other users'
        #   processes.
        # - SystemCallFilter beyond @system-service minus @privileged: nix sets its stack
        #   size (setrlimit, @resources), and nix, git, ssh and Python's subprocess need the
        #   rest of the set.
        # - ReadWritePaths: nothing outside the state and cache directories is writable, so a
        #   `file://` cache elsewhere needs `systemd.services.fleet-deploy-builder
        #   .serviceConfig.ReadWritePaths` (and a directory the dynamic user may write).
        # ProtectHome hides /root and /home: the cache's and the git servers' credentials come
        # through `credentials`, never from a user's ~/.aws or ~/.ssh.
        # The sandbox the listener's unit has too, and a dynamic user's (./lib.nix).
      }
      // fleetLib.hardening
      // fleetLib.dynamicUser;
    };
  };
}
