# Python packages that fleet-deploy needs newer than nixpkgs has them, as an overlay for
# nixpkgs' Python package set (`python3.override { packageOverrides = ...; }`).
#
# Written against nixos-unstable as of 2026, whose python-modules had mcp 2.1.1 (with a
# matching mcp-types), httpx2 and httpcore2 2.5 and nats-py 2.15.0: all older than
# fleet-deploy's pins. Each package below replaces nixpkgs' only while nixpkgs' own is missing
# or older than required, so updating the flake's nixpkgs input retires it by itself; delete
# an entry once no supported nixpkgs needs it.
#
# The overlay always defines the same attribute names and decides only their values: nixpkgs
# builds `prev`'s packages with callPackage over the final package set, so names that
# depended on `prev.<name>.version` would recurse infinitely.
#
# The mcp, httpx2 and nats-py families are installed from PyPI's pure-Python wheels
# (py3-none-any): their sdists build with uv-dynamic-versioning (a version read from git,
# absent from an sdist) or with maturin (nats-py 2.16), which a wheel avoids. nkeys ships
# only an sdist, a plain setuptools build. Hashes are the sha256 of the files
# `pip download --no-deps <name>==<version>` fetched from PyPI.
#
# Requirements are taken from each wheel's METADATA; pythonRuntimeDepsCheckHook checks
# them against the rest of nixpkgs at build time.
{ lib }:

final: prev:

let
  tooOld = name: minVersion: !(prev ? ${name}) || lib.versionOlder prev.${name}.version minVersion;

  # nixpkgs' package when it is new enough, otherwise ours.
  unlessNixpkgsHas =
    name: minVersion: ours:
    if tooOld name minVersion then ours else prev.${name};

  pypiWheel =
    {
      pname,
      wheelName ? pname,
      version,
      hash,
      dependencies,
      imports,
    }:
    final.buildPythonPackage {
      inherit pname version dependencies;
      format = "wheel";
      src = final.fetchPypi {
        pname = wheelName;
        inherit version hash;
        format = "wheel";
        dist = "py3";
        python = "py3";
      };
      pythonImportsCheck = imports;
    };
in
{
  # mcp 2.3: the `mcp.server.MCPServer` API fleet_mcp is written for. mcp pins mcp-types to
  # its own version, so the two are replaced as a pair, on mcp's version.
  mcp = unlessNixpkgsHas "mcp" "2.3" (pypiWheel {
    pname = "mcp";
    version = "2.3.0";
    hash = "sha256-3QxEwInRZFPorjGjh3oAVNeiMUyqqB9eBUG5sXNLI3c=";
    dependencies =
      with final;
      [
        anyio
        httpx2
        jsonschema
        mcp-types
        opentelemetry-api
        pydantic
        pyjwt
        python-multipart
        sse-starlette
        starlette
        typing-extensions
        typing-inspection
        uvicorn
      ]
      ++ pyjwt.optional-dependencies.crypto;
    imports = [ "mcp" ];
  });

  mcp-types = unlessNixpkgsHas "mcp" "2.3" (pypiWheel {
    pname = "mcp-types";
    wheelName = "mcp_types";
    version = "2.3.0";
    hash = "sha256-lo79va7fqwatrkDTeKNDlfEJDFkh1L48nN4oOq922R0=";
    dependencies = with final; [
      pydantic
      typing-extensions
    ];
    imports = [ "mcp_types" ];
  });

  # mcp 2.3 needs httpx2 >= 2.10; httpx2 pins httpcore2 to its own version, so the two are
  # replaced as a pair, on httpx2's version.
  httpx2 = unlessNixpkgsHas "httpx2" "2.10" (pypiWheel {
    pname = "httpx2";
    version = "2.16.2";
    hash = "sha256-8FwTqt5MRdvxyQYGR6EFjwrK1iOY+tludBJp7bM9RvU=";
    dependencies = with final; [
      anyio
      httpcore2
      idna
      truststore
      typing-extensions
    ];
    imports = [ "httpx2" ];
  });

  httpcore2 = unlessNixpkgsHas "httpx2" "2.10" (pypiWheel {
    pname = "httpcore2";
    version = "2.16.2";
    hash = "sha256-FgUa4qQvd2AHVD8y3pNJoxeyPSy7ThRWtLrA6IuHQZo=";
    # anyio is httpcore2's `asyncio` extra, which the async client mcp uses needs.
    dependencies = with final; [
      anyio
      h11
      truststore
    ];
    imports = [ "httpcore2" ];
  });

  # fleet-deploy requires nats-py >= 2.16 (nixpkgs: 2.15.0).
  nats-py = unlessNixpkgsHas "nats-py" "2.16" (pypiWheel {
    pname = "nats-py";
    wheelName = "nats_py";
    version = "2.16.0";
    hash = "sha256-rrH/EjlmwFgz0mx99+HVTBxtMrYSQoshZ3oukh8f7K4=";
    # NKey authentication is its `nkeys` extra.
    dependencies = [ final.nkeys ];
    imports = [ "nats" ];
  });

  # fleet-deploy requires nkeys >= 0.2 (< 0.3).
  nkeys = unlessNixpkgsHas "nkeys" "0.2" (
    final.buildPythonPackage {
      pname = "nkeys";
      version = "0.2.1";
      pyproject = true;
      src = final.fetchPypi {
        pname = "nkeys";
        version = "0.2.1";
        hash = "sha256-OiAdzSA9i7BboohNRBsskpGLKlN6ENMk5zc4iH3enaM=";
      };
      build-system = [ final.setuptools ];
      dependencies = [ final.pynacl ];
      pythonImportsCheck = [ "nkeys" ];
    }
  );
}
