"""Test-wide setup: Flower/Ray offline, project-local state, one torch thread."""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _k, _v in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "HF_HUB_OFFLINE": "1",
    "OPENBLAS_NUM_THREADS": "1",
}.items():
    os.environ.setdefault(_k, _v)
os.environ.setdefault("FLWR_HOME", str(ROOT / ".flwr-home"))

# Folders whose tests run torch with one thread, as the engines run clients: with several threads on
# a loaded 2-core machine, small matmuls and the GI inversion's tiny ops are dominated by contention.
ONE_TORCH_THREAD = frozenset({"frl", "bristle", "staleness"})


@pytest.fixture(autouse=True)
def _one_torch_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    if Path(str(request.path)).parent.name not in ONE_TORCH_THREAD:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@pytest.fixture(autouse=True)
def _signal_handlers_put_back() -> Iterator[None]:
    """A test that leaves a SIGINT or SIGTERM handler other than the one it found gets a warning
    naming it (in pytest's summary), and the earlier handler is put back: a later test that sends
    itself SIGINT expects Python's (CI once failed test_ctrl_c_while_forking_leaves_no_worker with
    'DID NOT RAISE' after one, from a test never identified; a warning, not a failure, so that the
    leak is named without failing an otherwise green run)."""
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    left = {sig: now for sig in STOP_SIGNALS if (now := signal.getsignal(sig)) is not before[sig]}
    for sig in left:
        earlier = before[sig]
        signal.signal(sig, signal.SIG_DFL if earlier is None else earlier)
    if left:
        names = ", ".join(f"{sig.name} = {handler!r}" for sig, handler in left.items())
        warnings.warn(f"the test left its own signal handlers installed: {names}", stacklevel=1)
