"""The registered ``cnn``: hand-computed forward pass, layouts, every trainer path, cohort batching,
the GI conversion, a pinned output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.client.core import local_update
from stamen.server.checks import GI_MODELS
from stamen.server.staleness import ModelVersions
from stamen.server.staleness.gi_conversion import GIConfig, UnrolledSGD, convert_stale_update
from stamen.simulations.cohort import CohortData, cannot_batch_reason, client_seeds, train_cohort
from stamen.simulations.provider import DataSpec, client_data
from stamen.task.models import available_models, create_model
from stamen.task.models.cnn import input_layout
from stamen.task.spec import TaskSpec, TrainSpec
from stamen.task.weights import get_weights, set_weights

DIGITS = DataSpec(dataset="digits", num_clients=8, seed=0)
PAPER_WIDTHS = (10, 20, 50)


def test_hand_computed_forward_pass() -> None:
    """4x4 image, conv = identity (centre tap 1), ReLU, 2x2 max pool -> [2, 4, 0, 0]; dense = sum of
    the four (6), ReLU, classifier [1, -1] -> logits [6, -6]."""
    model = create_model("cnn", 16, 2, (1, 1), seed=0)
    w = {k: np.zeros_like(v) for k, v in get_weights(model).items()}
    w["1.weight"][0, 0, 1, 1] = 1.0
    w["5.weight"][:] = 1.0  # Linear(4, 1)
    w["7.weight"][:, 0] = [1.0, -1.0]  # Linear(1, 2)
    set_weights(model, w)
    x = torch.tensor([[1, 2, -3, 4, -1, 0, 0, 0, -5, -5, -5, -5, -1, -1, -1, -1]], dtype=torch.float32)
    np.testing.assert_allclose(model(x).detach().numpy(), [[6.0, -6.0]])


def test_layouts_and_parameter_counts() -> None:
    assert "cnn" in available_models() and "cnn" in GI_MODELS
    assert input_layout(64) == (1, 8, 8) and input_layout(40) == (1, 40) and input_layout(9) == (1, 9)
    digits = create_model("cnn", 64, 10, PAPER_WIDTHS, seed=0)
    assert isinstance(digits[1], torch.nn.Conv2d)
    assert sum(p.numel() for p in digits.parameters()) == 6480  # 100 + 1820 + 4050 + 510
    signal = create_model("cnn", 40, 10, PAPER_WIDTHS, seed=0)
    assert isinstance(signal[1], torch.nn.Conv1d)
    assert sum(p.numel() for p in signal.parameters()) == 11220  # 40 + 620 + 10050 + 510


def test_hidden_needs_a_convolution_and_a_dense_width() -> None:
    with pytest.raises(ValueError, match=r"model 'cnn' reads model.hidden .* got \[64\]"):
        create_model("cnn", 64, 10, (64,), seed=0)


@settings(max_examples=30, deadline=None)
@given(
    dim=st.integers(1, 130),
    channels=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    width=st.integers(1, 12),
    classes=st.integers(1, 5),
)
def test_any_flat_input_gives_finite_logits_deterministic_from_the_seed(
    dim: int, channels: list[int], width: int, classes: int
) -> None:
    hidden = (*channels, width)
    a, b = (create_model("cnn", dim, classes, hidden, seed=3) for _ in range(2))
    x = torch.randn(3, dim, generator=torch.Generator().manual_seed(0))
    out = a(x)
    assert out.shape == (3, classes) and torch.isfinite(out).all()
    torch.testing.assert_close(out, b(x), rtol=0, atol=0)


def test_pinned_logits() -> None:
    model = create_model("cnn", 64, 10, PAPER_WIDTHS, seed=0)
    x = torch.linspace(0, 1, 64).reshape(1, 64)
    got = model(x).detach().numpy()[0, :4]
    np.testing.assert_allclose(got, PINNED_LOGITS, rtol=1e-4, atol=1e-6)


PINNED_LOGITS = [-0.0280485, 0.1315688, 0.0210529, -0.0799459]  # seed-0 init, x = linspace(0, 1, 64)


@pytest.mark.parametrize(
    "spec",
    [
        TrainSpec(epochs=1, batch_size=16, lr=0.1),
        TrainSpec(trainer="dp_sgd", batch_size=16, lr=0.1, dp_noise_multiplier=0.5, dp_clip=1.0),
        TrainSpec(trainer="sparse", batch_size=16, lr=0.1),
    ],
    ids=["full", "dp_sgd", "sparse"],
)
def test_every_trainer_path_trains_it(spec: TrainSpec) -> None:
    torch.set_num_threads(1)
    model = create_model("cnn", 64, 10, PAPER_WIDTHS, seed=0)
    start = get_weights(model)
    result = local_update(model, start, client_data(DIGITS, 0), spec, seed=1)
    assert result.delta.keys() == start.keys()
    assert all(np.isfinite(v).all() for v in result.delta.values())
    assert max(float(np.abs(v).max()) for v in result.delta.values()) > 0


def test_cohort_batching_equals_the_per_client_loop() -> None:
    assert cannot_batch_reason(TaskSpec(model="cnn"), TrainSpec()) is None
    torch.set_num_threads(1)
    model = create_model("cnn", 64, 10, (4, 6, 8), seed=1)
    weights = get_weights(model)
    clients = [client_data(DIGITS, pid) for pid in range(3)]
    spec = TrainSpec(epochs=2, batch_size=16, lr=0.1, momentum=0.5)
    seeds = client_seeds(5, 1, np.arange(3))
    res = train_cohort(model, weights, CohortData.from_clients(clients, "cpu"), spec, seeds)
    for row, (data, seed) in enumerate(zip(clients, seeds, strict=True)):
        ref = local_update(model, weights, data, spec, int(seed)).delta
        flat = np.concatenate([ref[k].ravel() for k in weights])
        np.testing.assert_allclose(res.deltas[row], flat, rtol=1e-4, atol=2e-6)


def test_gi_conversion_runs_on_it() -> None:
    torch.set_num_threads(1)
    model = create_model("cnn", 64, 10, (4, 6, 8), seed=0)
    stale = get_weights(model)
    current = {k: v + np.float32(0.01) for k, v in stale.items()}
    data = client_data(DIGITS, 0)
    proc = UnrolledSGD(steps=2, lr=0.1)
    x = torch.as_tensor(data.x)
    y = torch.nn.functional.one_hot(torch.as_tensor(data.y), 10).float()
    params = {k: torch.tensor(stale[k]) for k, _ in model.named_parameters()}
    delta = {k: v.numpy() for k, v in proc(model, params, x, y, create_graph=False).items()}
    conv = convert_stale_update(
        model, ModelVersions(current, stale, 3), delta, proc,
        input_shape=(64,), num_classes=10, config=GIConfig(num_samples=4, iterations=3, box=(0.0, 1.0)),
    )  # fmt: skip
    assert conv.delta.keys() == delta.keys()
    assert all(np.isfinite(v).all() for v in conv.delta.values()) and math.isfinite(conv.shift_l1)
