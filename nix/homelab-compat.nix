# homelab-deploy's option names, so that a host configured for homelab-deploy evaluates
# unchanged with fleet-deploy's module in place of homelab-deploy's: one row per option of
# homelab-deploy's module (the `listener` options its README documents, plus `metrics.*` and
# `extraArgs` of its later releases, and the `builder` service those releases add), each with
# what becomes of it.
#
# - Renamed: the value is forwarded unchanged to fleet-deploy's option of the same name, with
#   a warning that names both (lib.mkRenamedOptionModule). fleet-deploy's option takes the
#   same values; where it is stricter, its own type or assertion says what to change:
#   `nkeyFile` must be a string path outside the Nix store (a Nix path literal would copy the
#   seed into the store), `flakeUrl` may not carry a `user:token@`, `deploySubjects` may not
#   be empty or hold wildcards. `extraArgs` reaches the same flags: fleet-deploy's listener
#   takes homelab-deploy's (`--debug`, `--heartbeat-interval`, `--metrics-*`, …).
# - Removed: an option fleet-deploy cannot honour fails evaluation with what to do instead
#   (lib.mkRemovedOptionModule); none is ignored silently.
#
# The builder: homelab-deploy's later releases add a build service, and fleet-deploy now has
# one (./builder.nix). homelab-deploy documents no list of its builder's options as it does
# for its listener, so its rows here are only the names it shares, by its convention, with a
# listener row above, which mean for fleet-deploy's builder what they mean for the listener:
# `enable`, `natsUrl`, `nkeyFile` (a string path outside the store, here too),
# `environment`, `extraArgs` (appended to `fleet-deploy builder`, which takes the listener's
# `--debug`, `--heartbeat-interval`, `--log-level` and `--timeout` too), and `timeout`, the
# seconds before nix is killed (fleet-deploy's bounds each nix step, the fetch, the listing,
# one host's build or one copy, so a value meant for a whole build never stops one sooner).
# `package` is refused, as the listener's is. fleet-deploy's other builder options (`repos`,
# `reposFile`, `cache`, `name`, `heartbeatInterval`, `logLevel`, `credentials`) are set
# under `services.fleet-deploy.builder`: whatever homelab-deploy calls them is not guessed
# at, and any other `services.homelab-deploy.builder.*` fails evaluation as an option that
# does not exist, so none is ignored silently either.
#
# No option's meaning changed, so nothing needs lib.mkChangedOptionModule. homelab-deploy's
# module has no options for `--debug` or `--heartbeat-interval` (it passes them through
# `extraArgs`, which still works). fleet-deploy's own additions (`flakeUrlFile`,
# `trustedDeployerKeys`, `stateDir`, `logLevel`, `restartOnUpgrade`, `healthChecks`,
# `systemRunningCheck`, `rollback`) have no homelab counterpart.
#
# These declare `services.homelab-deploy.*`, so a host imports fleet-deploy's module instead
# of homelab-deploy's, never both: the two would declare the same options.
{ lib, ... }:

let
  under = service: path: [
    "services"
    service
  ]
  ++ lib.splitString "." path;

  # Each row: services.homelab-deploy.<row> becomes services.fleet-deploy.<row>, the same
  # name under fleet-deploy's service.
  renamed = [
    "listener.enable"
    "listener.hostname"
    "listener.tier"
    "listener.role"
    "listener.natsUrl"
    "listener.nkeyFile"
    "listener.flakeUrl"
    "listener.timeout"
    "listener.deploySubjects"
    "listener.discoverSubject"
    "listener.environment"
    "listener.extraArgs"
    "listener.metrics.enable"
    "listener.metrics.address"
    "listener.metrics.openFirewall"
    "builder.enable"
    "builder.natsUrl"
    "builder.nkeyFile"
    "builder.timeout"
    "builder.environment"
    "builder.extraArgs"
  ];

  # Each row: services.homelab-deploy.<row> fails evaluation with what to do instead.
  removed = {
    # The package a homelab-deploy configuration names is homelab-deploy's, whose binary
    # does not take fleet-deploy's flags (--rebuild-runner, --restart-if-changed, …).
    "listener.package" = ''
      It names homelab-deploy's package, which cannot run fleet-deploy's listener.
      services.fleet-deploy.listener.package defaults to the fleet-deploy flake's package;
      set that option to use another build of fleet-deploy.
    '';
    # The same for the builder: fleet-deploy's runs `fleet-deploy builder`.
    "builder.package" = ''
      It names homelab-deploy's package, which cannot run fleet-deploy's builder.
      services.fleet-deploy.builder.package defaults to the fleet-deploy flake's package;
      set that option to use another build of fleet-deploy.
    '';
  };
in
{
  imports =
    map (
      path: lib.mkRenamedOptionModule (under "homelab-deploy" path) (under "fleet-deploy" path)
    ) renamed
    ++ lib.mapAttrsToList (
      path: instructions: lib.mkRemovedOptionModule (under "homelab-deploy" path) instructions
    ) removed;
}
