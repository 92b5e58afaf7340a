# What nix/eval-module.nix and nix/eval-home-module.nix share: nixpkgs' `lib`, found in a
# checkout, stand-ins for packages and for the options both module systems declare, and the
# evaluation of each case.
#
# `nixpkgsLib` is a checkout of nix-community/nixpkgs.lib (or of nixpkgs): the directory that
# holds lib/, or lib/ itself.
{ nixpkgsLib }:

let
  lib = import (
    if builtins.pathExists (nixpkgsLib + "/lib/default.nix") then nixpkgsLib + "/lib" else nixpkgsLib
  );
  inherit (lib) mkOption types;
in
{
  inherit lib;

  # Stands in for a derivation without instantiating one (no store writes).
  fakePackage = name: {
    type = "derivation";
    inherit name;
    outPath = "${builtins.storeDir}/00000000000000000000000000000000-${name}";
    meta.mainProgram = name;
  };

  # Units and agents as the module set them: NixOS and Home Manager check and render these.
  recorded = types.attrsOf (types.submodule { freeformType = types.attrsOf types.anything; });

  # `assertions` and `warnings`, which NixOS and Home Manager both declare.
  checks.options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
  };

  # The messages of the assertions that fail.
  failedAssertions = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  # The options under `options`, as dotted paths relative to it.
  optionPaths =
    prefixLength: options:
    map (o: lib.concatStringsSep "." (lib.drop prefixLength o.loc)) (
      lib.collect lib.isOption options
    );

  # Each case of `casesJson` (a JSON object of cases), evaluated by `evalCase`.
  evalCases = evalCase: casesJson: builtins.mapAttrs (_: evalCase) (builtins.fromJSON casesJson);
}
