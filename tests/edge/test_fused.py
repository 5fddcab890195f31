"""Fused apply (edge/fused.py) and the memory-mapped shadow weights of the ONNX backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stamen.edge.fused import CHUNK, start_apply
from stamen.edge.onnx_backend import SKELETON, BufferedWeights, OnnxBackend
from stamen.protocols import ValidationError, model_hash, tensor_table


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Unsorted names, a tensor spanning several chunks with a ragged end, an empty one."""
    return {
        "z.big": rng.normal(size=(2, CHUNK + 3)).astype(np.float32),
        "a.bias": rng.normal(size=7).astype(np.float32),
        "m.empty": np.zeros((0, 4), np.float32),
    }


def test_sum_and_hash_match_the_plain_computation() -> None:
    rng = np.random.default_rng(0)
    base, delta = _weights(rng), _weights(rng)
    table = tensor_table(base)
    out = {k: np.full(v.shape, np.nan, np.float32) for k, v in base.items()}
    digest = start_apply(base, delta, out, table).result()
    want = {k: base[k] + delta[k] for k in base}
    for name in base:
        np.testing.assert_array_equal(out[name], want[name])
    assert digest == model_hash(want)
    assert digest != model_hash(base)


@pytest.mark.parametrize("where", [0, CHUNK + 1, 2 * CHUNK + 5])
def test_non_finite_results_are_refused(where: int) -> None:
    rng = np.random.default_rng(1)
    base, delta = _weights(rng), _weights(rng)
    delta["z.big"].reshape(-1)[where] = np.nan
    out = {k: np.empty_like(v) for k, v in base.items()}
    with pytest.raises(ValidationError, match=r"z\.big"):
        start_apply(base, delta, out, tensor_table(base))
    base["z.big"].reshape(-1)[where] = 3e38  # finite + finite overflowing to inf
    delta["z.big"].reshape(-1)[where] = 3e38
    with pytest.raises(ValidationError, match="non-finite"):
        start_apply(base, delta, out, tensor_table(base))


def test_finite_values_whose_sum_overflows_are_accepted() -> None:
    """The fast check (a float32 sum) overflows here; the exact check must then accept."""
    base = {"w": np.full(CHUNK, 3e38, np.float32)}
    delta = {"w": np.zeros(CHUNK, np.float32)}
    out = {"w": np.empty(CHUNK, np.float32)}
    assert start_apply(base, delta, out, tensor_table(base)).result() == model_hash(base)


def test_destination_must_be_contiguous() -> None:
    base = {"w": np.ones((4, 4), np.float32)}
    out = {"w": np.empty((4, 8), np.float32)[:, ::2]}
    with pytest.raises(ValueError, match="C-contiguous"):
        start_apply(base, base, out, tensor_table(base))


def test_mapped_weights_file_equals_the_plain_writer(tmp_path: Path) -> None:
    """Same bytes (layout, alignment gaps, size) as OnnxBackend.write, after a prefault."""
    rng = np.random.default_rng(2)
    weights = _weights(rng)
    table = tensor_table(dict(sorted(weights.items())))
    (tmp_path / SKELETON).write_bytes(b"graph")
    backend = OnnxBackend(tmp_path)
    (tmp_path / "plain").mkdir()
    backend.write(tmp_path / "plain", weights, table)
    (tmp_path / "mapped").mkdir()
    mapped = backend.open_shadow(tmp_path / "mapped", table)
    assert isinstance(mapped, BufferedWeights)
    mapped.prefault()
    for name, arr in weights.items():
        mapped.views[name][...] = arr
    mapped.sync()
    mapped.close()
    for name in ("weights.data", "model.onnx"):
        assert (tmp_path / "mapped" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    got = backend.read(tmp_path / "mapped", table)
    assert model_hash(got) == model_hash(weights)
