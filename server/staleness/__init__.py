"""Staleness handling for asynchronous federation: weights, compensation, model-version history.

- :mod:`.functions`: staleness weights ``s(tau)`` (constant, polynomial, hinge, fedbuff,
  exponential) behind ``functions.create(name, **params)``.
- :mod:`.compensation`: policies ``(delta, tau, versions) -> delta`` behind
  ``compensation.create(name, **params)``: ``direct``, ``weighted``, ``dcasgd`` (:mod:`.dcasgd`),
  ``gi`` (:mod:`.gi_policy`, the gradient-inversion conversion of :mod:`.gi_conversion` with the
  switch-back rule of :mod:`.gi_switch`; torch).
- :mod:`.history`: a bounded history of released model versions.
- :mod:`.errors`: typed errors (future / unknown versions), all ``ValidationError``.
"""

from stamen.server.staleness import compensation, functions
from stamen.server.staleness import dcasgd as _dcasgd  # noqa: F401  (registers dcasgd)
from stamen.server.staleness import gi_policy as _gi_policy  # noqa: F401  (registers gi)
from stamen.server.staleness.compensation import CompensationPolicy, ModelVersions
from stamen.server.staleness.errors import (
    FutureVersionError,
    InvalidStalenessError,
    InvalidVersionError,
    StalenessError,
    UnknownVersionError,
)
from stamen.server.staleness.functions import StalenessFunction
from stamen.server.staleness.history import ModelHistory

__all__ = [
    "CompensationPolicy",
    "FutureVersionError",
    "InvalidStalenessError",
    "InvalidVersionError",
    "ModelHistory",
    "ModelVersions",
    "StalenessError",
    "StalenessFunction",
    "UnknownVersionError",
    "compensation",
    "functions",
]
