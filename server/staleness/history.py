"""A bounded history of released model versions.

The server keeps only the versions a compensation policy (DC-ASGD and the GI conversion need
``w_{t-tau}``) or an edge downlink (a delta from the version a device holds) can still use: the
newest ``max_versions`` and/or as many as fit in ``max_bytes``, oldest evicted first. The newest
version is always kept. Versions are released in increasing order (``put``); asking for a version
newer than the newest is a :class:`FutureVersionError`, for one that was evicted or never released
an :class:`UnknownVersionError` — both name the version and what the history holds.

A policy with ``max_staleness = S`` needs ``max_versions = S + 1`` (:meth:`ModelHistory.for_max_staleness`).
A version evicted by the byte bound while fewer than ``max_versions`` are held is named as such in the
:class:`UnknownVersionError` ("evicted to keep the history within max_bytes=...").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from stamen.server.staleness.errors import FutureVersionError, UnknownVersionError, check_version

Weights = dict[str, np.ndarray]


def _nbytes(weights: Mapping[str, np.ndarray]) -> int:
    return int(sum(v.nbytes for v in weights.values()))


class ModelHistory:
    """Released model versions, bounded by count and/or bytes.

    Parameters
    ----------
    max_versions : int or None
        Most versions kept (``>= 1``); ``None`` for no count bound.
    max_bytes : int or None
        Most bytes of weights kept (``>= 1``); ``None`` for no byte bound. The newest version is
        kept even when it alone exceeds the bound (it is the model being served).

    At least one bound must be given: an unbounded history grows with every release.
    """

    def __init__(self, max_versions: int | None = None, max_bytes: int | None = None) -> None:
        if max_versions is None and max_bytes is None:
            raise ValueError(
                "ModelHistory needs max_versions and/or max_bytes (an unbounded history grows forever)"
            )
        for key, value in (("max_versions", max_versions), ("max_bytes", max_bytes)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"ModelHistory: {key} must be an integer >= 1 or None, got {value!r}")
        self.max_versions, self.max_bytes = max_versions, max_bytes
        self._store: OrderedDict[int, Mapping[str, np.ndarray]] = OrderedDict()
        self._latest: int | None = None
        self._nbytes = 0

    @classmethod
    def for_max_staleness(cls, max_staleness: int, max_bytes: int | None = None) -> ModelHistory:
        """A history holding every version an update of staleness ``<= max_staleness`` can name."""
        return cls(max_versions=check_version(max_staleness, "max_staleness") + 1, max_bytes=max_bytes)

    @property
    def latest(self) -> int | None:
        """The newest released version (``None`` before the first ``put``)."""
        return self._latest

    @property
    def nbytes(self) -> int:
        """Bytes of weights held now (sum of the arrays' ``nbytes``)."""
        return self._nbytes

    def versions(self) -> list[int]:
        """The versions held, oldest first."""
        return list(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, version: object) -> bool:
        return version in self._store

    def put(self, version: int, weights: Mapping[str, np.ndarray]) -> None:
        """Release ``version`` (greater than every earlier one) with a read-only copy of ``weights``."""
        v = check_version(version)
        if self._latest is not None and v <= self._latest:
            raise ValueError(
                f"model version {v} is not newer than the latest released version {self._latest}"
            )
        frozen = {k: np.array(a, dtype=np.float32, copy=True) for k, a in weights.items()}
        for a in frozen.values():
            a.flags.writeable = False
        self._store[v] = MappingProxyType(frozen)
        self._latest, self._nbytes = v, self._nbytes + _nbytes(frozen)
        self._evict()

    def get(self, version: object) -> Mapping[str, np.ndarray]:
        """The (read-only) weights of ``version``; typed errors for future or unknown versions."""
        v = self._check_released(version)
        if v not in self._store:
            raise UnknownVersionError(
                f"model version {v} {self._why_missing(v)}: the history keeps {self._span()}"
            )
        return self._store[v]

    def staleness(self, version: object) -> int:
        """``tau = latest - version`` for a released version (held or not)."""
        return self._require_latest() - self._check_released(version)

    def memory_report(self) -> dict[str, int | None]:
        """What the history holds: version count, bytes, bounds, oldest and newest version."""
        versions = self.versions()
        return {
            "versions": len(versions),
            "bytes": self._nbytes,
            "max_versions": self.max_versions,
            "max_bytes": self.max_bytes,
            "oldest": versions[0] if versions else None,
            "latest": self._latest,
        }

    def _check_released(self, version: object) -> int:
        v = check_version(version)
        latest = self._require_latest()
        if v > latest:
            raise FutureVersionError(
                f"model version {v} is from the future: the newest released version is {latest}"
            )
        return v

    def _require_latest(self) -> int:
        if self._latest is None:
            raise UnknownVersionError("no model version has been released yet")
        return self._latest

    def _why_missing(self, v: int) -> str:
        """Why ``v`` (released, not newer than the latest) is not held."""
        if v > next(iter(self._store)):
            return "was never released"
        if self.max_bytes is not None and (self.max_versions is None or len(self) < self.max_versions):
            return f"is no longer held (evicted to keep the history within max_bytes={self.max_bytes})"
        return "is no longer held"

    def _span(self) -> str:
        versions = self.versions()
        bounds = f"max_versions={self.max_versions}, max_bytes={self.max_bytes}"
        return f"versions {versions[0]}..{versions[-1]} ({bounds})"

    def _evict(self) -> None:
        def over() -> bool:
            too_many = self.max_versions is not None and len(self._store) > self.max_versions
            too_big = self.max_bytes is not None and self._nbytes > self.max_bytes
            return too_many or too_big

        while len(self._store) > 1 and over():
            _, dropped = self._store.popitem(last=False)
            self._nbytes -= _nbytes(dropped)
