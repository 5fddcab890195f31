"""Silence third-party messages we know to be harmless, each at the narrowest place we control.

Flower 1.41's ``run_simulation`` logs a multi-line "DEPRECATED FEATURE" warning (with raw ANSI colour
codes) on every call. ``stamen simulate --engine flower`` calls it on purpose: it is the only way to
run the real ServerApp and ClientApp in one process with the configuration passed by closure, and
``flwr run`` (its replacement) is documented separately. :func:`quiet_flower_simulation` adds a
logging filter to the ``flwr`` logger that drops exactly that record; every other Flower message
(including other warnings) still shows.

torch 2.13's ONNX exporter (``torch.onnx.export(dynamo=True)``, used by
:func:`stamen.edge.export.export_onnx`) logs "torchvision is not installed. Skipping
torchvision::nms" (and three more ops we never use) and triggers torch's own pytree
``FutureWarning`` ("`isinstance(treespec, LeafSpec)` is deprecated"). :func:`quiet_onnx_export`
raises that one logger to ERROR and ignores that one warning for the duration of an export.

The other noise a newcomer meets is silenced where it starts (see ``docs/simulation.md``):
Ray's accelerator ``FutureWarning`` by ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0`` in the environment
that starts the SuperLink (the Makefile exports it; ``simulations/engines/flower.py`` sets it).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["DropRunSimulationDeprecation", "quiet_flower_simulation", "quiet_onnx_export"]

_ONNX_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


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


@contextlib.contextmanager
def quiet_onnx_export() -> Iterator[None]:
    """Within the block: torch's ONNX op-registration logger at ERROR (no "torchvision is not
    installed" lines) and torch's pytree ``LeafSpec`` ``FutureWarning`` ignored; both restored after."""
    logger = logging.getLogger(_ONNX_REGISTRATION_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
            )
            yield
    finally:
        logger.setLevel(level)
