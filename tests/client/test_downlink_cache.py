"""The ClientApp side of the cached downlink: the message's patch, context.state, cache misses."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from stamen.client import downlink_cache
from stamen.client.app import cached_base, patch_of, received
from stamen.protocols import keys, model_hash
from stamen.protocols.patch import CacheMiss, ModelPatch
from stamen.server.driver.cached_downlink import CachedDownlink
from stamen.server.driver.flower_transport import arrays_of_tasks, content_of, reply_of
from stamen.server.driver.types import Reply, TrainTask
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

INSTR = RoundInstructions(1, 1, 0, "dense", False, TaskSpec(), TrainSpec())


def _context() -> Context:
    return Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})


def _model(head: float) -> dict[str, np.ndarray]:
    return {"base": np.linspace(-1, 1, 500, dtype=np.float32), "head": np.full(3, head, np.float32)}


def _message(down: CachedDownlink, rnd: int, weights: dict[str, np.ndarray]) -> SimpleNamespace:
    sent = down.payload("node-2", rnd, weights)
    task = TrainTask("node-2", INSTR, sent.weights, None, sent.base, patch=sent.patch)
    return SimpleNamespace(content=content_of(task, arrays_of_tasks([task])))


def test_cache_then_patch_through_flower_records_and_context_state() -> None:
    down, ctx = CachedDownlink(), _context()
    w1, w2 = _model(1.0), _model(2.0)
    msg = _message(down, 1, w1)
    assert keys.ARRAYS in msg.content.array_records and keys.PATCH not in msg.content.array_records
    got = cached_base(received(msg), patch_of(msg.content), ctx)
    assert got.base_hash == model_hash(w1)
    assert downlink_cache.load_held(ctx) is not None
    down.observe([Reply("node-2", envelope=b"update")])
    msg = _message(down, 2, w2)
    assert keys.ARRAYS not in msg.content.array_records  # the base stays home
    assert list(msg.content.array_records[keys.PATCH]) == ["d/head"]
    got = cached_base(received(msg), patch_of(msg.content), ctx)
    assert got.weights is not None and got.base_hash == model_hash(w2)
    assert all(got.weights[k].tobytes() == w2[k].tobytes() for k in w2)


def test_a_restarted_node_answers_with_a_cache_miss_and_gets_the_full_model() -> None:
    down = CachedDownlink()
    first = _message(down, 1, _model(1.0))
    cached_base(received(first), patch_of(first.content), _context())
    down.observe([Reply("node-2", envelope=b"update")])
    msg = _message(down, 2, _model(2.0))
    with pytest.raises(CacheMiss, match="holds no model"):
        cached_base(received(msg), patch_of(msg.content), _context())  # a fresh context.state
    reply = reply_of("node-2", RecordDict({keys.CACHE_MISS: ConfigRecord({keys.CACHE_MISS_REASON: "x"})}))
    assert reply.error == "cache miss: x"
    down.observe([reply])
    assert down.payload("node-2", 3, _model(3.0)).patch.kind == "cache"  # type: ignore[union-attr]


def test_resolve_refuses_another_base_and_a_full_model_that_is_not_the_target() -> None:
    w1 = _model(1.0)
    held = (model_hash(w1), w1)
    with pytest.raises(CacheMiss, match="builds no model matching"):
        downlink_cache.resolve(held, None, ModelPatch("patch", "f" * 64, model_hash(w1)))
    with pytest.raises(CacheMiss, match="hashes to"):
        downlink_cache.resolve(None, w1, ModelPatch("cache", "", "0" * 64))
    with pytest.raises(ValueError, match="without the full model"):
        downlink_cache.resolve(None, None, ModelPatch("cache", "", "0" * 64))


def test_a_client_not_heard_from_patches_the_model_it_builds_itself() -> None:
    """Cold start: the server's patch is against the client's own build (here the round-1 model
    itself: an empty patch); a client whose build differs refuses it and gets the full model next."""
    w1, w2 = _model(1.0), _model(2.0)
    local = (model_hash(w1), w1)
    down = CachedDownlink(local)
    sent = down.payload("node-2", 1, w1)
    assert sent.weights is None and sent.patch is not None and sent.patch.base_hash == local[0]
    assert not sent.patch.to_arrays()  # nothing to send: the client builds exactly this model
    digest, weights = downlink_cache.resolve(None, None, sent.patch, lambda: local)
    assert digest == model_hash(w1) and weights["base"] is w1["base"]  # shared, not copied
    other = (model_hash(w2), w2)
    with pytest.raises(CacheMiss, match="builds no model matching"):
        downlink_cache.resolve(None, None, down.payload("node-3", 1, w1).patch, lambda: other)  # type: ignore[arg-type]
    down.observe([Reply("node-3", error="cache miss: another build")])
    assert down.payload("node-3", 2, w2).patch.kind == "cache"  # type: ignore[union-attr]
    again = down.payload("node-2", 2, w2)  # no reply seen from node-2 (e.g. asynchronous): local again
    assert (
        again.patch is not None and again.patch.base_hash == local[0] and list(again.patch.dense) == ["head"]
    )
