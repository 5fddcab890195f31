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


def test_quiet_onnx_export_drops_only_the_known_lines(caplog: pytest.LogCaptureFixture) -> None:
    import warnings

    from stamen._quiet import quiet_onnx_export

    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    leaf = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        with quiet_onnx_export():
            logger.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
            warnings.warn(leaf, FutureWarning, stacklevel=1)
            warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
            logger.error("a real export error")
        logger.warning("after the block: shown again")
    assert [str(w.message) for w in seen] == ["another FutureWarning"]
    assert [r.getMessage() for r in caplog.records] == ["a real export error", "after the block: shown again"]


def test_onnx_export_prints_no_torchvision_or_pytree_noise(
    tmp_path: object, capfd: pytest.CaptureFixture[str]
) -> None:
    """The edge walkthrough's export used to print 4 "torchvision is not installed" lines and a
    FutureWarning from torch's pytree per export."""
    import warnings
    from pathlib import Path

    from stamen.edge.arch import build_model
    from stamen.edge.export import export_onnx

    model = build_model({"name": "mlp", "input_shape": [4], "hidden": [3], "classes": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # undo pytest's filterwarnings=ignore::FutureWarning
        export_onnx(model, Path(str(tmp_path)) / "m.onnx")
    err = capfd.readouterr().err
    assert "torchvision" not in err and "LeafSpec" not in err, err
