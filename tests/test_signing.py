"""Signed requests without a server: what is signed, and every way a check refuses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fleet_core.errors import RequestRejected
from fleet_core.host.replays import REPLAYS_FILE, load_replays, save_replays
from fleet_core.keys import generate_seed
from fleet_core.protocol.signing import (
    DEFAULT_SKEW,
    DEFAULT_TTL,
    ReplayCache,
    RequestSigner,
    Signature,
    public_key_bytes,
    sign_request,
    verify_request,
)

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

NOW = 1_795_000_000.0
REQUEST = {"request_id": "r1", "subject": "deploy.prod.web1", "action": "switch", "revision": "v1"}


def signed(seed: str, now: float = NOW) -> Signature:
    return sign_request(seed, **REQUEST, now=now)


def check(
    signature: Signature | None,
    trusted: list[str],
    *,
    now: float = NOW,
    replays: ReplayCache | None = None,
    changes: dict[str, str] | None = None,
) -> None:
    fields = {**REQUEST, **(changes or {})}
    verify_request(
        signature,
        request_id=fields["request_id"],
        subject=fields["subject"],
        action=fields["action"],
        revision=fields["revision"],
        trusted=trusted,
        now=now,
        replays=replays if replays is not None else ReplayCache(),
    )


class TestVerify:
    def test_a_trusted_signature_passes(self) -> None:
        """A request signed by a trusted key over its own fields is accepted."""
        seed = generate_seed()
        check(signed(seed.reveal()), [seed.public_key])

    def test_no_trusted_keys_accepts_anything(self) -> None:
        """Without trusted keys (signing not configured) unsigned requests still run."""
        check(None, [])

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("request_id", "r2"),
            ("subject", "deploy.prod.all"),
            ("action", "boot"),
            ("revision", "evil"),
        ],
    )
    def test_every_signed_field_is_bound(self, field: str, value: str) -> None:
        """Changing any one signed field after signing makes the signature bad."""
        seed = generate_seed()
        with pytest.raises(RequestRejected) as refused:
            check(signed(seed.reveal()), [seed.public_key], changes={field: value})
        assert refused.value.code == "bad_signature"

    def test_a_changed_time_is_a_bad_signature(self) -> None:
        """Moving signed_at (to dodge the TTL) breaks the signature."""
        seed = generate_seed()
        signature = dataclasses.replace(signed(seed.reveal()), signed_at=NOW + 1)
        with pytest.raises(RequestRejected) as refused:
            check(signature, [seed.public_key])
        assert refused.value.code == "bad_signature"

    def test_unsigned_untrusted_and_forged(self) -> None:
        """Unsigned, signed by another key, or claiming a trusted signer: each its own code."""
        trusted, other = generate_seed(), generate_seed()
        cases = {
            "unsigned_request": None,
            "untrusted_signer": signed(other.reveal()),
            "bad_signature": dataclasses.replace(signed(other.reveal()), signer=trusted.public_key),
        }
        for code, signature in cases.items():
            with pytest.raises(RequestRejected) as refused:
                check(signature, [trusted.public_key])
            assert refused.value.code == code

    def test_garbage_signature_is_bad_not_a_crash(self) -> None:
        """A signature that is not base64, or the wrong length, is bad_signature."""
        seed = generate_seed()
        for junk in ("!!!", "", "AAAA", "A" * 500):
            signature = dataclasses.replace(signed(seed.reveal()), signature=junk)
            with pytest.raises(RequestRejected) as refused:
                check(signature, [seed.public_key])
            assert refused.value.code == "bad_signature"

    @pytest.mark.parametrize(
        ("age", "accepted"),
        [
            (DEFAULT_TTL + DEFAULT_SKEW - 1, True),
            (DEFAULT_TTL + DEFAULT_SKEW + 1, False),
            (-DEFAULT_SKEW + 1, True),
            (-DEFAULT_SKEW - 1, False),
        ],
    )
    def test_ttl_and_clock_skew(self, age: float, accepted: bool) -> None:
        """A request is valid for its TTL plus the skew, and not from too far in the future."""
        seed = generate_seed()
        signature = signed(seed.reveal(), now=NOW - age)
        if accepted:
            check(signature, [seed.public_key])
            return
        with pytest.raises(RequestRejected) as refused:
            check(signature, [seed.public_key])
        assert refused.value.code == "expired_request"

    def test_a_replay_is_refused(self) -> None:
        """The same signed request twice: the second is replayed_request."""
        seed = generate_seed()
        replays = ReplayCache()
        signature = signed(seed.reveal())
        check(signature, [seed.public_key], replays=replays)
        with pytest.raises(RequestRejected) as refused:
            check(signature, [seed.public_key], replays=replays, now=NOW + 5)
        assert refused.value.code == "replayed_request"


def test_a_kept_signer_signs_as_the_one_shot_function_does() -> None:
    """The deployer's ``RequestSigner`` (one seed decoded per deploy) makes the very bytes
    ``sign_request`` makes, for each of many subjects, and every one verifies."""
    seed = generate_seed()
    signer = RequestSigner(seed.reveal())
    assert signer.public_key == seed.public_key
    for host in ("web1", "web2", "db1"):
        fields = {**REQUEST, "subject": f"deploy.prod.{host}"}
        kept = signer.sign(**fields, now=NOW)
        assert kept == sign_request(seed.reveal(), **fields, now=NOW)
        check(kept, [seed.public_key], changes={"subject": fields["subject"]})


class TestReplayCache:
    def test_entries_expire_and_the_cache_stays_bounded(self) -> None:
        """Expired ids are forgotten; the cache never holds more than its limit."""
        cache = ReplayCache(limit=3)
        for index in range(10):
            assert cache.check_and_remember("U", f"id{index}", until=NOW + 10, now=NOW)
            assert len(cache) <= 3
        assert cache.check_and_remember("U", "late", until=NOW + 100, now=NOW + 50)
        assert not cache.check_and_remember("U", "late", until=NOW + 100, now=NOW + 51)


def test_public_key_checks() -> None:
    """A user public key decodes to 32 bytes; a seed, a typo or junk is refused."""
    seed = generate_seed()
    assert len(public_key_bytes(seed.public_key)) == 32
    typo = seed.public_key[:-1] + ("A" if seed.public_key[-1] != "A" else "B")
    for bad in (seed.reveal(), typo, "U", "not base32!"):
        with pytest.raises(ValueError, match=r"NKey|public key|checksum"):
            public_key_bytes(bad)


class TestReplaysOnDisk:
    """The listener's memory of signed requests, across a restart (fleet_core.host.replays)."""

    def test_what_is_remembered_survives_a_restart_until_it_expires(self, tmp_path: Path) -> None:
        """Saved, then read into a fresh cache, an id collides again; one past its lifetime
        is forgotten; the file is readable by its owner alone."""
        cache = ReplayCache()
        assert cache.check_and_remember("UADMIN", "r1", until=200.0, now=100.0)
        assert cache.check_and_remember("UADMIN", "r2", until=120.0, now=100.0)
        save_replays(tmp_path, cache, now=100.0)
        assert (tmp_path / REPLAYS_FILE).stat().st_mode & 0o777 == 0o600
        restarted = ReplayCache()
        assert load_replays(tmp_path, restarted, now=150.0) == 1
        assert restarted.knows("r1", now=150.0) and not restarted.knows("r2", now=150.0)
        assert not restarted.check_and_remember("UADMIN", "r1", until=200.0, now=150.0)
        assert restarted.check_and_remember("UOTHER", "r1", until=200.0, now=150.0)

    @pytest.mark.parametrize("content", [b"", b"{", b'{"a": 1}', b'[["U", "r", "soon"]]', b"[1]"])
    def test_an_unreadable_file_is_an_empty_memory(self, tmp_path: Path, content: bytes) -> None:
        """A damaged file costs the memory, never the listener's start."""
        (tmp_path / REPLAYS_FILE).write_bytes(content)
        cache = ReplayCache()
        assert load_replays(tmp_path, cache, now=0.0) == 0
        assert len(cache) == 0

    def test_no_file_is_an_empty_memory(self, tmp_path: Path) -> None:
        """A host that never verified a request starts with nothing remembered."""
        assert load_replays(tmp_path / "new", ReplayCache(), now=0.0) == 0
