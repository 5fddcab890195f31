"""Hierarchical aggregation end to end: settings, load-time refusals, and a run equal to the flat one."""

from __future__ import annotations

import logging
import math
import re

import pytest

from stamen.server.checks import check_settings
from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario
from stamen.task.settings_load import load_settings

H = "aggregation.hierarchy."


def _settings(*overrides: str) -> object:
    return load_settings("demo", [f"{H}mode=regions", *overrides])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((f"{H}groups=11",), "aggregation.hierarchy.groups=11 exceeds clients.per_round=10"),
        (
            (f"{H}edge_rule=bristle",),
            "aggregation.hierarchy.edge_rule='bristle' cannot be used in a hierarchy",
        ),
        (("aggregation.rule=centered_clipping",), "aggregation.rule='centered_clipping' cannot be used"),
        (
            (f"{H}edge_rule=trimmed_mean", f"{H}gamma=0.1"),
            "aggregation.hierarchy parameter(s) gamma not accepted by edge_rule 'trimmed_mean'"
            " (accepted: beta)",
        ),
        (("privacy.mode=central",), "does not support privacy.mode='central'"),
        (("server.mode=fedbuff",), "needs server.mode='sync', got 'fedbuff'"),
        (("aggregation.pre=nnm",), "does not support aggregation.pre=['nnm']"),
        ((f"{H}codec=nope",), "nope"),
        # a balanced region holds 10 // 5 = 2 updates: Krum needs 2f + 2 < n
        ((f"{H}groups=5", f"{H}edge_rule=krum"), "edge_rule 'krum' on a region of 2 updates"),
        # the root sees 2 region updates
        ((f"{H}groups=2", "aggregation.rule=krum"), "aggregation.rule 'krum' on 2 region updates"),
    ],
)
def test_refused_before_round_one(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_settings(_settings(*overrides))  # type: ignore[arg-type]


def test_settings_parse_and_default_flat() -> None:
    s = _settings(f"{H}groups=3", f"{H}assign=hash", f"{H}edge_rule=trimmed_mean", f"{H}beta=0.1")
    h = s.aggregation.hierarchy  # type: ignore[attr-defined]
    assert (h.mode, h.groups, h.assign, h.edge_rule, dict(h.params)) == (
        "regions",
        3,
        "hash",
        "trimmed_mean",
        {"beta": 0.1},
    )
    check_settings(s)  # type: ignore[arg-type]
    assert load_settings("demo").aggregation.hierarchy.mode == "flat"
    with pytest.raises(ValueError, match=re.escape("aggregation.hierarchy.groups must be >= 1, got 0")):
        _settings(f"{H}groups=0")
    with pytest.raises(ValueError, match=re.escape("aggregation.hierarchy.assign='ring' is not allowed")):
        _settings(f"{H}assign=ring")


@pytest.mark.slow
def test_hierarchical_fedavg_run_equals_flat() -> None:
    base = ["rounds=2", "data.num_clients=8", "clients.per_round=6"]
    flat = run_engine("inprocess", SimulationPlan.from_scenario(load_scenario("smoke", base)))
    hier = run_engine(
        "inprocess",
        SimulationPlan.from_scenario(load_scenario("smoke", [*base, f"{H}mode=regions", f"{H}groups=3"])),
    )
    for f, h in zip(flat.rounds, hier.rounds, strict=True):
        assert h.accuracy == pytest.approx(f.accuracy, abs=1e-6)
        assert h.loss == pytest.approx(f.loss, abs=1e-6)
        assert (f.hier_regions, h.hier_regions) == (0, 3)
        assert 0 < h.hier_bytes_root < h.bytes_up  # 3 region envelopes against 6 client envelopes
        assert h.hier_latency_edge_s > 0 and h.hier_latency_root_s > 0.02
        assert math.isnan(f.hier_latency_root_s)


@pytest.mark.slow
def test_flower_engine_runs_the_same_hierarchy() -> None:
    """The hierarchy lives in the round driver: Flower's engine aggregates the same regions."""
    plan = SimulationPlan.from_scenario(
        load_scenario("smoke", ["rounds=2", f"{H}mode=regions", f"{H}groups=2"])
    )
    fast, real = run_engine("inprocess", plan), run_engine("flower", plan)
    for a, b in zip(fast.rounds, real.rounds, strict=True):
        assert (b.hier_regions, b.hier_bytes_root) == (a.hier_regions, a.hier_bytes_root) == (2, 19872)
        assert b.accuracy == pytest.approx(a.accuracy, abs=0.01)
        assert math.isnan(b.hier_latency_edge_s)  # Flower's engine has no client timing model


def test_a_flat_run_warns_of_the_hierarchy_keys_it_ignores(caplog: pytest.LogCaptureFixture) -> None:
    flat = load_settings("demo", [f"{H}mode=flat", f"{H}groups=2", f"{H}beta=0.1"])
    with caplog.at_level(logging.WARNING, logger="stamen.server"):
        check_settings(flat)  # type: ignore[arg-type]
    assert "aggregation.hierarchy.groups, aggregation.hierarchy.beta: ignored while" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stamen.server"):
        check_settings(load_settings("demo"))  # type: ignore[arg-type]
        check_settings(_settings(f"{H}groups=2"))  # type: ignore[arg-type]
    assert "aggregation.hierarchy" not in caplog.text
