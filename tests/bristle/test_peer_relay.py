"""Peer mode's relay pieces by hand: inboxes, PSI-CA claims, wire records, refusals, the client step."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.client.bristle_peer import CW, TW, PeerRound, output_layer_name, peer_update
from stamen.client.state import ClientState
from stamen.protocols import CodecSpec, encode_update, keys, model_hash
from stamen.server.bristle.relay import PeerMode, PeerRelay, sender_pid
from stamen.server.driver.offline import collect_replies
from stamen.server.driver.types import Reply
from stamen.simulations.adversary import Adversary
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario
from stamen.task.bristle.peer import PeerConfig, absorb_training, overlap_count
from stamen.task.bristle.relayed import Relayed
from stamen.task.data import ArraySource, TaskData
from stamen.task.spec import TrainSpec
from stamen.task.weights import get_weights

C, F = 3, 2


def _layer(v: float) -> np.ndarray:
    return np.full((C, F), v, np.float32)


def test_relay_inboxes_claims_and_rounds() -> None:
    relay = PeerRelay(C, malicious=[2])
    assert relay.outgoing(0).layers == {}  # round 1: nothing to relay
    relay.receive({0: _layer(0), 1: _layer(1), 2: _layer(2)}, {0: (0,), 1: (1, 2), 2: (0,)})
    out = relay.outgoing(0)
    assert sorted(out.layers) == [1, 2] and np.all(out.layers[1] == 1)
    assert out.classes == {1: (1, 2), 2: (0, 1, 2)}  # the attacker claims every class
    assert relay.outgoing(2).layers == {}  # malicious nodes never integrate
    inbox = out.inbox(familiar=[0, 1], shape=(C, F))
    assert inbox.senders == (1, 2) and inbox.counts == (1, 2) and inbox.layers.shape == (2, C, F)
    relay.receive({1: _layer(5)}, {1: (1,)})  # next round: only what was relayed this round
    assert sorted(relay.outgoing(0).layers) == [1]
    with pytest.raises(ValueError, match="declared classes"):
        relay.receive({0: _layer(0)}, {})
    assert overlap_count([0, 1, 1], [1, 2]) == 1


def test_relay_evaluates_honest_layers_only() -> None:
    relay = PeerRelay(C, malicious=[1])
    assert np.isnan(relay.evaluate(lambda w: (0.0, 1.0))[1])
    relay.receive({0: _layer(0.2), 1: _layer(9), 2: _layer(0.6)}, {0: (0,), 1: (0,), 2: (0,)})
    loss, acc = relay.evaluate(lambda w: (float(w[0, 0]) * 10, float(w[0, 0])))
    assert acc == pytest.approx(0.4) and loss == pytest.approx(4.0)


def test_relayed_records_round_trip() -> None:
    relayed = Relayed({3: _layer(1.5), 7: _layer(-2)}, {3: (0, 2), 7: (1,)})
    arrays, conf = relayed.to_plain(PeerConfig(num_closest=4, num_random=1, center=False))
    back, cfg = Relayed.from_plain(arrays, conf)
    assert cfg == PeerConfig(4, 1, False)
    assert back.classes == relayed.classes and all(
        np.array_equal(back.layers[j], relayed.layers[j]) for j in (3, 7)
    )
    del conf["classes.7"]
    with pytest.raises(ValueError, match=r"senders \[7\]"):
        Relayed.from_plain(arrays, conf)


def test_released_applies_the_attack_and_does_not_aggregate() -> None:
    base = {"head.weight": _layer(1.0)}
    h, spec = model_hash(base), CodecSpec.parse("dense")

    def flip(honest: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        return np.tile(-honest.mean(0), (k, 1))

    replies = []
    for pid, v in ((0, 2.0), (1, 50.0), (2, 4.0)):
        sender = f"client-{pid}"
        data = encode_update(
            {"head.weight": _layer(v)},
            spec,
            base_hash=h,
            version=1,
            sender=sender,
            rng=np.random.default_rng(0),
        )
        replies.append(Reply(sender, envelope=data, metrics={keys.NUM_EXAMPLES: 1, keys.PEER_CLASSES: [pid]}))
    updates = collect_replies(base, replies)
    relay = PeerRelay(C, malicious=[1])
    mode = PeerMode(relay, "head.weight", PeerConfig(), Adversary(0, [1], flip, minority=False))
    assert mode.close(1, updates) is None  # nothing is aggregated
    out = relay.shared
    np.testing.assert_array_equal(out[0], _layer(3.0))  # base + delta
    np.testing.assert_array_equal(out[1], _layer(-2.0))  # base - mean(2, 4)
    assert relay.declared == {0: (0,), 1: (1,), 2: (2,)}
    with pytest.raises(ValueError, match="partition ids"):
        sender_pid("node-4")


def test_peer_mode_refuses_what_it_cannot_run() -> None:
    def plan(*o: str) -> SimulationPlan:
        return SimulationPlan.from_scenario(load_scenario("bristle", ["aggregation.mode=peer", *o]))

    with pytest.raises(ValueError, match=r"aggregation\.pre"):
        plan("aggregation.pre=bucketing")
    with pytest.raises(ValueError, match=r"model\.name"):
        plan("model.name=mlp")
    with pytest.raises(ValueError, match="one \\(C, F\\) output layer"):
        output_layer_name({"a": np.zeros((2, 2)), "b": np.zeros(2)})


def test_client_step_round_one_then_integrates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 1 (empty inbox): cw = updateCW(0, trained). Round 2: integrate with tw, train from cw,
    updateCW; checked against the pure functions on the same inputs (training = +1 everywhere)."""
    import torch

    import stamen.client.bristle_peer as bp
    from stamen.client.trainers.base import TrainResult
    from stamen.task.bristle.peer import Inbox, PeerNode, integrate_inbox, node_rng
    from stamen.task.weights import set_weights

    def plus_one(m, start, d, spec, seed, state):  # type: ignore[no-untyped-def]
        set_weights(m, {"weight": start["weight"] + 1.0})
        return TrainResult(delta={}, num_examples=len(d.y), metrics={"train-loss": 0.5})

    feats, labels = np.eye(F, dtype=np.float32)[[0, 1, 0, 1]] * 2, np.array([0, 2, 0, 2])
    monkeypatch.setattr(bp, "local_update", plus_one)
    monkeypatch.setattr(bp, "local_test_features", lambda source: (feats, labels))
    model = torch.nn.Linear(F, C, bias=False)
    data = ArraySource(TaskData(np.zeros((4, F), np.float32), np.array([0, 0, 2, 2]), C, F))
    state, zero = ClientState(), np.zeros((C, F), np.float32)
    reply = peer_update(
        model, {"weight": zero}, data, TrainSpec(), state, Relayed({}, {}), PeerRound(0, 1, 4, PeerConfig())
    )
    cw1 = absorb_training(zero, zero + 1, (0, 2))  # rows 0 and 2 only
    np.testing.assert_array_equal(reply.result.delta["weight"], cw1)
    np.testing.assert_array_equal(state.arrays[CW], cw1)
    np.testing.assert_array_equal(state.arrays[TW], zero + 1)  # tw: the whole trained layer
    assert reply.classes == (0, 2) and reply.result.num_examples == 4

    peer = np.zeros((C, F), np.float32)
    peer[1, 1], peer[2, 1] = 5.0, 5.0  # knows class 1 and predicts class 2 well
    relayed = Relayed({9: peer}, {9: (1, 2)})
    reply2 = peer_update(
        model, {"weight": zero}, data, TrainSpec(), state, relayed, PeerRound(0, 2, 4, PeerConfig())
    )
    node = PeerNode((0, 2), feats, labels)
    cw = integrate_inbox(node, zero + 1, Inbox((9,), peer[None], (1,)), node_rng(0, 2, 4), PeerConfig())
    assert not np.allclose(cw, zero + 1)  # the peer's layer was integrated
    expected = absorb_training(cw, cw + 1, (0, 2))
    np.testing.assert_allclose(reply2.result.delta["weight"], expected, rtol=1e-6)
    np.testing.assert_allclose(state.arrays[TW], cw + 1, rtol=1e-6)
    assert get_weights(model)["weight"].shape == (C, F)
