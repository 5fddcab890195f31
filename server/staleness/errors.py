"""Typed errors of the staleness machinery.

Every error an update can trigger by the model version it names is a :class:`StalenessError`,
itself a :class:`stamen.protocols.ValidationError` (so a ``StamenError`` and a ``ValueError``): the
round driver rejects that one update, counts it and goes on (house rule 11).
"""

from __future__ import annotations

import numbers

from stamen.protocols import ValidationError


class StalenessError(ValidationError):
    """Root of the staleness errors: an update's model version cannot be used."""


class InvalidVersionError(StalenessError):
    """A model version is not an integer ``>= 0`` (bools and floats are refused)."""


class InvalidStalenessError(StalenessError):
    """A staleness ``tau`` is not an integer ``>= 0``."""


class FutureVersionError(StalenessError):
    """An update names a model version newer than the newest the server has released."""


class UnknownVersionError(StalenessError):
    """The server holds no weights for that version (never released, or evicted from the history)."""


def _nonneg_int(value: object, what: str, error: type[StalenessError]) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{what} must be an integer >= 0, got {value!r} ({type(value).__name__})")
    if int(value) < 0:
        raise error(f"{what} must be an integer >= 0, got {int(value)}")
    return int(value)


def check_version(version: object, what: str = "model version") -> int:
    """``version`` as an ``int``; :class:`InvalidVersionError` unless it is an integer ``>= 0``.

    Python and numpy integers are accepted; ``bool`` and floats (even integral ones) are not.
    """
    return _nonneg_int(version, what, InvalidVersionError)


def check_tau(tau: object) -> int:
    """Staleness ``tau`` as an ``int``; :class:`InvalidStalenessError` unless an integer ``>= 0``."""
    return _nonneg_int(tau, "staleness tau", InvalidStalenessError)
