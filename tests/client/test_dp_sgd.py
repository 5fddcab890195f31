"""``dp_sgd`` trainer (opacus): trains, reports a finite growing ε, clips per example, adds noise of
the right scale, leaves the model reusable with its plain weight names."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from stamen.client.core import local_update
from stamen.client.state import ClientState
from stamen.client.trainers import available_trainers
from stamen.client.trainers.dp_sgd import load_history
from stamen.privacy.accounting import epsilon_after, epsilon_of_history
from stamen.privacy.dp_sgd import calibrate_dp_sgd_noise
from stamen.simulations.provider import DataSpec, client_data, task_for
from stamen.task.data import TaskData
from stamen.task.models import create_model
from stamen.task.spec import TrainSpec
from stamen.task.weights import get_weights

DATA = DataSpec(num_clients=4)
TASK = task_for(DATA)


@dataclass(frozen=True)
class DPTrainSpec(TrainSpec):
    """The fields this trainer reads (proposed additions to TrainSpec)."""

    dp_noise_multiplier: float = 1.0
    dp_clip: float = 1.0
    dp_delta: float = 1e-5


def _norm(delta: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in delta.values()))


@pytest.fixture(scope="module")
def data() -> TaskData:
    return client_data(DATA, 0)


def _model(name: str = "mlp") -> torch.nn.Module:
    return create_model(name, 64, 10, (32,), seed=0)


def test_registered() -> None:
    assert "dp_sgd" in available_trainers()


@pytest.mark.parametrize("model_name", ["mlp", "logreg"])
def test_trains_and_reports_finite_increasing_epsilon(data: TaskData, model_name: str) -> None:
    model = _model(model_name)
    w0 = get_weights(model)
    spec = DPTrainSpec(trainer="dp_sgd", batch_size=16, lr=0.2, dp_noise_multiplier=1.0, dp_clip=1.0)
    state = ClientState()
    r1 = local_update(model, w0, data, spec, 1, state)
    r2 = local_update(model, get_weights(model), data, spec, 2, state)
    assert list(r1.delta) == list(w0) and r1.num_examples == len(data.y)
    assert all(v.dtype == np.float32 and np.all(np.isfinite(v)) for v in r1.delta.values())
    e1, e2 = r1.metrics["epsilon"], r2.metrics["epsilon"]
    assert 0 < e1 < e2 < math.inf
    steps_per_round = math.ceil(len(data.y) / 16)
    assert load_history(state) == [(1.0, 1 / steps_per_round, 2 * steps_per_round)]
    assert r2.metrics["dp-steps"] == 2 * steps_per_round
    assert e2 == pytest.approx(epsilon_after(1.0, 1 / steps_per_round, 2 * steps_per_round, 1e-5))
    assert e2 == epsilon_of_history(load_history(state), 1e-5)


def test_learns_something_at_moderate_noise(data: TaskData) -> None:
    from stamen.task.weights import evaluate_model

    model = _model()
    before = evaluate_model(model, data.x, data.y)[1]
    spec = DPTrainSpec(trainer="dp_sgd", batch_size=16, lr=0.5, epochs=3, dp_noise_multiplier=0.5)
    local_update(model, get_weights(model), data, spec, 0, ClientState())
    assert evaluate_model(model, data.x, data.y)[1] > before + 0.2


def test_model_is_reusable_and_deterministic(data: TaskData) -> None:
    model = _model()
    w0 = get_weights(model)
    spec = DPTrainSpec(trainer="dp_sgd", batch_size=16, lr=0.2, dp_noise="seeded")
    a = local_update(model, w0, data, spec, 5, ClientState())
    assert list(model.state_dict()) == list(w0)  # no "_module." prefix left behind
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    b = local_update(model, w0, data, spec, 5, ClientState())
    for k in a.delta:
        np.testing.assert_array_equal(a.delta[k], b.delta[k])
    # the plain trainer on the reused object equals the plain trainer on a fresh one
    full = TrainSpec(batch_size=16, lr=0.2)
    reused = local_update(model, w0, data, full, 9)
    fresh = local_update(_model(), w0, data, full, 9)
    for k in reused.delta:
        np.testing.assert_array_equal(reused.delta[k], fresh.delta[k])


def test_per_example_clipping_bounds_the_update(data: TaskData) -> None:
    """Without noise each step moves at most lr·|B|·C/E[|B|]; over an epoch Σ|B| ≈ n, so ||Δ|| stays
    below 2·lr·C·n/E[|B|] ≈ 1e-2 — unclipped training moves the weights by O(1)."""
    model = _model()
    w0 = get_weights(model)
    spec = DPTrainSpec(trainer="dp_sgd", batch_size=16, lr=0.2, dp_noise_multiplier=0.0, dp_clip=1e-3)
    r = local_update(model, w0, data, spec, 3, ClientState())
    expected_batch = int(len(data.y) / math.ceil(len(data.y) / 16))
    assert 0 < _norm(r.delta) <= 2 * 0.2 * 1e-3 * len(data.y) / expected_batch
    unclipped = local_update(_model(), w0, data, TrainSpec(batch_size=16, lr=0.2), 3)
    assert _norm(unclipped.delta) > 0.3
    assert r.metrics["epsilon"] == math.inf  # z = 0: no privacy, reported as such


def test_noise_is_there_with_the_opacus_scale(data: TaskData) -> None:
    """Same seed (same Poisson batches) with z = 50 and z = 0 and a tiny clip: the difference of the
    updates is the summed noise, ||·|| ≈ lr·z·C·sqrt(steps·d)/E[|B|] (chi with ~5e4 dof: ±0.5 %).
    Missing noise, or noise at 2× or 0.5× the scale, fails the 10 % tolerance."""
    w0 = get_weights(_model())
    quiet_spec = DPTrainSpec(trainer="dp_sgd", batch_size=16, lr=0.2, dp_clip=1e-4, dp_noise_multiplier=0.0)
    noisy_spec = dataclasses.replace(quiet_spec, dp_noise_multiplier=50.0)
    quiet = local_update(_model(), w0, data, quiet_spec, 11, ClientState())
    noisy = local_update(_model(), w0, data, noisy_spec, 11, ClientState())
    diff = {k: noisy.delta[k] - quiet.delta[k] for k in quiet.delta}
    steps = math.ceil(len(data.y) / 16)
    d = sum(v.size for v in w0.values())
    expected_batch = int(len(data.y) / steps)
    expected = 0.2 * 50.0 * 1e-4 * math.sqrt(steps * d) / expected_batch
    assert _norm(diff) == pytest.approx(expected, rel=0.10)


def test_empty_poisson_batches_are_fine() -> None:
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    tiny = TaskData(x, np.arange(5, dtype=np.int64) % 10, 10, 64)
    model = _model()
    spec = DPTrainSpec(trainer="dp_sgd", batch_size=1, epochs=3)
    r = local_update(model, get_weights(model), tiny, spec, 0, ClientState())
    assert all(np.all(np.isfinite(v)) for v in r.delta.values())
    assert math.isfinite(r.metrics["train-loss"]) and r.metrics["dp-steps"] == 15


def test_bad_parameters(data: TaskData) -> None:
    model = _model()
    with pytest.raises(ValueError, match="dp_clip"):
        local_update(model, get_weights(model), data, DPTrainSpec(trainer="dp_sgd", dp_clip=0.0), 0)
    with pytest.raises(ValueError, match="dp_noise_multiplier"):
        spec = DPTrainSpec(trainer="dp_sgd", dp_noise_multiplier=-1)
        local_update(model, get_weights(model), data, spec, 0)


def test_calibration_covers_every_client() -> None:
    sizes, batch, epochs, rounds = [100, 360, 361], 16, 1, 5
    z = calibrate_dp_sgd_noise(4.0, 1e-5, sizes, batch, epochs, rounds)
    eps = []
    for n in sizes:
        per_epoch = math.ceil(n / batch)
        eps.append(epsilon_after(z, 1 / per_epoch, rounds * epochs * per_epoch, 1e-5))
    assert max(eps) <= 4.0 and max(eps) >= 4.0 * (1 - 2e-3)
    with pytest.raises(ValueError, match="partition"):
        calibrate_dp_sgd_noise(4.0, 1e-5, [0], batch, epochs, rounds)
