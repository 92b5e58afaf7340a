# Evaluates nix/module.nix with nixpkgs' `lib` alone: no nixpkgs, no NixOS, no builder.
# The few NixOS options the module reads or sets are stubbed below. tests/test_nix.py runs:
#
#   nix-instantiate --eval --strict --json nix/eval-module.nix \
#     --argstr nixpkgsLib "$NIXPKGS_LIB" --argstr casesJson '{"full": {...}, ...}'
#
# `nixpkgsLib` is a checkout of nix-community/nixpkgs.lib (or of nixpkgs); ./eval-common.nix
# has what this shares with ./eval-home-module.nix. Each case is
#   { "hostName": "<networking.hostName>" (optional),
#     "listener": { <services.fleet-deploy.listener options> } (optional),
#     "builder": { <services.fleet-deploy.builder options> } (optional),
#     "dashboard": { <services.fleet-deploy.dashboard options> } (optional),
#     "homelab": { <services.homelab-deploy options, as homelab-deploy's users write them> }
#       (optional) }
# and its result is
#   { failedAssertions = [ <message> ... ];
#     warnings = [ <message> ... ];
#     service = <systemd.services.fleet-deploy-listener as the module set it, or null>;
#     builderService = <systemd.services.fleet-deploy-builder as the module set it, or null>;
#     dashboardService = <systemd.services.fleet-deploy-dashboard as the module set it, or null>;
#     allowedTCPPorts = [ <networking.firewall.allowedTCPPorts> ];
#     optionNames = [ <the options under services.fleet-deploy.listener, as "a.b"> ];
#     builderOptionNames = [ <the options under services.fleet-deploy.builder> ];
#     dashboardOptionNames = [ <the options under services.fleet-deploy.dashboard> ];
#     homelabOptionNames = [ <the options under services.homelab-deploy, as "a.b"> ];
#     healthChecksJson = <the text of the listener's --health-checks file, or null>; }
{ nixpkgsLib, casesJson }:

let
  common = import ./eval-common.nix { inherit nixpkgsLib; };
  inherit (common) lib fakePackage optionPaths;
  inherit (lib) mkOption types;

  fleetLib = import ./lib.nix { inherit lib; };

  # NixOS's utils.escapeSystemdExecArg(s): the same quoting as nixos/lib/utils.nix, which
  # ./lib.nix has for Home Manager.
  utils = {
    inherit (fleetLib) escapeSystemdExecArg escapeSystemdExecArgs;
  };

  nixosStubs = {
    options = {
      networking.hostName = mkOption {
        type = types.str;
        default = "stub-host";
      };
      networking.firewall.allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
      };
      nix.package = mkOption {
        type = types.package;
        default = fakePackage "nix";
      };
      system.build = mkOption {
        type = types.lazyAttrsOf types.unspecified;
        default = { };
      };
      systemd.package = mkOption {
        type = types.package;
        default = fakePackage "systemd";
      };
      systemd.services = mkOption {
        type = common.recorded;
        default = { };
      };
    };
    config = {
      system.build.nixos-rebuild = fakePackage "nixos-rebuild";
      services.fleet-deploy.listener.package = lib.mkDefault (fakePackage "fleet-deploy");
      services.fleet-deploy.builder.package = lib.mkDefault (fakePackage "fleet-deploy");
      services.fleet-deploy.dashboard.package = lib.mkDefault (fakePackage "fleet-deploy");
      _module.args = {
        inherit utils;
        pkgs = {
          git = fakePackage "git";
          openssh = fakePackage "openssh";
          # Like nixpkgs' writeText, a store path that follows the text (here, its hash), so
          # that a test can tell which text the module wrote from the path it passed.
          writeText =
            name: text:
            let
              hash = builtins.substring 0 32 (builtins.hashString "sha256" text);
            in
            fakePackage name // { outPath = "${builtins.storeDir}/${hash}-${name}"; };
        };
      };
    };
  };

  evalCase =
    case:
    let
      evaluated = lib.evalModules {
        modules = [
          ./module.nix
          common.checks
          nixosStubs
          {
            networking = lib.optionalAttrs (case ? hostName) { inherit (case) hostName; };
            services = lib.optionalAttrs (case ? listener) {
              fleet-deploy.listener = case.listener;
            }
            // lib.optionalAttrs (case ? homelab) { homelab-deploy = case.homelab; };
          }
          {
            services = lib.optionalAttrs (case ? builder) { fleet-deploy.builder = case.builder; };
          }
          {
            services = lib.optionalAttrs (case ? dashboard) {
              fleet-deploy.dashboard = case.dashboard;
            };
          }
        ];
      };
      inherit (evaluated) config options;
    in
    {
      failedAssertions = common.failedAssertions config;
      inherit (config) warnings;
      service = config.systemd.services.fleet-deploy-listener or null;
      builderService = config.systemd.services.fleet-deploy-builder or null;
      dashboardService = config.systemd.services.fleet-deploy-dashboard or null;
      inherit (config.networking.firewall) allowedTCPPorts;
      optionNames = optionPaths 3 options.services.fleet-deploy.listener;
      builderOptionNames = optionPaths 3 options.services.fleet-deploy.builder;
      dashboardOptionNames = optionPaths 3 options.services.fleet-deploy.dashboard;
      homelabOptionNames = optionPaths 2 options.services.homelab-deploy;
      # The text of the listener's --health-checks file as the module renders it (its path in
      # ExecStart is the stub writeText's: the text's hash), or null without a listener.
      healthChecksJson =
        if config.services.fleet-deploy.listener.enable then
          fleetLib.healthChecksJson config.services.fleet-deploy.listener
        else
          null;
    };
in
common.evalCases evalCase casesJson
