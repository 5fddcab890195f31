"""The closed-form dense step equals the vmap + autograd path and the per-client loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stamen.client.core import local_update
from stamen.simulations.cohort import CohortData, client_seeds, train_cohort
from stamen.simulations.cohort.dense import DenseLayer, dense_plan
from stamen.simulations.cohort.mt19937 import randperms, randperms_loop
from stamen.task.data import TaskData
from stamen.task.models import create_model
from stamen.task.spec import TrainSpec
from stamen.task.weights import get_weights


def _clients(sizes: list[int], features: int, classes: int) -> list[TaskData]:
    rng = np.random.default_rng(3)
    return [
        TaskData(
            rng.normal(size=(n, features)).astype(np.float32), rng.integers(0, classes, n), classes, features
        )
        for n in sizes
    ]


def _tanh_chain() -> nn.Module:
    torch.manual_seed(4)
    inner = nn.Sequential(nn.Linear(9, 7, bias=False), nn.Tanh())
    return nn.Sequential(nn.Flatten(), inner, nn.Linear(7, 6), nn.ReLU(), nn.Identity(), nn.Linear(6, 4))


def test_plan_of_the_registry_models() -> None:
    mlp = create_model("mlp", 5, 3, (8, 6), seed=0)
    names = list(get_weights(mlp))
    assert dense_plan(mlp, names) == [
        DenseLayer(0, 1, "relu"),
        DenseLayer(2, 3, "relu"),
        DenseLayer(4, 5, "identity"),
    ]
    logreg = create_model("logreg", 5, 3, (), seed=0)
    assert dense_plan(logreg, list(get_weights(logreg))) == [DenseLayer(0, 1, "identity")]
    chain = _tanh_chain()
    assert dense_plan(chain, list(get_weights(chain))) == [
        DenseLayer(0, None, "tanh"),
        DenseLayer(1, 2, "relu"),
        DenseLayer(3, 4, "identity"),
    ]


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 2)),  # a convolution
        nn.Sequential(nn.Linear(4, 3), nn.ReLU()),  # an activation after the logits
        nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Tanh(), nn.Linear(3, 2)),  # two activations in a row
        nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2)),  # an activation it does not write out
        nn.Linear(4, 2),  # not a Sequential
        type(
            "Doubled", (nn.Sequential,), {"forward": lambda self, x: 2 * super(type(self), self).forward(x)}
        )(nn.Linear(4, 2)),  # a Sequential subclass with its own forward
        nn.Sequential(
            type("Twice", (nn.Sequential,), {})(nn.Linear(4, 3)), nn.Linear(3, 2)
        ),  # nested subclass
    ],
)
def test_other_structures_keep_the_general_path(model: nn.Module) -> None:
    assert dense_plan(model, [n for n, _ in model.named_parameters()]) is None


@pytest.mark.parametrize("arch", ["mlp", "logreg", "tanh-chain"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_closed_form_equals_autograd_and_the_loop(arch: str, optimizer: str) -> None:
    model = _tanh_chain() if arch == "tanh-chain" else create_model(arch, 9, 4, (11,), seed=2)
    spec = TrainSpec(
        epochs=2, batch_size=8, lr=0.05, optimizer=optimizer, momentum=0.5 * (optimizer == "sgd")
    )
    sizes = [23, 1, 8, 40, 9]
    clients, weights = _clients(sizes, 9, 4), get_weights(model)
    seeds = client_seeds(5, 1, np.arange(len(sizes)))
    data = CohortData.from_clients(clients, "cpu")
    fast = train_cohort(model, weights, data, spec, seeds)
    slow = train_cohort(model, weights, data, spec, seeds, closed_form=False)
    # Adam divides by sqrt(v): an entry whose gradient is ~0 turns float rounding into a step of up
    # to ~lr * 1e-3, so its absolute tolerance is larger than SGD's
    atol = 2e-5 if optimizer == "adam" else 2e-6
    np.testing.assert_allclose(fast.deltas, slow.deltas, rtol=1e-4, atol=atol)
    np.testing.assert_allclose(fast.train_loss, slow.train_loss, rtol=1e-5)
    torch.set_num_threads(1)
    for k, (client, seed) in enumerate(zip(clients, seeds, strict=True)):
        ref = local_update(model, weights, client, spec, int(seed))
        row = np.concatenate([ref.delta[n].ravel() for n in weights])
        np.testing.assert_allclose(fast.deltas[k], row, rtol=1e-4, atol=atol)
        assert fast.train_loss[k] == pytest.approx(ref.metrics["train-loss"], rel=1e-5)
    assert np.abs(fast.deltas).max() > 1e-3  # the clients did move


def test_randperms_loop_equals_the_vectorised_generator() -> None:
    rng = np.random.default_rng(8)
    seeds, sizes = rng.integers(0, 2**62, 30), rng.integers(1, 70, 30)
    a, b = randperms(seeds, sizes, 3), randperms_loop(seeds, sizes, 3)
    assert a.shape == b.shape
    for k, n in enumerate(sizes):
        np.testing.assert_array_equal(a[:, :n, k], b[:, :n, k])


@pytest.mark.parametrize("entries", [1, 40, 100])  # one step per block, blocks cutting mid-epoch
def test_batch_blocks_of_any_size_give_the_same_updates(
    monkeypatch: pytest.MonkeyPatch, entries: int
) -> None:
    import stamen.simulations.cohort.train as train_mod

    model = create_model("mlp", 9, 4, (11,), seed=2)
    clients, weights = _clients([23, 1, 8, 40, 9], 9, 4), get_weights(model)
    seeds = client_seeds(5, 1, np.arange(5))
    spec = TrainSpec(epochs=3, batch_size=4, lr=0.05)
    whole = train_cohort(model, weights, CohortData.from_clients(clients, "cpu"), spec, seeds)
    monkeypatch.setattr(train_mod, "BLOCK_ENTRIES", entries)
    cut = train_cohort(model, weights, CohortData.from_clients(clients, "cpu"), spec, seeds)
    np.testing.assert_array_equal(cut.deltas, whole.deltas)
    np.testing.assert_array_equal(cut.train_loss, whole.train_loss)
