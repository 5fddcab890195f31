"""The full trainer and the pinned sign convention delta = local - global."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.client.core import local_update
from stamen.client.trainers import available_trainers, create_trainer
from stamen.protocols import model_hash
from stamen.server.aggregators import create
from stamen.server.rounds import RoundAggregator, ValidationPolicy
from stamen.simulations.provider import client_data
from stamen.task.models import build_model
from stamen.task.seeds import client_seed
from stamen.task.spec import TaskSpec, TrainSpec
from stamen.task.weights import get_weights, set_weights

TASK = TaskSpec(dataset="digits", num_clients=4, hidden=(16,), seed=1)
SPEC = TrainSpec(epochs=1, batch_size=16, lr=0.1)


def test_delta_is_local_minus_global() -> None:
    model = build_model(TASK)
    start = get_weights(model)
    result = local_update(model, start, client_data(TASK, 0), SPEC, seed=3)
    end = get_weights(model)
    for k in start:
        np.testing.assert_array_equal(result.delta[k], end[k] - start[k])
    assert any(np.abs(result.delta[k]).max() > 0 for k in start)
    assert result.num_examples == len(client_data(TASK, 0).y)


def test_one_client_fedavg_reproduces_the_local_model() -> None:
    """With one client and server_lr = 1, global + delta must be the client's local model."""
    model = build_model(TASK)
    start = get_weights(model)
    result = local_update(model, start, client_data(TASK, 0), SPEC, seed=3)
    ra = RoundAggregator(start, model_hash(start), 1, create("fedavg"), ValidationPolicy())
    ra._add("c0", result.delta, result.num_examples)
    new = ra.finish(1.0)
    assert new is not None
    for k, v in get_weights(model).items():
        np.testing.assert_allclose(new[k], v, atol=1e-6)


def test_training_is_reproducible_and_seed_sensitive() -> None:
    model = build_model(TASK)
    start = get_weights(model)
    a = local_update(model, start, client_data(TASK, 1), SPEC, seed=client_seed(0, 1, 1)).delta
    b = local_update(model, start, client_data(TASK, 1), SPEC, seed=client_seed(0, 1, 1)).delta
    c = local_update(model, start, client_data(TASK, 1), SPEC, seed=client_seed(0, 2, 1)).delta
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_training_reduces_loss() -> None:
    model = build_model(TASK)
    data = client_data(TASK, 0)
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
    with pytest.raises(ValueError, match="unknown keys"):
        TrainSpec.from_json('{"lrr": 1}')
    with pytest.raises(ValueError, match="out of range"):
        client_data(TASK, 4)


def test_set_weights_rejects_mismatch() -> None:
    model = build_model(TASK)
    w = get_weights(model)
    w.pop(next(iter(w)))
    with pytest.raises(ValueError, match="missing"):
        set_weights(model, w)
