"""Model patches: the entries of a global model that changed since the version a client holds.

A LoRA, Fed-SB or sparse fine-tuning run changes a small part of the model each round (the adapter
factors and the head; with ``lora_exact`` also the adapted layers' base weights, into which the
FedEx-LoRA residual is folded; with the sparse trainer a fixed-density set of entries). A client
that keeps the model it trained from last time (its *held* version, named by ``model_hash``) needs
only those entries. A :class:`ModelPatch` carries them as **replacement values** — the target's own
float32 bits, never ``held + difference`` (which float rounding would not reproduce bit for bit) —
so applying it gives exactly the target model, and the client checks that by hash.

Per tensor the patch holds nothing (unchanged), the whole tensor (``dense``), or sorted flat
indices and their new values (``sparse``), whichever is smaller (:func:`sparse_wins`, the ``lora``
codec's rule). A patch is never larger than the full model plus its index arrays' headers.

``kind = "cache"`` carries no arrays: the message holds the full model, and the client keeps it as
its held version (the first round of a client, or one the server lost track of).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .codecs.lora import sparse_wins
from .codecs.topk import index_dtype
from .errors import StamenError
from .tensors import model_hash

__all__ = ["KINDS", "CacheMiss", "ModelPatch", "apply_patch", "make_patch"]

KINDS = ("cache", "patch")
_DENSE, _INDEX, _VALUE = "d/", "i/", "v/"  # wire-name prefixes of the patch's arrays


class CacheMiss(StamenError):
    """The client does not hold the patch's base version (it restarted, joined late, or its model
    differs): the server must send the full model."""


@dataclass(frozen=True)
class ModelPatch:
    """What turns the client's held model (``base_hash``) into the target (``target_hash``).

    Attributes
    ----------
    kind : {"cache", "patch"}
        ``"cache"``: keep the full model sent alongside as the held version (no arrays here);
        ``"patch"``: apply ``dense`` and ``sparse`` to the held version.
    base_hash : str
        ``model_hash`` the client must hold (``""`` for ``"cache"``).
    target_hash : str
        ``model_hash`` of the model after applying (64 hex digits).
    dense : dict
        Tensor name -> its new float32 values (whole tensor, original shape).
    sparse : dict
        Tensor name -> ``(flat indices, float32 values)``: indices sorted, unsigned, < tensor size.
    """

    kind: str
    base_hash: str
    target_hash: str
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    sparse: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"patch kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "cache" and (self.dense or self.sparse):
            raise ValueError("a 'cache' patch carries no arrays")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The wire form: ``d/<name>`` dense tensors, ``i/<name>`` + ``v/<name>`` sparse ones."""
        out = {_DENSE + k: v for k, v in self.dense.items()}
        for name, (idx, val) in self.sparse.items():
            out[_INDEX + name], out[_VALUE + name] = idx, val
        return out

    @classmethod
    def from_arrays(
        cls, kind: str, base_hash: str, target_hash: str, arrays: Mapping[str, np.ndarray]
    ) -> ModelPatch:
        """Inverse of :meth:`to_arrays`; ``StamenError`` names an array it cannot place."""
        dense: dict[str, np.ndarray] = {}
        index: dict[str, np.ndarray] = {}
        value: dict[str, np.ndarray] = {}
        for key, arr in arrays.items():
            prefix, name = key[:2], key[2:]
            slot = {_DENSE: dense, _INDEX: index, _VALUE: value}.get(prefix)
            if slot is None or not name:
                raise StamenError(f"patch array {key!r} is not d/<name>, i/<name> or v/<name>")
            slot[name] = np.asarray(arr)
        if set(index) != set(value):
            raise StamenError(
                f"patch sparse tensors lack indices or values: {sorted(set(index) ^ set(value))}"
            )
        return cls(kind, base_hash, target_hash, dense, {n: (index[n], value[n]) for n in index})


def make_patch(
    target: Mapping[str, np.ndarray],
    changed: Mapping[str, np.ndarray | None],
    base_hash: str,
    target_hash: str,
) -> ModelPatch:
    """The patch carrying ``target``'s values at the ``changed`` entries.

    Parameters
    ----------
    target : mapping of str to ndarray
        The model the client must end up with (float32).
    changed : mapping of str to ndarray or None
        Per changed tensor: its changed flat indices (sorted, unique), or ``None`` for "all of it".
        Tensors not listed are unchanged since ``base_hash``.
    base_hash, target_hash : str
        ``model_hash`` of the client's held model and of ``target``.
    """
    dense, sparse = {}, {}
    for name in sorted(changed):
        arr = np.asarray(target[name], dtype=np.float32)
        idx = changed[name]
        if idx is None or not sparse_wins(arr.size, idx.size):
            dense[name] = np.ascontiguousarray(arr)
        elif idx.size:
            flat = idx.astype(index_dtype(arr.size))
            sparse[name] = (flat, np.ascontiguousarray(arr.reshape(-1)[flat]))
    return ModelPatch("patch", base_hash, target_hash, dense, sparse)


def apply_patch(held: Mapping[str, np.ndarray], patch: ModelPatch) -> dict[str, np.ndarray]:
    """``held`` with ``patch`` applied (tensors it does not touch are shared, not copied).

    Raises :class:`CacheMiss` when the result does not hash to ``patch.target_hash`` (the caller
    checks ``held`` is the patch's base first), and ``StamenError`` for a patch naming a tensor
    ``held`` lacks, a wrong shape, or an index out of range.
    """
    out = dict(held)
    for name, values in patch.dense.items():
        old = _held_tensor(held, name)
        if values.shape != old.shape:
            raise StamenError(f"patch tensor {name!r}: shape {values.shape}, the model's is {old.shape}")
        out[name] = np.asarray(values, dtype=np.float32)
    for name, (idx, val) in patch.sparse.items():
        old = _held_tensor(held, name)
        bad = idx.dtype.kind != "u" or idx.shape != val.shape or idx.ndim != 1
        if bad or (idx.size and int(idx.max()) >= old.size):
            raise StamenError(f"patch tensor {name!r}: {idx.size} indices for a tensor of {old.size}")
        new = np.array(old, dtype=np.float32, copy=True)
        new.reshape(-1)[idx] = val
        out[name] = new
    if model_hash(out) != patch.target_hash:
        raise CacheMiss(f"the patched model does not hash to {patch.target_hash[:12]}…")
    return out


def _held_tensor(held: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in held:
        raise StamenError(f"patch names tensor {name!r}, which the model does not have")
    return np.asarray(held[name])
