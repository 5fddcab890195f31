"""The cached downlink: full model first, then patches from the version each client holds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.protocols import model_hash
from stamen.protocols.patch import apply_patch, make_patch
from stamen.server.config import ServerConfig
from stamen.server.driver.cached_downlink import CachedDownlink, VersionChain, changed_entries, union
from stamen.server.driver.types import Reply, TrainTask
from stamen.server.federation import default_downlink
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

INSTR = RoundInstructions(1, 1, 0, "dense", False, TaskSpec(), TrainSpec())


def _model(base: float) -> dict[str, np.ndarray]:
    return {"frozen": np.full(1000, 0.5, np.float32), "head": np.full(4, base, np.float32)}


def test_changed_entries_hand_computed() -> None:
    old = {"x": np.array([0.0, 1.0, 2.0, 3.0], np.float32), "y": np.ones(2, np.float32)}
    new = {"x": np.array([-0.0, 1.0, 2.5, 3.0], np.float32), "y": np.array([5.0, 6.0], np.float32)}
    out = changed_entries(old, new)
    assert out["x"] is not None and out["x"].tolist() == [0, 2]  # -0.0 differs from 0.0 in bits
    assert out["y"] is None  # more than half changed: the whole tensor
    assert union([{"x": np.array([1])}, {"x": np.array([0, 1])}, {"z": None}])["x"].tolist() == [0, 1]
    assert union([{"x": None}, {"x": np.array([3])}])["x"] is None


def _task(client: str, sent: object) -> TrainTask:
    weights, _, base, patch = sent  # type: ignore[misc]
    return TrainTask(client, INSTR, weights, None, base, patch=patch)


def _reply(client: str) -> Reply:
    return Reply(client, envelope=b"update")


def test_first_full_then_patch_then_full_after_a_lost_reply() -> None:
    down = CachedDownlink()
    w1, w2, w3 = _model(1.0), _model(2.0), _model(3.0)
    first = down.payload("client-0", 1, w1)
    assert first.weights is w1 and first.patch is not None and first.patch.kind == "cache"
    assert down.nbytes([_task("client-0", first)]) > 4000  # the full model (Flower .npy bytes)
    down.observe([_reply("client-0")])
    second = down.payload("client-0", 2, w2)
    assert second.weights is None and second.patch is not None and second.patch.kind == "patch"
    assert list(second.patch.dense) == ["head"] and second.base == model_hash(w2)
    assert down.nbytes([_task("client-0", second)]) < 200  # the 4-entry head only
    assert all(np.array_equal(apply_patch(w1, second.patch)[k], w2[k]) for k in w2)
    down.observe([Reply("client-0", error="no reply before the timeout")])
    assert down.payload("client-0", 3, w3).patch.kind == "cache"  # type: ignore[union-attr]


def test_a_client_skipping_rounds_gets_the_union_of_their_changes() -> None:
    down, models = CachedDownlink(), [_model(float(i)) for i in range(4)]
    for i, m in enumerate(models[:3]):
        m["frozen"][i] = 9.0  # a sparse change each round
    down.payload("client-1", 1, models[0])
    down.observe([_reply("client-1")])
    for rnd, m in enumerate(models[1:3], start=2):
        down.payload("client-2", rnd, m)  # other clients keep the chain going
    sent = down.payload("client-1", 4, models[3])
    assert sent.patch is not None and sent.patch.kind == "patch"
    assert sent.patch.sparse["frozen"][0].tolist() == [0, 1, 2]
    out = apply_patch(models[0], sent.patch)
    assert all(out[k].tobytes() == models[3][k].tobytes() for k in out)


def test_a_client_older_than_the_chain_gets_the_full_model() -> None:
    down = CachedDownlink(max_steps=2)
    down.payload("client-1", 1, _model(0.0))
    down.observe([_reply("client-1")])
    for rnd in range(2, 5):
        down.payload("client-2", rnd, _model(float(rnd)))
    assert down.payload("client-1", 5, _model(5.0)).patch.kind == "cache"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="max_steps"):
        VersionChain(0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), order=st.permutations(range(5)))
def test_patch_between_any_two_versions_is_exact(seed: int, order: list[int]) -> None:
    """Property: a chain of random sparse/dense steps; a patch from any held version to any target
    (earlier or later: a delayed client trains from an older one) reproduces the target's bits."""
    rng = np.random.default_rng(seed)
    versions = [{"w": rng.standard_normal((6, 5)).astype(np.float32), "h": np.zeros(3, np.float32)}]
    for _ in range(4):
        nxt = {k: v.copy() for k, v in versions[-1].items()}
        idx = rng.choice(30, size=int(rng.integers(0, 30)), replace=False)
        nxt["w"].reshape(-1)[idx] = rng.standard_normal(idx.size).astype(np.float32)
        nxt["h"] = rng.standard_normal(3).astype(np.float32) if rng.random() < 0.5 else nxt["h"]
        versions.append(nxt)
    chain = VersionChain()
    for v in versions:
        chain.add(model_hash(v), v)
    held, target = versions[order[0]], versions[order[1]]
    changes = chain.between(model_hash(held), model_hash(target))
    out = apply_patch(held, make_patch(target, changes, model_hash(held), model_hash(target)))
    assert all(out[k].tobytes() == target[k].tobytes() for k in target)


@pytest.mark.parametrize(
    ("scenario", "overrides", "kind"),
    [
        ("smoke", (), "FullDownlink"),
        ("smoke", ("clients.downlink=cached",), "CachedDownlink"),
        ("minilm-lora", ("model.name=minilm-tiny",), "CachedDownlink"),
        ("minilm-sparse", ("model.name=minilm-tiny",), "CachedDownlink"),
        ("minilm-lora", ("model.name=minilm-tiny", "clients.downlink=full"), "FullDownlink"),
    ],
)
def test_auto_caches_for_frozen_base_runs_only(scenario: str, overrides: tuple[str, ...], kind: str) -> None:
    cfg = ServerConfig.from_run_config({"scenario": scenario, "overrides": " ".join(overrides)})
    assert type(default_downlink(cfg)).__name__ == kind


def test_cached_is_refused_for_edge_devices() -> None:
    with pytest.raises(ValueError, match=r"clients\.downlink='cached' is for runtime 'memory'"):
        ServerConfig.from_run_config({"overrides": "clients.runtime=edge clients.downlink=cached"})
