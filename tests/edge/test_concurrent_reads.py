"""Reads of a runtime racing a change of its store: the weights (and a lazily built session) must
be those of one version, whose files no change removes while they are read.

``global_weights``, ``overlay`` and ``effective_weights`` once read the runtime's manifest and then
the files it names without the store lock, and a lazily built session was built under the runtime's
thread lock only: a rollback (or a prune) committed in between removed the files being read, and a
reader pairing the weights with ``version()`` could get one version's weights with another's hash.

Each test lets a writer run at one step inside the read -- where the store lock is free, as another
thread or process would -- else right after the read (the reader holds the lock: the writer waits).
One thread, no timing: the interleaving is forced, not hoped for.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from edge_helpers import TINY_CNN, perturbed, torch_outputs

from stamen.client.node import Node, Received, start_weights
from stamen.edge import EdgeRuntime, create_delta
from stamen.edge.store import LOCK, version_dir
from stamen.protocols import Signer, model_hash
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

X = np.random.default_rng(0).normal(size=(2, 1, 4, 4)).astype(np.float32)


def _lock_free(store: Path) -> bool:
    """Whether another writer could take the store lock now (a non-blocking try, released at once)."""
    fd = os.open(store / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


class Race:
    """Wrap ``obj.name`` so that its first call once armed runs ``change`` first if the store lock
    is free, else records it as deferred (run by :meth:`finish`, after the read returns)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, obj: object, name: str, store: Path) -> None:
        self.store, self.real = store, getattr(obj, name)
        self.change: Callable[[], object] | None = None
        self.when: str | None = None  # "inside" the read or "after" it
        monkeypatch.setattr(obj, name, self._step)

    def arm(self, change: Callable[[], object]) -> None:
        self.change = change

    def _step(self, *args: Any, **kwargs: Any) -> Any:
        if self.change is not None and self.when is None:
            self.when = "inside" if _lock_free(self.store) else "after"
            if self.when == "inside":
                self.change()
        return self.real(*args, **kwargs)

    def finish(self) -> None:
        assert self.change is not None and self.when is not None, "the read never reached the step"
        if self.when == "after":
            self.change()


def _at_v1(store: Path, signer: Signer) -> tuple[EdgeRuntime, dict[str, np.ndarray], dict[str, np.ndarray]]:
    rt = EdgeRuntime.open(store)
    w0 = {k: np.array(v) for k, v in rt.global_weights().items()}
    w1 = perturbed(w0, seed=1)
    rt.apply(create_delta(w0, w1, "dense", signer, version=1))
    return rt, w0, w1


def _close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-6, err_msg=name)


@pytest.mark.parametrize("read", ["global_weights", "effective_weights", "snapshot"])
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_weights_read_while_a_rollback_removes_the_version(
    make_store: Callable[[str], Path],
    signer: Signer,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    read: str,
) -> None:
    """A rollback (of the same runtime, from another thread) drops version 1 while it is read."""
    store = make_store(backend)
    rt, w0, w1 = _at_v1(store, signer)
    race = Race(monkeypatch, rt.backend, "read", store)
    race.arm(rt.rollback)
    got = getattr(rt, read)()
    version, weights = got if read == "snapshot" else (None, got)
    assert race.when == "after"  # the reader held the lock: the rollback waited for it
    _close(weights, w1)
    assert version is None or (version.version == 1 and version.hash == model_hash(weights))
    race.finish()
    assert rt.version().version == 0 and not version_dir(store, 1).exists()
    _close(rt.global_weights(), w0)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_a_lazy_session_is_built_while_another_process_rolls_back(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """``serve=False``: the first ``predict`` builds the session; another process's rollback drops
    the version being loaded. It waits; the reader serves the version it built, and says so."""
    store = make_store(backend)
    writer, _, w1 = _at_v1(store, signer)
    reader = EdgeRuntime.open(store, serve=False)
    race = Race(monkeypatch, reader.backend, "session", store)
    race.arm(writer.rollback)
    out = reader.predict(X)
    assert race.when == "after"
    np.testing.assert_allclose(out, torch_outputs(TINY_CNN, w1, X), atol=1e-5)
    assert reader.version() == writer.version()  # the session's version
    race.finish()
    assert writer.version().version == 0 and reader.version().version == 1
    np.testing.assert_allclose(reader.predict(X), out)  # served from memory, files gone


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_a_lazy_session_serves_the_version_committed_when_it_is_built(
    make_store: Callable[[str], Path], signer: Signer, backend: str
) -> None:
    """A ``serve=False`` runtime whose version another process dropped since it opened builds its
    session from the version committed now (it once failed on the files that were gone)."""
    store = make_store(backend)
    writer, w0, _ = _at_v1(store, signer)
    reader = EdgeRuntime.open(store, serve=False)
    writer.rollback()
    np.testing.assert_allclose(reader.predict(X), torch_outputs(TINY_CNN, w0, X), atol=1e-5)
    assert reader.version() == writer.version()


def test_a_node_trains_from_the_weights_of_the_hash_it_reports(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after the node's apply, another update lands (the device's runtime is shared): the
    weights it trains from and the base hash it reports must be of one version."""
    store = make_store("onnx")
    rt = EdgeRuntime.open(store)
    w0 = {k: np.array(v) for k, v in rt.global_weights().items()}
    w1, w2 = perturbed(w0, seed=1), perturbed(w0, seed=2)
    race = Race(monkeypatch, rt.backend, "read", store)
    real_apply = rt.apply

    def apply_then_race(data: bytes) -> Any:
        done = real_apply(data)
        held = {k: np.array(v) for k, v in rt.global_weights().items()}  # w1, as the sum rounded it
        update = create_delta(held, w2, "dense", signer, version=2)
        race.arm(lambda: real_apply(update))
        return done

    monkeypatch.setattr(rt, "apply", apply_then_race)
    node = Node(cast(Any, None), "node-1", 1, rt)
    instr = RoundInstructions(1, 1, 0, "dense", False, TaskSpec(), TrainSpec())
    weights, digest = start_weights(
        node, Received(instr, downlink=create_delta(w0, w1, "dense", signer, version=1))
    )
    assert digest == model_hash(weights)  # (the old code: the weights of version 1, the hash of 2)
    _close(weights, w1)
    assert race.when == "after"
    race.finish()
    assert rt.version().version == 2


def test_personalization_refuses_when_an_update_lands_while_it_trains(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overlay is the trained weights minus the weights training started from; an update applied
    meanwhile (the device daemon) once made it ``trained - new global``, silently dropping the update
    on every trained tensor. The run is refused and nothing is stored."""
    from stamen.edge import personalization

    store = make_store("onnx")
    rt = EdgeRuntime.open(store)
    w0 = {k: np.array(v) for k, v in rt.global_weights().items()}
    update = create_delta(w0, perturbed(w0, seed=1), "dense", signer, version=1)
    real_train = personalization.train_plan

    def train_while_updated(*args: Any, **kwargs: Any) -> Any:
        rt.apply(update)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(personalization, "train_plan", train_while_updated)
    x = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    y = np.where(x[:, 0] > 0, 1, 2).astype(np.int64)
    with pytest.raises(ValueError, match="changed from version 0 to 1 during personalization"):
        personalization.personalize(rt, (x, y), "bias", personalization.PersonalizeConfig(epochs=1))
    assert rt.manifest.overlay is None and rt.version().version == 1


def _personalize_while(
    rt: EdgeRuntime, monkeypatch: pytest.MonkeyPatch, step: str, change: Callable[[], object]
) -> None:
    """Personalize ``rt`` (bias plan, one epoch), running ``change`` once at ``step`` of it."""
    from stamen.edge import personalization

    real = getattr(personalization, step)

    def race(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(personalization, step, real)
        change()
        return real(*args, **kwargs)

    monkeypatch.setattr(personalization, step, race)
    x = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    y = np.where(x[:, 0] > 0, 1, 2).astype(np.int64)
    personalization.personalize(rt, (x, y), "bias", personalization.PersonalizeConfig(epochs=1))


@pytest.mark.parametrize("step", ["train_plan", "_touched"])
def test_personalization_refuses_an_update_another_process_applies(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """The device daemon (another process: another runtime) applies an update while ``stamen edge
    personalize`` trains (``train_plan``), or once it has read the global weights again
    (``_touched``, before the overlay is stored). The check once compared the personalizing runtime's
    own manifest, which another process's apply never changes, and ran before ``set_overlay`` took
    the lock: the overlay ``trained - w0`` was stored on version 1. Refused; nothing stored."""
    from stamen.edge.manifest import load_manifest

    store = make_store("onnx")
    rt, daemon = EdgeRuntime.open(store), EdgeRuntime.open(store)
    w0 = {k: np.array(v) for k, v in rt.global_weights().items()}
    update = create_delta(w0, perturbed(w0, seed=1), "dense", signer, version=1)
    with pytest.raises(ValueError, match="changed from version 0 to 1 during personalization"):
        _personalize_while(rt, monkeypatch, step, lambda: daemon.apply(update))
    assert load_manifest(store).overlay is None and load_manifest(store).current.version == 1
    assert not list(store.glob("overlay-*"))


def test_personalization_refuses_an_update_applied_before_the_overlay_is_stored(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same runtime (another thread) applies an update after the check of the version and
    before ``set_overlay`` commits: once stored on version 1 as ``trained - w0``. Refused."""
    store = make_store("onnx")
    rt = EdgeRuntime.open(store)
    w0 = {k: np.array(v) for k, v in rt.global_weights().items()}
    update = create_delta(w0, perturbed(w0, seed=1), "dense", signer, version=1)
    with pytest.raises(ValueError, match="changed from version 0 to 1 during personalization"):
        _personalize_while(rt, monkeypatch, "_touched", lambda: rt.apply(update))
    assert rt.manifest.overlay is None and rt.version().version == 1


@pytest.mark.parametrize("read", ["global_weights", "overlay", "effective_weights", "snapshot"])
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_reads_follow_changes_another_process_committed(
    make_store: Callable[[str], Path], signer: Signer, backend: str, read: str
) -> None:
    """A runtime opened at version 1 with overlay A, whose version and overlay another process has
    replaced (and removed) since: its reads once named the files it opened with, gone
    (FileNotFoundError). They read the version and overlay committed now."""
    store = make_store(backend)
    writer, w0, _ = _at_v1(store, signer)
    name = next(iter(w0))
    writer.set_overlay({name: np.full(w0[name].shape, 0.5, np.float32)}, "a")
    reader = EdgeRuntime.open(store, serve=False)
    b = {name: np.full(w0[name].shape, -0.25, np.float32)}
    writer.set_overlay(b, "b")
    writer.rollback()
    got = getattr(reader, read)()
    version, weights = got if read == "snapshot" else (None, got)
    want = b if read == "overlay" else w0
    if read == "effective_weights":
        want = {**w0, name: w0[name] + b[name]}
    _close(weights, want)
    assert version is None or version == writer.version()
