"""results.json's engine name and the deployment switch come from the grid's class (issue 14, drift).

``flwr run . local`` runs the ServerApp in ``flwr-simulation`` on an ``InMemoryGrid`` (as
``run_simulation`` does); a deployed SuperLink hands it an ``HttpGrid``. Anything that is not an
``InMemoryGrid`` is a deployment, so ``require-signed`` cannot be switched off by a look-alike.
"""

from __future__ import annotations

import subprocess
import sys

from flwr.superlink.grid import InMemoryGrid
from flwr.superlink.grid.http_grid import HttpGrid

from stamen.server.app import engine_name, simulated_grid
from stamen.server.deployed import require_signed


class InMemoryLookalikeGrid:
    """Named like Flower's simulation grid, but not one."""


def test_the_simulation_runtime_grid_is_a_simulation() -> None:
    grid = object.__new__(InMemoryGrid)  # what flwr-simulation / run_simulation build
    assert simulated_grid(grid) and engine_name(grid) == "flower-simulation"  # type: ignore[arg-type]
    assert not require_signed({}, deployed=not simulated_grid(grid))  # type: ignore[arg-type]


def test_every_other_grid_is_a_deployment_that_requires_signatures() -> None:
    for grid in (object.__new__(HttpGrid), InMemoryLookalikeGrid()):
        assert not simulated_grid(grid) and engine_name(grid) == "flower-deployment"  # type: ignore[arg-type]
        assert require_signed({}, deployed=not simulated_grid(grid))  # type: ignore[arg-type]


def test_the_check_does_not_import_flowers_simulation_grid() -> None:
    """The deployable ServerApp stays quick to import: the check reads ``sys.modules`` only."""
    code = (
        "import sys; from stamen.server.app import simulated_grid; "
        "print(simulated_grid(object()), 'flwr.superlink.grid.inmemory_grid' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["False", "False"]
