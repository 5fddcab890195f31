"""``build_aggregator``: parameter routing, seeds, errors, and a pinned composed value."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.server.aggregators import (
    available,
    available_pre,
    build_aggregator,
    create,
    create_pre,
    rule_factory,
)
from stamen.server.aggregators.krum import krum


def test_registries_list_the_robust_family() -> None:
    assert {"median", "trimmed_mean", "krum", "multikrum", "bulyan", "geomed", "centered_clipping"} <= set(
        available()
    )
    assert {"nnm", "bucketing"} <= set(available_pre())


def test_rule_factory_is_the_registered_one() -> None:
    assert rule_factory("krum") is krum
    with pytest.raises(ValueError, match=r"unknown aggregation rule 'nope'; available: .*krum"):
        rule_factory("nope")


def test_shared_param_feeds_pre_and_rule_hand_computed() -> None:
    x = np.array([[0], [1], [2], [10], [11]], dtype=np.float32)
    # nnm(f=1): 4 nearest -> 0,1,2 -> (0+1+2+10)/4 = 3.25 for the first three; 10 -> (1+2+10+11)/4 = 6,
    # 11 -> 6; krum(f=1) on {3.25, 3.25, 3.25, 6, 6}: the 3.25 rows score 0 -> 3.25
    agg = build_aggregator("krum", ["nnm"], {"assumed_byzantine": 1})
    np.testing.assert_allclose(agg(x), [3.25], rtol=1e-6)
    assert repr(agg) == "ComposedAggregator(nnm -> krum)"


def test_without_pre_it_is_the_rule() -> None:
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    np.testing.assert_array_equal(build_aggregator("median")(x), create("median")(x))
    np.testing.assert_array_equal(
        build_aggregator("fedavg")(x, np.arange(1.0, 7.0)), create("fedavg")(x, np.arange(1.0, 7.0))
    )


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 1000))
def test_composition_equals_manual_chain(seed: int, data_seed: int) -> None:
    x = np.random.default_rng(data_seed).standard_normal((12, 7)).astype(np.float32)
    agg = build_aggregator(
        "trimmed_mean",
        ["bucketing", "nnm"],
        {"beta": 0.2, "bucket_size": 2, "assumed_byzantine": 1},
        seed=seed,
    )
    from stamen.server.aggregators.compose import stage_seed

    b = create_pre("bucketing", bucket_size=2, seed=stage_seed(seed, 0))
    y, w = create_pre("nnm", assumed_byzantine=1)(*b(x))
    np.testing.assert_array_equal(agg(x), create("trimmed_mean", beta=0.2)(y, w))


def test_seeds_reproducible_and_explicit_seed_wins() -> None:
    x = np.random.default_rng(0).standard_normal((9, 4)).astype(np.float32)
    run = [build_aggregator("krum", ["bucketing"], {}, seed=s)(x) for s in (5, 5, 6)]
    np.testing.assert_array_equal(run[0], run[1])
    assert not np.array_equal(run[0], run[2])
    fixed = [build_aggregator("mean", ["bucketing"], {"seed": 4, "bucket_size": 4}, seed=s) for s in (1, 2)]
    np.testing.assert_array_equal(fixed[0].pre[0](x)[0], fixed[1].pre[0](x)[0])


def test_errors_name_the_problem() -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "aggregation parameter(s) beta, foo not accepted by rule 'krum' or pre-aggregators nnm"
            " (accepted: assumed_byzantine)"
        ),
    ):
        build_aggregator("krum", ["nnm"], {"beta": 0.1, "foo": 1, "assumed_byzantine": 1})
    with pytest.raises(ValueError, match="unknown aggregation rule 'nope'"):
        build_aggregator("nope")
    with pytest.raises(ValueError, match="unknown pre-aggregator 'nope'"):
        build_aggregator("mean", ["nope"])
    with pytest.raises(ValueError, match="krum: assumed_byzantine"):
        build_aggregator("krum", (), {"assumed_byzantine": -1})


def test_composed_pinned_value() -> None:
    x = np.random.default_rng(7).standard_normal((10, 3)).astype(np.float32)
    agg = build_aggregator("multikrum", ["bucketing", "nnm"], {"assumed_byzantine": 1}, seed=11)
    np.testing.assert_allclose(agg(x), [-0.148553, -0.178987, -0.461284], atol=1e-6)


def test_rule_state_and_traits_through_the_composition() -> None:
    agg = build_aggregator("centered_clipping", ["nnm"], {"tau": 10.0})
    rule = agg.rule
    assert getattr(rule, "fn", rule).center is None  # type: ignore[attr-defined]  (the rule's own state)
    agg(np.ones((3, 2), np.float32))
    np.testing.assert_allclose(getattr(rule, "fn", rule).center, [1.0, 1.0])  # type: ignore[attr-defined]
    assert agg.traits.required_server_lr is None and agg.traits.l2_sensitivity is None
    assert build_aggregator("mean").traits.l2_sensitivity is not None
    assert build_aggregator("mean", ["nnm"]).traits.l2_sensitivity is None  # pre-aggregation voids it
    assert build_aggregator("frl").traits.required_server_lr == 1.0
    np.testing.assert_allclose(agg(np.full((3, 2), 2.0, np.float32)), [2.0, 2.0])
