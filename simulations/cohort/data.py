"""A cohort's training data: one shared sample pool plus each client's rows into it.

Clients are index views (``rows``) into one feature pool, never one array per client, so a cohort of
100,000 clients of an index-partitioned data set costs ``c * max_size`` integers beyond the pool.
Client ``k``'s local sample ``i`` is pool row ``rows[k, i]`` for ``i < sizes[k]``; the local order
is the one the per-client trainer sees (:func:`stamen.simulations.provider.client_data`: sorted partition
indices), because the batch schedule permutes local positions.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stamen.task.data import TaskData


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class CohortData:
    """Feature pool, labels and per-client row views, all on one device.

    Attributes
    ----------
    x : torch.Tensor
        ``float32`` features, shape ``(N, *features)``.
    y : torch.Tensor
        ``int64`` labels, shape ``(N,)``.
    rows : torch.Tensor
        ``int64`` pool rows, shape ``(c, width)``; entries past ``sizes[k]`` are padding (0).
    sizes : torch.Tensor
        ``int64`` client sizes ``>= 1``, shape ``(c,)``.
    """

    x: torch.Tensor
    y: torch.Tensor
    rows: torch.Tensor
    sizes: torch.Tensor

    def __post_init__(self) -> None:
        if self.rows.ndim != 2 or self.sizes.shape != (self.rows.shape[0],):
            raise ValueError(
                f"rows must be (c, width) and sizes (c,), got {self.rows.shape}, {self.sizes.shape}"
            )
        if len(self.sizes) and int(self.sizes.min()) < 1:
            raise ValueError("client partition is empty: nothing to train on (every size must be >= 1)")
        if len(self.sizes) and int(self.sizes.max()) > self.rows.shape[1]:
            raise ValueError(f"a size exceeds the row width {self.rows.shape[1]}")
        if not torch.is_floating_point(self.x) or self.y.dtype != torch.int64 or len(self.x) != len(self.y):
            raise ValueError("x must be floating point and y int64 with one label per row of x")

    @property
    def num_clients(self) -> int:
        """Clients in the cohort, ``c``."""
        return int(self.rows.shape[0])

    @classmethod
    def from_rows(
        cls, x: np.ndarray, y: np.ndarray, rows: Sequence[np.ndarray], device: torch.device | str
    ) -> CohortData:
        """Clients as index arrays into one pool (e.g. ``Partitioning.indices(pid)`` of a data set).

        ``x`` and ``y`` are copied to ``device`` once; ``rows[k]`` lists client ``k``'s pool rows in
        its local order.
        """
        sizes = np.array([len(r) for r in rows], dtype=np.int64)
        width = int(sizes.max()) if len(sizes) else 0
        padded = np.zeros((len(rows), width), dtype=np.int64)  # (c, width)
        for k, r in enumerate(rows):
            padded[k, : len(r)] = r
        return cls.from_padded(x, y, padded, sizes, device)

    @classmethod
    def from_padded(
        cls, x: np.ndarray, y: np.ndarray, rows: np.ndarray, sizes: np.ndarray, device: torch.device | str
    ) -> CohortData:
        """Like :meth:`from_rows` with the rows already padded to ``(c, width)``."""
        dev = torch.device(device)
        with warnings.catch_warnings():  # a cached pool is read-only; it is only ever read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return cls(
                x=torch.as_tensor(np.asarray(x, dtype=np.float32)).to(dev),
                y=torch.as_tensor(np.asarray(y, dtype=np.int64)).to(dev),
                rows=torch.as_tensor(np.asarray(rows, dtype=np.int64)).to(dev),
                sizes=torch.as_tensor(np.asarray(sizes, dtype=np.int64)).to(dev),
            )

    @classmethod
    def from_clients(cls, clients: Sequence[TaskData], device: torch.device | str) -> CohortData:
        """Clients given as their own arrays (e.g. :func:`stamen.simulations.provider.client_data`, poisoned
        partitions included): concatenated into one pool, in order."""
        if not clients:
            raise ValueError("a cohort needs at least one client")
        x = np.concatenate([c.x for c in clients])
        y = np.concatenate([c.y for c in clients])
        ends = np.cumsum([len(c.y) for c in clients])
        rows = [np.arange(end - len(c.y), end) for c, end in zip(clients, ends, strict=True)]
        return cls.from_rows(x, y, rows, device)
