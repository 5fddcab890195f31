"""The ``frl`` trainer: scores-only SGD with the code's per-epoch cosine schedule; the update is
the ranking of each score tensor (zeros for frozen tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stamen.client.core import local_update
from stamen.client.state import ClientState
from stamen.client.trainers import create_trainer
from stamen.client.trainers.frl import cosine_epoch_lr, ranking_update
from stamen.simulations.provider import DataSpec, client_data, task_for
from stamen.task.data import TaskData
from stamen.task.models import build_model, create_model
from stamen.task.spec import TrainSpec
from stamen.task.weights import get_weights

DATA = DataSpec(dataset="digits", num_clients=20, seed=3)
TASK = task_for(DATA, model="supermask_mlp", hidden=(16,))
SPEC = TrainSpec(trainer="frl", epochs=2, batch_size=8, lr=0.4, momentum=0.9, weight_decay=1e-4)


def test_cosine_schedule_by_hand() -> None:
    assert cosine_epoch_lr(0.4, 0, 2) == pytest.approx(0.4)
    assert cosine_epoch_lr(0.4, 1, 2) == pytest.approx(0.2)
    assert cosine_epoch_lr(1.0, 1, 4) == pytest.approx((1 + np.cos(np.pi / 4)) / 2)


def test_update_is_rankings_for_scores_and_zeros_elsewhere() -> None:
    model = build_model(TASK)
    start = get_weights(model)
    res = local_update(model, start, client_data(DATA, 0), SPEC, seed=1)
    end = get_weights(model)
    assert list(res.delta) == list(start)
    for name, d in res.delta.items():
        assert d.dtype == np.float32 and d.shape == start[name].shape
        if name.endswith("scores"):
            assert sorted(d.reshape(-1).tolist()) == list(range(d.size))  # a permutation
            np.testing.assert_array_equal(d.reshape(-1), np.argsort(end[name].reshape(-1), kind="stable"))
            assert not np.array_equal(end[name], start[name])  # scores trained
        else:
            assert not d.any()
            np.testing.assert_array_equal(end[name], start[name])  # frozen weights untouched


def test_training_is_reproducible() -> None:
    model = build_model(TASK)
    w = get_weights(model)
    a = local_update(model, w, client_data(DATA, 1), SPEC, seed=5).delta
    b = local_update(model, w, client_data(DATA, 1), SPEC, seed=5).delta
    c = local_update(model, w, client_data(DATA, 1), SPEC, seed=6).delta
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_ranking_update_pinned_small_model() -> None:
    model = create_model("supermask_mlp", 3, 2, (), seed=0)
    with torch.no_grad():
        model.state_dict()["net.0.scores"].copy_(torch.tensor([[0.5, -0.1, 0.3], [-2.0, 0.0, 1.0]]))
    out = ranking_update(model)
    assert out["net.0.scores"].tolist() == [[3.0, 1.0, 4.0], [2.0, 0.0, 5.0]]
    assert not out["net.0.weight"].any()


def test_refusals() -> None:
    trainer = create_trainer("frl")
    data = client_data(DATA, 0)
    mlp = create_model("mlp", data.input_dim, 10, (4,), seed=0)
    with pytest.raises(ValueError, match="supermask"):
        trainer.train(mlp, data, SPEC, 0, ClientState())
    with pytest.raises(ValueError, match="SGD"):
        trainer.train(build_model(TASK), data, TrainSpec(trainer="frl", optimizer="adam"), 0, ClientState())
    empty = TaskData(data.x[:0], data.y[:0], 10, data.input_dim)
    with pytest.raises(ValueError, match="empty"):
        trainer.train(build_model(TASK), empty, SPEC, 0, ClientState())
