"""The binary array container: exact layout, round trips, and strict bounded parsing."""

from __future__ import annotations

import contextlib
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stamen.protocols.container import DTYPE_CODES, pack_arrays, unpack_arrays
from stamen.protocols.errors import CodecError, MalformedUpdate, StamenError


def test_exact_layout_by_hand() -> None:
    data = pack_arrays({"a": np.array([1, 2], np.uint16), "k": np.array(300, np.int32)})
    assert data == (
        b"\x02"  # count
        + b"\x01a"
        + bytes([5, 1, 2])
        + b"\x01\x00\x02\x00"  # key, uint16, ndim 1, dim 2, data
        + b"\x01k"
        + bytes([6, 0])
        + (300).to_bytes(4, "little")  # int32 scalar
    )
    out = unpack_arrays(data)
    assert list(out) == ["a", "k"] and out["k"].shape == () and int(out["k"]) == 300


def test_varint_dims_and_big_endian_input() -> None:
    arr = np.arange(200, dtype=">f4").reshape(1, 200)
    data = pack_arrays({"x": arr})
    assert data[:7] == b"\x01\x01x" + bytes([11, 2, 1]) + b"\xc8"  # 200 = 0xc8 0x01
    np.testing.assert_array_equal(unpack_arrays(data)["x"], arr)


_dtypes = st.sampled_from(sorted(DTYPE_CODES))


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12),
        _dtypes.flatmap(
            lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        ),
        max_size=4,
    )
)
def test_roundtrip_property(arrays: dict[str, np.ndarray]) -> None:
    out = unpack_arrays(pack_arrays(arrays))
    assert list(out) == list(arrays)
    for key, arr in arrays.items():
        assert out[key].dtype == arr.dtype and out[key].shape == arr.shape
        assert out[key].tobytes() == arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def test_pack_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(CodecError, match="key"):
        pack_arrays({"has space": np.zeros(1)})
    with pytest.raises(CodecError, match="dtype"):
        pack_arrays({"c": np.zeros(1, np.complex64)})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated"),
        (b"\x01", "truncated"),
        (b"\x00\x00", "trailing"),
        (b"\x01\x01a\x63\x00", "dtype"),
        (b"\x01\x01a\x0b\x11", "ndim"),
        (b"\x01\x00\x0b\x00", "key"),
        (b"\x01\x01\xff\x0b\x00" + b"\0" * 4, "ASCII"),
        (b"\x02\x01a\x03\x00\x07\x01a\x03\x00\x07", "duplicate"),
        (b"\x01\x01a\x03\x01\x80\x00", "non-canonical"),
        (b"\x01\x01a\x03\x01" + b"\xff" * 11, "varint"),
        (b"\x01\x01a\x0b\x01\xff\xff\xff\xff\x0f", "truncated"),  # 2**32-1 floats claimed
    ],
)
def test_malformed_inputs(data: bytes, match: str) -> None:
    with pytest.raises(MalformedUpdate, match=match):
        unpack_arrays(data)


def test_zero_size_array_with_huge_nominal_shape_is_rejected() -> None:
    big = b"\xff\xff\xff\xff\x0f"  # 2**32 - 1
    with pytest.raises(MalformedUpdate, match="too large"):
        unpack_arrays(b"\x01\x01a\x0b\x03\x00" + big + big)


def test_huge_count_fails_fast_without_allocating() -> None:
    tracemalloc.start()
    with pytest.raises(MalformedUpdate):
        unpack_arrays(b"\xff" * 9 + b"\x7f" + b"\x01a\x03\x00\x07")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20


def test_every_truncation_is_rejected() -> None:
    data = pack_arrays({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2, np.int8)})
    for cut in range(len(data)):
        with pytest.raises(MalformedUpdate):
            unpack_arrays(data[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_only_stamen_errors(data: bytes) -> None:
    with contextlib.suppress(StamenError):
        unpack_arrays(data)
