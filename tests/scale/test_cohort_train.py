"""Cohort-batched training equals the per-client loop (local_update, trainer 'full'), client by client."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stamen.client.core import local_update
from stamen.simulations.cohort import (
    CohortData,
    cannot_batch_reason,
    client_seeds,
    module_reason,
    train_cohort,
)
from stamen.task.data import TaskData
from stamen.task.models import create_model
from stamen.task.settings import LoRAConfig
from stamen.task.spec import TaskSpec, TrainSpec
from stamen.task.weights import get_weights

SPECS = {
    "sgd": TrainSpec(epochs=2, batch_size=16, lr=0.05),
    "sgd-momentum-wd": TrainSpec(epochs=3, batch_size=7, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": TrainSpec(epochs=2, batch_size=10, lr=0.01, optimizer="adam", weight_decay=1e-3),
}


def _clients(sizes: list[int], features: int, classes: int, seed: int = 0) -> list[TaskData]:
    rng = np.random.default_rng(seed)
    return [
        TaskData(
            rng.normal(size=(n, features)).astype(np.float32),
            rng.integers(0, classes, n).astype(np.int64),
            classes,
            features,
        )
        for n in sizes
    ]


def _loop(model: nn.Module, weights: dict, clients: list[TaskData], spec: TrainSpec, seeds: np.ndarray):
    torch.set_num_threads(1)
    results = [local_update(model, weights, c, spec, int(s)) for c, s in zip(clients, seeds, strict=True)]
    stack = np.stack([np.concatenate([r.delta[n].ravel() for n in weights]) for r in results])
    return stack, np.array([r.metrics["train-loss"] for r in results])


def test_hand_computed_logreg_step() -> None:
    # logits = W x + b = 0 -> softmax (1/2, 1/2); y = 0, x = 2:
    # dL/dW = ((-1/2) * 2, (1/2) * 2), dL/db = (-1/2, 1/2); delta = -lr * grad
    model = create_model("logreg", 1, 2, (), seed=0)
    weights = {"0.weight": np.zeros((2, 1), np.float32), "0.bias": np.zeros(2, np.float32)}
    data = CohortData.from_clients([TaskData(np.array([[2.0]], np.float32), np.array([0]), 2, 1)], "cpu")
    res = train_cohort(model, weights, data, TrainSpec(epochs=1, batch_size=1, lr=0.1), np.array([3]))
    np.testing.assert_allclose(res.deltas[0], [0.1, -0.1, 0.05, -0.05], rtol=1e-6)
    assert res.train_loss[0] == pytest.approx(np.log(2), rel=1e-6)
    assert [t.name for t in res.table] == ["0.weight", "0.bias"] and res.num_examples.tolist() == [1]


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("arch", ["mlp", "logreg"])
def test_equals_the_per_client_loop(name: str, arch: str) -> None:
    spec = SPECS[name]
    sizes = [37, 1, 16, 90, 5, 33, 17, 64]  # unequal: short last batches, 1-sample clients, idle steps
    clients = _clients(sizes, 12, 5)
    model = create_model(arch, 12, 5, (20, 9), seed=1)
    weights = get_weights(model)
    seeds = client_seeds(7, 2, np.arange(len(sizes)))
    res = train_cohort(model, weights, CohortData.from_clients(clients, "cpu"), spec, seeds, chunk_size=3)
    ref, ref_loss = _loop(model, weights, clients, spec, seeds)
    assert res.deltas.shape == ref.shape and res.deltas.dtype == np.float32
    np.testing.assert_allclose(res.deltas, ref, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(res.train_loss, ref_loss, rtol=1e-5)
    assert res.num_examples.tolist() == sizes


def test_cnn_equals_the_per_client_loop_and_fills_a_torch_out() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(8, 3))
    weights = get_weights(model)
    rng = np.random.default_rng(1)
    clients = [
        TaskData(rng.normal(size=(n, 2, 6)).astype(np.float32), rng.integers(0, 3, n), 3, 12)
        for n in (9, 4, 21)
    ]
    seeds = np.array([11, 12, 13])
    out = torch.full((3, sum(w.size for w in weights.values())), float("nan"))
    spec = SPECS["sgd-momentum-wd"]
    res = train_cohort(model, weights, CohortData.from_clients(clients, "cpu"), spec, seeds, out=out)
    ref, _ = _loop(model, weights, clients, spec, seeds)
    assert res.deltas is out
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=2e-6)


def test_pool_rows_equal_own_arrays() -> None:
    # clients as index views into one pool give the same updates as clients with their own arrays
    pool = _clients([60], 6, 3)[0]
    rows = [np.array([3, 9, 10, 41]), np.arange(20, 59), np.array([0])]
    own = [TaskData(pool.x[r], pool.y[r], 3, 6) for r in rows]
    model = create_model("mlp", 6, 3, (8,), seed=2)
    w, seeds, spec = get_weights(model), np.array([1, 2, 3]), SPECS["adam"]
    a = train_cohort(model, w, CohortData.from_rows(pool.x, pool.y, rows, "cpu"), spec, seeds)
    b = train_cohort(model, w, CohortData.from_clients(own, "cpu"), spec, seeds)
    np.testing.assert_array_equal(a.deltas, b.deltas)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu() -> None:
    clients = _clients([30, 7, 50], 10, 4)
    model = create_model("mlp", 10, 4, (16,), seed=0)
    w, seeds, spec = get_weights(model), np.array([5, 6, 7]), SPECS["sgd-momentum-wd"]
    cpu = train_cohort(model, w, CohortData.from_clients(clients, "cpu"), spec, seeds)
    gpu = train_cohort(model, w, CohortData.from_clients(clients, "cuda"), spec, seeds)
    np.testing.assert_allclose(gpu.deltas, cpu.deltas, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize(
    ("task", "train", "needle"),
    [
        (TaskSpec(), TrainSpec(trainer="dp_sgd"), "per-example clipping"),
        (TaskSpec(), TrainSpec(trainer="lora"), "'lora'"),
        (TaskSpec(), TrainSpec(trainer="fedsb"), "Fed-SB"),
        (TaskSpec(), TrainSpec(trainer="sparse"), "'sparse'"),
        (TaskSpec(), TrainSpec(trainer="frl"), "'frl'"),
        (TaskSpec(), TrainSpec(trainer="bristle"), "'bristle'"),
        (TaskSpec(model="minilm-tiny"), TrainSpec(), "model 'minilm-tiny'"),
        (TaskSpec(lora=LoRAConfig(adapter="lora")), TrainSpec(), "adapter 'lora'"),
    ],
)
def test_cannot_batch_reasons(task: TaskSpec, train: TrainSpec, needle: str) -> None:
    reason = cannot_batch_reason(task, train)
    assert reason is not None and needle in reason


def test_batchable_tasks_have_no_reason() -> None:
    assert cannot_batch_reason(TaskSpec(model="mlp"), TrainSpec(local_dp=True, momentum=0.9)) is None
    assert cannot_batch_reason(TaskSpec(model="logreg"), TrainSpec(optimizer="adam")) is None


class _Custom(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), "buffers"),
        (nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.1)), "Dropout"),
        (_Custom(nn.Linear(3, 4)), "_Custom"),
    ],
)
def test_module_reasons_and_refusal(model: nn.Module, needle: str) -> None:
    assert needle in (module_reason(model) or "")
    data = CohortData.from_clients(_clients([4], 3, 4), "cpu")
    with pytest.raises(ValueError, match="cannot batch this model"):
        train_cohort(model, get_weights(model), data, TrainSpec(), np.array([0]))


def test_bad_inputs_are_refused() -> None:
    model = create_model("logreg", 3, 2, (), seed=0)
    w = get_weights(model)
    data = CohortData.from_clients(_clients([4, 5], 3, 2), "cpu")
    with pytest.raises(ValueError, match="trainer 'full' only"):
        train_cohort(model, w, data, TrainSpec(trainer="dp_sgd"), np.array([0, 1]))
    with pytest.raises(ValueError, match="one seed per client"):
        train_cohort(model, w, data, TrainSpec(), np.array([0]))
    with pytest.raises(ValueError, match=r"out must be float32 of shape \(2, 8\)"):
        train_cohort(model, w, data, TrainSpec(), np.array([0, 1]), out=np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match="partition is empty"):
        CohortData.from_rows(
            np.zeros((3, 3)), np.zeros(3, np.int64), [np.array([0]), np.array([], int)], "cpu"
        )
