"""personalize(store, data, plan): trains only what the plan allows, stores the overlay, serves
global + overlay on both backends, and the overlay survives later global updates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import TINY_CNN, perturbed, torch_outputs

from stamen.edge import EdgeRuntime, create_delta, personalize
from stamen.edge.arch import build_model
from stamen.edge.personalization import PersonalizeConfig, load_npz
from stamen.edge.plans import layer_infos
from stamen.protocols import Signer

CFG = PersonalizeConfig(epochs=4, batch_size=8, lr=0.1, seed=1)


def _client_data(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels are a fixed function of the input: learnable, and skewed away from class 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    y = np.where(x[:, 0] > 0, 1, 2).astype(np.int64)
    return x, y


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("plan", ["full", "bias", "last_k=2", "channels=0.5", "budget=4kB"])
def test_overlay_trained_stored_and_served(
    make_store: Callable[[str], Path], backend: str, plan: str
) -> None:
    rt = EdgeRuntime.open(make_store(backend))
    base = {k: np.array(v) for k, v in rt.global_weights().items()}
    x, y = _client_data()
    result = personalize(rt, (x, y), plan, CFG)
    assert result.losses[-1] < result.losses[0]
    touched = set(result.overlay)
    if plan == "bias":
        assert touched == {f"layers.{i}.bias" for i in range(4)}
    if plan == "last_k=2":
        assert touched == {"layers.2.weight", "layers.2.bias", "layers.3.weight", "layers.3.bias"}
    if plan == "channels=0.5":  # weights of the last 2 of 4 layers, half of their input channels
        w = result.overlay["layers.2.weight"]
        assert sorted(int(c) for c in np.flatnonzero(np.abs(w).sum(axis=0))) == list(
            result.plan.layers[2].channels
        )
        assert len(result.plan.layers[2].channels) == 2 and "layers.1.weight" not in touched
    effective = {k: base[k] + result.overlay.get(k, 0) for k in base}
    want = torch_outputs(TINY_CNN, effective, x)
    assert np.abs(rt.predict(x) - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    assert rt.status()["overlay"]["plan"] == result.plan.text
    np.testing.assert_array_equal(rt.global_weights()["layers.0.weight"], base["layers.0.weight"])


def test_personalization_improves_local_accuracy_and_survives_update(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    rt = EdgeRuntime.open(make_store("onnx"))
    x, y = _client_data(96)
    before = float((rt.predict(x).argmax(1) == y).mean())
    personalize(rt, (x, y), "last_k=2", PersonalizeConfig(epochs=15, batch_size=8, lr=0.2))
    after = float((rt.predict(x).argmax(1) == y).mean())
    assert after >= before + 0.2
    base = {k: np.array(v) for k, v in rt.global_weights().items()}
    rt.apply(create_delta(base, perturbed(base, 3, scale=0.001), "dense", signer, version=1))
    assert float((rt.predict(x).argmax(1) == y).mean()) >= after - 0.05  # overlay still applied
    assert EdgeRuntime.open(rt.store).status()["overlay"]["plan"] == "last_k=2"


def test_personalize_from_npz_and_bad_data(make_store: Callable[[str], Path], tmp_path: Path) -> None:
    store = make_store("torch")
    x, y = _client_data(16)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    assert load_npz(tmp_path / "d.npz", 3)[1].tolist() == y.tolist()
    result = personalize(store, tmp_path / "d.npz", "bias", PersonalizeConfig(epochs=1, batch_size=4))
    assert result.stats.total_bytes == result.plan.memory_bytes(layer_infos(build_model(TINY_CNN)), 4)
    np.savez(tmp_path / "bad.npz", x=x, y=y + 5)
    with pytest.raises(ValueError, match="labels"):
        personalize(store, tmp_path / "bad.npz", "bias")
    with pytest.raises(ValueError, match="plan"):
        personalize(store, tmp_path / "d.npz", "everything")
    with pytest.raises(ValueError, match="too small"):
        personalize(store, tmp_path / "d.npz", "budget=10")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07 not a zip archive")  # a wrong file: no pickle advice
    with pytest.raises(ValueError, match=r"not an \.npz file \(numpy\.savez\)"):
        load_npz(tmp_path / "model.onnx")


def test_personalize_pinned_overlay(make_store: Callable[[str], Path]) -> None:
    rt = EdgeRuntime.open(make_store("torch"))
    x, y = _client_data(24, seed=5)
    result = personalize(rt, (x, y), "bias", PersonalizeConfig(epochs=2, batch_size=8, lr=0.1, seed=3))
    assert [round(v, 4) for v in result.losses] == [1.1411, 1.0509]
    assert sorted(result.overlay) == [f"layers.{i}.bias" for i in range(4)]
