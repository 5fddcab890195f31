"""The ONNX skeleton under the recorded graph hash, past opening: an apply never copies a rotten
skeleton into a new version (and a running node heals it then); a skeleton that cannot be read is
no reason to refuse opening and is rewritten by repair; an unreadable copy of the graph is skipped
when healing; a rewrite cut short leaves nothing behind after the next open; a rollback rewrites its
target's rotten graph; a running node whose skeleton rots heals it and applies the delta."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_helpers import perturbed, store_bytes
from test_repair import _three_versions
from test_repair_device import INSTR, _device_at_v2

from stamen.client.node import Received, start_weights
from stamen.edge import EdgeRuntime, StoreCorrupt, create_delta
from stamen.edge.onnx_backend import GRAPH, SKELETON, OnnxBackend
from stamen.edge.store import version_dir
from stamen.protocols import Signer


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_an_apply_refuses_to_copy_a_rotten_skeleton(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    store = make_store("onnx")
    rt, held, _ = _three_versions(store, signer)
    _flip(store / SKELETON)  # rots after the runtime opened the store
    update = create_delta(held[2], perturbed(held[0], 3), "dense", signer, version=3)
    with pytest.raises(StoreCorrupt, match=f"{SKELETON} fails its hash check"):
        rt.apply(update)
    assert rt.version().version == 2 and not version_dir(store, 3).exists()
    healed = EdgeRuntime.open(store, repair=True)
    assert healed.repaired is not None and f"{SKELETON} fails its hash check" in healed.repaired.reason
    assert healed.apply(update).version == 3
    assert (version_dir(store, 3) / GRAPH).read_bytes() == (version_dir(store, 2) / GRAPH).read_bytes()


def test_an_unreadable_skeleton_opens_and_is_rewritten_by_repair(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store("onnx")
    _three_versions(store, signer)
    intact = (store / SKELETON).read_bytes()
    real = OnnxBackend.skeleton_fault

    def eio(self: OnnxBackend, graph: str) -> Any:
        raise OSError(errno.EIO, "Input/output error", str(self.store / SKELETON))

    monkeypatch.setattr(OnnxBackend, "skeleton_fault", eio)
    before = store_bytes(store)
    assert EdgeRuntime.open(store).version().version == 2  # serving never reads the skeleton
    assert store_bytes(store) == before
    fixed = EdgeRuntime.open(store, repair=True)
    assert fixed.repaired is not None and f"{SKELETON} cannot be read" in fixed.repaired.reason
    assert (fixed.repaired.from_version, fixed.repaired.to_version) == (2, 2)
    monkeypatch.setattr(OnnxBackend, "skeleton_fault", real)
    assert (store / SKELETON).read_bytes() == intact and EdgeRuntime.open(store).repaired is None


def test_healing_the_skeleton_skips_a_copy_that_cannot_be_read(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    """Skeleton rotten; version 2's weights rotten (it is dropped) and its graph unreadable (a
    directory in its place): the skeleton is rewritten from version 1's graph."""
    store = make_store("onnx")
    _, held, _ = _three_versions(store, signer)
    _flip(store / SKELETON)
    (version_dir(store, 2) / "weights.data").write_bytes(b"rot")
    (version_dir(store, 2) / GRAPH).unlink()
    (version_dir(store, 2) / GRAPH).mkdir()
    rt = EdgeRuntime.open(store, repair=True)
    assert (
        rt.repaired is not None
        and f"rewritten from {version_dir(store, 1).name}/{GRAPH}" in rt.repaired.reason
    )
    assert rt.version().version == 1
    for name, arr in rt.global_weights().items():
        np.testing.assert_array_equal(arr, held[1][name])


def test_a_graph_rewrite_cut_short_is_cleaned_at_the_next_open(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    store = make_store("onnx")
    _three_versions(store, signer)
    leftover = version_dir(store, 2) / f"{GRAPH}.tmp-12345"
    leftover.write_bytes(b"half a graph")
    EdgeRuntime.open(store)
    assert not leftover.exists() and (version_dir(store, 2) / GRAPH).is_file()


def test_a_rollback_rewrites_the_rotten_graph_of_its_target(
    make_store: Callable[[str], Path], signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """Version 1's weights pass but its graph rotted: the rollback gives it the skeleton's graph back
    (logged) and serves it, where it used to refuse."""
    store = make_store("onnx")
    rt, held, _ = _three_versions(store, signer)
    _flip(version_dir(store, 1) / GRAPH)
    with caplog.at_level(logging.WARNING, logger="stamen.edge"):
        assert rt.rollback().version == 1
    lines = [r.getMessage() for r in caplog.records if "rolling back" in r.getMessage()]
    assert len(lines) == 1 and f"{GRAPH} fails its hash check; rewritten from {SKELETON}" in lines[0]
    assert (version_dir(store, 1) / GRAPH).read_bytes() == (store / SKELETON).read_bytes()
    assert EdgeRuntime.open(store).repaired is None  # opens verified
    for name, arr in rt.global_weights().items():
        np.testing.assert_array_equal(arr, held[1][name])


def test_a_rollback_whose_target_graph_rotted_with_the_skeleton_is_refused(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    store = make_store("onnx")
    rt, _, _ = _three_versions(store, signer)
    _flip(version_dir(store, 1) / GRAPH)
    _flip(store / SKELETON)
    manifest = (store / "manifest.json").read_bytes()
    with pytest.raises(StoreCorrupt, match=f"{SKELETON} fails its hash check"):
        rt.rollback()
    assert rt.version().version == 2 and (store / "manifest.json").read_bytes() == manifest


def test_a_node_whose_skeleton_rots_heals_it_and_applies_the_delta(
    make_store: Callable[[str], Path], signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    """The skeleton rots under a running node: the next delta's apply refuses to copy it, the repair
    rewrites it and keeps the version, so the delta applies in the same round (no resync)."""
    store, node, edge, w0 = _device_at_v2(make_store, signer)
    _flip(store / SKELETON)
    payload = edge.payload("node-1", 3, perturbed(w0, 3))
    assert payload.delta is not None
    with caplog.at_level(logging.WARNING, logger="stamen.client"):
        start_weights(node, Received(INSTR, downlink=payload.delta))
    assert node.store is not None and node.store.version().version == 3
    assert node.store.version().hash == payload.base
    lines = [r.getMessage() for r in caplog.records if "repaired while running" in r.getMessage()]
    assert len(lines) == 1 and "version 2 -> 2" in lines[0] and f"{SKELETON} fails" in lines[0]
