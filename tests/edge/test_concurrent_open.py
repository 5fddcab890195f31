"""Opening a store while another process commits a version must not delete that version.

``EdgeRuntime.__init__`` reads the manifest, then takes the store lock to clean crash leftovers.
An apply committed between the two (the device daemon's ClientApp, while ``stamen device status``
opens the store) once made the cleanup use the stale manifest and remove the new version's
directory: the store then named a version whose ``weights.data`` was gone (CI, 2026-12-05).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import TINY_CNN, perturbed, torch_outputs

from stamen.edge import EdgeRuntime, create_delta
from stamen.edge import runtime as runtime_mod
from stamen.edge.store import version_dir
from stamen.protocols import Signer, model_hash


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_open_racing_an_apply_keeps_the_committed_version(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    store = make_store(backend)
    writer = EdgeRuntime.open(store)
    base = {k: np.array(v) for k, v in writer.global_weights().items()}
    target = perturbed(base, seed=1)
    update = create_delta(base, target, "dense", signer, version=1)
    real_lock, raced = runtime_mod.store_lock, []

    @contextlib.contextmanager
    def lock_after_an_apply(path: Path) -> Iterator[None]:
        if not raced:  # the opener has read the manifest; another writer commits first
            raced.append(None)  # (the writer's own apply takes this lock too)
            raced[0] = writer.apply(update)
        with real_lock(path):
            yield

    monkeypatch.setattr(runtime_mod, "store_lock", lock_after_an_apply)
    reader = EdgeRuntime.open(store, serve=False)
    assert raced and raced[0].version == 1
    assert version_dir(store, 1).is_dir()
    assert reader.version().version == 1
    assert model_hash(reader.global_weights()) == raced[0].hash  # base + (target - base)
    assert EdgeRuntime.open(store).version() == raced[0]  # the weights pass their hash check
    np.testing.assert_allclose(reader.global_weights()["layers.2.bias"], target["layers.2.bias"], atol=1e-6)


@pytest.mark.parametrize("racer", ["rollback", "prune"])
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_open_verifies_and_builds_what_it_read_before_another_process_drops_it(
    make_store: Callable[[str], Path],
    signer: Signer,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    racer: str,
) -> None:
    """Between the opener's lock release and its hash check, another process removes the version the
    opener read: a rollback drops the current version, two applies under ``keep=2`` prune it. The
    check and the session build must have happened under the lock (they once ran after it and
    failed on the missing files)."""
    store = make_store(backend)
    writer = EdgeRuntime.open(store, keep=2)
    w0 = {k: np.array(v) for k, v in writer.global_weights().items()}
    writer.apply(create_delta(w0, perturbed(w0, seed=1), "dense", signer, version=1))
    opened = writer.version()  # the version the reader will find current
    w1 = {k: np.array(v) for k, v in writer.global_weights().items()}
    real_lock, raced = runtime_mod.store_lock, []

    def race() -> None:
        if racer == "rollback":
            writer.rollback()
            return
        w = w1
        for version in (2, 3):
            nxt = perturbed(w0, seed=version)
            writer.apply(create_delta(w, nxt, "dense", signer, version=version))
            w = {k: np.array(v) for k, v in writer.global_weights().items()}

    @contextlib.contextmanager
    def race_after_release(path: Path) -> Iterator[None]:
        with real_lock(path):
            yield
        if not raced:  # the reader's first hold ends; another writer goes next
            raced.append(None)  # (the writer's own changes take this lock too)
            race()

    monkeypatch.setattr(runtime_mod, "store_lock", race_after_release)
    reader = EdgeRuntime.open(store)
    assert raced and not version_dir(store, opened.version).exists()  # the race did drop it
    assert reader.version() == opened  # what it verified, and serves from memory
    x = np.random.default_rng(0).normal(size=(2, 1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(reader.predict(x), torch_outputs(TINY_CNN, w1, x), atol=1e-5)
