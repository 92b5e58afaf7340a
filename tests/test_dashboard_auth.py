"""The dashboard's login, pure: scrypt hashes, RFC 6238 codes (its own test vectors), signed
session cookies, the login limiter, and the files ``--allow-actions`` reads."""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from pathlib import Path

import pytest

from fleet_core.config.settings import ConnectionSettings, DashboardSettings
from fleet_core.errors import UsageError
from fleet_dashboard.auth import (
    LOGIN_FAILURES_OVERALL,
    LOGIN_FAILURES_PER_CLIENT,
    LOGIN_WINDOW,
    LoginLimiter,
    Sessions,
    Totp,
    hash_password,
    load_auth,
    parse_totp_secret,
    totp_code,
    verify_password,
)

pytestmark = pytest.mark.pure

RFC_KEY = b"12345678901234567890"  # RFC 6238 appendix B's SHA-1 seed
KEY = os.urandom(32)
NOW = 1_800_000_000.0


def _cheap(password: str) -> str:
    """A hash of the documented format at a low cost: the checks without 0.3 s each."""
    return hash_password(password, n=2**10, r=8, p=1)


class TestPasswords:
    def test_the_right_password_verifies_and_another_does_not(self) -> None:
        """A hash made from a password accepts that password only."""
        line = _cheap("correct horse")
        assert verify_password("correct horse", line)
        assert not verify_password("correct hors", line)
        assert not verify_password("", line)

    def test_the_line_has_the_documented_format(self) -> None:
        """scrypt$n$r$p$salt$hash, base64, with a fresh salt each time."""
        first, second = _cheap("pw"), _cheap("pw")
        parts = first.split("$")
        assert parts[:4] == ["scrypt", "1024", "8", "1"]
        assert len(base64.b64decode(parts[4])) == 16
        assert len(base64.b64decode(parts[5])) == 32
        assert first != second  # salted

    def test_the_default_cost_is_the_documented_one(self) -> None:
        """Without arguments the cost is n=2**15, r=8, p=3 (32 MiB)."""
        assert hash_password("pw").split("$")[1:4] == ["32768", "8", "3"]

    def test_an_empty_password_is_refused(self) -> None:
        with pytest.raises(UsageError, match="empty password"):
            hash_password("")

    @pytest.mark.parametrize(
        ("line", "why"),
        [
            ("bcrypt$2b$10$abc", "not a scrypt"),
            ("scrypt$x$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==", "malformed"),
            ("scrypt$1000$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==", "power of two"),
            ("scrypt$1048576$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==", "at most 128 MiB"),
            ("scrypt$1024$8$1$AAAA$AAAAAAAAAAAAAAAAAAAAAA==", "too short"),
        ],
    )
    def test_a_bad_line_says_how_to_make_a_good_one(self, line: str, why: str) -> None:
        """A malformed or too costly line is refused with the command that makes one."""
        with pytest.raises(UsageError, match=why) as caught:
            verify_password("pw", line)
        assert "--hash-password" in str(caught.value)


class TestTotp:
    @pytest.mark.parametrize(
        ("seconds", "code"),
        [
            (59, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ],
    )
    def test_rfc_6238_test_vectors(self, seconds: int, code: str) -> None:
        """RFC 6238 appendix B, SHA-1, 8 digits; the six-digit code is its last six."""
        assert totp_code(RFC_KEY, seconds // 30, digits=8) == code
        assert totp_code(RFC_KEY, seconds // 30) == code[-6:]

    def test_the_current_code_and_one_step_either_side_are_accepted(self) -> None:
        """Clocks drift: the step before and the step after now are accepted too."""
        step = int(NOW // 30)
        for offset in (-1, 0, 1):
            assert Totp(RFC_KEY).verify(totp_code(RFC_KEY, step + offset), NOW)
        for offset in (-2, 2):
            assert not Totp(RFC_KEY).verify(totp_code(RFC_KEY, step + offset), NOW)

    def test_a_code_used_once_is_refused_again(self) -> None:
        """Within its window a code is accepted once; an earlier step is refused after it."""
        totp = Totp(RFC_KEY)
        step = int(NOW // 30)
        assert totp.verify(totp_code(RFC_KEY, step), NOW)
        assert not totp.verify(totp_code(RFC_KEY, step), NOW + 1)
        assert not totp.verify(totp_code(RFC_KEY, step - 1), NOW + 1)  # older than the used
        assert totp.verify(totp_code(RFC_KEY, step + 1), NOW + 30)  # the next step's is fine

    @pytest.mark.parametrize(
        "code", ["", "12345", "1234567", "abcdef", "\uff11\uff12\uff13\uff14\uff15\uff16"]
    )
    def test_malformed_codes_are_refused(self, code: str) -> None:
        assert not Totp(RFC_KEY).verify(code, NOW)

    def test_a_base32_secret_is_read_as_apps_show_it(self) -> None:
        """Spaces, lower case and missing padding are allowed; the key is the decoded bytes."""
        text = base64.b32encode(RFC_KEY).decode().lower()
        spaced = " ".join(text[i : i + 4] for i in range(0, len(text), 4))
        assert parse_totp_secret(spaced + "\n") == RFC_KEY

    @pytest.mark.parametrize(("text", "why"), [("not base32!", "base32"), ("AAAA", "bits")])
    def test_a_bad_secret_is_refused(self, text: str, why: str) -> None:
        with pytest.raises(UsageError, match=why):
            parse_totp_secret(text)


class TestSessions:
    def test_a_cookie_verifies_until_it_expires(self) -> None:
        """The cookie carries the session and its CSRF token, and dies at its expiry."""
        sessions = Sessions(KEY, ttl=60)
        cookie, session = sessions.issue(NOW)
        assert sessions.verify(cookie, NOW + 59) == session
        assert session.user == "admin" and len(session.csrf) >= 32
        assert sessions.verify(cookie, NOW + 60) is None

    def test_a_tampered_cookie_is_refused(self) -> None:
        """Any changed character, in the payload or the signature, makes it invalid."""
        sessions = Sessions(KEY, ttl=60)
        cookie, _ = sessions.issue(NOW)
        payload, mac = cookie.split(".")
        longer = base64.urlsafe_b64encode(
            base64.urlsafe_b64decode(payload + "==").replace(b'"e":', b'"e":9')
        ).decode()
        for forged in (
            f"{longer.rstrip('=')}.{mac}",
            cookie[:-1] + ("A" if cookie[-1] != "A" else "B"),
            payload,
            f"{payload}.",
            "",
            "é." + mac,
        ):
            assert sessions.verify(forged, NOW) is None, forged

    def test_a_cookie_of_another_key_is_refused(self) -> None:
        """Another dashboard's (or another run's) cookie is not this one's."""
        cookie, _ = Sessions(os.urandom(32), ttl=60).issue(NOW)
        assert Sessions(KEY, ttl=60).verify(cookie, NOW) is None

    def test_a_revoked_session_is_refused_and_others_are_not(self) -> None:
        """A logout ends that session; another session of the same key lives on."""
        sessions = Sessions(KEY, ttl=60)
        cookie, session = sessions.issue(NOW)
        other, _ = sessions.issue(NOW)
        sessions.revoke(session, NOW + 1)
        assert sessions.verify(cookie, NOW + 2) is None
        assert sessions.verify(other, NOW + 2) is not None

    def test_a_short_key_is_refused(self) -> None:
        with pytest.raises(UsageError, match="32 bytes"):
            Sessions(b"short", ttl=60)


class TestLoginLimiter:
    def test_a_client_is_limited_after_its_failures_and_others_are_not(self) -> None:
        """Five failures from one address refuse it, with the seconds left; another
        address may still try."""
        limiter = LoginLimiter()
        for n in range(LOGIN_FAILURES_PER_CLIENT):
            assert limiter.check("10.0.0.1", NOW + n) is None
            limiter.failed("10.0.0.1", NOW + n)
        refusal = limiter.check("10.0.0.1", NOW + 10)
        assert refusal is not None and not refusal.overall
        assert refusal.retry_after == LOGIN_WINDOW - 10
        assert limiter.check("10.0.0.2", NOW + 10) is None

    def test_the_limit_lifts_as_failures_leave_the_window(self) -> None:
        limiter = LoginLimiter(per_client=2, window=100)
        limiter.failed("a", NOW)
        limiter.failed("a", NOW + 50)
        assert limiter.check("a", NOW + 99) is not None
        assert limiter.check("a", NOW + 100) is None  # the first one is out of the window

    def test_failures_from_everywhere_limit_everyone(self) -> None:
        """Thirty failures from many addresses refuse every address, a new one too."""
        limiter = LoginLimiter()
        for n in range(LOGIN_FAILURES_OVERALL):
            limiter.failed(f"10.0.{n}.1", NOW)
        refusal = limiter.check("192.168.1.1", NOW + 1)
        assert refusal is not None and refusal.overall
        assert refusal.retry_after == LOGIN_WINDOW - 1

    def test_a_success_clears_the_clients_failures(self) -> None:
        limiter = LoginLimiter(per_client=2)
        limiter.failed("a", NOW)
        limiter.succeeded("a", NOW + 1)
        limiter.failed("a", NOW + 2)
        assert limiter.check("a", NOW + 3) is None


def _secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _settings(tmp_path: Path, **files: Path | None) -> DashboardSettings:
    base = DashboardSettings(
        connection=ConnectionSettings(("nats://127.0.0.1:4222",), tmp_path / "read.seed"),
        allow_actions=True,
        deploy_nkey_file=tmp_path / "deploy.seed",
    )
    return replace(base, **files)  # type: ignore[arg-type] # the file fields, by name


class TestLoadAuth:
    def test_the_files_are_read(self, tmp_path: Path) -> None:
        """A password line, a TOTP secret and a session key make an Auth that checks them."""
        line = _cheap("pw")
        settings = _settings(
            tmp_path,
            password_file=_secret(tmp_path / "pw", line + "\n"),
            totp_secret_file=_secret(tmp_path / "totp", base64.b32encode(RFC_KEY).decode()),
            session_key_file=_secret(tmp_path / "key", "k" * 40 + "\n"),
        )
        auth = load_auth(settings)
        assert verify_password("pw", auth.password_hash)
        assert auth.totp is not None and auth.needs_totp
        assert auth.totp.verify(totp_code(RFC_KEY, int(NOW // 30)), NOW)
        cookie, _ = auth.sessions.issue(NOW)
        again = load_auth(settings)  # the same key file: a session outlives a restart
        assert again.sessions.verify(cookie, NOW) is not None
        assert "pw" not in repr(auth) and line not in repr(auth)

    def test_without_a_session_key_each_run_draws_its_own(self, tmp_path: Path) -> None:
        settings = _settings(tmp_path, password_file=_secret(tmp_path / "pw", _cheap("pw")))
        first, second = load_auth(settings), load_auth(settings)
        cookie, _ = first.sessions.issue(NOW)
        assert first.sessions.verify(cookie, NOW) is not None
        assert second.sessions.verify(cookie, NOW) is None
        assert not first.needs_totp

    def test_files_others_can_read_are_refused(self, tmp_path: Path) -> None:
        """As for NKey seeds: group or world readable is refused, with the chmod to run."""
        path = _secret(tmp_path / "pw", _cheap("pw"), mode=0o640)
        with pytest.raises(UsageError, match=r"--password-file .* `chmod 600"):
            load_auth(_settings(tmp_path, password_file=path))

    @pytest.mark.parametrize(
        ("files", "why"),
        [
            ({"password_file": None}, "needs --password-file"),
            ({"password_file": "missing"}, "--password-file .* does not exist"),
            ({"password_file": "two lines"}, "one scrypt line, not 2"),
            ({"password_file": "garbage"}, "--password-file .* not a scrypt"),
            ({"totp_secret_file": "garbage"}, "--totp-secret-file .* not base32"),
            ({"session_key_file": "short"}, "--session-key-file .* at least 32"),
        ],
    )
    def test_each_bad_file_is_named_with_its_flag(
        self, tmp_path: Path, files: dict[str, str | None], why: str
    ) -> None:
        line = _cheap("pw")
        contents = {
            "two lines": f"{line}\n{line}\n",
            "garbage": "hunter2 !!\n",
            "short": "abc\n",
        }
        chosen: dict[str, Path | None] = {
            "password_file": _secret(tmp_path / "good-pw", line),
        }
        for name, what in files.items():
            if what is None:
                chosen[name] = None
            elif what == "missing":
                chosen[name] = tmp_path / "nowhere"
            else:
                chosen[name] = _secret(tmp_path / name, contents[what])
        with pytest.raises(UsageError, match=why):
            load_auth(_settings(tmp_path, **chosen))
