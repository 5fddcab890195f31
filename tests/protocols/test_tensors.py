"""TensorInfo, tensor_table and the canonical model hash."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.protocols import ModelHasher, TensorInfo, model_hash, tensor_table

FIXED = {
    "b": np.arange(3, dtype=np.float32),
    "a": np.array([[1.0, -2.0], [0.5, 4.0]], dtype=np.float32),
}
# Pinned: changing the canonical form breaks every stored base-model hash on devices.
FIXED_HASH = "73aad7f5ce5cadbeb638b23b745be03708aa61413a3be4c8bd29bc71e63d0639"


def _reference_hash(weights: dict[str, np.ndarray]) -> str:
    """Slow, independent spelling of the documented canonical form."""
    h = hashlib.sha256(b"stamen-model-hash/1\x00" + struct.pack("<Q", len(weights)))
    for name in sorted(weights):
        arr = weights[name]
        nb, db = name.encode(), arr.dtype.name.encode()
        h.update(struct.pack("<I", len(nb)) + nb + struct.pack("<B", len(db)) + db)
        h.update(struct.pack("<I", arr.ndim) + b"".join(struct.pack("<Q", d) for d in arr.shape))
        data = arr.astype(arr.dtype.newbyteorder("<")).tobytes(order="C")
        h.update(struct.pack("<Q", len(data)) + data)
    return h.hexdigest()


def test_tensor_info_size() -> None:
    assert TensorInfo("s", (), "float32").size == 1
    assert TensorInfo("w", (2, 3), "float32").size == 6
    assert TensorInfo("e", (0, 5), "float16").size == 0


def test_tensor_table_keeps_mapping_order_and_dtype_names() -> None:
    table = tensor_table({"z": np.zeros((2, 3), np.float32), "a": np.zeros(4, np.float16)})
    assert table == (TensorInfo("z", (2, 3), "float32"), TensorInfo("a", (4,), "float16"))
    assert all(type(d) is int for info in table for d in info.shape)


def test_model_hash_pinned_and_matches_reference() -> None:
    assert model_hash(FIXED) == _reference_hash(FIXED)
    assert model_hash(FIXED) == FIXED_HASH


def test_model_hash_ignores_order_layout_and_byte_order() -> None:
    reordered = {"a": np.asfortranarray(FIXED["a"]), "b": FIXED["b"].astype(">f4")}
    assert model_hash(reordered) == model_hash(FIXED)


def test_model_hash_sensitive_to_one_ulp_names_shape_and_dtype() -> None:
    base = model_hash(FIXED)
    bumped = dict(FIXED, b=FIXED["b"].copy())
    bumped["b"][1] = np.nextafter(bumped["b"][1], np.float32(2))
    variants = [
        bumped,
        {"c": FIXED["b"], "a": FIXED["a"]},  # renamed
        {"b": FIXED["b"], "a": FIXED["a"].reshape(4)},  # same bytes, other shape
        {"b": FIXED["b"], "a": FIXED["a"].view(np.int32)},  # same bytes, other dtype
        {**FIXED, "empty": np.zeros(0, np.float32)},  # an extra empty tensor
        {"ba": np.zeros(0, np.float32), "": FIXED["b"]},  # name/boundary shift
    ]
    hashes = {model_hash(v) for v in variants}
    assert base not in hashes and len(hashes) == len(variants)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.lists(st.floats(width=32), max_size=6), max_size=4))
def test_model_hash_matches_reference(raw: dict[str, list[float]]) -> None:
    weights = {k: np.array(v, dtype=np.float32) for k, v in raw.items()}
    assert model_hash(weights) == _reference_hash(weights)
    assert len(model_hash(weights)) == 64


# ---------------------------------------------------------------- ModelHasher (streaming)
@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=6),
        st.tuples(st.lists(st.integers(0, 5), max_size=3), st.sampled_from(["float32", "float64", "int8"])),
        min_size=0,
        max_size=4,
    ),
    st.integers(1, 7),
)
def test_streaming_hasher_equals_model_hash(spec: dict, piece: int) -> None:
    """Fed in arbitrary piece sizes, the streaming hasher gives exactly model_hash."""
    rng = np.random.default_rng(0)
    weights = {n: (rng.normal(size=tuple(s)) * 50).astype(dt) for n, (s, dt) in spec.items()}
    hasher = ModelHasher(len(weights))
    for name in sorted(weights):
        arr = weights[name]
        hasher.begin(name, arr.dtype.name, arr.shape)
        raw = arr.tobytes()
        for start in range(0, len(raw), piece):
            hasher.update(raw[start : start + piece])
    assert hasher.hexdigest() == model_hash(weights) == _reference_hash(weights)


def test_streaming_hasher_refuses_misuse() -> None:
    hasher = ModelHasher(2)
    hasher.begin("b", "float32", (2,))
    with pytest.raises(ValueError, match="bytes fed"):
        hasher.update(b"\x00" * 9)  # 9 > 8 bytes of the tensor
    hasher.update(b"\x00" * 8)
    with pytest.raises(ValueError, match="sorted order"):
        hasher.begin("a", "float32", (1,))  # names must increase
    with pytest.raises(ValueError, match="missing"):
        hasher.hexdigest()  # one tensor never fed
    hasher.begin("c", "float32", (1,))
    with pytest.raises(ValueError, match="incomplete"):
        hasher.begin("d", "float32", (1,))  # "c" has no bytes yet
