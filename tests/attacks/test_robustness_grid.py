"""The robustness benchmark's grid: which attack applies to which rule, and that every cell's
overrides build the intended run (FRL and Bristle with their own model, trainer and codec)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_robustness.py"
    spec = importlib.util.spec_from_file_location("bench_robustness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_robustness"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


B = _bench()


def test_which_attacks_apply() -> None:
    assert B.applies("frl", "rank_reversal") and B.applies("frl", "label_flip") and B.applies("frl", "none")
    assert not B.applies("frl", "sign_flip") and not B.applies("frl", "alie")
    assert not B.applies("median", "rank_reversal") and not B.applies("bristle", "rank_reversal")
    assert B.applies("bristle", "gaussian") and B.applies("fedavg", "label_flip")
    grid = B.Grid(["frl", "median"], list(B.ATTACKS), [0.2], ["iid"], [0, 1], 20)
    per_seed = {"frl": 1 + 2, "median": 1 + len(B.ATTACKS) - 1}  # clean + applicable attacks
    assert len(grid.cells()) == 2 * sum(per_seed.values())


@pytest.mark.parametrize("rule", ["frl", "bristle", "trimmed_mean"])
def test_cell_overrides_build_the_intended_run(rule: str) -> None:
    attack = "rank_reversal" if rule == "frl" else "gaussian"
    cell = B.Cell(rule, attack, 0.2, "iid", 3, 20)
    plan = SimulationPlan.from_scenario(load_scenario("smoke", B.overrides(cell)))
    s, cfg = plan.scenario, plan.cfg
    assert s.aggregation.rule == rule and cfg.seed == 3 and len(plan.malicious) == 4
    assert s.attack.kind == attack
    expect = {
        "frl": ("frl", "supermask_mlp", "frl_rank"),
        "bristle": ("bristle", "bristle_transfer", "dense"),
        "trimmed_mean": ("full", "mlp", "dense"),
    }[rule]
    assert (cfg.train.trainer, cfg.task.model, cfg.codec.to_string()) == expect
    if rule == "trimmed_mean":
        assert s.aggregation.params == {"beta": 0.2}  # assumed f = 4 of 20


def test_spread_and_seed_table_by_hand() -> None:
    assert B.spread([0.5, 0.1, math.nan, 0.3]) == "0.300 (0.100–0.500)" and B.spread([math.nan]) == "—"
    done = {}
    for seed, (clean, flip) in enumerate([(0.6, 0.4), (0.5, 0.2), (0.7, 0.3)]):
        for attack, fr, acc in (("none", 0.0, clean), ("label_flip", 0.2, flip)):
            cell = B.Cell("median", attack, fr, "iid", seed, 20)
            done[cell.key] = {"seed": seed, "fraction": fr, "rounds": 20, "accuracy": acc}
    text = B.seed_table(done, B.Grid(["median"], ["label_flip"], [0.2], ["iid"], [0], 20), 0.2)
    assert "| median | 3 | 0.600 (0.500–0.700) | 0.300 (0.200–0.400) | **0.300 (0.200–0.400)** |" in text
    other = B.Grid(["median"], ["label_flip"], [0.2], ["dirichlet0.5"], [0], 20)
    assert "dirichlet" not in B.seed_table(done, other, 0.2)  # no seeds there: no table
