"""Test trio for ``geomed`` (smoothed Weiszfeld, RFA)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.server.aggregators import create

LINE = np.array([[0.0], [1.0], [10.0]], dtype=np.float32)


def test_one_weiszfeld_step_hand_computed() -> None:
    # v0 = mean = 11/3; distances 11/3, 8/3, 19/3; v1 = (1*3/8 + 10*3/19) / (3/11 + 3/8 + 3/19)
    v1 = (3 / 8 + 30 / 19) / (3 / 11 + 3 / 8 + 3 / 19)  # = 2.42539...
    np.testing.assert_allclose(create("geomed", max_iter=1)(LINE), [v1], rtol=1e-6)


def test_converges_to_the_median_on_a_line_and_follows_weights() -> None:
    agg = create("geomed", max_iter=500, tol=1e-12, nu=1e-9)
    np.testing.assert_allclose(agg(LINE), [1.0], atol=1e-3)  # 1-D geometric median = median
    np.testing.assert_allclose(agg(LINE, np.array([1.0, 1.0, 100.0])), [10.0], atol=1e-3)


def rfa_reference(x: np.ndarray, alpha: np.ndarray, nu: float, max_iter: int, tol: float) -> np.ndarray:
    """Slow reference: RFA's geometric_median_update with direct float64 distances."""
    x = x.astype(np.float64)
    alpha = alpha / alpha.sum()
    v = alpha @ x
    obj = float(alpha @ np.linalg.norm(x - v, axis=1))
    for _ in range(max_iter):
        beta = alpha / np.maximum(nu, np.linalg.norm(x - v, axis=1))
        v = (beta / beta.sum()) @ x
        new = float(alpha @ np.linalg.norm(x - v, axis=1))
        if abs(obj - new) < tol * new:
            break
        obj = new
    return v


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 50), st.integers(0, 2**32 - 1), st.booleans())
def test_matches_rfa_reference(n: int, d: int, seed: int, weighted: bool) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) * rng.uniform(0.1, 10, (n, 1))).astype(np.float32)
    w = rng.integers(1, 50, n).astype(np.float64) if weighted else None
    out = create("geomed", max_iter=6)(x, w)
    ref = rfa_reference(x, np.ones(n) if w is None else w, 1e-5, 6, 1e-6)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * (1 + np.abs(ref).max()))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 9), st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_converged_output_minimises_sum_of_distances(n: int, d: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    out = create("geomed", max_iter=300, tol=1e-12, nu=1e-9)(x).astype(np.float64)
    x64 = x.astype(np.float64)

    def g(v: np.ndarray) -> float:
        return float(np.linalg.norm(x64 - v, axis=1).sum())

    candidates = [x64.mean(axis=0), np.median(x64, axis=0), *x64]
    assert all(g(out) <= g(c) + 1e-4 for c in candidates)


@pytest.mark.parametrize(
    ("params", "name"), [({"nu": 0}, "nu"), ({"max_iter": 0}, "max_iter"), ({"tol": -1}, "tol")]
)
def test_bad_parameters(params: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        create("geomed", **params)


def test_geomed_pinned_value() -> None:
    updates = np.random.default_rng(7).standard_normal((6, 4)).astype(np.float32)
    np.testing.assert_allclose(
        create("geomed")(updates), [-0.511502, -0.577316, -0.199842, 0.294291], atol=1e-6
    )
