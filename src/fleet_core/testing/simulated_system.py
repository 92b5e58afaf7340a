"""A simulated NixOS system profile on disk, below one host's own root directory DIR (never
the real /nix or /run): what ``switch``, ``boot``, ``test`` and a rollback change, as links.

    DIR/nix/store/<hash>-nixos-system-<host>-<label>/   a system: nixos-version (the label),
        bin/switch-to-configuration, kernel, initrd and kernel-modules (links into the
        store, as a real system's: their paths change only with the system's kernel), and
        markers in sim/: cut-network, degraded (failed units, one a line), fail-activation
    DIR/nix/store/<hash>-linux-<kernel>/bzImage, …-initrd-linux-<kernel>/initrd,
        …-linux-<kernel>-modules/                          a kernel, shared by its systems
    DIR/nix/var/nix/profiles/system -> system-<N>-link -> a store path   (nix-env --set)
    DIR/run/current-system -> a store path    what runs: switch and test change it
    DIR/run/booted-system -> a store path     what was booted
    DIR/boot/default -> a store path          what the bootloader boots next: switch and boot

Every link is absolute but the profile's (``system -> system-<N>-link``, relative, as nix
writes it), and each is replaced atomically (a link under a temporary name, then
``os.replace``), so a reader never finds one missing. A system's
``bin/switch-to-configuration`` is a tiny script that runs :func:`activate` of this module:
it finds DIR and its own store path from where it lies, the way the real one is its own
store path's, so a rollback is what it is on a host — ``nix-env --set`` back to the previous
store path, then that path's ``switch-to-configuration switch`` (``simulated_nix_env``).

The markers are what a deploy can go wrong with: ``sim/fail-activation`` makes activation
change the links and then fail as a unit failing to start makes it fail (exit 4; nixos-rebuild
turns that into its exit 1); ``sim/degraded`` is what ``simulated_systemctl`` reports while
that system runs, and ``sim/cut-network`` cuts the host's link to NATS
(``simulated_network``) while it runs. A failed activation leaves its unit failed, so such a
system is degraded too (by ``foo.service`` unless ``degraded`` names units).

Standard library only: every activation starts a Python process that imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "ACTIONS",
    "DEFAULT_KERNEL",
    "activate",
    "boot_default",
    "booted",
    "booted_system_path",
    "current",
    "current_system_path",
    "describe_unit",
    "failed_units",
    "generations",
    "init_root",
    "make_system",
    "network_cut",
    "profile",
    "profile_path",
    "reboot",
    "set_profile",
    "simulated_nix_env_command",
    "simulated_systemctl_command",
    "store_dir",
    "system_at",
]

ACTIONS = ("switch", "boot", "test", "dry-activate")  # switch-to-configuration's verbs
INITIAL_LABEL = "initial"
DEFAULT_KERNEL = "6.6.63"  # the kernel of every system that names none
KERNEL_ENTRIES = ("kernel", "initrd", "kernel-modules")  # what a reboot is needed to change
DEFAULT_FAILED_UNIT = "foo.service"
_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"  # nix's base32
_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9+\-._?=]")  # what a store path's name may not hold
_GENERATION = re.compile(r"system-(\d+)-link")
_SHEBANG_MAX = 200  # Linux reads at most 256 bytes of a "#!" line (as sandbox.py)
_USAGE = """\
Usage: {script} [switch|boot|test|dry-activate]

switch:       make the configuration the boot default and activate now
boot:         make the configuration the boot default
test:         activate the configuration, but don't make it the boot default
dry-activate: show what would be done if this configuration were activated"""


# -- where things are -----------------------------------------------------------------


def store_dir(root: Path) -> Path:
    return Path(root).absolute() / "nix" / "store"


def profile_path(root: Path) -> Path:
    """The system profile link: the listener's ``--system-profile`` under this root."""
    return Path(root).absolute() / "nix" / "var" / "nix" / "profiles" / "system"


def current_system_path(root: Path) -> Path:
    """The running system's link: the listener's ``--current-system`` under this root."""
    return Path(root).absolute() / "run" / "current-system"


def booted_system_path(root: Path) -> Path:
    """The booted system's link: the listener's ``--booted-system`` under this root."""
    return Path(root).absolute() / "run" / "booted-system"


def _boot_default_path(root: Path) -> Path:
    return Path(root).absolute() / "boot" / "default"


def _follow(link: Path) -> Path | None:
    """Where ``link`` leads, following links but not resolving the root's own path (so the
    answer is the store path as written, comparable to :func:`make_system`'s); None when it
    or what it leads to is missing."""
    path = link
    for _ in range(40):  # as the kernel's limit on nested links
        try:
            target = os.readlink(path)
        except FileNotFoundError:
            return None
        except OSError:  # not a link: the end of the chain
            return path if path.exists() else None
        path = path.parent / target  # an absolute target replaces the parent
    return None


def current(root: Path) -> Path | None:
    """The store path that runs."""
    return _follow(current_system_path(root))


def booted(root: Path) -> Path | None:
    """The store path that was booted."""
    return _follow(booted_system_path(root))


def profile(root: Path) -> Path | None:
    """The store path the system profile's current generation holds."""
    return _follow(profile_path(root))


def boot_default(root: Path) -> Path | None:
    """The store path the bootloader boots next."""
    return _follow(_boot_default_path(root))


def generations(root: Path) -> list[tuple[int, Path]]:
    """The profile's generations, oldest first: (number, store path)."""
    found = []
    directory = profile_path(root).parent
    if directory.is_dir():
        for entry in directory.iterdir():
            if (match := _GENERATION.fullmatch(entry.name)) and (path := _follow(entry)):
                found.append((int(match.group(1)), path))
    return sorted(found)


def _is_system(path: Path) -> bool:
    """Whether ``path`` is a directory of a root's store, the only kind of system there is."""
    return path.is_dir() and path.parent.name == "store" and path.parent.parent.name == "nix"


def _units(system: Path) -> tuple[str, ...]:
    """The units that failed in ``system`` (its ``sim/degraded`` marker)."""
    marker = system / "sim" / "degraded"
    return tuple(marker.read_text(encoding="utf-8").split()) if marker.is_file() else ()


def failed_units(root: Path) -> tuple[str, ...]:
    """The units that failed in the running system."""
    system = current(root)
    return _units(system) if system is not None else ()


def network_cut(root: Path) -> bool:
    """Whether the running system cut the host's network (its ``sim/cut-network``)."""
    system = current(root)
    return system is not None and (system / "sim" / "cut-network").exists()


# -- changing things ------------------------------------------------------------------


def _link(link: Path, target: Path | str) -> None:
    """Point ``link`` at ``target`` atomically: readers see the old link or the new one."""
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = link.with_name(f".{link.name}.{os.urandom(6).hex()}")
    os.symlink(target, temporary)
    try:
        os.replace(temporary, link)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def init_root(root: Path, host: str) -> Path:
    """The root of a host that has run one system (label "initial") since it booted: one
    generation, and it runs, was booted and boots next. An existing root keeps its links
    (only missing ones are made), so calling it twice is harmless. The initial system."""
    system = make_system(root, host, INITIAL_LABEL)
    if not os.path.lexists(profile_path(root)):
        set_profile(root, system)
    for link in (current_system_path(root), booted_system_path(root), _boot_default_path(root)):
        if not os.path.lexists(link):
            _link(link, system)
    return system


def make_system(
    root: Path,
    host: str,
    label: str,
    *,
    cut_network: bool = False,
    degraded: Iterable[str] = (),
    fail_activation: bool = False,
    kernel: str = DEFAULT_KERNEL,
) -> Path:
    """The store path of ``host``'s system ``label`` with these markers, made if missing.

    Its hash comes from the inputs alone, so the same deploy gives the same path and a
    rollback target can be named in advance. It is made under a temporary name and renamed
    into place, so a concurrent reader never sees half a system. ``kernel`` names its
    kernel: systems of one kernel share its store paths, so only a deploy that changes the
    kernel leaves a host needing a reboot.
    """
    units = _failed_units(degraded, fail_activation)
    inputs: list[object] = [host, label, cut_network, sorted(units), fail_activation]
    if kernel != DEFAULT_KERNEL:  # the default leaves the paths of earlier releases alone
        inputs.append(kernel)
    seed = json.dumps(inputs)
    digest = hashlib.sha256(seed.encode()).digest()
    text = "".join(_ALPHABET[byte % 32] for byte in digest)
    name = _NOT_IN_NAMES.sub("-", f"nixos-system-{host}-{label}")
    return system_at(
        root,
        f"{text}-{name}",
        label,
        cut_network=cut_network,
        degraded=units,
        fail_activation=fail_activation,
        kernel=kernel,
    )


def _failed_units(degraded: Iterable[str], fail_activation: bool) -> tuple[str, ...]:
    units = tuple(degraded) or ((DEFAULT_FAILED_UNIT,) if fail_activation else ())
    if any(not unit or unit != unit.strip() or len(unit.split()) != 1 for unit in units):
        raise ValueError(f"unit names are single words: {units!r}")
    return units


def system_at(
    root: Path,
    base_name: str,
    label: str,
    *,
    cut_network: bool = False,
    degraded: Iterable[str] = (),
    fail_activation: bool = False,
    kernel: str = DEFAULT_KERNEL,
) -> Path:
    """The system ``label`` at exactly ``DIR/nix/store/<base_name>``, made if missing: a store
    path that came from elsewhere (a closure the simulated nix-store fetched from a cache),
    whose name the builder chose. The markers and kernel are as for :func:`make_system`."""
    if "/" in base_name or base_name in ("", ".", ".."):
        raise ValueError(f"a store path's base name is one path component: {base_name!r}")
    units = _failed_units(degraded, fail_activation)
    path = store_dir(root) / base_name
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (building / "nixos-version").write_text(label, encoding="utf-8")
        for entry, target in zip(KERNEL_ENTRIES, _kernel(root, kernel), strict=True):
            os.symlink(target, building / entry)
        script = building / "bin" / "switch-to-configuration"
        script.parent.mkdir()
        script.write_text(_script(), encoding="utf-8")
        script.chmod(0o755)
        markers = building / "sim"
        markers.mkdir()
        if cut_network:
            (markers / "cut-network").touch()
        if units:
            (markers / "degraded").write_text("".join(f"{u}\n" for u in units), encoding="utf-8")
        if fail_activation:
            (markers / "fail-activation").touch()
        building.chmod(0o755)
        os.rename(building, path)
    except OSError:
        shutil.rmtree(building, ignore_errors=True)
        if not path.is_dir():  # not another process making the same system first
            raise
    return path


def _kernel(root: Path, version: str) -> tuple[Path, Path, Path]:
    """The store paths of kernel ``version``: its image, initrd and modules, made if missing
    (each is a file or directory whose content depends only on the version)."""
    if not version or _NOT_IN_NAMES.search(version):
        raise ValueError(f"a kernel version is letters, digits and +-._?=: {version!r}")

    def path(name: str) -> Path:
        digest = hashlib.sha256(f"{name}-{version}".encode()).digest()
        return store_dir(root) / f"{''.join(_ALPHABET[b % 32] for b in digest)}-{name}"

    image, initrd = path(f"linux-{version}"), path(f"initrd-linux-{version}")
    modules = path(f"linux-{version}-modules")
    for directory, file in ((image, "bzImage"), (initrd, "initrd"), (modules, None)):
        directory.mkdir(parents=True, exist_ok=True)
        if file is not None and not (directory / file).exists():
            (directory / file).write_text(f"{file} {version}\n", encoding="utf-8")
    return image / "bzImage", initrd / "initrd", modules


def _script() -> str:
    """switch-to-configuration: a Python script where a shebang can name this interpreter
    (no spaces, short enough), else a shell script that runs it."""
    python = sys.executable
    comment = (
        "# switch-to-configuration of a simulated system (fleet_core.testing.simulated_system)"
    )
    if python and not any(c.isspace() for c in python) and len(python) <= _SHEBANG_MAX:
        return (
            f"#!{python}\n{comment}\nimport sys\n\n"
            "from fleet_core.testing.simulated_system import main\n\n"
            "sys.exit(main(['activate', sys.argv[0], *sys.argv[1:]]))\n"
        )
    command = f"{shlex.quote(python)} -m fleet_core.testing.simulated_system activate"
    return f'#!/bin/sh\n{comment}\nexec {command} "$0" "$@"\n'


def set_profile(root: Path, path: Path) -> int:
    """What ``nix-env --profile DIR/nix/var/nix/profiles/system --set PATH`` does: a new
    generation holding ``path`` (a store path, or a link to one), and the profile pointing at
    it; its number. As nix does, no new generation when the newest already holds ``path``.

    Raises ValueError for a path outside the root's store, FileNotFoundError for a store
    path that does not exist, with nix-env's words.
    """
    given = Path(path).absolute()
    system = _follow(given)
    if system is None and given.parent == store_dir(root):
        raise FileNotFoundError(f"path '{given}' does not exist and cannot be created")
    if system is None or not _is_system(system) or system.parent != store_dir(root):
        raise ValueError(f"path '{given}' is not in the Nix store")
    known = generations(root)
    if known and known[-1][1] == system:
        number = known[-1][0]
    else:
        number = (known[-1][0] if known else 0) + 1
        _link(profile_path(root).with_name(f"system-{number}-link"), system)
    _link(profile_path(root), f"system-{number}-link")
    return number


def reboot(root: Path) -> Path | None:
    """What a reboot does: the boot default becomes the booted and the running system."""
    system = boot_default(root)
    if system is not None:
        _link(booted_system_path(root), system)
        _link(current_system_path(root), system)
    return system


# -- switch-to-configuration ----------------------------------------------------------


def _say(line: str) -> None:
    print(line, flush=True)


def activate(script: Path, argv: Sequence[str]) -> int:
    """``switch-to-configuration ACTION`` of the system whose script ``script`` is.

    switch and test make it run (DIR/run/current-system), switch and boot make it boot next
    (DIR/boot/default); dry-activate changes nothing and says what it would do. The
    profile is not its business: nixos-rebuild (or nix-env) set it before.
    """
    if len(argv) != 1 or argv[0] not in ACTIONS:
        print(_USAGE.format(script=script), file=sys.stderr)
        return 1
    action = argv[0]
    # The script's system: DIR/nix/store/<x>/bin/switch-to-configuration, perhaps reached
    # through a link (DIR/run/current-system/bin/..., the profile's).
    system = _follow(Path(script).absolute().parent.parent)
    if system is None or not _is_system(system):
        print(f"{script}: not in a simulated system's store path", file=sys.stderr)
        return 1
    root = system.parent.parent.parent
    units = _units(system)
    if action == "dry-activate":
        _say("would activate the configuration...")
        if current(root) != system:
            _say("would restart the following units: nginx.service")
        if units:
            _say(f"would start the following units: {', '.join(units)}")
        return 0
    if action in ("switch", "boot"):
        _say("updating GRUB 2 menu...")
        _link(_boot_default_path(root), system)
    if action == "boot":
        return 0
    _say("activating the configuration...")
    _say("setting up /etc...")
    _link(current_system_path(root), system)
    _say("reloading user units for root...")
    _say("restarting systemd...")
    restarted = "nginx.service"
    if (system / "sim" / "cut-network").exists():
        restarted += ", network-setup.service, systemd-networkd.service"
    _say(f"restarting the following units: {restarted}")
    if not (system / "sim" / "fail-activation").exists():
        return 0
    _say(f"starting the following units: {', '.join(units)}")
    print(f"warning: the following units failed: {', '.join(units)}", file=sys.stderr)
    for unit in units:
        print(f"\N{MULTIPLICATION SIGN} {unit} - {describe_unit(unit)}", file=sys.stderr)
        print(
            f"     Loaded: loaded (/etc/systemd/system/{unit}; enabled; preset: enabled)",
            file=sys.stderr,
        )
        print("     Active: failed (Result: exit-code)", file=sys.stderr, flush=True)
    return 4  # switch-to-configuration's exit status when units failed


def describe_unit(unit: str) -> str:
    """A unit's description as systemctl shows it: here, its name capitalised."""
    stem = unit.rpartition(".")[0] or unit
    return stem[:1].upper() + stem[1:]


# -- the other stand-ins' argv ---------------------------------------------------------


def simulated_nix_env_command(*sim: str) -> tuple[str, ...]:
    """The simulated ``nix-env`` as an argv prefix (``--profile P --set PATH`` follows)."""
    return (sys.executable, "-m", "fleet_core.testing.simulated_nix_env", *sim)


def simulated_systemctl_command(root: Path, *sim: str) -> tuple[str, ...]:
    """The simulated ``systemctl`` of the host whose root is ``root``, as an argv prefix."""
    module = "fleet_core.testing.simulated_systemctl"
    return (sys.executable, "-m", module, "--sim-root", str(Path(root).absolute()), *sim)


def main(argv: list[str] | None = None) -> int:
    """``activate SCRIPT ACTION``: what a system's switch-to-configuration runs."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] != "activate":
        print("usage: simulated_system activate SCRIPT ACTION", file=sys.stderr)
        return 2
    return activate(Path(args[1]), args[2:])


if __name__ == "__main__":
    sys.exit(main())
