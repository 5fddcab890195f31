"""Client side of the cached downlink: keep the model trained from, apply the server's patches.

With ``clients.downlink = "cached"`` (:mod:`stamen.server.driver.cached_downlink`) a message
carries either the full model with a ``"cache"`` mark (keep it) or a
:class:`~stamen.protocols.patch.ModelPatch` against the model the client holds — or, for a client
the server has not heard from, against the model every client can build itself from the task
(:func:`~stamen.task.local_base.local_base`: the pretrained base, seeded adapters and head), so
even a first round sends only what differs from the pretrained model. :func:`resolve` turns either
into the weights to train from, checked by ``model_hash``; the in-process engine keeps the held
model in memory, the ClientApp in Flower's ``context.state`` (which the SuperNode keeps for the
run). A node whose own build differs (another torch, no pretrained file) answers with a cache miss
and gets the full model next round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context

from stamen.protocols import model_hash
from stamen.protocols.patch import CacheMiss, ModelPatch, apply_patch

Weights = dict[str, np.ndarray]
Held = tuple[str, Weights]  # (model_hash, weights) of the model a client keeps
HELD_ARRAYS, HELD_META = "stamen.held-model", "stamen.held-model.meta"  # context.state records


def resolve(
    held: Held | None,
    weights: Mapping[str, np.ndarray] | None,
    patch: ModelPatch,
    local: Callable[[], Held] | None = None,
) -> Held:
    """The model to train from, and its hash, which is also what the client now holds.

    ``"cache"``: ``weights`` (the full model sent with the mark), which must hash to the mark's
    target. ``"patch"``: the patch applied to ``held`` or, when that is not its base, to
    ``local()``, the model the client builds itself (:func:`~stamen.task.local_base.local_base`);
    :class:`CacheMiss` when neither is the patch's base, or when the result does not hash to the
    target.
    """
    if patch.kind == "cache":
        if weights is None:
            raise ValueError("a 'cache' mark came without the full model")
        full = dict(weights)
        digest = model_hash(full)
        if digest != patch.target_hash:
            raise CacheMiss(f"the full model hashes to {digest[:12]}…, not {patch.target_hash[:12]}…")
        return digest, full
    base = held if held is not None and held[0] == patch.base_hash else None
    if base is None and local is not None:
        built = local()
        base = built if built[0] == patch.base_hash else None
    if base is None:
        what = "no model" if held is None else f"{held[0][:12]}…"
        raise CacheMiss(f"the client holds {what} and builds no model matching {patch.base_hash[:12]}…")
    return patch.target_hash, apply_patch(base[1], patch)


def load_held(context: Context) -> Held | None:
    """The model this node keeps in ``context.state`` (None before its first cached downlink)."""
    meta = context.state.config_records.get(HELD_META)
    arrays = context.state.array_records.get(HELD_ARRAYS)
    if meta is None or arrays is None or not isinstance(meta.get("hash"), str):
        return None
    return str(meta["hash"]), {k: a.numpy() for k, a in arrays.items()}


def save_held(context: Context, held: Held) -> None:
    """Keep ``held`` in ``context.state`` (replacing the previous model)."""
    context.state[HELD_ARRAYS] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in held[1].items()})
    context.state[HELD_META] = ConfigRecord({"hash": held[0]})
