"""The one adapter between stamen's wire formats and Flower's records (the only flwr import here).

A packed :class:`~stamen.protocols.Envelope` travels as a single ``flwr.app.Array`` of ``uint8``
with ``stype = "stamen.envelope/1"`` inside the ``ArrayRecord`` named ``"update"``. Its ``data`` is
the envelope bytes verbatim, so ``len(data)`` is the real number of bytes sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from stamen.protocols.keys import ENVELOPE_STYPE, UPDATE_ARRAY

T = TypeVar("T", int, float, str)

__all__ = [
    "ENVELOPE_STYPE",
    "array_record_nbytes",
    "arrays_of",
    "config_value",
    "envelope_from_record",
    "envelope_record",
    "weights_nbytes",
]


def config_value(record: Mapping[str, Any], key: str, kind: type[T]) -> T:
    """``record[key]`` converted to ``kind`` (int, float or str), with a clear error if missing."""
    if key not in record:
        raise ValueError(f"message config has no {key!r}")
    return kind(record[key])


def arrays_of(content: RecordDict, key: str) -> dict[str, np.ndarray]:
    """The numpy arrays of the ``ArrayRecord`` named ``key`` in ``content``."""
    if key not in content.array_records:
        raise ValueError(f"message has no ArrayRecord {key!r}")
    return {k: a.numpy() for k, a in content.array_records[key].items()}


def envelope_record(data: bytes) -> ArrayRecord:
    """Wrap packed envelope bytes in an ``ArrayRecord`` (no copy of the payload semantics)."""
    arr = Array(dtype="uint8", shape=(len(data),), stype=ENVELOPE_STYPE, data=bytes(data))
    return ArrayRecord({UPDATE_ARRAY: arr})


def envelope_from_record(record: ArrayRecord) -> bytes | None:
    """The envelope bytes held by ``record``, or ``None`` if it holds no envelope array."""
    arr = record.get(UPDATE_ARRAY)
    if arr is None or arr.stype != ENVELOPE_STYPE:
        return None
    return bytes(arr.data)


def array_record_nbytes(record: ArrayRecord) -> int:
    """Serialized payload bytes of an ``ArrayRecord`` (sum of ``len(Array.data)``)."""
    return sum(len(a.data) for a in record.values())


def weights_nbytes(weights: Mapping[str, np.ndarray]) -> int:
    """Bytes the weights take as Flower ``Array``s (numpy ``.npy`` serialization per tensor).

    Lets the in-process engine report exactly the downlink bytes the Flower engine sends.
    """
    return array_record_nbytes(ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()}))
