"""Model patches: replacement values at the changed entries reproduce the target bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.protocols import StamenError, model_hash
from stamen.protocols.patch import CacheMiss, ModelPatch, apply_patch, make_patch

HELD = {"a": np.zeros((2, 3), np.float32), "b": np.arange(100, dtype=np.float32)}


def _target() -> dict[str, np.ndarray]:
    t = {k: v.copy() for k, v in HELD.items()}
    t["a"][1, 2] = 5.0  # 1 of 6 entries: sparse (6 index + value bytes < 24 dense)
    t["b"][[3, 97]] = [-1.0, 7.5]  # 2 of 100: sparse
    return t


def test_hand_computed_patch() -> None:
    target = _target()
    changed = {"a": np.array([5]), "b": np.array([3, 97])}
    patch = make_patch(target, changed, model_hash(HELD), model_hash(target))
    # "a": 1 entry of 6 with uint16 indices costs 6 bytes < 24 dense: sparse; "b": 2 of 100: sparse
    assert sorted(patch.sparse) == ["a", "b"] and not patch.dense
    idx, val = patch.sparse["b"]
    assert idx.dtype == np.uint16 and idx.tolist() == [3, 97] and val.tolist() == [-1.0, 7.5]
    out = apply_patch(HELD, patch)
    assert all(np.array_equal(out[k], target[k]) for k in target)
    assert out["b"] is not HELD["b"] and HELD["b"][3] == 3.0  # the held model is not modified


def test_unchanged_tensors_are_shared_and_all_means_dense() -> None:
    target = {k: v.copy() for k, v in HELD.items()}
    target["a"] += 1.0
    patch = make_patch(target, {"a": None}, model_hash(HELD), model_hash(target))
    assert list(patch.dense) == ["a"] and not patch.sparse
    out = apply_patch(HELD, patch)
    assert out["b"] is HELD["b"] and np.array_equal(out["a"], target["a"])


def test_pinned_wire_size() -> None:
    """uint16 indices + float32 values: 2 * (2 + 4) bytes for "b"'s two entries, 1 * 6 for "a"'s."""
    target = _target()
    patch = make_patch(target, {"a": np.array([5]), "b": np.array([3, 97])}, "h", "t")
    assert sum(v.nbytes for v in patch.to_arrays().values()) == 18
    back = ModelPatch.from_arrays("patch", "h", "t", patch.to_arrays())
    assert back.sparse["b"][0].tolist() == [3, 97] and back.base_hash == "h"


def test_negative_zero_and_wrong_target_are_caught() -> None:
    target = {k: v.copy() for k, v in HELD.items()}
    target["a"][0, 0] = -0.0  # equal to 0.0 as a float, different bits and hash
    wrong = make_patch(target, {}, model_hash(HELD), model_hash(target))  # misses the change
    with pytest.raises(CacheMiss, match="does not hash"):
        apply_patch(HELD, wrong)
    right = make_patch(target, {"a": np.array([0])}, model_hash(HELD), model_hash(target))
    assert np.signbit(apply_patch(HELD, right)["a"][0, 0])


def test_malformed_patches_are_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        ModelPatch("full", "", "t")
    with pytest.raises(ValueError, match="no arrays"):
        ModelPatch("cache", "", "t", dense={"a": HELD["a"]})
    with pytest.raises(StamenError, match="not d/<name>"):
        ModelPatch.from_arrays("patch", "h", "t", {"x/a": HELD["a"]})
    with pytest.raises(StamenError, match="indices or values"):
        ModelPatch.from_arrays("patch", "h", "t", {"i/b": np.array([1], np.uint16)})
    bad = ModelPatch(
        "patch", "h", "t", sparse={"b": (np.array([100], np.uint16), np.array([1.0], np.float32))}
    )
    with pytest.raises(StamenError, match="indices for a tensor of 100"):
        apply_patch(HELD, bad)
    with pytest.raises(StamenError, match="does not have"):
        apply_patch(HELD, ModelPatch("patch", "h", "t", dense={"c": HELD["a"]}))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), frac=st.floats(0.0, 1.0))
def test_any_change_set_reproduces_the_target(seed: int, frac: float) -> None:
    """Property: for random changes (a fraction of entries, any bits), the patch over exactly the
    changed entries (or a superset: ``None``) gives the target bit for bit."""
    rng = np.random.default_rng(seed)
    held = {
        "w": rng.standard_normal((7, 9)).astype(np.float32),
        "v": rng.standard_normal(300).astype(np.float32),
    }
    target = {k: v.copy() for k, v in held.items()}
    changed: dict[str, np.ndarray | None] = {}
    for name, arr in target.items():
        idx = np.flatnonzero(rng.random(arr.size) < frac)
        arr.reshape(-1)[idx] = rng.standard_normal(idx.size).astype(np.float32)
        changed[name] = idx if rng.random() < 0.5 else None
    patch = make_patch(target, changed, model_hash(held), model_hash(target))
    out = apply_patch(held, patch)
    assert all(out[k].tobytes() == target[k].tobytes() for k in target)
    assert sum(v.nbytes for v in patch.to_arrays().values()) <= sum(v.nbytes for v in target.values())
