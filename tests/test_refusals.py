"""What a refusal says about the key that met it (pure): fleet_core.protocol.refusals."""

from __future__ import annotations

import pytest

from fleet_core.protocol.refusals import Refusal, explain_refusals

pytestmark = pytest.mark.pure  # no server, no process: ./scripts/test --quick runs it

KEY = "U" + "A" * 55
REPLY = "deploy.responses.abc"


def explained(*refusals: Refusal) -> str:
    return str(explain_refusals(refusals, key=KEY, reply=REPLY))


def test_a_key_refused_its_own_answers_is_no_deployer_key() -> None:
    """A listener's (or the builder's) key: every deployer key may read its replies."""
    text = explained(Refusal("subscribe", REPLY), Refusal("publish", "deploy.test.all"))
    assert "this is no deployer key" in text
    assert "listener's or the builder's key" in text
    assert "'deploy.test.all'" in text and KEY in text
    assert "test-tier deployer" not in text


def test_a_key_refused_prod_only_is_the_test_deployer() -> None:
    text = explained(Refusal("subscribe", f"{REPLY}.prod.*"), Refusal("publish", "deploy.prod.all"))
    assert "it is a test-tier deployer key" in text
    assert text.endswith("Production needs the admin key (--nkey-file or FLEET_DEPLOY_NKEY_FILE)")


def test_another_refusal_is_said_as_it_is() -> None:
    """A permission block nats-config does not write: no guess at what the key is."""
    explanation = explain_refusals([Refusal("publish", "deploy.test.web1")], key=KEY, reply=REPLY)
    assert "permission to publish to 'deploy.test.web1'" in explanation.what
    assert "not a deployer's as nats-config writes them" in explanation.what
    assert "an observer key, the dashboard's, only discovers and reads" in explanation.what
    assert explanation.fix.startswith("Use a deployer key")


def test_each_refusal_is_named_once() -> None:
    text = explained(*[Refusal("subscribe", REPLY)] * 2, *[Refusal("publish", "build.r.all")] * 3)
    assert text.count("'build.r.all'") == 1


def test_no_refusal_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        explain_refusals([], key=KEY, reply=REPLY)
