# The fleet-deploy application (`fleet-deploy` and `fleet-mcp`), built with nixpkgs' Python
# tooling from pyproject.toml. Name, version, description and license are read from
# pyproject.toml so they are written down once.
{
  lib,
  python3,
}:

let
  # nixpkgs' Python with the packages it lacks or has too old (see python-deps.nix).
  python = python3.override {
    self = python;
    packageOverrides = import ./python-deps.nix { inherit lib; };
  };

  projectToml = lib.importTOML ../pyproject.toml;

  # The runtime requirements of pyproject.toml's [project] dependencies.
  runtimeDependencies =
    ps: with ps; [
      anyio
      mcp
      nats-py
      nkeys
      # The listener's metrics (--metrics-enabled); nixpkgs' is new enough (>= 0.20).
      prometheus-client
      pydantic
      structlog
      # The dashboard (fleet-deploy dashboard); mcp needs them too.
      sse-starlette
      starlette
      uvicorn
    ];
in
python.pkgs.buildPythonApplication {
  pname = projectToml.project.name;
  inherit (projectToml.project) version;
  pyproject = true;

  # Only what the wheel is built from, so that editing tests or nix/ does not rebuild it.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../src
      (lib.fileset.maybeMissing ../LICENSE)
    ];
  };

  build-system = [ python.pkgs.hatchling ];

  dependencies = runtimeDependencies python.pkgs;

  # The packages import, with mcp 2.3 and its dependencies resolved.
  pythonImportsCheck = [
    "fleet_core"
    "fleet_mcp"
    "fleet_dashboard"
  ];

  # The test suite needs a NATS server per session and runs in CI (.ci/run); the NixOS VM
  # test (checks.<system>.vm) runs the packaged listener and deployer against a real server.
  doCheck = false;

  passthru = {
    inherit python;
    # For the dev shell: the same dependencies from the same package set.
    pythonDependencies = runtimeDependencies;
  };

  meta = {
    inherit (projectToml.project) description;
    license = lib.getLicenseFromSpdxId projectToml.project.license;
    mainProgram = "fleet-deploy";
    platforms = lib.platforms.linux;
  };
}
