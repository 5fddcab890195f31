"""The ``gi`` compensation policy's state through a checkpoint (server/checkpoint_stale.py): the
switch-back rule, the counters and the warm-start cache come back, so the next conversion is the
one the uninterrupted policy makes; an older checkpoint without them resumes with a warning."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from stamen.server.checkpoint import Checkpoint, CheckpointError, decode_checkpoint, encode_checkpoint
from stamen.server.checkpoint_rules import Snapshot
from stamen.server.checkpoint_stale import capture_stale, restore_stale
from stamen.server.staleness import ModelVersions
from stamen.server.staleness.gi_conversion import GIConfig, UnrolledSGD
from stamen.server.staleness.gi_policy import GIConversionPolicy
from stamen.server.staleness.gi_switch import SwitchBack

D, C = 6, 3


def _policy() -> GIConversionPolicy:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 5), nn.Tanh(), nn.Linear(5, C))
    return GIConversionPolicy(
        model, (D,), C, UnrolledSGD(steps=2, lr=0.2), GIConfig(num_samples=4, iterations=3, lr=0.1),
        SwitchBack(margin=1e9, patience=3), warm_start_clients=2,
    )  # fmt: skip


def _versions(seed: int) -> tuple[dict[str, np.ndarray], ModelVersions]:
    rng = np.random.default_rng(seed)
    shapes = {k: tuple(v.shape) for k, v in _policy().model.state_dict().items()}
    stale = {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in shapes.items()}
    current = {k: v + rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in stale.items()}
    delta = {k: rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in stale.items()}
    return delta, ModelVersions(current, stale, 9)


def _reread(snap: Snapshot, tree: object) -> tuple[dict[str, object], Snapshot]:
    ck = Checkpoint(1, "sync", {"x": np.zeros(1, np.float32)}, (), {}, {"t": tree}, snap.arrays)
    back = decode_checkpoint(encode_checkpoint(ck))
    return {"stale": back.state["t"]}, Snapshot(dict(back.arrays))


def test_gi_state_resumes_to_the_same_next_conversion() -> None:
    kept = _policy()
    delta, versions = _versions(1)
    for client in (7, 8):  # two warm starts cached, a streak of 2 towards the switch (patience 3)
        kept(delta, 2, versions, client=client)
    assert kept.switch.streak == 2 and kept.switch.switch_at is None
    snap = Snapshot()
    tree, snap = _reread(snap, capture_stale(SimpleNamespace(policy=kept, convert_policy=kept), snap))
    fresh = _policy()
    restore_stale(SimpleNamespace(policy=fresh, convert_policy=fresh), tree, snap)
    assert fresh.state() == kept.state() == {**fresh.counts, "switch_at": None, "warm_cached": 2}
    assert fresh.counts == {"converted": 2, "passed_through": 0, "fresh": 0, "failed": 0}
    a, b = (p(delta, 2, versions, client=7) for p in (kept, fresh))  # warm-started from client 7's
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert fresh.switch.switch_at == kept.switch.switch_at == 11  # the third in a row: 9 + tau
    assert [c for c, *_ in fresh.warm_cache()] == [c for c, *_ in kept.warm_cache()] == [8, 7]


def test_a_checkpoint_without_gi_state_resumes_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    fresh = _policy()
    with caplog.at_level("WARNING", logger="stamen.server"):
        restore_stale(SimpleNamespace(policy=fresh, convert_policy=None), {"rule": None}, Snapshot())
    (line,) = [r.getMessage() for r in caplog.records]
    assert "\n" not in line and "predates the saved GI compensation state" in line
    assert fresh.counts["converted"] == 0 and fresh.switch.switch_at is None
    restore_stale(SimpleNamespace(policy=None), {"rule": None}, Snapshot())  # no GI: nothing to say
    assert len(caplog.records) == 1


def test_gi_state_of_another_run_or_corrupt_is_refused() -> None:
    kept, snap = _policy(), Snapshot()
    tree = capture_stale(SimpleNamespace(policy=kept, convert_policy=None), snap)
    assert capture_stale(SimpleNamespace(policy=None, convert_policy=None), snap) is None
    with pytest.raises(CheckpointError, match="disagree on the GI compensation"):
        restore_stale(SimpleNamespace(policy=None), {"stale": tree}, snap)
    with pytest.raises(CheckpointError, match="disagree on the GI compensation"):
        restore_stale(SimpleNamespace(policy=_policy()), {"stale": None}, snap)
    assert isinstance(tree, dict)
    bad = {"policy": {**tree["policy"], "streak": -1}}
    with pytest.raises(CheckpointError, match="corrupt: GI compensation state: SwitchBack streak"):
        restore_stale(SimpleNamespace(policy=_policy()), {"stale": bad}, snap)
    bad = {"policy": {**tree["policy"], "counts": {"converted": 1}}}
    with pytest.raises(CheckpointError, match="corrupt: GI compensation state: gi: counts"):
        restore_stale(SimpleNamespace(policy=_policy()), {"stale": bad}, snap)
