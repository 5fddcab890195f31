"""The edge CLI end to end (keys, delta, edge init/apply/status/personalize/predict/rollback) and
its one-line failures with exit code 2 and an unchanged store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import perturbed, store_bytes
from safetensors.numpy import save_file

from stamen.cli import main
from stamen.edge.arch import EdgeNet
from stamen.edge.export import state_of


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _keys_and_store(capsys: pytest.CaptureFixture[str], tmp: Path, onnx: Path) -> tuple[Path, Path]:
    """Phase 1: `keys generate` (never overwrites) and `edge init` from the ONNX file at version 0."""
    keys, dev = tmp / "keys", tmp / "device"
    code, out, _ = _run(capsys, "keys", "generate", "--out", str(keys))
    assert code == 0 and len(json.loads(out)["key_id"]) == 8
    assert _run(capsys, "keys", "generate", "--out", str(keys))[0] == 2  # never overwrites a key
    argv = ["edge", "init", "--onnx", str(onnx), "--model", str(dev), "--trust", str(keys / "public.pem")]
    code, out, _ = _run(capsys, *argv)
    assert code == 0 and json.loads(out)["version"] == 0
    return keys, dev


def _signed_update(
    capsys: pytest.CaptureFixture[str], tmp: Path, onnx: Path, keys: Path, model: EdgeNet
) -> tuple[Path, Path]:
    """Phase 2: a perturbed target model and `delta create` of a signed low-rank int8 update."""
    new, upd = tmp / "new.safetensors", tmp / "u1.stamen"
    target = perturbed(dict(sorted(state_of(model).items())), 4)
    save_file(target, str(new), metadata={"stamen.arch": model.spec.dumps()})
    argv = ["delta", "create", "--base", str(onnx), "--target", str(new), "--codec", "lowrank(rank=2)+int8"]
    argv += ["--key", str(keys / "private.pem"), "--version", "1", "-o", str(upd)]
    code, out, _ = _run(capsys, *argv)
    assert code == 0 and json.loads(out)["bytes"] == upd.stat().st_size
    return new, upd


def _personalize_and_predict(capsys: pytest.CaptureFixture[str], dev: Path, data: Path) -> None:
    """Phase 4: `edge personalize` (last_k=1 overlay), `edge predict` (a summary, not every row)."""
    argv = ["edge", "personalize", "--model", str(dev), "--data", str(data), "--plan", "last_k=1"]
    code, out, _ = _run(capsys, *argv, "--epochs", "2", "--batch-size", "8")
    assert code == 0 and json.loads(out)["overlay_tensors"] == ["layers.3.bias", "layers.3.weight"]
    code, out, _ = _run(capsys, "edge", "predict", "--model", str(dev), "--input", str(data))
    pred = json.loads(out)
    assert code == 0 and pred["count"] == 40 and len(pred["first"]) == 10 and 0 <= pred["accuracy"] <= 1
    assert sum(pred["class_counts"]) == 40 and len(pred["class_counts"]) == 3 and "predictions" not in pred


def _refusals(tmp: Path, dev: Path, keys: Path, new: Path, upd: Path) -> list[tuple[list[str], str]]:
    """Phase 6: bad commands and the reason each one-line error must name."""
    bad_codec = ["delta", "create", "--base", str(new), "--target", str(new), "--codec", "nope"]
    bad_codec += ["--key", str(keys / "private.pem"), "-o", str(tmp / "x.stamen")]
    bad_plan = ["edge", "personalize", "--model", str(dev), "--data", str(tmp / "local.npz"), "--plan", "x"]
    return [
        (["edge", "apply", "--model", str(dev), str(upd)], "StaleVersion"),
        (["edge", "rollback", "--model", str(dev)], "no earlier version"),
        (["edge", "apply", "--model", str(dev), str(tmp / "missing.stamen")], "does not exist"),
        (bad_plan, "plan"),
        (["edge", "status", "--model", str(tmp)], "not an edge model store"),
        (bad_codec, "unknown codec stage"),
    ]


def test_walkthrough(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_files: dict[str, Path], tiny_model: EdgeNet
) -> None:
    keys, dev = _keys_and_store(capsys, tmp_path, model_files["onnx"])
    new, upd = _signed_update(capsys, tmp_path, model_files["onnx"], keys, tiny_model)
    code, out, _ = _run(capsys, "edge", "apply", "--model", str(dev), str(upd))  # phase 3
    assert code == 0 and json.loads(out)["version"] == 1
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 16)).astype(np.float32), rng.integers(1, 3, 40)
    np.savez(tmp_path / "local.npz", x=x, y=y)
    _personalize_and_predict(capsys, dev, tmp_path / "local.npz")
    code, out, _ = _run(capsys, "edge", "status", "--model", str(dev))  # phase 5: status, rollback
    status = json.loads(out)
    assert status["version"] == 1 and status["overlay"]["plan"] == "last_k=1" and len(status["history"]) == 2
    code, out, _ = _run(capsys, "edge", "rollback", "--model", str(dev))
    assert code == 0 and json.loads(out)["version"] == 0
    files = store_bytes(dev)
    for argv, reason in _refusals(tmp_path, dev, keys, new, upd):
        code, out, err = _run(capsys, *argv)
        assert code == 2 and err.startswith("stamen: error: ") and err.count("\n") == 1, (argv, err)
        assert reason in err, (reason, err)
    assert store_bytes(dev) == files  # no failure touched the store


def test_tampered_update_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model_files: dict[str, Path], tiny_model: EdgeNet
) -> None:
    keys, dev = tmp_path / "keys", tmp_path / "device"
    _run(capsys, "keys", "generate", "--out", str(keys))
    _run(
        capsys,
        "edge",
        "init",
        "--torch",
        str(model_files["torch"]),
        "--model",
        str(dev),
        "--trust",
        str(keys / "public.pem"),
    )
    new = tmp_path / "new.safetensors"
    save_file(perturbed(dict(sorted(state_of(tiny_model).items())), 5), str(new))
    upd = tmp_path / "u.stamen"
    _run(
        capsys,
        "delta",
        "create",
        "--base",
        str(model_files["torch"]),
        "--target",
        str(new),
        "--key",
        str(keys / "private.pem"),
        "--version",
        "2",
        "-o",
        str(upd),
    )
    raw = bytearray(upd.read_bytes())
    raw[-3] ^= 0xFF
    upd.write_bytes(bytes(raw))
    files = store_bytes(dev)
    code, _, err = _run(capsys, "edge", "apply", "--model", str(dev), str(upd))
    assert code == 2 and "SignatureError" in err and err.count("\n") == 1 and "unchanged" in err
    assert store_bytes(dev) == files


def test_init_with_a_missing_trust_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.safetensors"
    save_file({"w": np.zeros((2, 2), np.float32)}, str(model))
    argv = ["edge", "init", "--torch", str(model), "--model", str(tmp_path / "s"), "--trust", "nope.pem"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "stamen: error: trusted key file nope.pem does not exist"
    assert not (tmp_path / "s").exists()
