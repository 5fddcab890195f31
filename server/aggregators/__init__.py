"""Aggregation rules: ``create(name, **params)`` returns ``(updates, weights=None) -> aggregate``."""

from stamen.server.aggregators import mean as _mean  # noqa: F401  (registers fedavg, mean)
from stamen.server.aggregators.base import Aggregator, available, check_stack, create, register

__all__ = ["Aggregator", "available", "check_stack", "create", "register"]
