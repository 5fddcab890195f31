"""Known-harmless third-party noise is dropped at the narrowest place, and nothing else is."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def flwr_messages() -> Iterator[list[str]]:
    logger = logging.getLogger("flwr")
    saved = list(logger.filters)
    handler = _Collect()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)
    logger.filters[:] = saved


def test_flower_engine_drops_only_the_run_simulation_deprecation(flwr_messages: list[str]) -> None:
    from flwr.supercore.logger import warn_deprecated_feature

    from stamen.simulations.engines.flower import _quiet_flower

    _quiet_flower()  # what run_flower does before calling run_simulation
    _quiet_flower()  # idempotent: one filter
    warn_deprecated_feature("The `run_simulation` function is deprecated and will be removed ...")
    warn_deprecated_feature("Passing `enable_tf_gpu_growth=True` is deprecated.")
    logging.getLogger("flwr").warning("a real warning")
    assert len(flwr_messages) == 2
    assert "enable_tf_gpu_growth" in flwr_messages[0] and flwr_messages[1] == "a real warning"
    from stamen._quiet import DropRunSimulationDeprecation

    logger = logging.getLogger("flwr")
    assert sum(isinstance(f, DropRunSimulationDeprecation) for f in logger.filters) == 1
