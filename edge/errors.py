"""Edge-specific refusals, in the protocol's error hierarchy (so they are ``ValueError`` too)."""

from __future__ import annotations

from stamen.protocols import StamenError

__all__ = ["StaleVersion", "StoreCorrupt"]


class StaleVersion(StamenError):
    """An update's version is not above every version the store has applied (replay/rollback)."""


class StoreCorrupt(StamenError):
    """A store's files fail their hash check or do not match the manifest."""
