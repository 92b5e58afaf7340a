# Evaluates nix/home-manager.nix with nixpkgs' `lib` alone: no nixpkgs, no Home Manager, no
# builder. The few Home Manager options the module reads or sets are stubbed below, and so is
# `lib.hm.dag`. tests/test_nix_home.py runs:
#
#   nix-instantiate --eval --strict --json nix/eval-home-module.nix \
#     --argstr nixpkgsLib "$NIXPKGS_LIB" --argstr casesJson '{"mac": {...}, ...}'
#
# Each case is
#   { "darwin": true or false (the platform, as pkgs.stdenv.hostPlatform says),
#     "listener": { <services.fleet-deploy.listener options> } (optional) }
# (`nixpkgsLib` as for ./eval-module.nix; ./eval-common.nix has what the two share)
# and its result is
#   { failedAssertions = [ <message> ... ];
#     agent = <launchd.agents.fleet-deploy-listener as the module set it, or null>;
#     service = <systemd.user.services.fleet-deploy-listener, or null>;
#     activation = <home.activation.fleet-deploy-state-dir, or null>;
#     optionNames = [ <the options under services.fleet-deploy.listener, as "a.b"> ]; }
{ nixpkgsLib, casesJson }:

let
  common = import ./eval-common.nix { inherit nixpkgsLib; };
  inherit (common) fakePackage optionPaths;
  # Home Manager extends lib with `hm`; its DAG entries are records of what comes before and
  # after, which is what the stub keeps.
  lib = common.lib.extend (
    _: _: {
      hm.dag = {
        entryBetween = before: after: data: { inherit before after data; };
        entryAfter = after: data: {
          inherit after data;
          before = [ ];
        };
      };
    }
  );
  inherit (lib) mkOption types;

  homeStubs = darwin: {
    options = {
      home.username = mkOption {
        type = types.str;
        default = "alice";
      };
      home.homeDirectory = mkOption {
        type = types.str;
        default = if darwin then "/Users/alice" else "/home/alice";
      };
      home.profileDirectory = mkOption {
        type = types.str;
        default = if darwin then "/Users/alice/.nix-profile" else "/home/alice/.nix-profile";
      };
      home.activation = mkOption {
        type = types.attrsOf types.anything;
        default = { };
      };
      xdg.stateHome = mkOption {
        type = types.str;
        default = "/home/alice/.local/state";
      };
      xdg.configHome = mkOption {
        type = types.str;
        default = "/home/alice/.config";
      };
      launchd.agents = mkOption {
        type = common.recorded;
        default = { };
      };
      systemd.user.services = mkOption {
        type = common.recorded;
        default = { };
      };
    };
    config = {
      xdg.stateHome = lib.mkDefault (
        if darwin then "/Users/alice/.local/state" else "/home/alice/.local/state"
      );
      xdg.configHome = lib.mkDefault (if darwin then "/Users/alice/.config" else "/home/alice/.config");
      services.fleet-deploy.listener.package = lib.mkDefault (fakePackage "fleet-deploy");
      _module.args.pkgs = {
        stdenv.hostPlatform = {
          isDarwin = darwin;
          isLinux = !darwin;
          system = if darwin then "aarch64-darwin" else "x86_64-linux";
        };
        git = fakePackage "git";
      };
    };
  };

  evalCase =
    case:
    let
      evaluated = lib.evalModules {
        specialArgs = { inherit lib; };
        modules = [
          ./home-manager.nix
          common.checks
          (homeStubs (case.darwin or false))
          { services = lib.optionalAttrs (case ? listener) { fleet-deploy.listener = case.listener; }; }
        ];
      };
      inherit (evaluated) config options;
    in
    {
      failedAssertions = common.failedAssertions config;
      agent = config.launchd.agents.fleet-deploy-listener or null;
      service = config.systemd.user.services.fleet-deploy-listener or null;
      activation = config.home.activation.fleet-deploy-state-dir or null;
      optionNames = optionPaths 3 options.services.fleet-deploy.listener;
    };
in
common.evalCases evalCase casesJson
