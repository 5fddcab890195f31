"""``lora_naive`` vs ``lora_exact``: the hand-built gap, exactness, Fed-SB averaging, pinned gap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.protocols import tensor_table
from stamen.server.aggregators import create
from stamen.server.aggregators.base import RoundContext
from stamen.server.aggregators.lora import LoRAAggregator, lora_slots
from stamen.server.driver.collect import flatten, unflatten


def layer(
    out: int, inp: int, r: int, scale: float, rng: np.random.Generator, sb: bool = False
) -> dict[str, np.ndarray]:
    """A flattened-model stand-in for one adapted layer plus a head bias, in state_dict naming."""
    w = {
        "l.weight": rng.normal(size=(out, inp)).astype(np.float32),
        "l.bias": np.zeros(out, np.float32),
        "l.lora_scale": np.array([scale], np.float32),
        "l.lora_A.weight": rng.normal(size=(r, inp)).astype(np.float32),
        "l.lora_B.weight": rng.normal(size=(out, r)).astype(np.float32),
    }
    if sb:
        w["l.lora_R.weight"] = rng.normal(size=(r, r)).astype(np.float32)
    w["head.bias"] = np.zeros(2, np.float32)
    return w


def stack(base: dict[str, np.ndarray], clients: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    table = tensor_table(base)
    d = sum(t.size for t in table)
    base_flat = np.empty(d, np.float32)
    flatten(base, table, base_flat)
    rows = np.empty((len(clients), d), np.float32)
    for i, c in enumerate(clients):
        flatten({k: c[k] - base[k] for k in base}, table, rows[i])
    return rows, base_flat


def run(
    rule: str, base: dict[str, np.ndarray], clients: list[dict[str, np.ndarray]], weights: np.ndarray | None
) -> dict[str, np.ndarray]:
    rows, base_flat = stack(base, clients)
    agg = create(rule)
    agg.begin_round(RoundContext(1, tensor_table(base), base_flat))  # as the round driver does
    step = unflatten(agg(rows, weights), tensor_table(base))
    return {k: base[k] + step[k] for k in base}


def effective(w: dict[str, np.ndarray]) -> np.ndarray:
    """The merged weight ``W + s B [R] A`` in float64."""
    b, a = w["l.lora_B.weight"].astype(np.float64), w["l.lora_A.weight"].astype(np.float64)
    mid = w["l.lora_R.weight"].astype(np.float64) if "l.lora_R.weight" in w else np.eye(a.shape[0])
    return w["l.weight"].astype(np.float64) + float(w["l.lora_scale"][0]) * b @ mid @ a


def test_hand_built_gap() -> None:
    """1x1 layer, r = 1, s = 2, W = 0, base factors 0. Client 1: B = A = 1; client 2: B = A = -1.
    Naive: mean B = mean A = 0, so W' + s B'A' = 0. Exact: mean(B A) = 1, so W' = 0 + 2 * 1 = 2."""
    base = {
        "l.weight": np.zeros((1, 1), np.float32),
        "l.lora_scale": np.array([2.0], np.float32),
        "l.lora_A.weight": np.zeros((1, 1), np.float32),
        "l.lora_B.weight": np.zeros((1, 1), np.float32),
    }
    one = {
        **base,
        "l.lora_A.weight": np.ones((1, 1), np.float32),
        "l.lora_B.weight": np.ones((1, 1), np.float32),
    }
    two = {
        **base,
        "l.lora_A.weight": -np.ones((1, 1), np.float32),
        "l.lora_B.weight": -np.ones((1, 1), np.float32),
    }
    naive, exact = run("lora_naive", base, [one, two], None), run("lora_exact", base, [one, two], None)
    assert effective(naive)[0, 0] == 0.0
    assert exact["l.weight"][0, 0] == 2.0 and exact["l.lora_A.weight"][0, 0] == 0.0
    assert effective(exact)[0, 0] == pytest.approx((effective(one) + effective(two))[0, 0] / 2)  # = 2


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), r=st.integers(1, 4), seed=st.integers(0, 2**32 - 1), weighted=st.booleans())
def test_exact_rule_averages_the_client_models(n: int, r: int, seed: int, weighted: bool) -> None:
    rng = np.random.default_rng(seed)
    base = layer(5, 4, r, float(rng.uniform(0.1, 4)), rng)
    clients = [
        {
            **base,
            **{
                k: v + rng.normal(size=v.shape).astype(np.float32)
                for k, v in base.items()
                if "lora_A" in k or "lora_B" in k
            },
        }
        for _ in range(n)
    ]
    w = rng.uniform(1, 50, size=n) if weighted else None
    p = np.ones(n) / n if w is None else w / w.sum()
    target = sum(pi * effective(c) for pi, c in zip(p, clients, strict=True))
    exact = run("lora_exact", base, clients, w)
    np.testing.assert_allclose(effective(exact), target, atol=2e-4, rtol=1e-5)
    naive = run("lora_naive", base, clients, w)
    for k in ("l.lora_A.weight", "l.lora_B.weight"):  # both keep the factor means
        np.testing.assert_allclose(naive[k], exact[k], atol=1e-6)


def test_fedsb_average_of_r_equals_average_of_products() -> None:
    rng = np.random.default_rng(3)
    base = layer(6, 5, 3, 1.0, rng, sb=True)
    clients = [
        {**base, "l.lora_R.weight": base["l.lora_R.weight"] + rng.normal(size=(3, 3)).astype(np.float32)}
        for _ in range(4)
    ]
    w = np.array([1.0, 2.0, 3.0, 4.0])
    mean = run("fedavg", base, clients, w)
    target = sum(wi / w.sum() * effective(c) for wi, c in zip(w, clients, strict=True))
    np.testing.assert_allclose(effective(mean), target, atol=1e-5)  # B mean(R) A = mean(B R A)
    # lora_exact recognizes Fed-SB layers (no residual) and equals the plain mean there
    exact = run("lora_exact", base, clients, w)
    for k in base:
        np.testing.assert_allclose(exact[k], mean[k], atol=1e-6)


def test_exact_needs_the_layout_and_names_it() -> None:
    with pytest.raises(ValueError, match="begin_round"):
        create("lora_exact")(np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(create("lora_naive")(np.ones((2, 3), np.float32)), np.ones(3))
    bad = {"l.weight": np.zeros((2, 3), np.float32), "l.lora_A.weight": np.zeros((1, 3), np.float32)}
    with pytest.raises(ValueError, match="lacks"):
        lora_slots(tensor_table(bad), np.zeros(9, np.float32))


def test_gap_is_measured_and_pinned() -> None:
    rng = np.random.default_rng(11)
    base = layer(8, 6, 2, 2.0, rng)
    clients = [
        {
            **base,
            "l.lora_A.weight": base["l.lora_A.weight"] + rng.normal(size=(2, 6)).astype(np.float32),
            "l.lora_B.weight": base["l.lora_B.weight"] + rng.normal(size=(8, 2)).astype(np.float32),
        }
        for _ in range(3)
    ]
    rows, base_flat = stack(base, clients)
    for exact in (False, True):
        agg = LoRAAggregator(exact=exact)
        agg.begin_round(RoundContext(1, tensor_table(base), base_flat))
        agg(rows, None)
        assert agg.last_gap == pytest.approx(PINNED_GAP, rel=1e-5)
    same = np.repeat(rows[:1], 3, axis=0)  # identical clients: no gap
    agg.begin_round(RoundContext(1, tensor_table(base), base_flat))
    agg(same, None)
    assert agg.last_gap == pytest.approx(0.0, abs=1e-7)


PINNED_GAP = 0.43149533
