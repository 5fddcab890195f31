"""Symlinks planted in a store never redirect a write or a delete out of it: garbage names (the
apply shadow, the next version directory, temp files) are unlinked and the apply goes on; links
that cannot be removed safely (``.lock``, ``versions``) are refused with one line naming them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import perturbed

from stamen.cli import main
from stamen.edge import EdgeRuntime, StoreCorrupt, create_delta
from stamen.edge.fsutil import remove_tree
from stamen.edge.manifest import MANIFEST
from stamen.edge.runtime import SHADOW
from stamen.edge.store import LOCK, VERSIONS, version_dir
from stamen.protocols import Signer

X = np.random.default_rng(2).normal(size=(3, 16)).astype(np.float32)


def _outside(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A directory outside the store with a sentinel file; returns it and its contents."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "precious.txt").write_bytes(b"do not touch")
    return d, _snapshot(d)


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _next_update(rt: EdgeRuntime, signer: Signer, version: int) -> bytes:
    cur = {k: np.array(v) for k, v in rt.global_weights().items()}
    return create_delta(cur, perturbed(cur, version), "dense", signer, version=version)


@pytest.mark.parametrize("where", ["shadow", "next_version", "dangling_shadow", "manifest_tmp"])
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_planted_link_is_unlinked_and_apply_succeeds(
    make_store: Callable[[str], Path], signer: Signer, tmp_path: Path, where: str, backend: str
) -> None:
    rt = EdgeRuntime.open(make_store(backend))
    outside, before = _outside(tmp_path)
    target = outside if where != "dangling_shadow" else outside / "not-yet"
    link = {
        "shadow": rt.store / VERSIONS / SHADOW,
        "dangling_shadow": rt.store / VERSIONS / SHADOW,
        "next_version": version_dir(rt.store, 1),
        "manifest_tmp": rt.store / f"{MANIFEST}.tmp-{os.getpid()}",
    }[where]
    link.symlink_to(target if where != "manifest_tmp" else outside / "precious.txt")
    for version in (1, 2):  # the first apply must clear the link, the second must not be wedged
        assert rt.apply(_next_update(rt, signer, version)).version == version
    assert _snapshot(outside) == before and not (outside / "not-yet").exists()
    assert not link.is_symlink() or link.resolve().is_relative_to(rt.store.resolve())
    assert EdgeRuntime.open(rt.store).version().version == 2


def test_link_planted_while_closed_is_cleared_on_open(
    make_store: Callable[[str], Path], signer: Signer, tmp_path: Path
) -> None:
    store = make_store("onnx")
    outside, before = _outside(tmp_path)
    for name in (SHADOW, version_dir(store, 1).name, ".shadow-init"):
        (store / VERSIONS / name).symlink_to(outside)
    rt = EdgeRuntime.open(store)
    assert sorted(p.name for p in (store / VERSIONS).iterdir()) == [version_dir(store, 0).name]
    assert rt.apply(_next_update(rt, signer, 1)).version == 1
    assert _snapshot(outside) == before


def test_lock_link_refused_without_creating_its_target(
    make_store: Callable[[str], Path], tmp_path: Path
) -> None:
    store = make_store("onnx")
    (store / LOCK).unlink(missing_ok=True)
    (store / LOCK).symlink_to(tmp_path / "elsewhere.lock")
    with pytest.raises(StoreCorrupt, match=r"\.lock is a symbolic link"):
        EdgeRuntime.open(store)
    assert not (tmp_path / "elsewhere.lock").exists()


def test_lock_link_is_one_cli_line_exit_2(
    make_store: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_store("onnx")
    (store / LOCK).unlink(missing_ok=True)
    (store / LOCK).symlink_to(tmp_path / "elsewhere.lock")
    code = main(["edge", "status", "--model", str(store)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(store / LOCK) in err
    assert not (tmp_path / "elsewhere.lock").exists()


def test_versions_link_refused(make_store: Callable[[str], Path], tmp_path: Path) -> None:
    store = make_store("onnx")
    moved = tmp_path / "moved-versions"
    (store / VERSIONS).rename(moved)
    (store / VERSIONS).symlink_to(moved)
    with pytest.raises(StoreCorrupt, match=r"versions is a symbolic link"):
        EdgeRuntime.open(store)
    assert [p.name for p in moved.iterdir()] == [version_dir(store, 0).name]


def test_remove_tree_never_follows(tmp_path: Path) -> None:
    outside, before = _outside(tmp_path)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "link").symlink_to(outside)
    (tree / "file").write_bytes(b"x")
    remove_tree(tree)
    lone = tmp_path / "lone-link"
    lone.symlink_to(outside)
    remove_tree(lone)
    remove_tree(tmp_path / "never-existed")
    assert not tree.exists() and not lone.is_symlink() and _snapshot(outside) == before


def test_garbage_of_any_kind_at_temp_and_overlay_names_is_removed(
    make_store: Callable[[str], Path], tmp_path: Path
) -> None:
    store = make_store("onnx")
    outside, before = _outside(tmp_path)
    (store / f"{MANIFEST}.tmp-99999").mkdir()
    (store / f"{MANIFEST}.tmp-99999" / "x").write_bytes(b"x")
    (store / "overlay-0123456789abcdef.safetensors").symlink_to(outside / "precious.txt")
    EdgeRuntime.open(store)
    names = sorted(p.name for p in store.iterdir())
    assert not any(".tmp-" in n or n.startswith("overlay-") for n in names), names
    assert _snapshot(outside) == before
