"""Hostile-input fuzzing of the compression/privacy codecs (fedzip, compeft, dare, rqm), the
pattern of test_codec_pipeline.py: every truncation and a spread of bit flips of a valid payload,
random payloads, and random blobs under valid container framing give a well-formed result or a
StamenError, never another exception; decoding never materializes more than the table allows."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proto_helpers import pinned_input, pipeline

from stamen.protocols import StamenError, tensor_table
from stamen.protocols.container import pack_arrays

PIPELINES = [
    "fedzip",
    "fedzip(density=0.5,clusters=16,position=absolute)",
    "fedzip(position=gaps)+zstd",
    "compeft",
    "compeft(density=0.9)",
    "dare",
    "dare(p=0.5)+int8",
    "rqm",
    "rqm(m=3)+zstd",
    "topk(ratio=0.5)+fedzip(density=1.0)",
    "dare(p=0.5)+fedzip",
]
_SUFFIX = {"fedzip": ".fz", "compeft": ".cp", "rqm": ".rq"}


def _valid(text: str) -> tuple[bytes, tuple]:
    delta = pinned_input()
    return pipeline(text).encode(delta, np.random.default_rng(0)), tensor_table(delta)


def _check(out: dict[str, np.ndarray]) -> None:
    assert [a.shape for a in out.values()] == [(4, 6), (5,)]
    assert all(a.dtype == np.float32 for a in out.values())


@pytest.mark.parametrize("text", PIPELINES)
def test_every_truncation_and_bit_flip_gives_a_result_or_stamen_error(text: str) -> None:
    payload, table = _valid(text)
    p = pipeline(text)
    _check(p.decode(payload, table))
    candidates = [payload[:cut] for cut in range(len(payload))] + [payload + b"\x00"]
    for i in range(0, len(payload) * 8, 3):
        flipped = bytearray(payload)
        flipped[i // 8] ^= 1 << (i % 8)
        candidates.append(bytes(flipped))
    for data in candidates:
        try:
            out = p.decode(data, table)
        except StamenError:
            continue
        _check(out)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=160), st.sampled_from(PIPELINES))
def test_fuzz_random_payloads(data: bytes, text: str) -> None:
    with contextlib.suppress(StamenError):
        _check(pipeline(text).decode(data, tensor_table(pinned_input())))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(_SUFFIX)), st.binary(max_size=64), st.binary(max_size=64))
def test_fuzz_blobs_inside_valid_framing(stage: str, first: bytes, second: bytes) -> None:
    """Random blob contents behind well-formed container keys reach the stage's own parser."""
    arrays = {
        "0" + _SUFFIX[stage]: np.frombuffer(first, np.uint8),
        "1" + _SUFFIX[stage]: np.frombuffer(second, np.uint8),
    }
    with contextlib.suppress(StamenError):
        _check(pipeline(stage).decode(pack_arrays(arrays), tensor_table(pinned_input())))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=64), st.integers(0, 2**64 - 1))
def test_fuzz_dare_framing(meta: bytes, values: bytes, seed: int) -> None:
    arrays = {
        "0.dm": np.frombuffer(meta, np.uint8),
        "0.dv": np.frombuffer(values[: len(values) // 4 * 4], np.float32),
        "1.dm": np.frombuffer(bytes([5]) + seed.to_bytes(8, "little"), np.uint8),
        "1.dv": np.zeros(1, np.float32),
    }
    with contextlib.suppress(StamenError):
        _check(pipeline("dare(p=0.5)").decode(pack_arrays(arrays), tensor_table(pinned_input())))
