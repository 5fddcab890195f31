"""Helpers of the entropy-coding stages: canonical Huffman codes, bit packing and sparse-position
coding (hand-computed cases, round-trip and optimality properties, pinned bytes, hostile input)."""

from __future__ import annotations

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.protocols import MalformedUpdate
from stamen.protocols.codecs import bitpack, huffman
from stamen.protocols.codecs.positions import MODES, decode_positions, encode_positions, position_bits


def _bits(text: str) -> np.ndarray:
    return np.array([int(ch) for ch in text], np.uint8)


def test_huffman_by_hand_and_fedzip_lengths_are_refused() -> None:
    lengths = huffman.huffman_lengths([5, 1, 1])
    assert lengths.tolist() == [1, 2, 2]
    assert huffman.canonical_codes(lengths).tolist() == [0b0, 0b10, 0b11]
    assert huffman.encode(np.array([1, 0, 2, 0]), lengths).tolist() == [1, 0, 0, 1, 1, 0]
    assert huffman.huffman_lengths([0, 7, 0]).tolist() == [0, 1, 0]  # lone symbol: 1-bit code
    assert huffman.huffman_lengths([0, 0]).tolist() == [0, 0]
    # FedZip's deploy.py charges lengths [2, 1, 1]: Kraft sum 1/4 + 1/2 + 1/2 > 1, no prefix code
    with pytest.raises(MalformedUpdate, match="Kraft"):
        huffman.check_lengths(np.array([2, 1, 1]), "t")
    with pytest.raises(MalformedUpdate, match="above 15"):
        huffman.check_lengths(np.array([16, 1]), "t")
    with pytest.raises(MalformedUpdate, match="no symbols"):
        huffman.check_lengths(np.array([0, 0]), "t")


def _reference_cost(counts: list[int]) -> int:
    """Optimal prefix-code cost: the sum of the weights of all merged nodes (textbook identity)."""
    heap = [c for c in counts if c > 0]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=16).filter(any), st.integers(0, 2**32))
def test_huffman_is_an_optimal_prefix_code_that_roundtrips(counts: list[int], seed: int) -> None:
    lengths = huffman.huffman_lengths(counts)
    huffman.check_lengths(lengths, "t")  # Kraft's inequality holds
    assert int(np.dot(counts, lengths)) == _reference_cost(counts)
    codes = huffman.canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True) if n]
    assert not any(a != b and b.startswith(a) for a in words for b in words)  # prefix-free
    used = np.flatnonzero(np.array(counts) > 0)
    symbols = np.random.default_rng(seed).choice(used, size=50)
    stream = np.concatenate([_bits("101"), huffman.encode(symbols, lengths)])
    out, end = huffman.decode(stream, 3, symbols.size, lengths, "t")
    assert out.tolist() == symbols.tolist() and end == stream.size


def test_huffman_pinned_and_hostile_streams() -> None:
    counts = [40, 3, 9, 1, 1, 17]
    lengths = huffman.huffman_lengths(counts)
    assert lengths.tolist() == [1, 4, 3, 5, 5, 2]
    codes = huffman.canonical_codes(lengths)  # in (length, symbol) order: 0, 10, 110, 1110, 11110, 11111
    assert codes.tolist() == [0b0, 0b1110, 0b110, 0b11110, 0b11111, 0b10]
    packed = bitpack.pack_bits(huffman.encode(np.repeat(np.arange(6), counts), lengths))
    assert packed[:7] == bytes(5) + bytes([0b11101110, 0b11101101])
    assert len(packed) == 16  # 123 bits: integer-exact input, so the bytes themselves are pinned
    # ...110 x 9 (from 0xED on), 11110, 11111, then 10 x 17 and 5 zero padding bits
    assert packed[7:] == bytes([0xB6, 0xDB, 0x6D, 0xEF, 0xD5, 0x55, 0x55, 0x55, 0x40])
    incomplete = np.array([1, 2, 0])  # codes 0, 10; window "11" matches nothing
    with pytest.raises(MalformedUpdate, match="invalid"):
        huffman.decode(_bits("0110"), 0, 3, incomplete, "t")
    with pytest.raises(MalformedUpdate, match="truncated"):
        huffman.decode(_bits("01"), 0, 3, incomplete, "t")
    with pytest.raises(MalformedUpdate, match="truncated"):
        huffman.decode(_bits("1"), 0, 1, incomplete, "t")  # "1" is only half of "10"


def test_bitpack_by_hand_and_strict_reading() -> None:
    assert bitpack.fixed_to_bits(np.array([5, 0, 3]), 3).tolist() == [1, 0, 1, 0, 0, 0, 0, 1, 1]
    assert bitpack.pack_bits(bitpack.fixed_to_bits(np.array([5, 0, 3]), 3)) == b"\xa1\x80"
    wide = np.array([2**40 + 7, 1], np.uint64)
    assert bitpack.bits_to_fixed(bitpack.fixed_to_bits(wide, 41), 41, 2).tolist() == wide.tolist()
    assert bitpack.width_for(0) == 0 and bitpack.width_for(1) == 1 and bitpack.width_for(255) == 8
    bits = bitpack.unpack_bits(b"\xa1\x80")
    bitpack.check_end(bits, 9, "t")
    with pytest.raises(MalformedUpdate, match="padding"):
        bitpack.check_end(bitpack.unpack_bits(b"\xa1\x81"), 9, "t")
    with pytest.raises(MalformedUpdate, match="needs"):
        bitpack.check_end(bitpack.unpack_bits(b"\xa1\x80\x00"), 9, "t")
    with pytest.raises(MalformedUpdate, match="too short"):
        bitpack.bits_to_fixed(bits, 3, 6)
    reader = bitpack.ByteReader(bitpack.ByteWriter().varint(300).u8(7).array(), "t")
    assert reader.varint(1000) == 300 and reader.u8() == 7
    with pytest.raises(MalformedUpdate, match="limit"):
        bitpack.ByteReader(bitpack.ByteWriter().varint(300).array(), "t").varint(299)
    with pytest.raises(MalformedUpdate, match="non-canonical"):
        bitpack.ByteReader(np.array([0x80, 0x00], np.uint8), "t").varint(10)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**20 - 1), max_size=40), st.integers(20, 24))
def test_fixed_width_roundtrip_property(values: list[int], width: int) -> None:
    bits = bitpack.fixed_to_bits(np.array(values, np.uint64), width)
    assert bits.size == len(values) * width
    assert bitpack.bits_to_fixed(bits, width, len(values)).tolist() == values


def test_positions_by_hand() -> None:
    idx, n = np.array([1, 4, 5, 9]), 16
    costs = position_bits(idx, n)  # gaps 1, 2, 0, 3
    assert costs == {"absolute": (16, 0), "gaps": (8, 2), "entropy": (10, 0)}
    header, stream = encode_positions(idx, n, "entropy")
    assert header == 0x80 and "".join(map(str, stream)) == "01" + "001" + "1" + "0001"
    header, stream = encode_positions(idx, n, "auto")
    assert header == 0x42 and "".join(map(str, stream)) == "01100011"
    out, end = decode_positions(stream, 0, 4, n, header, "t")
    assert out.tolist() == [1, 4, 5, 9] and end == 8


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3000), st.data())
def test_positions_roundtrip_every_mode_and_auto_is_smallest(n: int, data: st.DataObject) -> None:
    chosen = data.draw(st.sets(st.integers(0, n - 1), max_size=min(n, 200)))
    idx = np.array(sorted(chosen), np.int64)
    costs = position_bits(idx, n)
    for mode in (*MODES, "auto"):
        header, stream = encode_positions(idx, n, mode)
        assert stream.size == (min(c for c, _ in costs.values()) if mode == "auto" else costs[mode][0])
        tail = np.concatenate([stream, _bits("11")])
        out, end = decode_positions(tail, 0, idx.size, n, header, "t")
        assert out.tolist() == idx.tolist() and end == stream.size


@pytest.mark.parametrize(
    ("stream", "count", "n", "header", "match"),
    [
        ("10010011", 2, 16, 0x00, "strictly"),  # absolute: 9 then 3
        ("11110000", 2, 10, 0x00, "strictly"),  # absolute: 15 >= n
        ("1111", 2, 5, 0x42, "beyond"),  # gaps 3, 3 -> positions 3, 7 >= 5
        ("0000000001", 1, 8, 0x80, "out of range"),  # rice b=0: quotient 9 > 8
        ("000", 1, 8, 0x80, "truncated"),  # no unary terminator
        ("1", 1, 8, 0xC0, "header"),  # mode 3 does not exist
        ("1", 1, 8, 0x01, "header"),  # absolute takes no parameter
        ("1", 1, 8, 0x7F, "header"),  # gap width 63
    ],
)
def test_positions_hostile(stream: str, count: int, n: int, header: int, match: str) -> None:
    with pytest.raises(MalformedUpdate, match=match):
        decode_positions(_bits(stream), 0, count, n, header, "t")
