"""EdgeRuntime.apply on both backends and every codec: hand-computed delta, ORT == torch on the
same weights (<= 1e-5 relative), pinned values and base hash; rollback, history, overlay, double buffering."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from edge_helpers import TINY_CNN, perturbed, torch_outputs
from onnx import TensorProto, helper

from stamen.edge import EdgeRuntime, StaleVersion, create_delta, create_store
from stamen.edge.store import version_dir
from stamen.protocols import CodecPipeline, CodecSpec, Signer, model_hash, tensor_table

CODECS = ["dense", "topk(ratio=0.1)", "int8", "lowrank(rank=2)", "topk(ratio=0.3)+int8+zstd"]
X = np.random.default_rng(5).normal(size=(7, 16)).astype(np.float32)


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def test_tiny_dense_delta_by_hand(make_store: Callable[[str], Path], signer: Signer) -> None:
    rt = EdgeRuntime.open(make_store("onnx"))
    base = {k: np.array(v) for k, v in rt.global_weights().items()}
    target = dict(base)
    target["layers.2.bias"] = base["layers.2.bias"] + np.array([0.5, -0.25, 0, 1, 2], np.float32)
    v = rt.apply(create_delta(base, target, "dense", signer, version=1))
    got = rt.global_weights()
    assert v.version == 1 and v.prev_hash == model_hash(base) and v.hash == model_hash(target)
    np.testing.assert_array_equal(got["layers.2.bias"], target["layers.2.bias"])
    assert all(np.array_equal(got[k], base[k]) for k in base if k != "layers.2.bias")
    assert rt.status()["history"] == [
        {"version": 0, "hash": model_hash(base)},
        {"version": 1, "hash": v.hash},
    ]


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("codec", CODECS)
def test_apply_every_codec_matches_torch(
    make_store: Callable[[str], Path], signer: Signer, backend: str, codec: str
) -> None:
    rt = EdgeRuntime.open(make_store(backend))
    for version in (1, 2):
        base = {k: np.array(v) for k, v in rt.global_weights().items()}
        target = perturbed(base, seed=version)
        update = create_delta(base, target, codec, signer, version=version, seed=version)
        rt.apply(update)
        spec = CodecSpec.parse(codec)
        delta = {k: target[k] - base[k] for k in base}
        decoded = CodecPipeline(spec).decode(
            CodecPipeline(spec).encode(delta, np.random.default_rng(version)), tensor_table(delta)
        )
        expected = {k: base[k] + decoded[k] for k in base}
        assert all(np.array_equal(rt.global_weights()[k], expected[k]) for k in base)
        assert rt.version().hash == model_hash(expected)
        assert _rel_err(rt.predict(X), torch_outputs(TINY_CNN, expected, X)) <= 1e-5
    reopened = EdgeRuntime.open(rt.store)  # verifies the hash of what is on disk
    assert reopened.version().version == 2 and np.array_equal(reopened.predict(X), rt.predict(X))


def test_pinned_result_hash(tmp_path: Path, keydir: Path, signer: Signer) -> None:
    # Weights from a formula with exact binary fractions (no RNG, no torch init, no rounding), so
    # the base is pinned by value; the result comes from float work (the int8 scale), so its
    # values are pinned with a tolerance and its hash is held to those values.
    from safetensors.numpy import save_file

    base: dict[str, np.ndarray] = {
        "a": (np.arange(12, dtype=np.float32) / 8).reshape(3, 4),
        "b": np.linspace(-1, 1, 3, dtype=np.float32),
    }
    save_file(base, str(tmp_path / "m.safetensors"))
    create_store(tmp_path / "s", tmp_path / "m.safetensors", keydir / "public.pem")
    rt = EdgeRuntime.open(tmp_path / "s")
    target = {"a": base["a"] * 1.5, "b": base["b"] - 0.125}
    rt.apply(create_delta(base, target, "topk(ratio=0.5)+int8(stochastic=false)", signer, version=3))
    got = rt.global_weights()
    np.testing.assert_allclose(
        got["b"], [-1.125, -0.125, 1.0], rtol=1e-6
    )  # top-2 of three equal |-0.125|: the first two
    np.testing.assert_array_equal(got["a"].reshape(-1)[:6], base["a"].reshape(-1)[:6])  # not in the top 6
    pinned = [1.1235236, 1.3134843, 1.4980315, 1.6879921, 1.8725394, 2.0625]  # target +- int8 step / 2
    np.testing.assert_allclose(got["a"].reshape(-1)[6:], pinned, rtol=1e-6)
    # the base is exact binary fractions, pinned as values; model_hash itself is pinned on fixed
    # integer-exact tensors in tests/protocols/test_tensors.py
    np.testing.assert_array_equal(base["b"], [-1.0, 0.0, 1.0])
    assert np.array_equal(base["a"].reshape(-1), np.arange(12) / 8)
    assert rt.version().hash == model_hash(got)


def test_transpose_weights_served_correctly_after_update(
    tmp_path: Path, keydir: Path, signer: Signer
) -> None:
    """y = x @ Transpose(W) + b: onnxruntime constant-folds Transpose(W) at load. Updated weights
    must reach the folded constant (the add_initializer trap, research/edge.md §1.5)."""
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["W"], ["Wt"]),
            helper.make_node("MatMul", ["x", "Wt"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [onnx.numpy_helper.from_array(w, "W"), onnx.numpy_helper.from_array(b, "b")],
    )
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "t.onnx"
    )
    create_store(tmp_path / "s", tmp_path / "t.onnx", keydir / "public.pem")
    rt = EdgeRuntime.open(tmp_path / "s")
    base = {"W": w, "b": b}
    target = {"W": w + rng.normal(0, 0.1, w.shape).astype(np.float32), "b": b}
    rt.apply(create_delta(base, target, "dense", signer, version=1))
    x = rng.normal(size=(5, 4)).astype(np.float32)
    assert _rel_err(rt.predict(x), x @ target["W"].T + b) <= 1e-5
    rt.set_overlay({"W": np.full((3, 4), 0.5, np.float32)}, "test")
    assert _rel_err(rt.predict(x), x @ (target["W"] + 0.5).T + b) <= 1e-5


def test_rollback_and_high_water(make_store: Callable[[str], Path], signer: Signer) -> None:
    rt = EdgeRuntime.open(make_store("onnx"))
    w0 = {k: np.array(v) for k, v in rt.global_weights().items()}
    rt.apply(create_delta(w0, perturbed(w0, 1), "dense", signer, version=1))
    w1 = {k: np.array(v) for k, v in rt.global_weights().items()}  # w0 + (target - w0) in float32
    w2 = perturbed(w0, 2)
    rt.apply(create_delta(w1, w2, "dense", signer, version=5))
    assert rt.rollback().hash == model_hash(w1)
    assert _rel_err(rt.predict(X), torch_outputs(TINY_CNN, w1, X)) <= 1e-5
    assert not version_dir(rt.store, 5).exists() and rt.status()["high_water"] == 5
    with pytest.raises(StaleVersion):  # the rolled-back-from update cannot come back
        rt.apply(create_delta(w1, w2, "dense", signer, version=5))
    assert rt.apply(create_delta(w1, w2, "dense", signer, version=6)).version == 6
    rt.rollback()
    rt.rollback()
    with pytest.raises(ValueError, match="no earlier version"):
        rt.rollback()
    assert EdgeRuntime.open(rt.store).version().hash == model_hash(w0)


def test_history_keeps_last_versions(make_store: Callable[[str], Path], signer: Signer) -> None:
    rt = EdgeRuntime.open(make_store("torch"), keep=3)
    for version in range(1, 6):
        base = {k: np.array(v) for k, v in rt.global_weights().items()}
        rt.apply(create_delta(base, perturbed(base, version), "int8", signer, version=version))
    assert [h["version"] for h in rt.status()["history"]] == [3, 4, 5]
    assert sorted(p.name for p in (rt.store / "versions").iterdir()) == [
        version_dir(rt.store, v).name for v in (3, 4, 5)
    ]


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_overlay_survives_global_updates(
    make_store: Callable[[str], Path], signer: Signer, backend: str
) -> None:
    rt = EdgeRuntime.open(make_store(backend))
    overlay = {"layers.3.bias": np.array([1.0, -1.0, 0.5], np.float32)}
    rt.set_overlay(overlay, "bias")
    for version in (1, 2):
        base = {k: np.array(v) for k, v in rt.global_weights().items()}
        rt.apply(create_delta(base, perturbed(base, version), "dense", signer, version=version))
    effective = {k: np.array(v) for k, v in rt.global_weights().items()}
    effective["layers.3.bias"] = effective["layers.3.bias"] + overlay["layers.3.bias"]
    assert _rel_err(rt.predict(X), torch_outputs(TINY_CNN, effective, X)) <= 1e-5
    again = EdgeRuntime.open(rt.store)
    assert again.status()["overlay"]["tensors"] == ["layers.3.bias"]
    np.testing.assert_array_equal(again.predict(X), rt.predict(X))
    rt.set_overlay({}, "none")
    assert rt.status()["overlay"] is None and not list(rt.store.glob("overlay-*"))


def test_old_session_serves_during_apply(make_store: Callable[[str], Path], signer: Signer) -> None:
    rt = EdgeRuntime.open(make_store("onnx"))
    w0 = {k: np.array(v) for k, v in rt.global_weights().items()}
    w1 = perturbed(w0, 9)
    before, after = rt.predict(X), torch_outputs(TINY_CNN, w1, X)
    seen: list[np.ndarray] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            seen.append(rt.predict(X))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        rt.apply(create_delta(w0, w1, "dense", signer, version=1))
        seen_after = len(seen)
        while len(seen) < seen_after + 3:
            pass
    finally:
        stop.set()
        thread.join()
    assert seen and all(np.array_equal(s, before) or _rel_err(s, after) <= 1e-5 for s in seen)
    assert _rel_err(seen[-1], after) <= 1e-5


def test_replacement_sets_the_sent_weights_bit_for_bit(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    from stamen.protocols import BaseModelMismatch
    from stamen.protocols.delta import create_replacement

    rt = EdgeRuntime.open(make_store("onnx"))
    base = {k: np.array(v) for k, v in rt.global_weights().items()}
    target = perturbed(base, seed=3)
    name = sorted(target)[0]
    target[name].reshape(-1)[:2] = [-0.0, 0.0]  # signed zeros survive (a delta add would not keep -0.0)
    wrong = create_replacement(target, signer, version=1, base_hash="0" * 64)
    with pytest.raises(BaseModelMismatch, match="based on"):  # not onto another state
        rt.apply(wrong.data)
    update = create_replacement(target, signer, version=1, base_hash=model_hash(base))
    v = rt.apply(update.data)
    got = rt.global_weights()
    assert v.version == 1 and v.hash == model_hash(target)
    assert all(got[k].tobytes() == target[k].tobytes() for k in target)
    assert np.signbit(got[name].reshape(-1)[0]) and not np.signbit(got[name].reshape(-1)[1])
