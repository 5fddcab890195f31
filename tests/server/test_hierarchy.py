"""Hierarchical aggregation: exact for linear rules, robust rules per level, stable regions, bytes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.protocols import TensorInfo
from stamen.server.aggregators import create
from stamen.server.aggregators.base import RoundContext
from stamen.server.aggregators.hierarchy import HierarchyRule
from stamen.server.aggregators.hierarchy_groups import hash_region, partition_rows, region_function
from stamen.server.aggregators.hierarchy_link import Link, forward
from stamen.server.aggregators.mean import weighted_mean


def _rule(
    edge: str, root: str, groups: int, assign: str = "modulo", n: int = 100, fast: bool = False
) -> HierarchyRule:
    # what build_hierarchy does: the root's "mean" weights regions by their counts; ``fast`` takes the
    # one-product path of the linear edge rules
    mean = {"fedavg": "weighted", "mean": "unweighted"}.get(edge) if fast else None
    root_rule = create("fedavg" if root == "mean" else root)
    region_of = region_function(assign, groups, n)
    return HierarchyRule(create(edge), root_rule, region_of, Link(), root == "mean", edge_mean=mean)


def _run(
    rule: HierarchyRule, x: np.ndarray, w: np.ndarray | None, senders: list[str], trips=()
) -> np.ndarray:
    table = (TensorInfo("w", (x.shape[1],), "float32"),)
    rule.begin_round(RoundContext(1, table, np.zeros(x.shape[1], np.float32), tuple(senders), tuple(trips)))
    return rule(x, w)


def test_hand_computed_fedavg_and_mean() -> None:
    x = np.array([[1.0], [3.0], [5.0], [7.0]], np.float32)
    senders = ["client-0", "client-2", "client-1", "client-3"]  # modulo 2: regions 0, 0, 1, 1
    # fedavg: region 0 = (1*1 + 3*3)/4 = 2.5 (W=4), region 1 = (5*2 + 7*2)/4 = 6 (W=4); root 4.25
    for fast in (False, True):
        got = _run(_rule("fedavg", "fedavg", 2, fast=fast), x, np.array([1.0, 3.0, 2.0, 2.0]), senders)
        assert got == pytest.approx([4.25])
    # mean with unequal regions: region 0 = mean(1, 3, 5) = 3 (3 rows), region 1 = 7 (1 row);
    # root = (3*3 + 7*1)/4 = 4 = flat mean (an unweighted mean of the means would give 5)
    senders = ["client-0", "client-2", "client-4", "client-1"]
    assert _run(_rule("mean", "mean", 2), x, None, senders) == pytest.approx([4.0])
    assert _run(_rule("mean", "mean", 2, fast=True), x, None, senders) == pytest.approx([4.0])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 30),
    d=st.integers(1, 7),
    groups=st.integers(1, 8),
    assign=st.sampled_from(["modulo", "contiguous", "hash"]),
    linear=st.sampled_from(["fedavg", "mean"]),
    seed=st.integers(0, 2**16),
    fast=st.booleans(),
)
def test_linear_rules_equal_flat(
    n: int, d: int, groups: int, assign: str, linear: str, seed: int, fast: bool
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 3, (n, d)).astype(np.float32)
    w = rng.uniform(0.1, 50, n)
    ids = rng.choice(100, n, replace=False)
    senders = [f"client-{i}" for i in ids]
    got = _run(_rule(linear, linear, groups, assign, fast=fast), x, w, senders)
    want = weighted_mean(x, w if linear == "fedavg" else None)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_median_of_medians_pinned() -> None:
    x = np.arange(18, dtype=np.float32).reshape(6, 3) ** 1.5
    senders = [f"client-{i}" for i in range(6)]  # modulo 3: {0, 3}, {1, 4}, {2, 5}
    got = _run(_rule("median", "median", 3), x, None, senders)
    # region medians of column c: mid(c**1.5, (9+c)**1.5), mid((3+c)**1.5, (12+c)**1.5),
    # mid((6+c)**1.5, (15+c)**1.5); the root takes their middle value, region 1's
    want = [((3 + c) ** 1.5 + (12 + c) ** 1.5) / 2 for c in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got, [23.38268, 27.43608, 31.78177], rtol=1e-6)  # pinned


def test_median_hierarchy_resists_a_minority_in_every_region() -> None:
    rng = np.random.default_rng(0)
    honest = rng.normal(1.0, 0.1, (15, 4)).astype(np.float32)
    x = honest.copy()
    bad = [0, 3, 7, 10, 14]  # modulo 3 -> regions 0, 0, 1, 1, 2: at most 2 of 5 in every region
    x[bad] = 1e4
    senders = [f"client-{i}" for i in range(15)]
    robust = _run(_rule("median", "median", 3), x, None, senders)
    assert np.all(np.abs(robust - 1.0) < 0.5)  # every coordinate stays among honest values
    assert np.all(_run(_rule("fedavg", "fedavg", 3), x, None, senders) > 1e3)  # averaging is broken
    # one region with a Byzantine majority forwards a bad update; the root median outvotes it
    x[[1, 4]] = 1e4  # region 1 now holds 1, 4, 7, 10 of its 5 clients
    assert np.all(np.abs(_run(_rule("median", "median", 3), x, None, senders) - 1.0) < 0.5)
    # two of three regions taken: the root's bound (bad regions < half) is broken
    x[[2, 5, 8]] = 1e4
    assert np.all(_run(_rule("median", "median", 3), x, None, senders) > 1e3)


def test_regions_are_stable_and_assignments_defined() -> None:
    modulo, block = region_function("modulo", 4, 100), region_function("contiguous", 4, 100)
    assert [modulo(f"client-{i}") for i in (0, 1, 5, 99)] == [0, 1, 1, 3]
    assert [block(f"client-{i}") for i in (0, 24, 25, 99)] == [0, 0, 1, 3]
    assert modulo("node-1234567890123") == 1234567890123 % 4
    assert hash_region("node-42", 10) == hash_region("node-42", 10) == 1  # BLAKE2b-64, pinned
    with pytest.raises(ValueError, match="use assign='modulo' or 'hash'"):
        block("client-100")
    with pytest.raises(ValueError, match="does not end in a number"):
        modulo("alice")
    with pytest.raises(ValueError, match="assign='zip' is unknown"):
        region_function("zip", 2, 10)
    parts = partition_rows(["client-3", "client-0", "client-2", "client-1"], modulo)
    assert [(g, list(idx)) for g, idx in parts] == [(0, [1]), (1, [3]), (2, [2]), (3, [0])]


def test_bytes_latency_and_dropped_regions() -> None:
    x = np.ones((7, 10), np.float32)
    senders = [f"client-{i}" for i in range(7)]  # modulo 3: sizes 3, 2, 2
    rule = HierarchyRule(create("median"), create("mean"), region_function("modulo", 3, 7), Link())
    _run(rule, x, None, senders, trips=[1.0, 2.0, 3.0, 4.0, 9.0, 5.0, 6.0])
    one = forward(np.ones(10, np.float32), (TensorInfo("w", (10,), "float32"),), Link(), "region-0", 1, 0)[1]
    m = rule.round_metrics()
    assert one == 224  # one dense float32 envelope of 10 values (header + 40 payload bytes), pinned
    assert m["hier_regions"] == 3 and m["hier_bytes_root"] == 3 * one
    assert m["hier_latency_edge_s"] == 9.0  # slowest client (client-4, region 1)
    assert m["hier_latency_root_s"] == pytest.approx(0.02 + 3 * one / 12.5e6)
    # Krum with f=1 needs n > 2f + 2 = 4 rows: every region is too small and forwards nothing
    rule = HierarchyRule(
        create("krum", assumed_byzantine=1), create("mean"), region_function("modulo", 3, 7), Link()
    )
    with pytest.raises(ValueError, match="no region could aggregate"):
        _run(rule, x, None, senders)
    # Krum with f=0 needs n > 2: of regions of sizes 3, 3, 3, 2 (11 clients, modulo 4) the last is dropped
    rule = HierarchyRule(create("krum"), create("mean"), region_function("modulo", 4, 11), Link())
    _run(rule, np.ones((11, 10), np.float32), None, [f"client-{i}" for i in range(11)])
    assert rule.round_metrics()["hier_regions"] == 3 and rule.round_metrics()["hier_regions_dropped"] == 1


def test_lossy_forward_codec_changes_what_the_root_sees() -> None:
    x = np.random.default_rng(1).normal(size=(6, 64)).astype(np.float32)
    senders = [f"client-{i}" for i in range(6)]
    dense = _run(_rule("fedavg", "fedavg", 2), x, None, senders)
    rule = HierarchyRule(create("fedavg"), create("fedavg"), region_function("modulo", 2, 6), Link("fp16"))
    half = _run(rule, x, None, senders)
    assert 0 < np.max(np.abs(half - dense)) < 1e-2  # fp16 rounding, not exact
    dense_bytes = 2 * forward(x[0], (TensorInfo("w", (64,), "float32"),), Link(), "region-0", 1, 0)[1]
    assert dense_bytes == 882 and rule.round_metrics()["hier_bytes_root"] == 624  # pinned: 2 x 64 x 2 saved


def test_needs_senders() -> None:
    rule = _rule("fedavg", "fedavg", 2)
    with pytest.raises(ValueError, match="needs the sender of each of the 2 rows"):
        rule(np.ones((2, 3), np.float32))
    _run(rule, np.ones((2, 3), np.float32), None, ["client-0", "client-1"])  # no trips: no timing model
    assert math.isnan(rule.round_metrics()["hier_latency_edge_s"])
