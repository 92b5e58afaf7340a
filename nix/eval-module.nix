# Evaluates nix/module.nix with nixpkgs' `lib` alone: no nixpkgs, no NixOS, no builder.
# The few NixOS options the module reads or sets are stubbed below. tests/test_nix.py runs:
#
#   nix-instantiate --eval --strict --json nix/eval-module.nix \
#     --argstr nixpkgsLib "$NIXPKGS_LIB" --argstr casesJson '{"full": {...}, ...}'
#
# `nixpkgsLib` is a checkout of nix-community/nixpkgs.lib (or of nixpkgs): the directory
# that holds lib/, or lib/ itself. Each case is
#   { "hostName": "<networking.hostName>" (optional),
#     "listener": { <services.fleet-deploy.listener options> } (optional),
#     "homelab": { <services.homelab-deploy options, as homelab-deploy's users write them> }
#       (optional) }
# and its result is
#   { failedAssertions = [ <message> ... ];
#     warnings = [ <message> ... ];
#     service = <systemd.services.fleet-deploy-listener as the module set it, or null>;
#     allowedTCPPorts = [ <networking.firewall.allowedTCPPorts> ];
#     optionNames = [ <the options under services.fleet-deploy.listener, as "a.b"> ];
#     homelabOptionNames = [ <the options under services.homelab-deploy, as "a.b"> ]; }
{ nixpkgsLib, casesJson }:

let
  lib = import (
    if builtins.pathExists (nixpkgsLib + "/lib/default.nix") then nixpkgsLib + "/lib" else nixpkgsLib
  );
  inherit (lib) mkOption types;

  # Stands in for a derivation without instantiating one (no store writes).
  fakePackage = name: {
    type = "derivation";
    inherit name;
    outPath = "${builtins.storeDir}/00000000000000000000000000000000-${name}";
    meta.mainProgram = name;
  };

  # The same quoting as nixos/lib/utils.nix (escapeSystemdExecArg): JSON-quote each
  # argument, then double `%` and `$` so systemd expands neither specifiers nor variables.
  utils = rec {
    escapeSystemdExecArg =
      arg: lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString arg));
    escapeSystemdExecArgs = lib.concatMapStringsSep " " escapeSystemdExecArg;
  };

  nixosStubs = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
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
      # NixOS checks and renders these; here they are recorded as the module set them.
      systemd.services = mkOption {
        type = types.attrsOf (types.submodule { freeformType = types.attrsOf types.anything; });
        default = { };
      };
    };
    config = {
      system.build.nixos-rebuild = fakePackage "nixos-rebuild";
      services.fleet-deploy.listener.package = lib.mkDefault (fakePackage "fleet-deploy");
      _module.args = {
        inherit utils;
        pkgs = {
          git = fakePackage "git";
          openssh = fakePackage "openssh";
        };
      };
    };
  };

  # The options under `options`, as dotted paths relative to it.
  optionPaths =
    prefixLength: options:
    map (o: lib.concatStringsSep "." (lib.drop prefixLength o.loc)) (
      lib.collect lib.isOption options
    );

  evalCase =
    case:
    let
      evaluated = lib.evalModules {
        modules = [
          ./module.nix
          nixosStubs
          {
            networking = lib.optionalAttrs (case ? hostName) { inherit (case) hostName; };
            services = lib.optionalAttrs (case ? listener) {
              fleet-deploy.listener = case.listener;
            }
            // lib.optionalAttrs (case ? homelab) { homelab-deploy = case.homelab; };
          }
        ];
      };
      inherit (evaluated) config options;
    in
    {
      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      inherit (config) warnings;
      service = config.systemd.services.fleet-deploy-listener or null;
      inherit (config.networking.firewall) allowedTCPPorts;
      optionNames = optionPaths 3 options.services.fleet-deploy.listener;
      homelabOptionNames = optionPaths 2 options.services.homelab-deploy;
    };
in
builtins.mapAttrs (_: evalCase) (builtins.fromJSON casesJson)
