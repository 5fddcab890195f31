"""Peer mode through the engines equals the pure reference ``run_peer_mode`` on the same setup.

The reference is built independently from the scenario: one :class:`PeerNode` per partition (its
training classes, its local test slice, honest unless in ``cfg.malicious``), training through
``local_update`` with the engines' per-client seeds, the scenario's update attack as ``forge``,
and evaluation of each honest node's consolidated layer on the held-out split.
"""

from __future__ import annotations

import numpy as np
import pytest

from stamen.client.core import local_update
from stamen.simulations.attacks import attack_type, create_update_attack
from stamen.simulations.bristle_data import validation_slice
from stamen.simulations.engines import run_engine
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.provider import client_data
from stamen.simulations.scenario import load_scenario
from stamen.task.bristle.peer import PeerConfig, PeerNode, run_peer_mode
from stamen.task.models import build_model
from stamen.task.seeds import client_seed
from stamen.task.weights import get_weights


def _cfg(*overrides: str) -> SimulationPlan:
    return SimulationPlan.from_scenario(load_scenario("bristle", ["aggregation.mode=peer", *overrides]))


def _reference(plan: SimulationPlan) -> list[float]:
    cfg, s = plan.cfg, plan.scenario
    model, evaluate = build_model(cfg.task), plan.evaluator()
    nodes = []
    for pid in range(cfg.num_clients):
        classes = tuple(int(c) for c in np.unique(client_data(plan.data, pid).y))
        feats, labels = validation_slice(cfg.seed, classes, node=pid)
        nodes.append(PeerNode(classes, feats, labels, honest=pid not in plan.malicious))

    def train(i: int, rnd: int, layer: np.ndarray) -> np.ndarray:
        spec, seed = cfg.train_for_round(rnd), client_seed(cfg.seed, rnd, i)
        local_update(model, {"head.weight": layer}, client_data(plan.data, i), spec, seed)
        return get_weights(model)["head.weight"]

    kind = s.attack.kind
    update_attack = kind != "none" and attack_type(kind) == "update"
    forge = create_update_attack(kind, **dict(s.attack.params)) if update_attack else None
    params = s.aggregation.params
    peer = PeerConfig(**{k: int(v) for k, v in params.items() if k in ("num_closest", "num_random")})
    _, hist = run_peer_mode(
        nodes, np.zeros((10, 350), np.float32), cfg.rounds, train, cfg.seed, peer, forge,
        evaluate=lambda i, w: evaluate({"head.weight": w})[1],
    )  # fmt: skip
    return hist


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ("rounds=3",),  # the scenario: 3 of 10 nodes flip their labels (data attack)
        (  # update attack (forged shared layers) and a prioritizer that drops peers (its rng matters)
            "rounds=3",
            "attack.kind=gaussian",
            "attack.std=0.5",
            "aggregation.num_closest=3",
            "aggregation.num_random=2",
        ),
    ],
)
def test_inprocess_peer_mode_equals_pure_reference(overrides: tuple[str, ...]) -> None:
    cfg = _cfg(*overrides)
    assert len(cfg.malicious) == 3
    res = run_engine("inprocess", cfg)
    hist = _reference(cfg)
    assert [r.accuracy for r in res.rounds] == pytest.approx(hist, abs=1e-12)
    assert hist[-1] > hist[0] > 0.2  # the honest nodes learn (10 classes: chance is 0.1)
    assert res.extra["evaluation"].startswith("peer mode")
    assert all(r.rejected == 0 for r in res.rounds)
    first, later = res.rounds[0].bytes_down, res.rounds[1].bytes_down
    # round 1 sends only the initial layer; then each of the 7 honest nodes also gets 9 peers' layers
    per_layer = 10 * 350 * 4 + 128  # float32 payload + .npy header
    assert later - first == 7 * 9 * per_layer


def test_peer_mode_differs_from_server_mode() -> None:
    peer = run_engine("inprocess", _cfg("rounds=2"))
    server = run_engine("inprocess", _cfg("rounds=2", "aggregation.mode=server"))
    assert "evaluation" not in server.extra and [r.accuracy for r in peer.rounds] != [
        r.accuracy for r in server.rounds
    ]
