"""A shadow version directory prepared in a background thread while the update is verified.

Writing 100 MB into a new buffer costs about as much in page allocation (one fault per page) as
in copying. :class:`ShadowPrep` creates the shadow directory, the backend's output file and
pre-faults its pages on a second core while the main thread checks the payload digest of an
envelope whose signature already verified (``unpack(on_authenticated=...)``), so forged input
never triggers it. Errors of the background work are re-raised by :meth:`ShadowPrep.get`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from stamen.protocols import TensorInfo

from .fsutil import remove_tree

__all__ = ["ShadowPrep", "ShadowWeights"]


class ShadowWeights(Protocol):
    """A backend's output for a new version: writable per-tensor ``views``."""

    views: dict[str, np.ndarray]

    def prefault(self) -> None: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...


class _Opener(Protocol):
    def open_shadow(self, vdir: Path, table: Sequence[TensorInfo]) -> ShadowWeights: ...


class ShadowPrep:
    """Create ``shadow`` and open ``backend``'s shadow weights, in a thread once :meth:`start` is called.

    Parameters
    ----------
    backend : object with ``open_shadow(vdir, table)``
        The store's backend.
    shadow : Path
        Shadow directory to (re)create.
    table : Sequence[TensorInfo]
        The store's tensor table.
    """

    def __init__(self, backend: _Opener, shadow: Path, table: Sequence[TensorInfo]) -> None:
        self.backend, self.shadow, self.table = backend, shadow, tuple(table)
        self._thread: threading.Thread | None = None
        self._out: ShadowWeights | None = None
        self._error: BaseException | None = None

    def _prepare(self) -> None:
        try:
            remove_tree(self.shadow)
            self.shadow.mkdir()
            self._out = self.backend.open_shadow(self.shadow, self.table)
            self._out.prefault()
        except BaseException as exc:  # re-raised by `get` in the caller's thread
            self._error = exc

    def start(self) -> None:
        """Start the preparation in a background thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._prepare, name="stamen-shadow", daemon=True)
            self._thread.start()

    def get(self) -> ShadowWeights:
        """The prepared shadow weights (prepared here if :meth:`start` was never called)."""
        if self._thread is None:
            self._prepare()
        else:
            self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._out is not None
        return self._out

    def discard(self) -> None:
        """Wait for the thread, close what it opened and delete the shadow directory."""
        if self._thread is not None:
            self._thread.join()
        if self._out is not None:
            self._out.close()
        remove_tree(self.shadow)
