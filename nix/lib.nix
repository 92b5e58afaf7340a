# What the fleet-deploy modules share: ./module.nix (the NixOS listener), ./builder.nix (the
# NixOS builder) and ./home-manager.nix (the Home Manager listener) each import it as
#
#   fleetLib = import ./lib.nix { inherit lib; };
#
# It holds the checks the application makes too (each names where), the option declarations
# that are the same in two or more modules (each takes what differs: the service's name, its
# default, its own description), how options become flags, and the assertions the modules
# share. Option names, descriptions and assertion messages stay in the modules where they
# differ, so each module still reads as what its users see.
{ lib }:

let
  inherit (lib)
    concatMap
    hasPrefix
    literalMD
    mkOption
    optionalString
    optionals
    types
    ;
in
rec {
  ### Checks

  # One token of a NATS subject: a hostname or role (`deploy.<tier>.<hostname>`,
  # `deploy.<tier>.role.<role>`), a repository (`build.<repo>.*`), a builder's name. It can
  # hold no dot, space or wildcard; the application checks the same rule
  # (src/fleet_core/protocol/subjects.py, src/fleet_core/build/protocol.py).
  isToken = s: builtins.match "[A-Za-z0-9][A-Za-z0-9_-]{0,62}" s != null;
  # That rule, as the assertion messages state it.
  tokenRule = "letters, digits, '_' and '-' (at most 63 characters, starting with a letter or digit)";

  # `all` and `role` would collide with `deploy.<tier>.all` and `deploy.<tier>.role.<role>`,
  # so they are not valid hostnames.
  reservedHostnames = [
    "all"
    "role"
  ];
  isHostname = s: isToken s && !(builtins.elem s reservedHostnames);

  # A user public key as `fleet-deploy keygen` prints it (the listener checks its checksum).
  isPublicKey = k: builtins.match "U[A-Z2-7]{55}" k != null;

  # A URL whose userinfo holds a secret (`user:token@`): it would sit in the world-readable
  # store and on the service's command line.
  hasPassword = url: builtins.match "[^/]*://[^/@]*:[^/@]*@.*" url != null;
  # How messages show a flake URL (or null): never with its secret.
  shownUrl =
    url:
    if url != null && hasPassword url then "(a URL with a password, not shown)" else toString url;

  # A flake the service can pin: no attribute, no whitespace, no ref= or rev= (it adds them).
  isPinnable =
    url:
    builtins.match ".*[#[:space:]].*" url == null
    && builtins.match ".*[?&](ref|rev)=.*" url == null;

  inStore = path: hasPrefix "${builtins.storeDir}/" path;
  # An absolute path outside the Nix store (which every local user can read), where a secret
  # or the service's state may be.
  isAbsoluteOutsideStore = path: hasPrefix "/" path && !(inStore path);

  # Whether an extraArgs entry sets `flag`, spelled out or abbreviated as the service's
  # argument parser accepts (down to `shortest`, the shortest unambiguous prefix), with or
  # without `=value`.
  setsFlag =
    flag: shortest: arg:
    let
      name = builtins.head (lib.splitString "=" arg);
    in
    hasPrefix shortest name && hasPrefix name flag;
  extraArgsSet = extraArgs: flag: shortest: lib.any (setsFlag flag shortest) extraArgs;

  ### Option types and declarations

  # Typed as a string so that a Nix path (./listener.seed), which would be copied into the
  # world-readable store, is a type error rather than a leaked secret.
  secretPath = types.str // {
    description = "absolute path outside the Nix store, given as a string";
  };

  natsUrlType = types.either types.nonEmptyStr (types.nonEmptyListOf types.nonEmptyStr);

  # `modules`: the flake output whose module sets the default (`nixosModules`, …).
  packageOption =
    modules:
    mkOption {
      type = types.package;
      defaultText = literalMD "`packages.<system>.default` of the fleet-deploy flake (set by its `${modules}.default`)";
      description = "The fleet-deploy package that provides the `fleet-deploy` command.";
    };

  # `subject`: the service that connects (`listener`, `builder`).
  natsUrlOption =
    subject:
    mkOption {
      type = natsUrlType;
      example = [
        "nats://nats1.example.com:4222"
        "nats://nats2.example.com:4222"
      ];
      description = ''
        URL of the NATS server, or the URLs of several servers of one cluster (a list, or one
        string with commas); the ${subject} connects to one and fails over to the others.
      '';
    };

  # Seconds whose default is the application's: `null` (no flag) unless set. `subject` is the
  # service, `seconds` its built-in default, `attrs` the rest of the declaration.
  secondsOption =
    subject: seconds: attrs:
    mkOption (
      {
        type = types.nullOr types.ints.positive;
        default = null;
        defaultText = literalMD "`null`: the ${subject}'s built-in default (${toString seconds} seconds)";
      }
      // attrs
    );

  logLevelOption =
    subject: description:
    mkOption {
      type = types.nullOr (
        types.enum [
          "debug"
          "info"
          "warning"
          "error"
        ]
      );
      default = null;
      defaultText = literalMD "`null`: the ${subject}'s built-in default";
      inherit description;
    };

  trustedDeployerKeysOption =
    description:
    mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "UADMIN..." ];
      inherit description;
    };

  # `attrs`: the example and the description.
  extraArgsOption =
    attrs:
    mkOption (
      {
        type = types.listOf types.str;
        default = [ ];
      }
      // attrs
    );

  ### Flags

  # `--nats-url`'s value: several servers as one argument, separated by commas.
  natsUrlArg = natsUrl: if lib.isList natsUrl then lib.concatStringsSep "," natsUrl else natsUrl;
  # `flag value`, or nothing for an unset (null) option.
  optionalFlag =
    flag: value:
    optionals (value != null) [
      flag
      (toString value)
    ];
  # `flag value` for each of `values`.
  repeatedFlag =
    flag:
    concatMap (value: [
      flag
      value
    ]);

  # The built-in health check's name and `builtin` value (the listener's
  # fleet_core.config.options.SYSTEM_RUNNING_CHECK): a word of the file's format, not a default.
  systemRunningCheckName = "system-running";

  # The text of a NixOS listener's `--health-checks` file, from its options (`cfg`): the
  # built-in `system-running` check first while `systemRunningCheck.enable`, then
  # `healthChecks` in order, each as fleet_core.config.resolve._health_checks reads it. A
  # check's `timeout` is written only when set, so the listener's default applies otherwise.
  # Here rather than in ./module.nix so that ./eval-module.nix can render it from the same
  # options and the tests can read it: the module only hands it to pkgs.writeText.
  healthChecksJson =
    cfg:
    builtins.toJSON (
      optionals cfg.systemRunningCheck.enable [
        {
          name = systemRunningCheckName;
          builtin = systemRunningCheckName;
          ignore_units = cfg.systemRunningCheck.ignoreUnits;
          inherit (cfg.systemRunningCheck) timeout;
        }
      ]
      ++ map (
        check:
        {
          inherit (check) name command;
        }
        // lib.optionalAttrs (check.timeout != null) { inherit (check) timeout; }
      ) cfg.healthChecks
    );

  # The same quoting as NixOS's utils.escapeSystemdExecArg (nixos/lib/utils.nix), where
  # there is no NixOS (Home Manager) and in the evaluation stubs: JSON-quote each argument and
  # double `%` and `$`, so that no value becomes a systemd specifier or variable.
  escapeSystemdExecArg =
    arg: lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString arg));
  escapeSystemdExecArgs = lib.concatMapStringsSep " " escapeSystemdExecArg;

  # A NixOS unit's ExecStart: `command` (the executable and its arguments), `credentialArgs`
  # and `extraArgs`. `escape` (NixOS's utils.escapeSystemdExecArgs) quotes each argument and
  # doubles `%` and `$`, so no option value can become a systemd specifier or variable. `%d`
  # (the credentials directory) is the one specifier wanted, so `credentialArgs` are appended
  # unescaped.
  execStart =
    escape: command: credentialArgs: extraArgs:
    lib.concatStringsSep " " (
      [ (escape command) ] ++ credentialArgs ++ optionals (extraArgs != [ ]) [ (escape extraArgs) ]
    );

  # A LoadCredential= entry: systemd reads `path` as root and hands it to the service,
  # read-only, as $CREDENTIALS_DIRECTORY/<name> (`%d/<name>` on the command line).
  credential = name: path: "${name}:${lib.replaceStrings [ "%" ] [ "%%" ] path}";

  # The sandbox the listener's and the builder's units share; each module adds its own
  # settings and says why it leaves out the others.
  hardening = {
    ProtectSystem = "strict"; # StateDirectory= and CacheDirectory= are writable regardless
    ProtectHome = true;
    # /proc/<pid> entries only: neither service reads anything else there.
    ProcSubset = "pid";
    PrivateDevices = true;
    PrivateIPC = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true; # the listener's host name comes from an option, not uname
    NoNewPrivileges = true; # systemd-run is not setuid; a rebuild's unit is unaffected
    RestrictSUIDSGID = true;
    RestrictNamespaces = true;
    RestrictRealtime = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true; # CPython, nix's evaluator, git, ssh, their libraries: no JIT
    SystemCallArchitectures = "native";
    # AF_UNIX for PID 1's socket, D-Bus and the nix-daemon's socket, AF_NETLINK for glibc's
    # address lookups.
    RestrictAddressFamilies = [
      "AF_UNIX"
      "AF_INET"
      "AF_INET6"
      "AF_NETLINK"
    ];
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
    ];
    # A refused call fails as an error the service reports, rather than killing it in the
    # middle of a deploy or a build.
    SystemCallErrorNumber = "EPERM";
    # Job records and the builder's state are the service's alone; the rebuild's unit keeps
    # the default umask (022).
    UMask = "0077";
  };

  # A service that runs as a user systemd allocates for it (DynamicUser=) and owns only its
  # own state: the builder's and the dashboard's units, on top of `hardening`.
  dynamicUser = {
    DynamicUser = true;
    # No capability at all: the dynamic user has none to use, and this keeps it so.
    CapabilityBoundingSet = "";
    # Only root and the dynamic user are mapped; the store (root's) reads as before.
    PrivateUsers = true;
    PrivateTmp = true;
    # Only the service's own processes.
    ProtectProc = "invisible";
    RemoveIPC = true;
  };

  ### Assertions
  #
  # Each takes `opt`, the options' prefix (`services.fleet-deploy.listener`), and the values
  # it checks.

  # That a secret's path (unless null) is absolute,
  absolutePathAssertion = opt: name: path: {
    assertion = path == null || hasPrefix "/" path;
    message = "${opt}.${name} must be an absolute path, but it is \"${toString path}\".";
  };
  # and outside the store; `what` is what the file holds (`seed`, `file`).
  outsideStoreAssertion = opt: name: what: path: {
    assertion = path == null || !(inStore path);
    message = "${opt}.${name} points into the Nix store (${toString path}), which every local user can read. Keep the ${what} outside the store (for example a sops-nix or agenix secret under /run/secrets) and give its path as a string.";
  };
  # Both, for a file: the builder's secrets.
  secretPathAssertions = opt: name: path: [
    (absolutePathAssertion opt name path)
    (outsideStoreAssertion opt name "file" path)
  ];

  # `after`: what the message adds (where the hostname's default comes from).
  hostnameAssertion = opt: hostname: after: {
    assertion = isHostname hostname;
    message = "${opt}.hostname is \"${hostname}\", which is not a valid subject token. Use ${tokenRule}, and not \"all\" or \"role\".${after}";
  };

  # `rule`: how the message states the token rule (tokenRule, or less).
  roleAssertion = opt: role: rule: {
    assertion = role == null || isToken role;
    message = "${opt}.role is \"${toString role}\", which is not a valid subject token. Use ${rule}, or null for no role.";
  };

  # Exactly one of `flakeUrl` and `flakeUrlFile` (of `cfg`).
  flakeUrlSourceAssertion = opt: cfg: {
    assertion = (cfg.flakeUrl == null) != (cfg.flakeUrlFile == null);
    message = "${opt}.flakeUrl and ${opt}.flakeUrlFile: set exactly one of flakeUrl (the flake's URL) and flakeUrlFile (a file holding it, for a URL with a token).";
  };

  # `attribute`: what the listener builds (`hostname`, `configuration`).
  flakeUrlPinnableAssertion = opt: flakeUrl: attribute: {
    assertion = flakeUrl == null || isPinnable flakeUrl;
    message = "${opt}.flakeUrl is \"${shownUrl flakeUrl}\". Give the flake without a '#attribute', spaces, ref= or rev=: the listener adds ?ref=<revision>#<${attribute}> for each deploy.";
  };

  # The message leaves the URL out: it holds a secret. `readable`: where it could be read.
  flakeUrlPasswordAssertion = opt: flakeUrl: readable: {
    assertion = flakeUrl == null || !(hasPassword flakeUrl);
    message = "${opt}.flakeUrl carries a password or token (user:secret@), which would be readable ${readable}. Put the URL in a file outside the store and set ${opt}.flakeUrlFile instead, or use a git credential helper.";
  };

  # The message leaves a seed out: it is a secret. `keygen`: whether to say that
  # `fleet-deploy keygen` prints the key.
  trustedKeysAssertion =
    opt: keys: keygen:
    let
      bad = lib.filter (k: !(isPublicKey k)) keys;
      printedBy = optionalString keygen ", as `fleet-deploy keygen` prints it";
    in
    {
      assertion = bad == [ ];
      message = "${opt}.trustedDeployerKeys has entries that are not user public keys: ${
        lib.concatMapStringsSep ", " (
          k: if hasPrefix "S" k then "(a seed: a secret, left out here)" else "\"${k}\""
        ) bad
      }. Give each deployer's public key (56 characters starting with U)${printedBy}, never a seed.";
    };

  # `asCredential`: whether the module passes the seed as a systemd credential (and says so).
  seedFlagAssertion =
    opt: extraArgs: asCredential:
    let
      why = optionalString asCredential ": the module passes the seed as a systemd credential";
    in
    {
      assertion = !(extraArgsSet extraArgs "--nkey-file" "--nk");
      message = "${opt}.extraArgs sets --nkey-file. Set ${opt}.nkeyFile instead${why}.";
    };

  flakeUrlFlagAssertion = opt: extraArgs: {
    # `--flake-url` must be spelled out: its prefixes are ambiguous with --flake-url-file.
    assertion =
      !(
        extraArgsSet extraArgs "--flake-url" "--flake-url"
        || extraArgsSet extraArgs "--flake-url-file" "--flake-url-"
      );
    message = "${opt}.extraArgs sets --flake-url or --flake-url-file. Set ${opt}.flakeUrl or ${opt}.flakeUrlFile instead.";
  };
}
