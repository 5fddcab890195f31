"""The full trainer and the pinned sign convention delta = local - global."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.client.core import encode_delta, local_update
from stamen.client.trainers import available_trainers, create_trainer
from stamen.protocols import keys, model_hash
from stamen.server.aggregators import create
from stamen.server.driver.collect import CollectPolicy, UpdateCollector
from stamen.server.driver.driver import AggregateMode
from stamen.server.driver.types import Reply, TrainTask
from stamen.simulations.provider import DataSpec, client_data, task_for
from stamen.task.models import build_model
from stamen.task.seeds import client_seed
from stamen.task.spec import RoundInstructions, TrainSpec
from stamen.task.weights import get_weights, set_weights

DATA = DataSpec(dataset="digits", num_clients=4, seed=1)
TASK = task_for(DATA, hidden=(16,))
SPEC = TrainSpec(epochs=1, batch_size=16, lr=0.1)


def test_delta_is_local_minus_global() -> None:
    model = build_model(TASK)
    start = get_weights(model)
    result = local_update(model, start, client_data(DATA, 0), SPEC, seed=3)
    end = get_weights(model)
    for k in start:
        np.testing.assert_array_equal(result.delta[k], end[k] - start[k])
    assert any(np.abs(result.delta[k]).max() > 0 for k in start)
    assert result.num_examples == len(client_data(DATA, 0).y)


def test_one_client_fedavg_reproduces_the_local_model() -> None:
    """With one client and server_lr = 1, global + delta must be the client's local model."""
    model = build_model(TASK)
    start = get_weights(model)
    result = local_update(model, start, client_data(DATA, 0), SPEC, seed=3)
    payload = encode_delta(result.delta, "dense", base_hash=model_hash(start), version=1, sender="c0", seed=0)
    instr = RoundInstructions(1, 1, 0, "dense", False, TASK, SPEC)
    collector = UpdateCollector(
        start, [TrainTask("c0", instr, start, None, model_hash(start))], CollectPolicy()
    )
    assert collector.add(Reply("c0", envelope=payload, metrics={keys.NUM_EXAMPLES: result.num_examples}))
    new = AggregateMode(create("fedavg"), 1.0).close(1, collector.finish())
    assert new is not None
    for k, v in get_weights(model).items():
        np.testing.assert_allclose(new[k], v, atol=1e-6)


def test_training_is_reproducible_and_seed_sensitive() -> None:
    model = build_model(TASK)
    start = get_weights(model)
    a = local_update(model, start, client_data(DATA, 1), SPEC, seed=client_seed(0, 1, 1)).delta
    b = local_update(model, start, client_data(DATA, 1), SPEC, seed=client_seed(0, 1, 1)).delta
    c = local_update(model, start, client_data(DATA, 1), SPEC, seed=client_seed(0, 2, 1)).delta
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_training_reduces_loss() -> None:
    model = build_model(TASK)
    data = client_data(DATA, 0)
    losses = []
    for rnd in range(4):
        w = get_weights(model)
        res = local_update(model, w, data, TrainSpec(epochs=3, lr=0.1), seed=rnd)
        losses.append(res.metrics["train-loss"])
    assert losses[-1] < losses[0]


def test_registry_and_spec_errors() -> None:
    assert "full" in available_trainers()
    with pytest.raises(ValueError, match="unknown trainer 'nope'"):
        create_trainer("nope")
    with pytest.raises(ValueError, match="optimizer"):
        TrainSpec(optimizer="rmsprop")
    with pytest.raises(ValueError, match="lr"):
        TrainSpec(lr=0.0)
    with pytest.raises(ValueError, match=r"unknown key 'train\.lrr'"):
        TrainSpec.from_config({"train.lrr": 1})
    with pytest.raises(ValueError, match="out of range"):
        client_data(DATA, 4)


def test_set_weights_rejects_mismatch() -> None:
    model = build_model(TASK)
    w = get_weights(model)
    w.pop(next(iter(w)))
    with pytest.raises(ValueError, match="missing"):
        set_weights(model, w)
