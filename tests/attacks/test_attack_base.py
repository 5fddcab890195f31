"""Attack registries and the choice of malicious clients."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.simulations.attacks import (
    attack_type,
    available_attacks,
    create_data_attack,
    create_update_attack,
    malicious_clients,
)

UPDATE = ["alie", "fang_krum", "fang_trmean", "gaussian", "ipm", "min_max", "min_sum", "scaling", "sign_flip"]


def test_registry_lists_and_types() -> None:
    assert set(UPDATE) | {"label_flip"} <= set(available_attacks())
    assert all(attack_type(k) == "update" for k in UPDATE)
    assert attack_type("label_flip") == "data"


def test_registry_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        attack_type("nope")
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        create_update_attack("nope")
    with pytest.raises(ValueError, match="'label_flip' is a data attack"):
        create_update_attack("label_flip")
    with pytest.raises(ValueError, match="'ipm' is a update attack"):
        create_data_attack("ipm")
    with pytest.raises(ValueError, match="invalid parameters for attack 'ipm'"):
        create_update_attack("ipm", eps=1.0)


@pytest.mark.parametrize("kind", UPDATE)
def test_every_update_attack_honours_the_contract(kind: str) -> None:
    honest = np.random.default_rng(0).normal(0.1, 1.0, (6, 11)).astype(np.float32)
    attack = create_update_attack(kind)
    out = attack(honest, 3, np.random.default_rng(1))
    assert out.shape == (3, 11) and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert attack(honest, 0, np.random.default_rng(1)).shape == (0, 11)
    np.testing.assert_array_equal(out, attack(honest, 3, np.random.default_rng(1)))  # reproducible
    with pytest.raises(ValueError, match="non-empty"):
        attack(np.zeros((0, 11), np.float32), 2, np.random.default_rng(1))
    with pytest.raises(ValueError, match="num_malicious"):
        attack(honest, -1, np.random.default_rng(1))


def test_malicious_clients_hand_computed() -> None:
    assert malicious_clients(10, 0.0, 0) == []
    assert len(malicious_clients(10, 0.3, 0)) == 3  # floor(0.3 * 10) despite 0.30000000000000004 * 10
    assert len(malicious_clients(100, 0.29, 0)) == 29  # 28.999999999999996
    assert malicious_clients(10, 0.3, 0) == malicious_clients(10, 0.3, 0)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300), st.floats(0.0, 0.99), st.integers(0, 2**32 - 1))
def test_malicious_clients_property(n: int, fraction: float, seed: int) -> None:
    ids = malicious_clients(n, fraction, seed)
    assert ids == sorted(set(ids)) and all(0 <= i < n for i in ids)
    assert len(ids) == math.floor(fraction * n + 1e-9)


def test_malicious_clients_uniform() -> None:
    counts = np.zeros(10)
    for seed in range(2000):
        counts[malicious_clients(10, 0.2, seed)] += 1
    assert np.all(np.abs(counts / 2000 - 0.2) < 0.04)  # each client ~20 % of the time


def test_malicious_clients_errors_and_pinned() -> None:
    with pytest.raises(ValueError, match="fraction"):
        malicious_clients(10, 1.0, 0)
    with pytest.raises(ValueError, match="num_clients"):
        malicious_clients(-1, 0.1, 0)
    assert malicious_clients(10, 0.3, 0) == [2, 5, 8]
    assert malicious_clients(50, 0.2, 7) == [0, 8, 10, 13, 15, 22, 28, 42, 44, 47]
