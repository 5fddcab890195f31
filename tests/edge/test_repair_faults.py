"""What repair must not take for rot, and what it must: a read that fails for another reason than
a missing file (EIO from a failing card) changes nothing and is raised; ONNX graphs are checked
against the manifest's recorded graph hash and rewritten from an intact copy (a version's graph
from the skeleton, the skeleton from a version's graph) instead of dropping the version; leftovers
that cannot be removed after the commit do not make the store unopenable."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_helpers import TINY_CNN, perturbed, store_bytes, torch_outputs
from test_repair import _three_versions

from stamen.edge import EdgeRuntime, Repair, StoreCorrupt, create_delta, onnx_backend, torch_backend
from stamen.edge import repair as repair_module
from stamen.edge import store as store_module
from stamen.edge.onnx_backend import GRAPH, SKELETON, OnnxBackend
from stamen.edge.store import version_dir
from stamen.edge.torch_backend import TorchBackend, read_safetensors_source
from stamen.protocols import Signer

BACKENDS = {"onnx": OnnxBackend, "torch": TorchBackend}
X = np.random.default_rng(5).normal(size=(7, 16)).astype(np.float32)


def _eio_on(monkeypatch: pytest.MonkeyPatch, cls: Any, vdir: Path) -> None:
    """``cls.read_unmapped`` of ``vdir`` (the check's read) fails with EIO."""
    real = cls.read_unmapped

    def read(self: Any, where: Path, table: Any) -> Any:
        if where == vdir:
            raise OSError(errno.EIO, "Input/output error", str(where / "weights"))
        return real(self, where, table)

    monkeypatch.setattr(cls, "read_unmapped", read)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_an_io_error_is_raised_and_drops_nothing(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    store = make_store(backend)
    _three_versions(store, signer)
    before = store_bytes(store)
    _eio_on(monkeypatch, BACKENDS[backend], version_dir(store, 2))
    for repair in (True, False):
        with pytest.raises(OSError, match="Input/output error") as raised:
            EdgeRuntime.open(store, repair=repair)
        assert raised.value.errno == errno.EIO
    assert store_bytes(store) == before  # version 2 kept: the read may pass next time
    monkeypatch.undo()
    assert EdgeRuntime.open(store, repair=True).repaired is None


def test_onnx_weights_read_per_tensor_equal_the_mapped_read(make_store: Callable[[str], Path]) -> None:
    store = make_store("onnx")
    backend, rt = OnnxBackend(store), EdgeRuntime.open(store)
    table, vdir = rt.manifest.tensors, version_dir(store, 0)
    lazy = backend.read_unmapped(vdir, table)
    assert list(lazy) == [t.name for t in table] and len(lazy) == len(table)
    for name, arr in backend.read(vdir, table).items():
        np.testing.assert_array_equal(lazy[name], arr)
    weights = vdir / "weights.data"
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated at tensor"):
        dict(backend.read_unmapped(vdir, table))


def test_safetensors_read_into_memory_equals_the_mapped_read(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "w.safetensors"
    save_file({"b": np.arange(3, dtype=np.float32), "a": np.ones((2, 2), np.float32)}, str(path))
    mapped, unmapped = read_safetensors_source(path)[0], read_safetensors_source(path, mapped=False)[0]
    assert list(unmapped) == list(mapped) == ["a", "b"]
    for name in mapped:
        np.testing.assert_array_equal(unmapped[name], mapped[name])
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_safetensors_source(path, mapped=False)


def test_safetensors_read_errors_are_not_reported_as_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(path: str, framework: str) -> Any:
        raise OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(torch_backend, "safe_open", failing)
    with pytest.raises(OSError) as raised:
        read_safetensors_source(tmp_path / "weights.safetensors")
    assert raised.value.errno == errno.EIO and not isinstance(raised.value, ValueError)


def test_an_io_error_on_the_overlay_keeps_it(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store("onnx")
    rt, _, _ = _three_versions(store, signer)
    rt.set_overlay({"layers.3.bias": np.ones(3, np.float32)}, "bias")
    before = store_bytes(store)

    def failing(path: Path, table: Any, mapped: bool = True) -> Any:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(repair_module, "read_overlay", failing)
    with pytest.raises(OSError, match="Input/output error"):
        EdgeRuntime.open(store, repair=True)
    assert store_bytes(store) == before  # the overlay, which nobody can send again, is kept


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))


def _rot(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
    else:
        _flip(path)


def _graph_hash(store: Path) -> Any:
    return json.loads((store / "manifest.json").read_text()).get("graph")


def _forget_graph_hash(store: Path) -> None:
    """Turn the store into one made before the graph hash was recorded."""
    obj = json.loads((store / "manifest.json").read_text())
    del obj["graph"]
    (store / "manifest.json").write_text(json.dumps(obj))


def _refused_then_healed(store: Path, name: str) -> EdgeRuntime:
    """A plain open refuses the rotten graph file ``name`` (naming repair); repair heals it in place:
    the same version (2) stays current."""
    with pytest.raises(StoreCorrupt, match=rf"{name} (is missing|fails its hash check).*stamen edge repair"):
        EdgeRuntime.open(store)
    rt = EdgeRuntime.open(store, repair=True)
    assert isinstance(rt.repaired, Repair) and (rt.repaired.from_version, rt.repaired.to_version) == (2, 2)
    return rt


@pytest.mark.parametrize("how", ["flip", "delete"])
def test_a_rotten_version_graph_is_rewritten_and_the_version_kept(
    make_store: Callable[[str], Path], signer: Signer, how: str
) -> None:
    store = make_store("onnx")
    _, held, _ = _three_versions(store, signer)
    graph = version_dir(store, 2) / GRAPH
    _rot(graph, how)
    rt = _refused_then_healed(store, GRAPH)
    assert rt.repaired is not None and f"rewritten from {SKELETON}" in rt.repaired.reason
    assert [h.version for h in rt.manifest.history] == [0, 1, 2]
    assert graph.read_bytes() == (store / SKELETON).read_bytes()
    np.testing.assert_allclose(rt.predict(X), torch_outputs(TINY_CNN, held[2], X), rtol=1e-4, atol=1e-5)
    assert EdgeRuntime.open(store).repaired is None


@pytest.mark.parametrize("how", ["flip", "delete"])
def test_a_rotten_skeleton_is_rewritten_from_a_version(
    make_store: Callable[[str], Path], signer: Signer, how: str
) -> None:
    store = make_store("onnx")
    _, held, _ = _three_versions(store, signer)
    skeleton = store / SKELETON
    intact = skeleton.read_bytes()
    _rot(skeleton, how)
    rt = _refused_then_healed(store, SKELETON)
    assert (
        rt.repaired is not None
        and f"{SKELETON} " in rt.repaired.reason
        and "rewritten from" in rt.repaired.reason
    )
    assert skeleton.read_bytes() == intact
    target = perturbed(held[0], 3)
    assert rt.apply(create_delta(held[2], target, "dense", signer, version=3)).version == 3
    np.testing.assert_allclose(rt.predict(X), torch_outputs(TINY_CNN, target, X), rtol=1e-4, atol=1e-5)
    assert EdgeRuntime.open(store).repaired is None


def test_no_intact_copy_of_the_graph_needs_a_full_model(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    store = make_store("onnx")
    _three_versions(store, signer)
    for path in [store / SKELETON, *(version_dir(store, v) / GRAPH for v in (0, 1, 2))]:
        _flip(path)
    before = store_bytes(store)
    with pytest.raises(StoreCorrupt, match="needs a full model"):
        EdgeRuntime.open(store, repair=True)
    assert store_bytes(store) == before


def test_an_io_error_on_a_graph_is_raised_and_changes_nothing(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store("onnx")
    _three_versions(store, signer)
    _flip(version_dir(store, 2) / GRAPH)
    before, real = store_bytes(store), onnx_backend._sha256

    def failing(path: Path) -> str | None:
        if path.name == GRAPH:
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path)

    monkeypatch.setattr(onnx_backend, "_sha256", failing)
    with pytest.raises(OSError, match="Input/output error"):
        EdgeRuntime.open(store, repair=True)
    assert store_bytes(store) == before


def test_a_store_without_a_graph_hash_checks_only_that_graphs_exist(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    """Stores made before the hash was recorded: graph bytes are not checked (the skeleton may have
    rotted too), a missing version graph still drops the version, and no hash is made up."""
    store = make_store("onnx")
    _three_versions(store, signer)
    _forget_graph_hash(store)
    _flip(store / SKELETON)
    _flip(version_dir(store, 1) / GRAPH)
    assert EdgeRuntime.open(store, serve=False).repaired is None
    (version_dir(store, 2) / GRAPH).unlink()
    fixed = EdgeRuntime.open(store, repair=True, serve=False)  # what the daemon opens
    assert isinstance(fixed.repaired, Repair) and "missing" in fixed.repaired.reason
    assert (fixed.repaired.from_version, fixed.repaired.to_version) == (2, 1)
    assert _graph_hash(store) is None


def test_the_graph_hash_survives_every_manifest_rewrite(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    store = make_store("onnx")
    want = hashlib.sha256((store / SKELETON).read_bytes()).hexdigest()
    assert _graph_hash(store) == want and _graph_hash(make_store("torch")) is None
    rt, _, _ = _three_versions(store, signer)  # apply
    assert _graph_hash(store) == want
    rt.set_overlay({"layers.3.bias": np.ones(3, np.float32)}, "bias")
    assert _graph_hash(store) == want
    rt.rollback()
    assert _graph_hash(store) == want
    (version_dir(store, 1) / "weights.data").write_bytes(b"rot")
    assert EdgeRuntime.open(store, repair=True).version().version == 0
    assert _graph_hash(store) == want and EdgeRuntime.open(store).manifest.graph == want


def test_a_malformed_graph_hash_is_refused(make_store: Callable[[str], Path]) -> None:
    store = make_store("onnx")
    obj = json.loads((store / "manifest.json").read_text())
    obj["graph"] = "not-a-hash"
    (store / "manifest.json").write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="bad graph hash"):
        EdgeRuntime.open(store)


def test_leftovers_that_cannot_be_removed_do_not_block_the_store(
    make_store: Callable[[str], Path],
    signer: Signer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = make_store("onnx")
    _three_versions(store, signer)
    (version_dir(store, 2) / "weights.data").write_bytes(b"rot")

    def read_only(where: Path, manifest: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(where))

    monkeypatch.setattr(store_module, "clean_store", read_only)
    with caplog.at_level(logging.WARNING, logger="stamen.edge"):
        fixed = EdgeRuntime.open(store, repair=True)
        again = EdgeRuntime.open(store)  # committed: the next open works, leftovers or not
    assert fixed.version().version == 1 and again.version().version == 1
    assert sum("leftovers not removed" in r.getMessage() for r in caplog.records) >= 2
