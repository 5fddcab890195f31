"""A store whose current version's files rot (a flipped bit, a deleted file) heals when asked:
``open(..., repair=True)`` serves the newest retained version that passes its recorded hash,
committed like a rollback (overlay kept, high-water mark kept); with no intact version the store is
left alone and the error says it needs a full model. Without ``repair`` opening still refuses."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import perturbed, store_bytes

from stamen.cli import main
from stamen.edge import EdgeRuntime, Repair, StaleVersion, StoreCorrupt, create_delta
from stamen.edge.store import version_dir
from stamen.protocols import Signer, model_hash

Weights = dict[str, np.ndarray]
FILES = {"onnx": "weights.data", "torch": "weights.safetensors"}


def _three_versions(store: Path, signer: Signer) -> tuple[EdgeRuntime, list[Weights], list[bytes]]:
    """Apply versions 1 and 2 (keep=3 retains 0, 1, 2); each version's weights and its update."""
    rt = EdgeRuntime.open(store)
    held = [{k: np.array(v) for k, v in rt.global_weights().items()}]
    updates = []
    for version in (1, 2):
        updates.append(create_delta(held[-1], perturbed(held[0], version), "dense", signer, version=version))
        rt.apply(updates[-1])
        held.append({k: np.array(v) for k, v in rt.global_weights().items()})
    assert [h.version for h in rt.manifest.history] == [0, 1, 2]
    return rt, held, updates


def _corrupt(store: Path, backend: str, version: int, how: str) -> None:
    path = version_dir(store, version) / FILES[backend]
    if how == "delete":
        path.unlink()
        return
    raw = bytearray(path.read_bytes())
    raw[0 if backend == "onnx" else -1] ^= 0x40  # a weight byte (safetensors: after its header)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("how", ["flip", "delete"])
def test_repair_serves_the_previous_version_and_takes_updates_from_it(
    make_store: Callable[[str], Path], signer: Signer, backend: str, how: str
) -> None:
    store = make_store(backend)
    _, held, updates = _three_versions(store, signer)
    _corrupt(store, backend, 2, how)
    with pytest.raises(StoreCorrupt, match=r"version 2 .*stamen edge repair --model"):
        EdgeRuntime.open(store)  # the default never changes the version
    rt = EdgeRuntime.open(store, repair=True)
    fixed = rt.repaired
    assert isinstance(fixed, Repair) and (fixed.from_version, fixed.to_version) == (2, 1)
    assert ("hash check" if how == "flip" else "are missing") in fixed.reason
    assert rt.status()["repaired"] == {"from_version": 2, "to_version": 1, "reason": fixed.reason}
    assert rt.version().version == 1 and rt.version().hash == model_hash(held[1])
    for name, arr in rt.global_weights().items():
        np.testing.assert_array_equal(arr, held[1][name])
    assert [h.version for h in rt.manifest.history] == [0, 1] and rt.manifest.high_water == 2
    assert not version_dir(store, 2).exists()  # the corrupt version is dropped
    with pytest.raises(StaleVersion):
        rt.apply(updates[1])  # version 2 cannot come back as a replay
    target = perturbed(held[0], 3)
    assert rt.apply(create_delta(held[1], target, "dense", signer, version=3)).version == 3
    again = EdgeRuntime.open(store)  # a sound store: the default open works and repairs nothing
    assert again.repaired is None and again.version().version == 3
    np.testing.assert_allclose(again.global_weights()["layers.2.bias"], target["layers.2.bias"], atol=1e-6)


def test_repair_skips_every_corrupt_version_down_to_an_intact_one(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    store = make_store("onnx")
    _, held, _ = _three_versions(store, signer)
    _corrupt(store, "onnx", 2, "flip")
    _corrupt(store, "onnx", 1, "delete")
    rt = EdgeRuntime.open(store, repair=True, serve=False)
    assert rt.repaired is not None and (rt.repaired.from_version, rt.repaired.to_version) == (2, 0)
    assert "version 2" in rt.repaired.reason and "version 1" in rt.repaired.reason
    assert rt.version().hash == model_hash(held[0]) and len(rt.manifest.history) == 1


def test_no_intact_version_leaves_the_store_and_asks_for_a_full_model(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    store = make_store("onnx")
    _three_versions(store, signer)
    for version in (0, 1, 2):
        _corrupt(store, "onnx", version, "flip")
    files = store_bytes(store)
    with pytest.raises(StoreCorrupt) as err:
        EdgeRuntime.open(store, repair=True)
    message = str(err.value)
    assert "\n" not in message and "versions 2, 1, 0" in message
    assert "needs a full model" in message and "stamen edge init" in message
    assert store_bytes(store) == files  # nothing lost: the store is as it was


def test_repair_keeps_the_overlay_like_a_rollback(make_store: Callable[[str], Path], signer: Signer) -> None:
    store = make_store("onnx")
    rt, held, _ = _three_versions(store, signer)
    deltas = {"layers.3.bias": np.array([0.5, -0.25, 0.125], np.float32)}
    rt.set_overlay(deltas, "bias")
    overlay = rt.manifest.overlay
    _corrupt(store, "onnx", 2, "flip")
    fixed = EdgeRuntime.open(store, repair=True)
    assert fixed.manifest.overlay == overlay and fixed.version().version == 1
    want = held[1]["layers.3.bias"] + deltas["layers.3.bias"]
    np.testing.assert_array_equal(fixed.effective_weights()["layers.3.bias"], want)


def test_a_corrupt_overlay_is_dropped_and_the_version_kept(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    store = make_store("onnx")
    rt, held, _ = _three_versions(store, signer)
    rt.set_overlay({"layers.3.bias": np.ones(3, np.float32)}, "bias")
    assert rt.manifest.overlay is not None
    overlay_file = store / rt.manifest.overlay.file
    raw = bytearray(overlay_file.read_bytes())
    raw[-1] ^= 0x40
    overlay_file.write_bytes(bytes(raw))
    with pytest.raises(StoreCorrupt, match="overlay"):
        EdgeRuntime.open(store)
    fixed = EdgeRuntime.open(store, repair=True)
    assert fixed.repaired is not None and (fixed.repaired.from_version, fixed.repaired.to_version) == (2, 2)
    assert "overlay dropped" in fixed.repaired.reason
    assert fixed.manifest.overlay is None and not overlay_file.exists()
    assert fixed.version().hash == model_hash(held[2])


def test_cli_edge_repair(
    make_store: Callable[[str], Path], signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_store("onnx")
    _, held, _ = _three_versions(store, signer)
    assert main(["edge", "repair", "--model", str(store)]) == 0  # a sound store is left as it is
    out = json.loads(capsys.readouterr().out)
    assert out == {"repaired": None, "version": 2, "hash": model_hash(held[2])}
    _corrupt(store, "onnx", 2, "delete")
    assert main(["edge", "status", "--model", str(store)]) == 2
    assert "stamen edge repair" in capsys.readouterr().err
    assert main(["edge", "repair", "--model", str(store)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == 1 and out["hash"] == model_hash(held[1])
    assert out["repaired"]["from_version"] == 2 and out["repaired"]["to_version"] == 1


def test_rollback_refuses_a_version_whose_files_rotted(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    """A rollback checks the version it goes back to: rotten files are refused and nothing changes
    (the version served, the manifest); the intact current version keeps serving."""
    store = make_store("onnx")
    rt, held, _ = _three_versions(store, signer)
    _corrupt(store, "onnx", 1, "flip")
    manifest = (store / "manifest.json").read_bytes()
    with pytest.raises(StoreCorrupt, match="cannot roll back: weights of version 1 fail their hash check"):
        rt.rollback()
    assert rt.version().version == 2 and (store / "manifest.json").read_bytes() == manifest
    assert model_hash(rt.global_weights()) == model_hash(held[2])
