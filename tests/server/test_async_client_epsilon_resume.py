"""Local DP in an asynchronous deployment (FedBuff) resumed from its state-dir: the resubmitted run is
a new Flower run, so every client's own accountant counts from zero again and its reported ε
understates what it spent. As in a synchronous run (tests/server/test_client_epsilon_resume.py),
the worst-client ε is at least what the tasks sent to the most-asked client imply
(:mod:`stamen.server.privacy.client_bound`), each task counted in the checkpoint before its push."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from stamen.server.config import ServerConfig
from stamen.server.driver.async_driver import AsyncDriver
from stamen.server.driver.types import Reply, TrainTask, Weights
from stamen.server.federation import RunExtras, assemble_async
from stamen.task.models import build_model
from stamen.task.settings_load import load_settings
from stamen.task.weights import get_weights
from tests.server.test_client_epsilon_resume import (
    CLIENTS,
    _eps,
    _Nodes,
    assert_bounded_by_tasks,
    crash_then_resume,
)

LOCAL = ["privacy.mode=local", "clients.per_round=3", "rounds=4"]
ASYNC = ["server.mode=fedbuff", "server.buffer_size=3", "server.concurrency=3"]


class _AsyncNodes(_Nodes):
    """:class:`_Nodes` behind a push/pull transport: each pull brings the replies to every task in
    flight (one FedBuff buffer); in the ``crash``-th pull the server dies after the clients released."""

    def __init__(self, released: Counter[str], crash: int = 0) -> None:
        super().__init__(released, crash)
        self.sent: list[TrainTask] = []

    def ready(self, client: str) -> bool:
        return True

    def wait_ready(self, eligible: object = None) -> bool:
        return False

    def advance_to_window(self, eligible: object = None) -> bool:
        return False

    def push(self, task: TrainTask) -> None:
        self.sent.append(task)

    def pull(self, timeout: float) -> list[Reply]:
        tasks, self.sent = self.sent, []
        return self.train(tasks, timeout)


def _driver(nodes: _AsyncNodes, state_dir: Path, *over: str) -> tuple[AsyncDriver, Weights, ServerConfig]:
    cfg = ServerConfig.from_settings(load_settings("smoke", [*LOCAL, *ASYNC, *over]), timeout_s=1.0)
    initial = get_weights(build_model(cfg.task))
    return assemble_async(cfg, nodes, initial, extras=RunExtras(state_dir=state_dir)), initial, cfg


@pytest.mark.parametrize(
    ("calibration", "versions", "releases"),
    [("target_epsilon", [1, 2, 3], 4), ("fixed", [1, 2, 3, 4], 5)],
)
def test_resumed_async_run_reports_the_epsilon_of_the_releases_before_the_crash(
    tmp_path: Path, calibration: str, versions: list[int], releases: int
) -> None:
    """4 versions of one buffer of 3 each; the server dies in the 3rd pull after the clients released
    their 3rd updates. The resumed run sends each client its 4th task (version 3) and, without a cap,
    its 5th (version 4); under the target-ε cap it then stops, the budget spent. The new run's clients
    report ε of 1 and 2 releases; the tasks sent give ε of every release."""
    over = f"privacy.calibration={calibration}"
    made = crash_then_resume(tmp_path, lambda n: _driver(n, tmp_path, over), _AsyncNodes)
    driver, result, cfg, released = made
    assert [r.round for r in result.rounds] == versions
    assert_bounded_by_tasks(driver, result.rounds[-1].epsilon, cfg, released, releases)
    if calibration == "target_epsilon":
        assert result.stopped == "privacy budget exhausted"


def test_without_a_crash_the_async_figure_is_the_clients_own_report(tmp_path: Path) -> None:
    """Every task answered, nothing resumed: each version's ε is what the clients reported."""
    released: Counter[str] = Counter()
    driver, initial, cfg = _driver(_AsyncNodes(released), tmp_path, "privacy.calibration=fixed")
    result = driver.run(initial)
    assert result.stopped is None and released == {c: 4 for c in CLIENTS}
    eps = [r.epsilon for r in result.rounds]
    assert eps == pytest.approx([_eps(cfg, r) for r in (1, 2, 3, 4)], rel=1e-12)
    assert driver.worst_client_eps == pytest.approx(eps[-1], rel=1e-12)
