"""Edge-specific refusals, in the protocol's error hierarchy (so they are ``ValueError`` too)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stamen.protocols import BaseModelMismatch, StamenError

if TYPE_CHECKING:
    from .manifest import ModelVersion

__all__ = ["RefusedBase", "StaleVersion", "StoreCorrupt"]


class RefusedBase(BaseModelMismatch):
    """An apply refused an update made for another base or another model; ``held`` is the version
    the store had committed when it refused (read under the store lock: no commit came between)."""

    def __init__(self, message: str, held: ModelVersion) -> None:
        super().__init__(message)
        self.held = held

    def __reduce__(self) -> tuple[type[RefusedBase], tuple[str, ModelVersion]]:
        """Pickled with its ``held`` version (an exception re-raised from a worker process)."""
        return (type(self), (str(self), self.held))


class StaleVersion(StamenError):
    """An update's version is not above every version the store has applied (replay/rollback)."""


class StoreCorrupt(StamenError):
    """A store's files fail their hash check or do not match the manifest."""
