"""Fused apply: ``new = base + delta`` computed straight into its destination, validated and
hashed in the same pass over memory.

The destination is whatever the backend hands out: views into the buffer of the new ``weights.data``
of a shadow version (ONNX), or fresh arrays (torch). Each tensor is processed in chunks of
:data:`CHUNK` elements, in sorted name order (the order of :func:`~stamen.protocols.model_hash`):
add into the destination, refuse NaN/inf while the chunk is still in cache, then hand the chunk
to a background thread that feeds it to a :class:`~stamen.protocols.ModelHasher`. SHA-256 and
numpy's ufunc loops release the GIL, so on two cores the hash of chunk *i* overlaps the add of
chunk *i + 1*, and the caller can fsync the file while the hash finishes. The result is
bit-identical to ``model_hash({n: base[n] + delta[n]})`` (pinned by tests).
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import TypeAlias

import numpy as np

from stamen.protocols import ModelHasher, TensorInfo, ValidationError

__all__ = ["CHUNK", "HashWorker", "start_apply"]

#: Elements per step (1 MiB of float32): small enough to stay in cache between the add, the
#: finiteness check and the hash, large enough that the per-chunk Python overhead is negligible.
CHUNK = 1 << 18

_Item: TypeAlias = TensorInfo | memoryview | None


class HashWorker:
    """``model_hash`` of the tensors fed to it, computed in a background thread.

    Parameters
    ----------
    count : int
        Number of tensors that will be fed (in sorted name order).
    """

    def __init__(self, count: int) -> None:
        self._hasher = ModelHasher(count)
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stamen-model-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain until the sentinel so that `result` can join
            try:
                if isinstance(item, TensorInfo):
                    self._hasher.begin(item.name, item.dtype, item.shape)
                else:
                    self._hasher.update(item)
            except BaseException as exc:  # reported by `result` in the caller's thread
                self._error = exc

    def begin(self, info: TensorInfo) -> None:
        """Start the next tensor."""
        self._queue.put(info)

    def feed(self, data: memoryview) -> None:
        """Queue the next little-endian bytes of the current tensor (must stay unchanged)."""
        self._queue.put(data)

    def result(self) -> str:
        """Wait for the thread and return the hex digest.

        Raises
        ------
        ValueError
            If tensors or bytes were missing (or the hasher failed otherwise).
        """
        self.stop()
        if self._error is not None:
            raise self._error
        return self._hasher.hexdigest()

    def stop(self) -> None:
        """Stop the thread (idempotent); used on error paths, where the digest is not needed."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def _finite(chunk: np.ndarray) -> bool:
    """True iff no element is NaN or inf. A float32 sum is NaN/inf whenever an element is; if it
    is non-finite only because finite values overflowed, the exact elementwise test decides."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(chunk)
    return bool(np.isfinite(total)) or bool(np.isfinite(chunk).all())


def _add_tensor(
    info: TensorInfo, base: np.ndarray, delta: np.ndarray, out: np.ndarray, worker: HashWorker
) -> None:
    if not (out.flags.c_contiguous and out.flags.writeable):  # else reshape would write a copy
        raise ValueError(f"destination of tensor {info.name!r} must be C-contiguous and writable")
    b, d, o = np.asarray(base).reshape(-1), np.asarray(delta).reshape(-1), out.reshape(-1)
    if not (b.size == d.size == o.size == info.size):
        raise ValidationError(f"tensor {info.name!r}: base, delta and destination sizes differ")
    for start in range(0, o.size, CHUNK):
        chunk = o[start : start + CHUNK]
        with np.errstate(over="ignore", invalid="ignore"):
            np.add(b[start : start + CHUNK], d[start : start + CHUNK], out=chunk)
        if not _finite(chunk):
            raise ValidationError(f"updated tensor {info.name!r} has non-finite values (NaN or inf)")
        if sys.byteorder != "little":
            chunk = chunk.astype(chunk.dtype.newbyteorder("<"))
        worker.feed(chunk.data)


def start_apply(
    base: Mapping[str, np.ndarray],
    delta: Mapping[str, np.ndarray],
    out: Mapping[str, np.ndarray],
    table: Sequence[TensorInfo],
) -> HashWorker:
    """Compute ``out[n] = base[n] + delta[n]`` for every tensor of ``table`` and start hashing.

    Parameters
    ----------
    base, delta : Mapping[str, numpy.ndarray]
        Current weights and the decoded delta (read only; may be memory-mapped or views into
        the update's payload).
    out : Mapping[str, numpy.ndarray]
        Writable C-contiguous destinations of the table's dtypes (e.g. views into the shadow's buffer).
    table : Sequence[TensorInfo]
        The model's tensor table.

    Returns
    -------
    HashWorker
        Still hashing the written chunks; ``result()`` gives ``model_hash(out)``.

    Raises
    ------
    ValidationError
        If a result has a NaN or inf (the worker is stopped; ``out`` is partly written).
    """
    worker = HashWorker(len(table))
    try:
        for info in sorted(table, key=lambda t: t.name):
            worker.begin(info)
            _add_tensor(info, base[info.name], delta[info.name], out[info.name], worker)
    except BaseException:
        worker.stop()
        raise
    return worker
