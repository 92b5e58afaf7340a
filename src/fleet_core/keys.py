"""NKey seeds: generate them, and load them the way ssh loads a private key.

A seed file is refused when group or world can read it, and a seed never appears in a repr
or a log line. nkeys 0.2 cannot generate keys, so generation encodes 32 random bytes itself.

nkeys 0.2 does not verify a seed's checksum either: a seed with one character changed loads
as a *different* valid key, and the user is then told to authorize that stranger. So a seed
is checked here first — base32, its length, and the CRC16 that ends it — and a damaged one
is refused as corrupted.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import nkeys

from fleet_core.errors import KeyFileError

__all__ = ["Seed", "generate_seed", "load_seed", "write_seed"]

_SEED_PREFIX = "SU"
_SEED_LENGTH = 58  # base32 of 1 + 1 prefix bytes, 32 key bytes and a 2-byte CRC16


@dataclass(frozen=True, slots=True)
class Seed:
    """A user seed and its public key; the secret is kept out of repr and comparisons."""

    public_key: str
    _secret: str = field(repr=False, compare=False)
    source: str = "a generated seed"

    def reveal(self) -> str:
        """The seed itself, for the one call that needs it: connecting to NATS."""
        return self._secret

    @classmethod
    def from_string(cls, text: str, *, source: str = "a generated seed") -> Seed:
        secret = text.strip()
        if not secret.startswith(_SEED_PREFIX):
            raise KeyFileError(
                f"{source} is not an NKey user seed (it must start with {_SEED_PREFIX}): "
                "create one with `fleet-deploy keygen NAME`"
            )
        if not _checksum_ok(secret):
            raise KeyFileError(
                f"{source} is corrupted (its checksum does not match): restore "
                "the file from where the seed was made, or make a new key with "
                "`fleet-deploy keygen NAME` and authorize its public key"
            )
        try:
            public = nkeys.from_seed(bytearray(secret.encode())).public_key.decode()
        except Exception as exc:  # nkeys raises several unrelated types for a bad seed
            raise KeyFileError(
                f"{source} holds a damaged NKey seed ({type(exc).__name__}): replace it"
            ) from exc
        return cls(public_key=public, _secret=secret, source=source)


def _checksum_ok(secret: str) -> bool:
    """Whether ``secret`` is base32 of the right length whose last two bytes are the
    CRC16-XMODEM (little-endian) of the rest, as every NATS tool writes seeds."""
    if len(secret) != _SEED_LENGTH:
        return False
    try:
        raw = base64.b32decode(secret + "=" * (-len(secret) % 8))
    except (binascii.Error, ValueError):
        return False
    body, checksum = raw[:-2], raw[-2:]
    return bool(nkeys.crc16_checksum(body) == checksum)


def generate_seed() -> Seed:
    """A new random user seed."""
    raw = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return Seed.from_string(raw.decode())


def load_seed(path: str | os.PathLike[str]) -> Seed:
    """Read a user seed from ``path``, refusing files that others can read."""
    key_path = Path(path)
    try:
        info = key_path.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"NKey seed file {key_path} does not exist: check --nkey-file "
            "(FLEET_DEPLOY_NKEY_FILE), or make a key with `fleet-deploy keygen NAME`"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read NKey seed file {key_path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"NKey seed file {key_path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"NKey seed file {key_path} is readable by others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): run `chmod 600 {key_path}`"
        )
    try:
        data = key_path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read NKey seed file {key_path}: {exc.strerror}") from exc
    return Seed.from_string(_seed_text(data, key_path), source=f"NKey seed file {key_path}")


def _seed_text(data: bytes, path: Path) -> str:
    """The file's text: plain ASCII as keygen and nsc write it; anything else said plainly."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise KeyFileError(
            f"NKey seed file {path} is UTF-16 text (as some Windows editors save it): save "
            "it as plain ASCII, e.g. `iconv -f UTF-16 -t ASCII`"
        )
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte-order mark in front of an otherwise plain seed
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(
            f"NKey seed file {path} holds bytes that are not ASCII: a seed is 58 letters "
            "and digits starting with SU"
        ) from None


def write_seed(path: str | os.PathLike[str], seed: Seed) -> None:
    """Write ``seed`` to a new file with mode 0600; never overwrite an existing one."""
    key_path = Path(path)
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"{key_path} already exists: remove it first, or choose another name"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {key_path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(seed.reveal() + "\n")
