"""FRL through the real server path: frl trainer -> frl_rank envelopes -> the driver's collector
(decode, validate) -> begin_round + vote -> new scores; with and without the rank_reversal adversary."""

from __future__ import annotations

import numpy as np

from stamen.client.core import encode_delta, local_update
from stamen.protocols import keys, model_hash
from stamen.server.aggregators import create
from stamen.server.driver.collect import CollectPolicy, UpdateCollector
from stamen.server.driver.driver import AggregateMode
from stamen.server.driver.types import Reply, TrainTask
from stamen.simulations.adversary import Adversary
from stamen.simulations.attacks.rank_reversal import rank_reversal
from stamen.simulations.provider import DataSpec, client_data, task_for
from stamen.simulations.provider import test_data as held_out
from stamen.task.models import build_model
from stamen.task.seeds import client_seed
from stamen.task.spec import RoundInstructions, TrainSpec
from stamen.task.weights import evaluate_model, get_weights, set_weights

DATA = DataSpec(dataset="digits", num_clients=24, partition="dirichlet", alpha=1.0, seed=0)
TASK = task_for(DATA, model="supermask_mlp", hidden=(32,))
INITIAL = get_weights(build_model(TASK))
SPEC = TrainSpec(trainer="frl", epochs=2, batch_size=8, lr=0.4, momentum=0.9, weight_decay=1e-4)


def _run(rounds: int, malicious: tuple[int, ...] = ()) -> tuple[float, float, list[int], list[int]]:
    model = build_model(TASK)
    weights = get_weights(model)
    rule = create("frl")
    adversary = Adversary(0, malicious, rank_reversal(), minority=False) if malicious else None
    test = held_out(DATA)
    set_weights(model, weights)
    acc0 = evaluate_model(model, test.x, test.y)[1]
    sizes, dense_sizes = [], []
    for rnd in range(1, rounds + 1):
        h = model_hash(weights)
        clients = list(range(rnd % 4, 24, 4))
        instr = RoundInstructions(rnd, rnd, 0, "frl_rank", False, TASK, SPEC)
        tasks = [TrainTask(f"client-{pid}", instr, weights, None, h) for pid in clients]
        collector = UpdateCollector(weights, tasks, CollectPolicy())
        for pid in clients:
            seed = client_seed(0, rnd, pid)
            res = local_update(model, weights, client_data(DATA, pid), SPEC, seed)
            kw = dict(base_hash=h, version=rnd, sender=f"client-{pid}", seed=seed)
            data = encode_delta(res.delta, "frl_rank", **kw)
            sizes.append(len(data))
            dense_sizes.append(len(encode_delta(res.delta, "dense", **kw)))
            reply = Reply(f"client-{pid}", envelope=data, metrics={keys.NUM_EXAMPLES: res.num_examples})
            assert collector.add(reply)
        new = AggregateMode(rule, 1.0, adversary).close(rnd, collector.finish())
        assert new is not None
        for name, value in new.items():
            if name.endswith("scores"):  # the voted scores are a permutation of the initial ones
                initial = np.sort(INITIAL[name].reshape(-1))
                np.testing.assert_allclose(np.sort(value.reshape(-1)), initial, atol=1e-6)
            else:
                np.testing.assert_array_equal(value, weights[name])
        weights = new
    set_weights(model, weights)
    return acc0, evaluate_model(model, test.x, test.y)[1], sizes, dense_sizes


def test_frl_learns_and_rankings_are_smaller_than_float32() -> None:
    acc0, acc, sizes, dense = _run(6)
    assert acc > acc0 + 0.3, (acc0, acc)
    # per update: 64x32 scores at 11 bits + 32x10 at 9 bits, frozen weights O(1); the dense
    # codec sends weights and scores as float32: 2 x 4 x 2368 bytes
    packed = (2048 * 11 + 320 * 9) / 8
    assert all(packed <= s <= packed + 500 for s in sizes)  # + envelope header (~400 B)
    assert all(d >= 8 * 2368 for d in dense)


def test_rank_reversal_hook_forges_reversed_rows() -> None:
    bad = tuple(range(12))  # 3 of the 6 voters each round
    _, acc_attacked, _, _ = _run(3, bad)
    _, acc_clean, _, _ = _run(3)
    assert acc_attacked < acc_clean  # half of the voters reversed each round: the vote is hurt
