"""One-call encode and decode of a model update, as used by the client and the server.

Client: ``delta -> CodecPipeline.encode -> Envelope -> pack (and sign)``.
Server / edge: ``unpack (verify first) -> base-model check -> codec check (the receiver's, when it
names one) -> tensor-table check -> decode with the envelope's codec spec``. Finiteness and norm
checks belong to the receiver's validation step, after this.

Decoding is bounded by a tensor table in every case: the receiver's (``expected_tensors``), or
else the envelope's own, which may then hold at most ``max_elements`` elements. The codec
pipeline bounds every stage by that table (see :mod:`stamen.protocols.codecs.pipeline`), so no
input can make the decoder allocate more than a small multiple of the model it claims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from .codecs.base import CodecSpec, StageSpec
from .codecs.pipeline import CodecPipeline
from .envelope import Envelope, pack, unpack, unpack_expected
from .errors import BaseModelMismatch, CodecError, CodecMismatch, StamenError, ValidationError
from .signing import Signer, Verifier
from .tensors import TensorInfo, tensor_table

__all__ = ["MAX_MODEL_ELEMENTS", "codec_pipeline", "decode_expected", "decode_update", "encode_update"]

#: Default bound on the elements of an update decoded without ``expected_tensors``: 2**26
#: (67M parameters, 256 MiB of float32; MiniLM-L6 has 22.7M). Pass ``max_elements`` for more.
MAX_MODEL_ELEMENTS = 2**26


_MAX_PIPELINES = 64
_PIPELINES: dict[tuple[object, ...], CodecPipeline] = {}
_OWN_SPECS: dict[int, CodecPipeline] = {}  # id(pipeline.spec) -> pipeline, for the cached pipelines


@lru_cache(maxsize=_MAX_PIPELINES)
def _pipeline(codec: str) -> CodecPipeline:
    """Pipelines are stateless; cache them per canonical codec text."""
    pipeline = CodecPipeline(CodecSpec.parse(codec))
    if len(_OWN_SPECS) >= 4 * _MAX_PIPELINES:
        _OWN_SPECS.clear()
    _OWN_SPECS[id(pipeline.spec)] = pipeline  # CodecPipeline(pipeline.spec) is the same pipeline
    return pipeline


def _spec_key(spec: CodecSpec) -> tuple[object, ...] | None:
    """A cache key of ``spec`` that tells apart what ``==`` does not (``1 == 1.0 == True``, and a
    pipeline refuses a bool for an int param); None for anything :class:`CodecPipeline` refuses."""
    if type(spec) is not CodecSpec or type(spec.stages) is not tuple:
        return None
    key: list[object] = []
    for stage in spec.stages:
        if type(stage) is not StageSpec or type(stage.params) is not tuple:
            return None
        if not all(type(p) is tuple and len(p) == 2 for p in stage.params):
            return None
        key.append((stage.name, type(stage.name), tuple((k, type(k), v, type(v)) for k, v in stage.params)))
    return tuple(key)


def codec_pipeline(spec: CodecSpec | str) -> CodecPipeline:
    """The pipeline of ``spec`` (a :class:`CodecSpec` or its text), built once and cached:
    ``CodecPipeline(spec)`` (or ``CodecPipeline(CodecSpec.parse(text))``) with its errors.
    Pipelines hold no state between calls, so one serves every client of a process."""
    if isinstance(spec, str):
        return _pipeline(spec)
    own = _OWN_SPECS.get(id(spec))
    if own is not None and own.spec is spec:  # a cached pipeline's own (canonical) spec
        return own
    key = _spec_key(spec)
    try:
        cached = _PIPELINES.get(key) if key is not None else None
    except TypeError:  # an unhashable param value: CodecPipeline names it
        key, cached = None, None
    if cached is not None:
        return cached
    pipeline = CodecPipeline(spec)
    if key is not None:
        if len(_PIPELINES) >= _MAX_PIPELINES:
            _PIPELINES.clear()
            _OWN_SPECS.clear()
        _PIPELINES[key] = pipeline
        _OWN_SPECS[id(pipeline.spec)] = pipeline
    return pipeline


def encode_update(
    delta: Mapping[str, np.ndarray],
    spec: CodecSpec,
    *,
    base_hash: str,
    version: int,
    sender: str,
    rng: np.random.Generator,
    signer: Signer | None = None,
    meta: Mapping[str, int | float | str] | None = None,
) -> bytes:
    """Encode a delta with ``spec`` and pack it into an (optionally signed) envelope.

    Parameters
    ----------
    delta : Mapping[str, numpy.ndarray]
        ``local - global`` per tensor, floating and finite; order defines the tensor table.
    spec : CodecSpec
        Codec to use; recorded canonically in the envelope.
    base_hash : str
        ``model_hash`` of the global weights the delta was computed against.
    version : int
        Model version / server round, >= 0.
    sender : str
        Sender id, <= 128 characters.
    rng : numpy.random.Generator
        Randomness for stochastic codec stages.
    signer : Signer or None
        Signs the envelope when given.
    meta : Mapping or None
        Small extras (<= 4 KiB packed).

    Returns
    -------
    bytes
        The packed envelope; ``len()`` of this is the upload size.
    """
    if not isinstance(spec, CodecSpec):
        raise CodecError(f"spec must be a CodecSpec, got {type(spec).__name__}")
    pipeline = codec_pipeline(spec)
    envelope = Envelope(
        codec=pipeline.spec.to_string(),
        base_hash=base_hash,
        version=version,
        sender=sender,
        tensors=tensor_table(delta),
        payload=pipeline.encode(delta, rng),
        meta=dict(meta or {}),
    )
    return pack(envelope, signer)


def _check_table(got: tuple[TensorInfo, ...], expected: Sequence[TensorInfo]) -> tuple[TensorInfo, ...]:
    """``expected`` as a tuple when ``got`` equals it (the receiver's own table object, which its
    codec pipeline has seen before), else ValidationError naming the first difference."""
    want = tuple(expected)
    if got == want:
        return want
    if len(got) != len(want):
        raise ValidationError(f"update has {len(got)} tensors, expected {len(want)}")
    for g, w in zip(got, want, strict=True):
        if g != w:
            raise ValidationError(f"update tensor {g} differs from expected {w}")
    raise ValidationError("update tensor table differs from expected")  # unreachable for TensorInfo


def _check_size(tensors: tuple[TensorInfo, ...], max_elements: int) -> None:
    if not isinstance(max_elements, int) or max_elements < 0:
        raise ValueError(f"max_elements must be an int >= 0, got {max_elements!r}")
    total = sum(info.size for info in tensors)
    if total > max_elements:
        raise ValidationError(
            f"update's tensor table holds {total} elements, more than max_elements={max_elements} "
            "(pass expected_tensors, or a larger max_elements)"
        )


def _check_codec(got: str, expected: str | CodecSpec) -> None:
    """``CodecMismatch`` unless the envelope's codec text ``got`` is the spec ``expected``: the same
    canonical text (every stage and param, defaults included, as :meth:`CodecSpec.to_string` writes
    it). Nothing is decoded or cached for ``got``: only its text is parsed, when not already equal.
    ``expected`` is made canonical by its pipeline (a spec built without its defaults, or with an int
    for a float param, names the codec ``encode_update`` writes canonically)."""
    want = codec_pipeline(expected).spec.to_string()
    if got == want:
        return
    try:
        same = CodecSpec.parse(got).to_string() == want
    except CodecError:
        same = False
    if not same:
        raise CodecMismatch(
            f"update is encoded with codec {got[:80]!r}, the receiver asked for {want[:80]!r}"
        )


def decode_update(
    data: bytes,
    *,
    verifier: Verifier | None = None,
    expected_base: str | None = None,
    expected_tensors: Sequence[TensorInfo] | None = None,
    max_elements: int = MAX_MODEL_ELEMENTS,
    expected_codec: str | CodecSpec | None = None,
) -> tuple[Envelope, dict[str, np.ndarray]]:
    """Unpack, check and decode an update.

    Parameters
    ----------
    data : bytes
        A packed envelope (untrusted).
    verifier : Verifier or None
        When given, the envelope must be signed by a trusted key (checked before parsing).
    expected_base : str or None
        The receiver's ``model_hash``; a different ``base_hash`` raises BaseModelMismatch.
    expected_tensors : Sequence[TensorInfo] or None
        The receiver's tensor table; any difference in names, order, shapes or dtypes raises
        ValidationError. Receivers should pass it: it bounds the decoder's memory by their own
        model's size.
    max_elements : int, default MAX_MODEL_ELEMENTS (2**26)
        Without ``expected_tensors``: the most elements the envelope's own table may hold
        (ValidationError beyond), which bounds the decoder's memory instead. Ignored with
        ``expected_tensors``.
    expected_codec : str or CodecSpec or None
        The codec the receiver asked for; an envelope naming another spec (another stage, or any
        param different) raises CodecMismatch before its payload is decoded, so a sender cannot
        make the receiver run a costlier decoder than the one it chose. Receivers that set the
        codec should pass it.

    Returns
    -------
    tuple[Envelope, dict[str, numpy.ndarray]]
        The envelope and the float32 delta, in table order.

    Raises
    ------
    StamenError
        ``SignatureError``, ``MalformedUpdate``, ``BaseModelMismatch``, ``ValidationError`` or
        ``CodecError`` (``CodecMismatch``); never another exception for bad input.
    """
    envelope = unpack(data, verifier)
    if expected_base is not None and envelope.base_hash != expected_base:
        raise BaseModelMismatch(
            f"update is based on {envelope.base_hash[:16]}…, receiver holds {expected_base[:16]}…"
        )
    if expected_codec is not None:
        _check_codec(envelope.codec, expected_codec)
    table = envelope.tensors
    if expected_tensors is not None:
        table = _check_table(table, expected_tensors)  # equal: the same names, shapes and dtypes
    else:
        _check_size(table, max_elements)
    arrays = _pipeline(envelope.codec).decode(envelope.payload, table)
    return envelope, arrays


@lru_cache(maxsize=_MAX_PIPELINES)
def _canonical(codec: str) -> str | None:
    """The canonical text of a codec spec (what an envelope records); None when it is invalid."""
    try:
        return _pipeline(codec).spec.to_string()
    except StamenError:
        return None


def decode_expected(
    data: object,
    *,
    codec: str,
    version: int,
    sender: str,
    expected_base: str,
    expected_tensors: tuple[TensorInfo, ...],
    verifier: Verifier | None = None,
    writable: bool = True,
) -> tuple[Envelope, dict[str, np.ndarray]] | None:
    """:func:`decode_update` of an envelope that is exactly what the receiver expects: codec
    ``codec``, its base, ``version``, ``sender`` and tensor table, no meta (what every client of a
    round sends). Its header is then compared byte for byte with the canonical one instead of parsed
    (:func:`~stamen.protocols.envelope.unpack_expected`). None for any other envelope, without
    decoding its payload: the caller runs :func:`decode_update` and its own checks, which name what
    differs. A bad signature raises ``SignatureError`` as :func:`decode_update` does. ``writable``
    False: the tensors may be read-only views into ``data`` (:meth:`CodecPipeline.decode`)."""
    canonical = _canonical(codec) if isinstance(codec, str) else None
    if canonical is None:
        return None
    envelope = unpack_expected(data, canonical, expected_base, version, sender, expected_tensors, verifier)
    if envelope is None:
        return None
    return envelope, _pipeline(canonical).decode(envelope.payload, expected_tensors, writable=writable)
