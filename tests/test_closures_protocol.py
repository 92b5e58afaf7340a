"""Closure deploys on the wire (pure): the store path a request carries, its signature, and
which paths a host takes by name."""

from __future__ import annotations

import json

import nkeys
import pytest

from fleet_core.errors import RequestRejected
from fleet_core.protocol.closures import (
    is_store_path,
    store_base_name,
    store_path_in,
    system_refusal,
    validate_store_path,
)
from fleet_core.protocol.messages import (
    DeployRequest,
    ErrorCode,
    InvalidRequest,
    PerHostRequest,
    encode,
    parse_deploy_request,
)
from fleet_core.protocol.signing import ReplayCache, RequestSigner, canonical_text

WEB1 = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1-24.11.20241122.5e4fbfb"
WEB2 = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web2-24.11.20241122.5e4fbfb"
HELLO = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12.1"
REPLY = "deploy.responses.abc"


@pytest.mark.parametrize("path", [WEB1, HELLO, "/nix/store/" + "a" * 32 + "-x"])
def test_a_store_path_is_one_entry_of_the_store(path: str) -> None:
    assert is_store_path(path)
    assert validate_store_path(path) == path


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        "",
        "/nix/store",
        "/nix/store/",
        WEB1 + "/bin/switch-to-configuration",  # inside a path, not a path
        "/nix/store/" + "e" * 32 + "-x",  # 'e' is not nix base32
        "/nix/store/" + "a" * 31 + "-x",  # a short hash
        "/nix/store/" + "a" * 32 + "-.hidden",  # a name may not start with a dot
        "/nix/store/" + "a" * 32 + "-../../etc",
        "/nix/store/" + "a" * 32 + "-x y",
        "/nix/store/" + "a" * 32 + "-x\n",
        "/gnu/store/" + "a" * 32 + "-x",
        "nix/store/" + "a" * 32 + "-x",
        "/nix/store/" + "a" * 32 + "-" + "x" * 212,  # longer than nix allows a name
        "--option /nix/store/" + "a" * 32 + "-x",
    ],
)
def test_anything_else_is_refused_as_invalid_request(value: object) -> None:
    assert not is_store_path(value)
    with pytest.raises(RequestRejected) as caught:
        validate_store_path(value)
    assert caught.value.code == "invalid_request"


def test_where_a_path_lies_on_a_host_whose_store_is_elsewhere() -> None:
    assert store_base_name(WEB1) == WEB1.removeprefix("/nix/store/")
    assert store_path_in("/nix/store", WEB1) == WEB1
    assert store_path_in("/srv/web1/nix/store/", WEB1) == "/srv/web1/nix/store/" + store_base_name(
        WEB1
    )


def test_a_host_takes_its_own_system_by_host_or_configuration_name() -> None:
    assert system_refusal(WEB1, ["web1"]) is None
    assert system_refusal(WEB1, ["web1.example.com", "web1"]) is None
    refusal = system_refusal(WEB2, ["web1"])
    assert refusal is not None and refusal.code == ErrorCode.WRONG_HOST
    assert "nixos-system-web2-" in str(refusal) and "'web1'" in str(refusal)


def test_a_prefix_of_another_name_is_not_the_host() -> None:
    web = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web-"
    assert system_refusal(web, ["web"]) is not None  # no label at all
    refusal = system_refusal(WEB1, ["web"])  # nixos-system-web1-…: web1's, not web's
    assert refusal is not None and refusal.code == ErrorCode.WRONG_HOST


def test_a_path_that_is_no_system_is_not_a_system() -> None:
    refusal = system_refusal(HELLO, ["web1"])
    assert refusal is not None and refusal.code == ErrorCode.NOT_A_SYSTEM


def test_a_request_carries_a_store_path_only_with_an_action_that_takes_one() -> None:
    request = DeployRequest(reply_to=REPLY, action="switch", revision="a" * 40, store_path=WEB1)
    assert json.loads(encode(request))["store_path"] == WEB1
    assert "store_path" not in json.loads(encode(DeployRequest(reply_to=REPLY)))
    for action in ("check", "cancel", "logs"):
        with pytest.raises(RequestRejected, match="store path can be deployed with"):
            DeployRequest(reply_to=REPLY, action=action, store_path=WEB1)


def test_a_malformed_store_path_on_the_wire_is_invalid_request_answered() -> None:
    body = json.dumps({"reply_to": REPLY, "store_path": WEB1 + "/../../etc"}).encode()
    with pytest.raises(InvalidRequest) as caught:
        parse_deploy_request(body)
    assert caught.value.code == "invalid_request"
    assert caught.value.reply_to == REPLY


def _signed(store_path: str | None, subject: str = "deploy.test.web1") -> tuple[str, DeployRequest]:
    seed = nkeys.from_seed(bytearray(b"SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU"))
    signer = RequestSigner(seed.seed.decode())
    request = DeployRequest(id="d1", reply_to=REPLY, revision="a" * 40, store_path=store_path)
    signature = signer.sign(
        request_id="d1",
        subject=subject,
        action="switch",
        revision="a" * 40,
        now=1000.0,
        store_path=store_path,
    )
    return signer.public_key, request.signed(signature)


def test_the_store_path_is_signed() -> None:
    key, request = _signed(WEB1)
    request.verify("deploy.test.web1", trusted=[key], replays=ReplayCache(), now=1000.0, ttl=60)
    swapped = request.model_copy(update={"store_path": WEB2})
    with pytest.raises(RequestRejected) as caught:
        swapped.verify("deploy.test.web1", trusted=[key], replays=ReplayCache(), now=1000.0, ttl=60)
    assert caught.value.code == "bad_signature"
    dropped = request.model_copy(update={"store_path": None})  # would evaluate the revision
    with pytest.raises(RequestRejected) as caught:
        dropped.verify("deploy.test.web1", trusted=[key], replays=ReplayCache(), now=1000.0, ttl=60)
    assert caught.value.code == "bad_signature"


def test_a_request_without_a_store_path_is_signed_as_before() -> None:
    fields = {"request_id": "d1", "subject": "s", "action": "switch", "revision": "r"}
    assert (
        canonical_text(**fields, signed_at=1.0)
        == b"fleet-deploy-request-v1\nd1\ns\nswitch\nr\n1.000"
    )
    assert canonical_text(**fields, signed_at=1.0, store_path=WEB1) == (
        b"fleet-deploy-request-v2\nd1\ns\nswitch\nr\n1.000\n" + WEB1.encode()
    )
    key, request = _signed(None)
    request.verify("deploy.test.web1", trusted=[key], replays=ReplayCache(), now=1000.0, ttl=60)


def test_a_per_host_request_is_the_request_with_its_path_and_signature() -> None:
    """What a closure deploy publishes to each host parses to exactly the request built the
    slow way (a copy with the path, signed), and its signature verifies."""
    key, signed = _signed(WEB1)
    reply = "deploy.responses.d1"  # a request with an id is answered on its own subject
    request = DeployRequest(id="d1", reply_to=reply, revision="a" * 40, no_rollback=True)
    signature = signed.signature_fields()
    assert signature is not None
    fast = PerHostRequest(request).encode(WEB1, signature)
    slow = encode(request.model_copy(update={"store_path": WEB1}).signed(signature))
    assert json.loads(fast) == json.loads(slow)
    parsed = parse_deploy_request(fast)
    assert parsed == parse_deploy_request(slow)
    parsed.verify("deploy.test.web1", trusted=[key], replays=ReplayCache(), now=1000.0, ttl=60)
    unsigned = json.loads(PerHostRequest(request).encode(WEB2, None))
    assert unsigned["store_path"] == WEB2 and "signature" not in unsigned
