"""A refused delta is classified against the version the apply refused it against.

After ``EdgeRuntime.apply`` refuses a delta (another base, or another model), the node decides
whether the device holds another version (:class:`DeviceHolds`, the server resynchronizes it) or
the delta is for another model (raised). Another process may commit between the refusal and that
decision; the node must use the version the apply read under the store lock, not re-read the
manifest after the lock was released."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from edge_helpers import perturbed

from stamen.client.node import DeviceHolds, Node, Received, start_weights
from stamen.edge import EdgeRuntime
from stamen.protocols import BaseModelMismatch, Signer, model_hash
from stamen.protocols.delta import create_delta
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

INSTR = RoundInstructions(1, 1, 0, "dense", False, TaskSpec(), TrainSpec())


def _device_at_v2(make_store: Callable[[str], Path], signer: Signer) -> tuple[Path, Node, list[dict]]:
    """A node whose store holds version 2; the weights of versions 0, 1 and 2."""
    store = make_store("onnx")
    node = Node(cast(Any, None), "node-1", 1, EdgeRuntime.open(store))
    assert node.store is not None
    held = [{k: np.array(v) for k, v in node.store.global_weights().items()}]
    for version in (1, 2):
        target = perturbed(held[0], version)
        node.store.apply(create_delta(held[-1], target, "dense", signer, version=version, model_id="tiny"))
        held.append({k: np.array(v) for k, v in node.store.global_weights().items()})
    return store, node, held


def _commit_after_refusal(node: Node, monkeypatch: pytest.MonkeyPatch, commit: Callable[[], Any]) -> None:
    """Make another process's ``commit`` land right after the node's apply refuses (the gap)."""
    assert node.store is not None
    real = node.store.apply

    def apply_then_commit(data: bytes) -> Any:
        try:
            return real(data)
        except BaseModelMismatch:
            commit()
            raise

    monkeypatch.setattr(node.store, "apply", apply_then_commit)


def test_a_delta_for_another_model_stays_refused_when_a_rollback_follows(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delta's base is the store's version but its model is another: refused as such, even when
    an operator's rollback commits in the gap (the old node then said it held version 1)."""
    store, node, held = _device_at_v2(make_store, signer)
    wrong = create_delta(held[2], perturbed(held[0], 3), "dense", signer, version=3, model_id="other")
    _commit_after_refusal(node, monkeypatch, lambda: EdgeRuntime.open(store).rollback())
    with pytest.raises(BaseModelMismatch, match="for model 'other'"):
        start_weights(node, Received(INSTR, downlink=wrong))
    assert EdgeRuntime.open(store).version().version == 1  # the rollback did land in the gap


def test_a_device_that_held_another_version_says_which_when_a_commit_follows(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device was rolled back to version 1, the server's delta is from version 2: the device
    says it holds version 1, even when another process commits the delta's base weights in the gap
    (the old node then took the refusal for a delta of another model and failed the round)."""
    store, node, held = _device_at_v2(make_store, signer)
    v1 = EdgeRuntime.open(store).rollback()
    delta = create_delta(held[2], perturbed(held[0], 3), "dense", signer, version=3, model_id="tiny")
    again = create_delta(held[1], held[2], "dense", signer, version=4, model_id="tiny")
    _commit_after_refusal(node, monkeypatch, lambda: EdgeRuntime.open(store).apply(again))
    with pytest.raises(DeviceHolds) as refused:
        start_weights(node, Received(INSTR, downlink=delta))
    assert (refused.value.version, refused.value.held_hash) == (1, v1.hash)
    now = EdgeRuntime.open(store).version()
    assert (now.version, now.hash) == (4, model_hash(held[2]))  # the commit did land in the gap


def test_a_refusal_pickles_with_the_version_it_held() -> None:
    """A RefusedBase crosses a process boundary (pickle) with its message and ``held`` version."""
    import pickle

    from stamen.edge.errors import RefusedBase
    from stamen.edge.manifest import ModelVersion

    held = ModelVersion(3, "ab" * 32, None)
    back = pickle.loads(pickle.dumps(RefusedBase("based on another version", held)))
    assert isinstance(back, BaseModelMismatch) and str(back) == "based on another version"
    assert back.held == held
