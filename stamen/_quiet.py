"""Silence third-party messages we know to be harmless, each at the narrowest place we control.

Flower 1.41's ``run_simulation`` logs a multi-line "DEPRECATED FEATURE" warning (with raw ANSI colour
codes) on every call. ``stamen simulate --engine flower`` calls it on purpose: it is the only way to
run the real ServerApp and ClientApp in one process with the configuration passed by closure, and
``flwr run`` (its replacement) is documented separately. :func:`quiet_flower_simulation` adds a
logging filter to the ``flwr`` logger that drops exactly that record; every other Flower message
(including other warnings) still shows.

The other noise a newcomer meets is silenced where it starts (see ``docs/simulation.md``):
Ray's accelerator ``FutureWarning`` by ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0`` in the environment
that starts the SuperLink (the Makefile exports it; ``simulations/engines/flower.py`` sets it).
"""

from __future__ import annotations

import logging

__all__ = ["DropRunSimulationDeprecation", "quiet_flower_simulation"]


class DropRunSimulationDeprecation(logging.Filter):
    """Drop Flower's "DEPRECATED FEATURE: The `run_simulation` function is deprecated" record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for the ``run_simulation`` deprecation record only."""
        message = record.getMessage()
        return not (message.startswith("DEPRECATED FEATURE") and "`run_simulation`" in message)


def quiet_flower_simulation() -> None:
    """Install :class:`DropRunSimulationDeprecation` on the ``flwr`` logger (idempotent)."""
    logger = logging.getLogger("flwr")
    if not any(isinstance(f, DropRunSimulationDeprecation) for f in logger.filters):
        logger.addFilter(DropRunSimulationDeprecation())
