"""Tensor tables and the canonical model hash.

The tensor table (name, shape, dtype per tensor) travels once in the envelope header, so codec
payloads can refer to tensors by their index. :func:`model_hash` identifies the weights a delta
applies to; server, client and edge device must compute it identically.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["TensorInfo", "model_hash", "tensor_table"]

_HASH_DOMAIN = b"stamen-model-hash/1\x00"


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of one tensor.

    Attributes
    ----------
    name : str
        Tensor name, e.g. a ``state_dict`` key.
    shape : tuple[int, ...]
        Dimensions, each >= 0.
    dtype : str
        Numpy dtype name, e.g. ``"float32"``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        """Number of elements, ``prod(shape)`` (1 for a scalar)."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count


def tensor_table(weights: Mapping[str, np.ndarray]) -> tuple[TensorInfo, ...]:
    """Describe every tensor of ``weights``, in the mapping's order.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Named arrays.

    Returns
    -------
    tuple[TensorInfo, ...]
        One entry per tensor with its name, shape and numpy dtype name.
    """
    table = []
    for name, arr in weights.items():
        a = np.asarray(arr)
        table.append(TensorInfo(name, tuple(int(d) for d in a.shape), a.dtype.name))
    return tuple(table)


def model_hash(weights: Mapping[str, np.ndarray]) -> str:
    """Canonical SHA-256 of a set of named weights.

    The digest covers, for every tensor in sorted name order: the UTF-8 name, the dtype name,
    the shape and the C-contiguous little-endian bytes, each length-prefixed so that no two
    different models share a byte stream. It does not depend on the mapping's order, memory
    layout or byte order, and any one-ulp change, rename, reshape or dtype change alters it.

    Parameters
    ----------
    weights : Mapping[str, numpy.ndarray]
        Named arrays (any numeric dtype).

    Returns
    -------
    str
        64 lowercase hex characters.
    """
    digest = hashlib.sha256(_HASH_DOMAIN)
    digest.update(struct.pack("<Q", len(weights)))
    for name in sorted(weights):
        arr = np.asarray(weights[name])
        name_bytes = name.encode("utf-8")
        dtype_bytes = arr.dtype.name.encode("ascii")
        digest.update(struct.pack("<I", len(name_bytes)) + name_bytes)
        digest.update(struct.pack("<B", len(dtype_bytes)) + dtype_bytes)
        digest.update(struct.pack(f"<I{arr.ndim}Q", arr.ndim, *arr.shape))
        little = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        digest.update(struct.pack("<Q", little.nbytes))
        digest.update(little.reshape(-1).view(np.uint8).data)  # zero-copy byte view
    return digest.hexdigest()
