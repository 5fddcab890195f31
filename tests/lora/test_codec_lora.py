"""The ``lora`` codec stage: exact zero / sparse / dense encoding per tensor."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.protocols import CodecPipeline, CodecSpec, MalformedUpdate, tensor_table
from stamen.protocols.codecs.lora import LoRADelta, sparse_wins


def roundtrip(delta: dict[str, np.ndarray], codec: str = "lora") -> tuple[bytes, dict[str, np.ndarray]]:
    return CodecPipeline(CodecSpec.parse(codec)).roundtrip(delta, np.random.default_rng(0))


def test_hand_case_forms_and_sizes() -> None:
    frozen = np.zeros((100, 100), dtype=np.float32)
    sparse = np.zeros((100, 100), dtype=np.float32)
    sparse[3, 4], sparse[50, 1] = 1.5, -2.0
    factor = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    enc = LoRADelta().encode({"0": frozen, "1": sparse, "2": factor}, np.random.default_rng(0))
    assert set(enc) == {"0.lz", "1.li", "1.lv", "1.ls", "2"}
    assert enc["0.lz"].tolist() == [100, 100]
    assert enc["1.li"].dtype == np.uint16 and enc["1.li"].tolist() == [304, 5001]
    assert enc["1.lv"].tolist() == [1.5, -2.0]
    payload, out = roundtrip({"w": frozen, "s": sparse, "f": factor})
    assert len(payload) < 400  # vs 80,048 bytes of fp32 for these 20,012 numbers
    for k, v in {"w": frozen, "s": sparse, "f": factor}.items():
        np.testing.assert_array_equal(out[k], v)


def test_sparse_or_dense_threshold() -> None:
    # uint16 indices: sparse iff nnz * 6 < 4 n
    assert sparse_wins(600, 399) and not sparse_wins(600, 400)
    assert index_bytes(2**16 + 1) == 4 and sparse_wins(2**16 + 1, 32_768)


def index_bytes(n: int) -> int:
    from stamen.protocols.codecs.topk import index_dtype

    return index_dtype(n).itemsize


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    density=st.sampled_from([0.0, 0.01, 0.2, 0.7, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_roundtrip_is_bit_exact(shape: tuple[int, int], density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32) * (rng.random(shape) < density)
    delta = {"a": x, "b": np.zeros(3, dtype=np.float32), "c": rng.normal(size=(2, 2)).astype(np.float32)}
    payload, out = roundtrip(delta)
    for k in delta:
        assert out[k].dtype == np.float32
        np.testing.assert_array_equal(out[k], delta[k])
    assert len(payload) <= len(roundtrip(delta, "dense")[0]) + 64


def test_composes_with_lossy_and_byte_stages() -> None:
    rng = np.random.default_rng(1)
    delta = {
        "frozen": np.zeros((64, 64), dtype=np.float32),
        "factor": rng.normal(size=(8, 64)).astype(np.float32),
    }
    _, out = roundtrip(delta, "lora+int8+zstd")
    np.testing.assert_array_equal(out["frozen"], 0.0)
    assert np.max(np.abs(out["factor"] - delta["factor"])) < 0.05


def test_pinned_payload_size() -> None:
    rng = np.random.default_rng(7)
    delta = {"w": np.zeros((384, 384), dtype=np.float32), "a": rng.normal(size=(8, 384)).astype(np.float32)}
    assert len(roundtrip(delta)[0]) == PINNED_BYTES


PINNED_BYTES = 12_312  # 12,288 bytes of factor + 24 of container and the zero tensor's shape


@pytest.mark.parametrize(
    "arrays",
    [
        {
            "0.li": np.array([2, 1], dtype=np.uint16),
            "0.lv": np.ones(2, np.float32),
            "0.ls": np.array([4], np.uint32),
        },
        {
            "0.li": np.array([9], dtype=np.uint16),
            "0.lv": np.ones(1, np.float32),
            "0.ls": np.array([4], np.uint32),
        },
        {
            "0.li": np.array([1], dtype=np.uint32),
            "0.lv": np.ones(1, np.float32),
            "0.ls": np.array([4], np.uint32),
        },
        {
            "0.li": np.array([1], dtype=np.uint16),
            "0.lv": np.ones(2, np.float32),
            "0.ls": np.array([4], np.uint32),
        },
        {"0.lz": np.array([2**20, 2**20], dtype=np.uint32)},
        {"0.lz": np.array([[4]], dtype=np.uint32)},
    ],
)
def test_malformed_payloads_raise(arrays: dict[str, np.ndarray]) -> None:
    with pytest.raises(MalformedUpdate):
        LoRADelta(max_elements=1000).decode(arrays)


def test_table_mismatch_is_rejected() -> None:
    pipe = CodecPipeline(CodecSpec.parse("lora"))
    payload = pipe.encode({"w": np.zeros((4, 4), dtype=np.float32)}, np.random.default_rng(0))
    with pytest.raises(MalformedUpdate):
        pipe.decode(payload, tensor_table({"w": np.zeros((5, 4), dtype=np.float32)}))
