"""The cluster keyring (HMAC, rotation) and the stake bounds on a stranger's share."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from protocol.keyring import (EXCHANGE_REPLY, EXCHANGE_REQUEST, Keyring, KeyringError, Unauthenticated,
                              parse_keyring)
from protocol.merge import Contribution, make_rule
from protocol.stake import Stakes

K1, K2, K3 = bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 18))


def test_a_tag_verifies_only_with_the_same_key_purpose_and_bytes() -> None:
    ring = Keyring((K1,))
    tag = ring.sign(EXCHANGE_REQUEST, [b"abc", memoryview(b"def")])
    ring.verify(EXCHANGE_REQUEST, b"abcdef", tag)  # parts are read as their concatenation
    for purpose, data, t in ((EXCHANGE_REQUEST, b"abcdeF", tag), (EXCHANGE_REPLY, b"abcdef", tag),
                             (EXCHANGE_REQUEST, b"abcdef", None), (EXCHANGE_REQUEST, b"abcdef", "zz:00")):
        with pytest.raises(Unauthenticated):
            ring.verify(purpose, data, t)
    with pytest.raises(Unauthenticated):
        Keyring((K2,)).verify(EXCHANGE_REQUEST, b"abcdef", tag)


def test_rotation_primary_signs_every_installed_key_verifies() -> None:
    old, both, new = Keyring((K1,)), Keyring((K1, K2)), Keyring((K2, K1))
    # Step 1: K2 installed as a secondary; step 2: made primary; step 3: K1 removed.
    both.verify(EXCHANGE_REQUEST, b"x", old.sign(EXCHANGE_REQUEST, b"x"))
    old.verify(EXCHANGE_REQUEST, b"x", both.sign(EXCHANGE_REQUEST, b"x"))
    both.verify(EXCHANGE_REQUEST, b"x", new.sign(EXCHANGE_REQUEST, b"x"))
    new.verify(EXCHANGE_REQUEST, b"x", old.sign(EXCHANGE_REQUEST, b"x"))
    with pytest.raises(Unauthenticated):
        old.verify(EXCHANGE_REQUEST, b"x", Keyring((K2,)).sign(EXCHANGE_REQUEST, b"x"))


def test_keyring_files_parse_base64_and_hex_and_refuse_junk_with_the_line() -> None:
    text = f"# cluster keys\n{base64.b64encode(K1).decode()}\n\n{K3.hex()}  # old\n"
    assert parse_keyring(text).keys == (K1, K3)
    for bad, line in (("short\n", 1), (f"{K1.hex()}\n{K1.hex()}\n", 0), ("# nothing\n", 0)):
        with pytest.raises(KeyringError) as err:
            parse_keyring(bad)
        assert "\n" not in str(err.value) and (line == 0 or f"line {line}" in str(err.value))


def test_claimed_samples_are_capped_by_established_claims() -> None:
    stakes = Stakes()
    assert stakes.cap(2**64 - 1, own=100) == 200  # nobody established: 2 × our own
    for i in range(4):
        for _ in range(stakes.config.ramp):
            stakes.observe(f"honest{i}", 1000, taken=True)
    for i in range(50):  # strangers rotating identities, each claiming a huge count, never move the cap
        stakes.observe(f"stranger{i}", 2**63, taken=True)
    assert stakes.cap(2**64 - 1, own=100) == 2000


def test_a_first_contact_sender_earns_weight_and_refusals_earn_nothing() -> None:
    stakes = Stakes()
    ramp = stakes.config.ramp
    assert stakes.stake("new") == pytest.approx(1 / ramp)
    stakes.observe("new", 10, taken=False)
    assert stakes.stake("new") == pytest.approx(1 / ramp)
    for _ in range(ramp - 1):
        assert stakes.stake("new") < 1.0
        stakes.observe("new", 10, taken=True)
    assert stakes.stake("new") == 1.0


@pytest.mark.parametrize("rule", ["vc", "weighted", "mean", "bristle"])
def test_a_low_stake_moves_the_model_by_at_most_its_share(rule: str) -> None:
    rng = np.random.default_rng(0)
    local = {"w": rng.normal(size=(8, 8)).astype(np.float32)}
    other = {"w": (local["w"] + 0.1 * rng.normal(size=(8, 8))).astype(np.float32)}
    moved = make_rule(rule).merge(Contribution(local, samples=100),
                                  [Contribution(other, samples=2**40, stake=1 / 8, sender="s")])
    share = np.linalg.norm(moved["w"] - local["w"]) / np.linalg.norm(other["w"] - local["w"])
    # The received share scaled by the stake: (1 − β)/8 for the β-rules, (1/8)/(1 + 1/8) for
    # the plain mean; weighted by samples·stake (Defence caps the samples before this).
    bound = {"vc": 0.5 / 8, "bristle": 0.5 / 8, "mean": (1 / 8) / (1 + 1 / 8),
             "weighted": (2**40 / 8) / (100 + 2**40 / 8)}[rule]
    assert share <= bound + 1e-2
    full = make_rule(rule).merge(Contribution(local, samples=100), [Contribution(other, samples=100, sender="s")])
    assert np.linalg.norm(full["w"] - local["w"]) / np.linalg.norm(other["w"] - local["w"]) > 0.45


def test_refused_first_contacts_feed_no_history_when_asked_and_established_senders_still_do() -> None:
    from protocol.merge.robust import BristleRule

    rng = np.random.default_rng(1)
    local = {"w": rng.normal(size=(16,)).astype(np.float32)}
    near = [{"w": (local["w"] + 0.1 * rng.normal(size=16)).astype(np.float32)} for _ in range(4)]
    far = {"w": (-2 * local["w"]).astype(np.float32)}  # sign-flip: refused as an outlier
    for newcomers_in_history in (True, False):
        rule = BristleRule(newcomers_in_history=newcomers_in_history)
        rule.merge_report(Contribution(local), [Contribution(x, sender=f"h{i}") for i, x in enumerate(near)])
        before = [0] * len(rule.history)
        report = rule.merge_report(Contribution(local), [Contribution(far, sender="rot#1", stake=0.5)])
        assert report.verdicts[0].kind == "outlier"
        assert (len(rule.history) == len(before)) == (not newcomers_in_history)
        rule.merge_report(Contribution(local), [Contribution(far, sender="h0", stake=1.0)])  # established
        assert len(rule.history) == len(before) + (2 if newcomers_in_history else 1)


def test_a_loss_check_with_an_infinite_warmup_margin_refuses_nothing_while_warming_up() -> None:
    from protocol.merge.robust import BristleRule

    local = {"w": np.ones(4, dtype=np.float32)}
    other = {"w": np.full(4, 1.1, dtype=np.float32)}  # near: within the distance bound
    rule = BristleRule(validator=lambda x: float(np.sum(x["w"])) * 100, loss_warmup_margin=float("inf"))
    report = rule.merge_report(Contribution(local), [Contribution(other, sender="a")])
    assert report.verdicts[0].kind == "ok"  # a rise of +20 nats, taken whole: no history yet
    strict = BristleRule(validator=lambda x: float(np.sum(x["w"])) * 100)
    assert strict.merge_report(Contribution(local), [Contribution(other, sender="a")]).verdicts[0].kind == "outlier"
