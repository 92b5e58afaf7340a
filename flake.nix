{
  description = "fleet-deploy: deploy NixOS configurations to a fleet over NATS, with an MCP server";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];

      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      packageFor = pkgs: self.packages.${pkgs.stdenv.hostPlatform.system}.default;
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.callPackage ./nix/package.nix { };
        fleet-deploy = packageFor pkgs;
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = lib.getExe (packageFor pkgs);
          meta.description = "fleet-deploy command line (listener, deploy, hosts, mcp, keygen, sandbox)";
        };
      });

      overlays.default = final: _prev: {
        fleet-deploy = final.callPackage ./nix/package.nix { };
      };

      # The listener and builder services, with `package` defaulting to this flake's build.
      nixosModules.fleet-deploy =
        { lib, pkgs, ... }:
        {
          _file = "${toString ./flake.nix}#nixosModules.fleet-deploy";
          imports = [ ./nix/module.nix ];
          services.fleet-deploy.listener.package = lib.mkDefault (packageFor pkgs);
          services.fleet-deploy.builder.package = lib.mkDefault (packageFor pkgs);
        };
      nixosModules.default = self.nixosModules.fleet-deploy;

      # The listener as a user service for Home Manager (launchd on macOS, systemd --user on
      # Linux), running home-manager switch or darwin-rebuild. `package` defaults to this
      # flake's build where the flake builds for the system, and to the same package.nix
      # built with the configuration's pkgs elsewhere (macOS).
      homeManagerModules.fleet-deploy =
        { lib, pkgs, ... }:
        {
          _file = "${toString ./flake.nix}#homeManagerModules.fleet-deploy";
          imports = [ ./nix/home-manager.nix ];
          services.fleet-deploy.listener.package = lib.mkDefault (
            self.packages.${pkgs.stdenv.hostPlatform.system}.default
              or (pkgs.callPackage ./nix/package.nix { })
          );
        };
      homeManagerModules.default = self.homeManagerModules.fleet-deploy;

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (
              let
                package = packageFor pkgs;
              in
              package.python.withPackages (
                ps:
                package.pythonDependencies ps
                ++ [
                  ps.hatchling
                  ps.pytest
                ]
              )
            )
            pkgs.nats-server
            pkgs.nkeys # `nk`, to make NKeys by hand
            pkgs.nixfmt-tree
          ];
        };
      });

      # `nix fmt`: nixfmt (the RFC 166 style) over the whole tree.
      formatter = forAllSystems (pkgs: pkgs.nixfmt-tree);

      checks = forAllSystems (pkgs: {
        package = packageFor pkgs;
        vm = import ./nix/tests/vm.nix {
          inherit pkgs;
          module = self.nixosModules.default;
          package = packageFor pkgs;
        };
        # Closure deploys: built on the builder, served by a binary cache, switched on a host.
        closures = import ./nix/tests/closures.nix {
          inherit pkgs;
          module = self.nixosModules.default;
          package = packageFor pkgs;
        };
      });
    };
}
