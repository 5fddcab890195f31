"""Server parts through a checkpoint (server/checkpoint_parts.py): the edge downlink (held and
previously held versions) and the model history."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.protocols import Signer, model_hash
from stamen.server.checkpoint import Checkpoint, CheckpointError, decode_checkpoint, encode_checkpoint
from stamen.server.checkpoint_parts import (
    capture_downlink,
    capture_history,
    restore_downlink,
    restore_history,
)
from stamen.server.checkpoint_rules import Snapshot
from stamen.server.edge_downlink import DeviceDownlink, EdgeDownlink
from stamen.server.staleness.history import ModelHistory


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}


def _reread(snap: Snapshot, tree: object) -> tuple[Snapshot, object]:
    ck = Checkpoint(1, "sync", {"x": np.zeros(1, np.float32)}, (), {}, {"t": tree}, snap.arrays)
    back = decode_checkpoint(encode_checkpoint(ck))
    return Snapshot(dict(back.arrays)), back.state["t"]


def test_edge_downlink_resumes_with_held_and_previous_versions() -> None:
    rng = np.random.default_rng(0)
    initial, t1, t2, t3 = (_model(rng) for _ in range(4))
    signer = Signer.generate()
    kept = EdgeDownlink(DeviceDownlink(initial, signer, "int8", "m"), seed=5)
    kept.tracker.make_update("d1", t1, 1, seed=1)
    kept.tracker.make_update("d1", t2, 2, seed=2)  # d1: held = after t2, prev = after t1
    kept.tracker.make_update("d2", t1, 1, seed=1)
    snap = Snapshot()
    tree = capture_downlink(kept, snap)
    fresh = EdgeDownlink(DeviceDownlink(initial, signer, "int8", "m"), seed=5)
    restore_downlink(fresh, *reversed(_reread(snap, tree)))
    assert fresh.tracker.snapshot()[:2] == kept.tracker.snapshot()[:2]
    prev = kept.tracker.snapshot()[1]["d1"][0]
    # another device's update prunes what nobody holds; then d1 says it never applied version 2:
    # both servers still have its previous weights and send the same delta from them
    for down in (kept, fresh):
        down.tracker.make_update("d2", t2, 2, seed=2)
        down.tracker.resync("d1", prev)
    a, b = (d.tracker.make_update("d1", t3, 3, seed=3) for d in (kept, fresh))
    assert a[1] == b[1]  # the same weights after the delta (int8: a different base would differ)
    assert fresh.tracker.held_hash("d3") == model_hash(initial)


def test_edge_downlink_restores_a_checkpoint_with_one_previous_hash_per_device() -> None:
    """A checkpoint written before several earlier versions were kept (``prev``: one hash each)."""
    rng = np.random.default_rng(3)
    initial, t1, t2 = _model(rng), _model(rng), _model(rng)
    signer = Signer.generate()
    kept = EdgeDownlink(DeviceDownlink(initial, signer, "dense", "m", earlier=3), seed=5)
    kept.tracker.make_update("d1", t1, 1, seed=1)
    kept.tracker.make_update("d1", t2, 2, seed=2)
    snap = Snapshot()
    tree = capture_downlink(kept, snap)
    assert isinstance(tree, dict) and len(tree["earlier"]["d1"]) == 2
    old = {k: v for k, v in tree.items() if k != "earlier"} | {"prev": {"d1": tree["earlier"]["d1"][0]}}
    fresh = EdgeDownlink(DeviceDownlink(initial, signer, "dense", "m", earlier=3), seed=5)
    restore_downlink(fresh, *reversed(_reread(snap, old)))
    assert fresh.tracker.snapshot()[1] == {"d1": [kept.tracker.snapshot()[1]["d1"][0]]}
    assert fresh.tracker.held_hash("d1") == kept.tracker.held_hash("d1")
    with pytest.raises(CheckpointError, match="earlier versions"):
        restore_downlink(fresh, *reversed(_reread(snap, tree | {"earlier": {"d1": [1]}})))


def test_edge_downlink_refuses_missing_or_wrong_versions() -> None:
    rng = np.random.default_rng(1)
    initial, t1 = _model(rng), _model(rng)
    signer = Signer.generate()
    down = DeviceDownlink(initial, signer, "dense", "m")
    down.make_update("d", t1, 1, seed=0)
    held, prev, versions = down.snapshot()
    with pytest.raises(ValueError, match="are missing"):
        DeviceDownlink(initial, signer, "dense", "m").restore(held, prev, {})
    wrong = {h: {k: v + 1 for k, v in w.items()} for h, w in versions.items()}
    with pytest.raises(ValueError, match="does not hash"):
        DeviceDownlink(initial, signer, "dense", "m").restore(held, prev, wrong)


def test_history_keeps_versions_and_bounds() -> None:
    rng = np.random.default_rng(2)
    history = ModelHistory(max_versions=2)
    models = [_model(rng) for _ in range(3)]
    for v, m in enumerate(models):
        history.put(v, m)
    snap = Snapshot()
    tree = capture_history(history, snap)
    assert tree == {"versions": [1, 2], "names": [["w", "b"], ["w", "b"]]}
    back = restore_history(ModelHistory(max_versions=2), *reversed(_reread(snap, tree)))
    assert back is not None and back.versions() == [1, 2]
    np.testing.assert_array_equal(back.get(2)["w"], models[2]["w"])
    with pytest.raises(CheckpointError, match="disagree"):
        restore_history(None, tree, snap)


@pytest.mark.slow  # RQM's Δ calibration: a few seconds
def test_rqm_accountant_resumes_with_the_same_epsilon() -> None:
    from stamen.server.checkpoint_parts import capture_accountant, restore_accountant
    from stamen.server.config import ServerConfig
    from stamen.server.rqm import rqm_accountant
    from stamen.task.settings_load import load_settings

    cfg = ServerConfig.from_settings(load_settings("smoke", ["privacy.mode=rqm", "codec.pipeline=rqm"]))

    def make():  # type: ignore[no-untyped-def]
        return rqm_accountant(cfg.codec, cfg.task, cfg.privacy.delta)

    kept = make()
    kept(["client-0", "client-1"])
    kept(["client-0"])
    tree = capture_accountant(kept)
    assert tree == {"participations": {"client-0": 2, "client-1": 1}}
    fresh, cold = make(), make()
    restore_accountant(fresh, tree)
    eps = kept(["client-0"])
    assert fresh(["client-0"]) == eps  # the worst client's 3rd round, on both
    assert cold(["client-0"]) < eps  # a server that forgot counts it as the 1st


def test_edge_downlink_resumes_after_a_device_reported_weights_the_server_never_had() -> None:
    """A device resynced to a hash the server has no weights for (its next update is a full
    replacement), then updated twice: the checkpoint restores (it used to be refused as corrupt),
    and the next update after the restore is the same on both servers."""
    rng = np.random.default_rng(4)
    initial, t1, t2, t3 = (_model(rng) for _ in range(4))
    signer = Signer.generate()
    kept = EdgeDownlink(DeviceDownlink(initial, signer, "dense", "m", earlier=3), seed=5)
    kept.tracker.resync("node-1", "ab" * 32)
    snap = Snapshot()
    tree = capture_downlink(kept, snap)  # held: the unknown hash
    fresh = EdgeDownlink(DeviceDownlink(initial, signer, "dense", "m", earlier=3), seed=5)
    restore_downlink(fresh, *reversed(_reread(snap, tree)))
    for down in (kept, fresh):
        down.tracker.make_update("node-1", t1, 1, seed=1)  # a replacement
        down.tracker.make_update("node-1", t2, 2, seed=2)
    assert "ab" * 32 not in kept.tracker.snapshot()[1]["node-1"]  # no weights: never a delta's base
    snap = Snapshot()
    tree = capture_downlink(kept, snap)
    again = EdgeDownlink(DeviceDownlink(initial, signer, "dense", "m", earlier=3), seed=5)
    restore_downlink(again, *reversed(_reread(snap, tree)))
    a, b = (d.tracker.make_update("node-1", t3, 3, seed=3) for d in (kept, again))
    assert a[1] == b[1] and again.tracker.snapshot()[:2] == kept.tracker.snapshot()[:2]
