"""The setting-up commands: ``keygen`` and ``nats-config``.

Each takes its frozen settings (``fleet_core.config.settings``) and returns an exit code; every
user mistake is a ``FleetError``, which ``cli.main`` turns into a message and exit code 2.
What ``nats-config`` writes is rendered by the pure ``fleet_core.setup.nats_config``, the same code
the sandbox runs its server on.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from fleet_core.config.settings import KeygenSettings, NatsConfigSettings
from fleet_core.errors import UsageError
from fleet_core.keys import generate_seed, load_seed, write_seed
from fleet_core.setup.nats_config import nats_config, parse_inventory

__all__ = ["run_keygen", "run_nats_config"]


def run_keygen(
    settings: KeygenSettings, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """Write a new seed (0600, never over an existing file); print its public key. With
    ``public``, print the public key of the existing seed instead, writing nothing: the
    seed is loaded as every command loads one, so a file too open is refused here too."""
    path = settings.path
    if settings.public:
        print(load_seed(path).public_key, file=out, flush=True)
        return 0
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --dir {path.parent}: {exc.strerror or exc}") from exc
    seed = generate_seed()
    write_seed(path, seed)
    print(seed.public_key, file=out, flush=True)
    print(f"wrote {path} (mode 0600); its public key is above", file=err, flush=True)
    return 0


def run_nats_config(
    settings: NatsConfigSettings,
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    stdin: TextIO = sys.stdin,
) -> int:
    """Parse and check the inventory, then write its config to the output (or ``out``)."""
    inventory = settings.inventory
    if inventory == "-":
        source, text = "<stdin>", stdin.read()
    else:
        source = inventory
        try:
            text = Path(inventory).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UsageError(f"cannot read inventory {inventory}: {reason}") from exc
    config = nats_config(
        parse_inventory(text, source=source),
        source=source,
        layout=settings.layout,
        jetstream_dir=settings.jetstream_dir,
    )
    if settings.output is None:
        out.write(config)
        out.flush()
        return 0
    _write_atomically(settings.output, config)
    print(
        f"wrote {settings.output}: check it with `nats-server -t -c {settings.output}`",
        file=err,
        flush=True,
    )
    return 0


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step, so a server reloading it never reads half a file."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
