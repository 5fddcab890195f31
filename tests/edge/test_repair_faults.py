"""What repair must not take for rot, and what it must: a read that fails for another reason than
a missing file (EIO from a failing card) changes nothing and is raised; a version whose ONNX graph
is gone is repaired; leftovers that cannot be removed after the commit do not make the store
unopenable."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_helpers import store_bytes
from test_repair import _three_versions

from stamen.edge import EdgeRuntime, Repair, torch_backend
from stamen.edge import repair as repair_module
from stamen.edge import store as store_module
from stamen.edge.onnx_backend import GRAPH, SKELETON, OnnxBackend
from stamen.edge.store import version_dir
from stamen.edge.torch_backend import TorchBackend, read_safetensors_source
from stamen.protocols import Signer

BACKENDS = {"onnx": OnnxBackend, "torch": TorchBackend}


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


def test_a_version_whose_onnx_graph_is_gone_is_repaired(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    store = make_store("onnx")
    _three_versions(store, signer)
    (version_dir(store, 2) / GRAPH).unlink()
    fixed = EdgeRuntime.open(store, repair=True, serve=False)  # what the daemon opens
    assert isinstance(fixed.repaired, Repair) and (
        fixed.repaired.from_version,
        fixed.repaired.to_version,
    ) == (2, 1)
    assert "missing" in fixed.repaired.reason


@pytest.mark.parametrize("how", ["flip", "delete"])
def test_a_rotten_skeleton_does_not_blame_intact_versions(
    make_store: Callable[[str], Path], signer: Signer, how: str
) -> None:
    """The shared skeleton has no recorded hash: its rot is not taken for rot of every version
    (which would leave nothing to repair to); intact versions open and serve."""
    store = make_store("onnx")
    _three_versions(store, signer)
    skeleton = store / SKELETON
    if how == "delete":
        skeleton.unlink()
    else:
        skeleton.write_bytes(skeleton.read_bytes()[:-1] + b"?")
    rt = EdgeRuntime.open(store, repair=True)
    assert rt.repaired is None and rt.version().version == 2


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
