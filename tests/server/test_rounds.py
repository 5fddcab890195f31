"""RoundAggregator: decode, validate, reject-and-continue, aggregate."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.protocols import CodecSpec, Signer, Verifier, encode_update, model_hash
from stamen.server.aggregators import create
from stamen.server.rounds import RoundAggregator, ValidationPolicy, flatten, unflatten

BASE = {"w": np.zeros((2, 3), np.float32), "b": np.ones(3, np.float32)}
HASH = model_hash(BASE)
DENSE = CodecSpec.from_pipeline(["dense"])


def _env(delta: dict[str, np.ndarray], base_hash: str = HASH, signer: Signer | None = None) -> bytes:
    return encode_update(
        delta, DENSE, base_hash=base_hash, version=1, sender="t", rng=np.random.default_rng(0), signer=signer
    )


def _delta(v: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), v, np.float32), "b": np.full(3, v, np.float32)}


def _ra(capacity: int = 4, **policy: object) -> RoundAggregator:
    return RoundAggregator(BASE, HASH, capacity, create("fedavg"), ValidationPolicy(**policy))  # type: ignore[arg-type]


def test_weighted_aggregate_of_envelopes() -> None:
    ra = _ra()
    assert ra.add_envelope("a", _env(_delta(1.0)), 1)
    assert ra.add_envelope("b", _env(_delta(4.0)), 2)
    new = ra.finish(server_lr=1.0)
    assert new is not None
    np.testing.assert_allclose(new["w"], np.full((2, 3), 3.0))  # (1*1 + 2*4) / 3
    np.testing.assert_allclose(new["b"], np.full(3, 4.0))
    assert ra.stats.accepted == 2 and ra.stats.rejected == 0
    assert ra.stats.bytes_up == len(_env(_delta(1.0))) + len(_env(_delta(4.0)))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"garbage", "MalformedUpdate"),
        (_env(_delta(1.0), base_hash="0" * 64), "BaseModelMismatch"),
        (_env({"w": np.full((2, 3), np.nan, np.float32), "b": np.zeros(3, np.float32)}), "non-finite"),
        (_env({"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}), "Validation"),
        (_env({"x": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}), "Validation"),
    ],
)
def test_bad_updates_are_rejected_and_the_round_goes_on(payload: bytes, reason: str) -> None:
    ra = _ra()
    assert not ra.add_envelope("bad", payload, 5)
    assert ra.add_envelope("good", _env(_delta(2.0)), 1)
    assert ra.stats.rejected == 1 and reason in ra.stats.reasons[0]
    new = ra.finish()
    assert new is not None
    np.testing.assert_allclose(new["w"], np.full((2, 3), 2.0))


def test_norm_bound_and_signatures() -> None:
    ra = _ra(max_norm=1.0)
    assert not ra.add_envelope("big", _env(_delta(10.0)), 1)
    assert "exceeds bound" in ra.stats.reasons[0]
    signer, other = Signer.generate(), Signer.generate()
    ra = _ra(verifier=Verifier([signer.public_key_bytes()]))
    assert ra.add_envelope("signed", _env(_delta(0.1), signer=signer), 1)
    assert not ra.add_envelope("unsigned", _env(_delta(0.1)), 1)
    assert not ra.add_envelope("wrong-key", _env(_delta(0.1), signer=other), 1)
    assert [r.split(": ")[1] for r in ra.stats.reasons] == ["SignatureError", "SignatureError"]


def test_no_accepted_update_returns_none() -> None:
    ra = _ra()
    ra.add_envelope("bad", b"", 1)
    assert ra.finish() is None


def test_flatten_roundtrip() -> None:
    ra = _ra()
    row = np.empty(9, np.float32)
    flatten(_delta(3.0), ra.table, row)
    back = unflatten(row, ra.table)
    assert all(np.array_equal(back[k], _delta(3.0)[k]) for k in BASE)


def test_attack_hook_replaces_only_malicious_rows() -> None:
    """Omniscient attack: the malicious row becomes -mean(honest rows) before aggregation."""
    from stamen.server.rounds import AttackHook

    def flip(honest: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        return np.repeat(-honest.mean(axis=0, keepdims=True), k, axis=0)

    hook = AttackHook(attack=flip, malicious=frozenset({"bad"}), rng=np.random.default_rng(0))
    ra = RoundAggregator(BASE, HASH, 3, create("mean"), ValidationPolicy(), hook)
    ra.add_envelope("a", _env(_delta(1.0)), 1)
    ra.add_envelope("bad", _env(_delta(100.0)), 1)  # its own update is discarded by the attack
    ra.add_envelope("b", _env(_delta(3.0)), 1)
    new = ra.finish()
    assert new is not None
    # rows: 1, -(1+3)/2 = -2, 3 -> mean 2/3
    np.testing.assert_allclose(new["w"], np.full((2, 3), 2 / 3), rtol=1e-6)


def test_attack_hook_without_malicious_senders_changes_nothing() -> None:
    from stamen.server.rounds import AttackHook

    def boom(honest: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        raise AssertionError("must not be called")

    hook = AttackHook(attack=boom, malicious=frozenset({"zzz"}), rng=np.random.default_rng(0))
    ra = RoundAggregator(BASE, HASH, 2, create("mean"), ValidationPolicy(), hook)
    ra.add_envelope("a", _env(_delta(1.0)), 1)
    new = ra.finish()
    assert new is not None
    np.testing.assert_allclose(new["w"], np.ones((2, 3)))
