"""The dashboard's login (pure): password hashes, TOTP codes, signed sessions, a limiter.

Only ``fleet-deploy dashboard --allow-actions`` uses it: a read-only dashboard has nobody to
log in. One person (``admin``) logs in with a password and, when a TOTP secret is given, a
code from an authenticator app; what they may then do is what the deploy key may do.

- Passwords: scrypt (``hashlib.scrypt``), stored as one line
  ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` (``fleet-deploy dashboard --hash-password``
  writes one), compared in constant time. The cost read from a file is bounded, so that a
  mistyped line cannot make every login allocate gigabytes.
- TOTP: RFC 6238 with HMAC-SHA-1, 30-second steps, 6 digits, the step before and after
  accepted for a clock that drifts; a step once accepted, and every step before it, is
  refused afterwards (RFC 6238 §5.2), so a code seen over a shoulder cannot be used again.
- Sessions: a cookie ``<payload b64>.<HMAC-SHA256 b64>`` whose payload holds the user, a
  session id, the CSRF token the page sends back in ``X-CSRF-Token``, and the expiry. A
  changed byte, another key or a past expiry is refused; a logout revokes the session id
  until it would have expired anyway. The key comes from ``--session-key-file``, or is
  drawn per run (a restart then logs everyone out).
- ``LoginLimiter``: failed logins counted per client address and overall, in a sliding
  window; past either limit a login is refused unchecked, with the seconds until one is
  allowed again.

Nothing here reads the clock: every time is an argument (``now``, seconds since the epoch),
so the tests drive time. ``load_auth`` reads the files once at start; a file group or world
can read is refused as an NKey seed is (``fleet_core.keys``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import stat
import struct
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from fleet_core.config.settings import DashboardSettings
from fleet_core.errors import UsageError

__all__ = [
    "SESSION_USER",
    "Auth",
    "LoginLimiter",
    "Refusal",
    "Session",
    "Sessions",
    "Totp",
    "hash_password",
    "load_auth",
    "parse_totp_secret",
    "totp_code",
    "verify_password",
]

SESSION_USER = "admin"  # the one person a dashboard knows; the name is shown, not asked for

# scrypt's cost: n = 2**15, r = 8, p = 3 is one of OWASP's equivalent minimums (as n = 2**17
# at p = 1) that needs 32 MiB, not 128: a dashboard on a small VM under MemoryMax still
# logs in. A check takes a few tenths of a second; logins are rare and rate-limited.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 3
_SALT_BYTES = 16
_HASH_BYTES = 32
# What a hash read from a file may ask for: at most 128 * r * n = 128 MiB and p <= 16.
_MAX_MEMORY = 128 * 1024 * 1024
_MAX_P = 16

TOTP_STEP = 30  # seconds per code (RFC 6238's default, what every authenticator app uses)
TOTP_DIGITS = 6
TOTP_DRIFT = 1  # steps accepted either side of now
_MIN_TOTP_SECRET = 10  # bytes: RFC 4226 asks for 128 bits at least, 160 recommended

SESSION_KEY_MIN = 32  # bytes of a --session-key-file, at least
_TOKEN_BYTES = 32

# Logins: 5 failures per client address in 5 minutes, 30 from everywhere. Five leaves a person
# room for typos and a code that just expired; thirty in five minutes caps a distributed guess
# at 8,640 tries a day against a password whose scrypt costs 0.1 s each, and stops it cold
# with TOTP (a million codes, three valid at a time). The overall limit also locks the owner
# out while an attack goes on: the dashboard stays readable, and the lock lifts by itself.
LOGIN_WINDOW = 300.0
LOGIN_FAILURES_PER_CLIENT = 5
LOGIN_FAILURES_OVERALL = 30


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- passwords ---------------------------------------------------------------------------


def hash_password(
    password: str,
    *,
    n: int = SCRYPT_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
    salt: bytes | None = None,
) -> str:
    """The line ``--password-file`` holds for ``password``: scrypt with a random salt."""
    if not password:
        raise UsageError("an empty password cannot protect actions: choose one")
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, n=n, r=r, p=p, length=_HASH_BYTES)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


@dataclass(frozen=True, slots=True)
class _PasswordHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes = field(repr=False)


def _parse_hash(line: str, *, source: str = "the password hash") -> _PasswordHash:
    """The parts of a ``scrypt$…`` line; ``UsageError`` (saying how to make a good one) else."""
    fix = "make a line with `fleet-deploy dashboard --hash-password` and put it there alone"
    parts = line.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise UsageError(f"{source} is not a scrypt$N$r$p$salt$hash line: {fix}")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise UsageError(f"{source} has a malformed number or base64 part: {fix}") from None
    if n < 2 or n & (n - 1) or r < 1 or not 1 <= p <= _MAX_P or 128 * r * n > _MAX_MEMORY:
        raise UsageError(
            f"{source} asks scrypt for n={n}, r={r}, p={p}: n must be a power of two and "
            f"128*r*n at most {_MAX_MEMORY // 2**20} MiB, p at most {_MAX_P}: {fix}"
        )
    if len(salt) < 8 or len(digest) < 16:
        raise UsageError(f"{source} has too short a salt or hash: {fix}")
    return _PasswordHash(n=n, r=r, p=p, salt=salt, digest=digest)


def _scrypt(password: str, salt: bytes, *, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        # Python's default cap (32 MiB) is too small for its own n = 2**15, r = 8.
        maxmem=128 * r * (n + p) + 8 * 1024 * 1024,
        dklen=length,
    )


def verify_password(password: str, line: str) -> bool:
    """Whether ``password`` is the one ``line`` (a ``scrypt$…`` hash) was made from; the
    comparison takes the same time wherever the digests differ. A malformed line is a
    ``UsageError`` (``load_auth`` checks the file's line at start, so a login never meets one)."""
    stored = _parse_hash(line)
    candidate = _scrypt(
        password, stored.salt, n=stored.n, r=stored.r, p=stored.p, length=len(stored.digest)
    )
    return hmac.compare_digest(candidate, stored.digest)


# --- TOTP ----------------------------------------------------------------------------------


def parse_totp_secret(text: str, *, source: str = "the TOTP secret") -> bytes:
    """The key of a base32 TOTP secret as authenticator apps show it (spaces, lower case and
    missing padding allowed); ``UsageError`` for anything else or a key under 80 bits."""
    cleaned = "".join(text.split()).upper().rstrip("=")
    try:
        key = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError):
        raise UsageError(
            f"{source} is not base32 (letters A-Z and digits 2-7, as an authenticator app "
            "shows it): generate one, e.g. `python3 -c 'import base64,os; "
            "print(base64.b32encode(os.urandom(20)).decode())'`"
        ) from None
    if len(key) < _MIN_TOTP_SECRET:
        raise UsageError(
            f"{source} is {len(key) * 8} bits: use at least {_MIN_TOTP_SECRET * 8} "
            "(32 base32 characters give 160, what RFC 4226 recommends)"
        )
    return key


def totp_code(key: bytes, counter: int, *, digits: int = TOTP_DIGITS) -> str:
    """RFC 4226's HOTP value of ``counter`` (RFC 6238: the step number), SHA-1."""
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


class Totp:
    """A TOTP secret and the last step it accepted (so no code works twice).

    Not thread-safe: the dashboard checks codes on its event loop, one at a time."""

    __slots__ = ("_key", "_last_step")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._last_step = -1

    def __repr__(self) -> str:
        return "Totp(<secret>)"

    def verify(self, code: str, now: float) -> bool:
        """Whether ``code`` is the code of a step within one of ``now``'s that is later than
        every step accepted before; if so, that step is now used."""
        code = code.strip().replace(" ", "")
        if len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
            return False
        current = int(now // TOTP_STEP)
        matched = None
        for step in range(current - TOTP_DRIFT, current + TOTP_DRIFT + 1):
            # Every candidate is computed and compared, so timing tells nothing of which.
            if hmac.compare_digest(totp_code(self._key, step), code) and step > self._last_step:
                matched = step
        if matched is None:
            return False
        self._last_step = matched
        return True


# --- sessions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in session as its cookie carries it; ``csrf`` is what each POST must echo."""

    user: str
    session_id: str
    csrf: str = field(repr=False)
    expires: float


class Sessions:
    """Issues and checks signed session cookies; remembers the ids logged out.

    The cookie holds everything (no store of live sessions): its HMAC proves this dashboard
    (its key) made it. Logged-out ids are kept until their expiry, so a copied cookie dies
    with the logout; the set holds at most one entry per logout within a session's life."""

    def __init__(self, key: bytes, *, ttl: float) -> None:
        if len(key) < SESSION_KEY_MIN:
            raise UsageError(f"a session key must be at least {SESSION_KEY_MIN} bytes")
        self._key = key
        self.ttl = ttl
        self._revoked: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"Sessions(ttl={self.ttl}, revoked={len(self._revoked)})"

    def _mac(self, payload: str) -> str:
        return _b64url(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, now: float, *, user: str = SESSION_USER) -> tuple[str, Session]:
        """A new session for ``user`` and its cookie value."""
        session = Session(
            user=user,
            session_id=secrets.token_urlsafe(16),
            csrf=secrets.token_urlsafe(_TOKEN_BYTES),
            expires=now + self.ttl,
        )
        body = {"u": user, "s": session.session_id, "c": session.csrf, "e": session.expires}
        payload = _b64url(json.dumps(body, separators=(",", ":")).encode("utf-8"))
        return f"{payload}.{self._mac(payload)}", session

    def verify(self, cookie: str | None, now: float) -> Session | None:
        """The session ``cookie`` carries, or None: missing, malformed, signed with another
        key or altered, expired, or logged out."""
        if not cookie or len(cookie) > 1024:
            return None
        payload, dot, mac = cookie.partition(".")
        if not dot or not hmac.compare_digest(
            mac.encode("ascii", "replace"), self._mac_of(payload)
        ):
            return None
        try:
            body = json.loads(_unb64url(payload))
            session = Session(
                user=str(body["u"]),
                session_id=str(body["s"]),
                csrf=str(body["c"]),
                expires=float(body["e"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None  # signed by us yet unreadable: a format of another version
        if session.expires <= now or session.session_id in self._revoked:
            return None
        return session

    def _mac_of(self, payload: str) -> bytes:
        if not payload.isascii():
            return b""
        return self._mac(payload).encode("ascii")

    def revoke(self, session: Session, now: float) -> None:
        """End ``session`` (a logout): its cookie is refused from now on."""
        self._revoked = {sid: end for sid, end in self._revoked.items() if end > now}
        self._revoked[session.session_id] = session.expires


# --- the login limiter ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """A login refused unchecked: ``retry_after`` seconds until one may be tried again."""

    retry_after: int
    overall: bool  # the limit of every client together, not this one's


class LoginLimiter:
    """Failed logins in a sliding window, per client address and overall.

    ``check`` before verifying anything (a refused attempt costs no scrypt), ``failed``
    after a wrong password or code, ``succeeded`` after a login (the client's count starts
    again). Memory is bounded: at most ``overall`` failures are kept in the window, and
    the per-client counts only for the addresses among them."""

    def __init__(
        self,
        *,
        per_client: int = LOGIN_FAILURES_PER_CLIENT,
        overall: int = LOGIN_FAILURES_OVERALL,
        window: float = LOGIN_WINDOW,
    ) -> None:
        self.per_client = per_client
        self.overall = overall
        self.window = window
        self._failures: deque[tuple[float, str]] = deque()

    def _expire(self, now: float) -> None:
        while self._failures and self._failures[0][0] <= now - self.window:
            self._failures.popleft()

    def check(self, client: str, now: float) -> Refusal | None:
        """None when ``client`` may try a login now; else how long until it may."""
        self._expire(now)
        if len(self._failures) >= self.overall:
            # Allowed again once enough of the oldest failures have left the window.
            oldest = self._failures[len(self._failures) - self.overall][0]
            return Refusal(retry_after=_seconds(oldest + self.window - now), overall=True)
        mine = [at for at, who in self._failures if who == client]
        if len(mine) >= self.per_client:
            oldest = mine[len(mine) - self.per_client]
            return Refusal(retry_after=_seconds(oldest + self.window - now), overall=False)
        return None

    def failed(self, client: str, now: float) -> None:
        self._expire(now)
        self._failures.append((now, client))
        while len(self._failures) > self.overall:
            self._failures.popleft()

    def succeeded(self, client: str, now: float) -> None:
        self._expire(now)
        self._failures = deque(f for f in self._failures if f[1] != client)


def _seconds(remaining: float) -> int:
    return max(1, int(remaining + 0.999))


# --- what the dashboard loads --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auth:
    """What ``--allow-actions`` logs in with, read once at start: the password's hash, the
    TOTP checker (None: no second factor) and the sessions (their signing key)."""

    password_hash: str = field(repr=False)
    totp: Totp | None = field(repr=False)
    sessions: Sessions = field(repr=False)

    @property
    def needs_totp(self) -> bool:
        return self.totp is not None


def load_auth(settings: DashboardSettings) -> Auth:
    """Read ``--password-file``, ``--totp-secret-file`` and ``--session-key-file``.

    Each file must be a regular file that neither group nor others can read (as NKey seeds);
    every problem is a ``UsageError`` naming the flag and what to do."""
    if settings.password_file is None:
        raise UsageError(
            "--allow-actions needs --password-file: make its line with "
            "`fleet-deploy dashboard --hash-password`"
        )
    text = _read_secret(settings.password_file, "--password-file")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise UsageError(
            f"--password-file {settings.password_file} must hold one scrypt line, not "
            f"{len(lines)}: make it with `fleet-deploy dashboard --hash-password`"
        )
    _parse_hash(lines[0], source=f"--password-file {settings.password_file}")
    totp = None
    if settings.totp_secret_file is not None:
        secret = _read_secret(settings.totp_secret_file, "--totp-secret-file")
        totp = Totp(
            parse_totp_secret(secret, source=f"--totp-secret-file {settings.totp_secret_file}")
        )
    if settings.session_key_file is not None:
        key = _read_secret(settings.session_key_file, "--session-key-file").strip().encode()
        if len(key) < SESSION_KEY_MIN:
            raise UsageError(
                f"--session-key-file {settings.session_key_file} holds {len(key)} bytes: use "
                f"at least {SESSION_KEY_MIN}, e.g. `head -c 32 /dev/urandom | base64 > FILE`"
            )
    else:
        key = secrets.token_bytes(SESSION_KEY_MIN)  # per run: a restart logs everyone out
    return Auth(
        password_hash=lines[0].strip(),
        totp=totp,
        sessions=Sessions(key, ttl=settings.session_ttl),
    )


def _read_secret(path: Path, flag: str) -> str:
    """A secret file's text; refused when missing, not a file, readable by others, or not
    UTF-8."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UsageError(f"{flag} {path} does not exist: check the path") from None
    except OSError as exc:
        raise UsageError(f"cannot read {flag} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{flag} {path} is not a regular file")
    if info.st_mode & 0o077:
        raise UsageError(
            f"{flag} {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}): "
            f"run `chmod 600 {path}`"
        )
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {flag} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{flag} {path} is not UTF-8 text") from None
