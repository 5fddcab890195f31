"""Signed model deltas for edge devices: ``target - base`` encoded, packed and signed.

``delta = target - base`` per tensor (the project's sign convention), encoded with any codec
pipeline and packed into a signed :class:`~stamen.protocols.Envelope` whose

- ``base_hash`` is ``model_hash(base)`` (the device refuses any other base),
- ``version`` is the version the device will hold afterwards (must exceed its high-water mark),
- ``meta["target"]`` is ``model_hash(base + decode(payload))``: exactly the weights the device
  will compute, so it can check the result bit for bit (for lossy codecs this differs from
  ``model_hash(target)``), and ``meta["model"]`` is the model id when given.

The server makes these for the devices it federates (:mod:`stamen.server.edge_downlink`); a host
makes them from model files with ``stamen delta create`` (:mod:`stamen.edge.delta`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from . import keys
from .codecs.base import CodecSpec
from .codecs.pipeline import CodecPipeline
from .envelope import Envelope, pack
from .signing import Signer
from .tensors import TensorInfo, model_hash, tensor_table

__all__ = ["SignedDelta", "create_delta", "create_delta_with_result", "create_replacement", "table_names"]


class SignedDelta(NamedTuple):
    """A signed update and what the device holds after applying it."""

    data: bytes  #: the packed, signed envelope
    weights: dict[str, np.ndarray]  #: ``base + decoded`` (lossy codecs make it differ from the target)
    digest: str  #: ``model_hash(weights)``, recorded in the envelope as the target


def table_names(table: tuple[TensorInfo, ...]) -> list[str]:
    """Tensor names in table order."""
    return [info.name for info in table]


def _delta(base: Mapping[str, np.ndarray], target: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``target - base`` in the canonical (sorted-name) tensor order of edge stores."""
    diff = sorted(set(base) ^ set(target)) or [n for n in base if np.shape(base[n]) != np.shape(target[n])]
    if diff:
        raise ValueError(f"base and target models differ in tensors, e.g. {diff[:3]}")
    return {n: np.asarray(target[n], np.float32) - np.asarray(base[n], np.float32) for n in sorted(base)}


def _encode_round_trip(
    base: Mapping[str, np.ndarray], target: Mapping[str, np.ndarray], pipeline: CodecPipeline, seed: int
) -> tuple[tuple[TensorInfo, ...], bytes, dict[str, np.ndarray]]:
    """Encode ``target - base``; return (tensor table, payload, ``base + decoded``: what the device gets)."""
    delta = _delta(base, target)
    table = tensor_table(delta)
    payload = pipeline.encode(delta, np.random.default_rng(seed))
    decoded = pipeline.decode(payload, table)
    result = {name: np.asarray(base[name], np.float32) + decoded[name] for name in table_names(table)}
    return table, payload, result


def create_delta_with_result(
    base: Mapping[str, np.ndarray],
    target: Mapping[str, np.ndarray],
    codec: str | CodecSpec,
    signer: Signer,
    *,
    version: int,
    model_id: str | None = None,
    sender: str = "stamen",
    seed: int = 0,
    base_hash: str | None = None,
) -> SignedDelta:
    """Encode and sign ``target - base``; also return the weights the device will hold after it
    and their hash (callers need not hash 100 MB again).

    Parameters
    ----------
    base, target : Mapping[str, numpy.ndarray]
        float32 weights with identical names and shapes; the update lists them sorted by name,
        the canonical order of edge stores.
    codec : str or CodecSpec
        Codec pipeline, e.g. ``"dense"``, ``"topk(ratio=0.01)"``, ``"int8"``, ``"lowrank(rank=8)"``.
    signer : Signer
        Key the device trusts.
    version : int
        Version the device holds after applying, >= 1.
    model_id : str or None
        Recorded in ``meta["model"]``; the device then refuses the update for any other model.
    sender : str
        Sender id recorded in the envelope.
    seed : int
        Seed of the codec's randomness (stochastic int8 rounding, randomized SVD).
    base_hash : str or None
        ``model_hash(base)`` when the caller already knows it (skips hashing ``base`` again).

    Returns
    -------
    SignedDelta
        The packed, signed envelope, ``base + decoded`` (what the device computes; lossy codecs
        make it differ from ``target``), and its ``model_hash``, recorded as the target.
    """
    if type(version) is not int or version < 1:
        raise ValueError(f"version must be an int >= 1, got {version!r}")
    pipeline = CodecPipeline(CodecSpec.parse(codec) if isinstance(codec, str) else codec)
    table, payload, result = _encode_round_trip(base, target, pipeline, seed)
    digest = model_hash(result)
    meta: dict[str, int | float | str] = {keys.META_TARGET: digest}
    if model_id is not None:
        meta[keys.META_MODEL] = model_id
    envelope = Envelope(
        codec=pipeline.spec.to_string(),
        base_hash=model_hash(base) if base_hash is None else base_hash,
        version=version,
        sender=sender,
        tensors=table,
        payload=payload,
        meta=meta,
    )
    return SignedDelta(pack(envelope, signer), result, digest)


def create_replacement(
    target: Mapping[str, np.ndarray],
    signer: Signer,
    *,
    version: int,
    base_hash: str,
    model_id: str | None = None,
    sender: str = "stamen",
) -> SignedDelta:
    """A signed envelope that *replaces* the device's weights by ``target`` (dense, lossless).

    For a device whose weights the server no longer holds (it reported ``base_hash``, a version the
    server's history has dropped): ``meta["kind"] = "replace"``; the device still checks that
    ``base_hash`` is what it holds, that ``version`` is above its high-water mark, the model id and
    the target hash, so a replacement cannot be replayed onto another state.
    """
    if type(version) is not int or version < 1:
        raise ValueError(f"version must be an int >= 1, got {version!r}")
    weights = {n: np.ascontiguousarray(target[n], np.float32) for n in sorted(target)}
    pipeline = CodecPipeline(CodecSpec.parse("dense"))
    table = tensor_table(weights)
    digest = model_hash(weights)
    meta: dict[str, int | float | str] = {keys.META_TARGET: digest, keys.META_KIND: keys.KIND_REPLACE}
    if model_id is not None:
        meta[keys.META_MODEL] = model_id
    envelope = Envelope(
        codec=pipeline.spec.to_string(),
        base_hash=base_hash,
        version=version,
        sender=sender,
        tensors=table,
        payload=pipeline.encode(weights, np.random.default_rng(0)),
        meta=meta,
    )
    return SignedDelta(pack(envelope, signer), weights, digest)


def create_delta(*args: Any, **kwargs: Any) -> bytes:
    """The envelope bytes of :func:`create_delta_with_result` (same parameters)."""
    return create_delta_with_result(*args, **kwargs).data
