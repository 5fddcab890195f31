"""The cohort trainer's randomness: torch.randperm streams and client seeds, reproduced exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.simulations.cohort import client_seeds
from stamen.simulations.cohort.mt19937 import draws, randperms
from stamen.task.seeds import client_seed


def _reference(seed: int, n: int, epochs: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=gen).tolist() for _ in range(epochs)]


def test_pinned_randperm_and_seed_truncation() -> None:
    # torch.randperm(10) of a generator seeded 42; only the low 32 bits of the seed count
    expected = [2, 6, 1, 8, 4, 5, 0, 9, 3, 7]
    got = randperms(np.array([42, 2**40 + 42]), np.array([10, 10]), 1)
    assert got[0, :, 0].tolist() == expected and got[0, :, 1].tolist() == expected
    assert _reference(42, 10, 1) == [expected]


def test_mt19937_first_output_of_seed_5489() -> None:
    # the reference implementation's default seed: first output 3499211612 (mt19937ar.c test vector)
    assert int(draws(np.array([5489]), 1)[0, 0]) == 3499211612


@settings(max_examples=20, deadline=None)
@given(
    seeds=st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=6),
    data=st.data(),
    epochs=st.integers(1, 3),
    backend=st.sampled_from(["numpy", "torch"]),
)
def test_randperms_equal_torch_randperm(
    seeds: list[int], data: st.DataObject, epochs: int, backend: str
) -> None:
    sizes = data.draw(st.lists(st.integers(1, 300), min_size=len(seeds), max_size=len(seeds)))
    s, n = np.array(seeds, dtype=np.int64), np.array(sizes, dtype=np.int64)
    out = (
        randperms(s, n, epochs) if backend == "numpy" else randperms(torch.tensor(s), torch.tensor(n), epochs)
    )
    out = np.asarray(out)
    assert out.shape == (epochs, max(sizes), len(seeds))
    for k, (seed, size) in enumerate(zip(seeds, sizes, strict=True)):
        assert [out[e, :size, k].tolist() for e in range(epochs)] == _reference(seed, size, epochs)


def test_stream_past_one_twist() -> None:
    # 2 epochs of 500 samples need 998 draws: more than one block of 624 words
    seeds, sizes = np.array([7, 8]), np.array([500, 3])
    out = randperms(seeds, sizes, 2)
    assert [out[e, :500, 0].tolist() for e in range(2)] == _reference(7, 500, 2)
    assert [out[e, :3, 1].tolist() for e in range(2)] == _reference(8, 3, 2)


def test_pinned_client_seeds() -> None:
    expected = [8514611595815388268, 1935405067807178682, 8340944691342176559]
    assert client_seeds(0, 1, np.array([0, 1, 2])).tolist() == expected
    assert [client_seed(0, 1, p) for p in (0, 1, 2)] == expected


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**70),
    rnd=st.integers(0, 2**40),
    pids=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20),
)
def test_client_seeds_equal_client_seed(seed: int, rnd: int, pids: list[int]) -> None:
    got = client_seeds(seed, rnd, np.array(pids, dtype=np.int64))
    assert got.tolist() == [client_seed(seed, rnd, p) for p in pids]


def test_client_seeds_refuse_bad_ids() -> None:
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        client_seeds(0, 1, np.array([-1]))
