"""Local DP in a deployment resumed from its state-dir: the resubmitted run is a new Flower run, so
every client's own accountant counts from zero again and its reported ε understates what it spent.
The server's worst-client ε is at least what the tasks it sent the most-asked client imply
(:mod:`stamen.server.privacy.client_bound`), computed with the clients' own accountant."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stamen.client.core import encode_delta, local_privacy, reply_metrics
from stamen.client.state import ClientState
from stamen.privacy.local import local_epsilon
from stamen.server.checkpoint import read_checkpoint
from stamen.server.config import ServerConfig
from stamen.server.driver.driver import RoundDriver
from stamen.server.driver.types import Reply, TrainTask, Weights
from stamen.server.federation import RunExtras, assemble
from stamen.server.history import FederationResult
from stamen.server.privacy.statement import privacy_statement
from stamen.task.models import build_model
from stamen.task.settings_load import load_settings
from stamen.task.weights import get_weights

CLIENTS = ("c-1", "c-2", "c-3")
LOCAL = ["privacy.mode=local", "clients.per_round=3", "rounds=4"]


class _Killed(BaseException):
    """The server process dies (the driver does not catch it)."""


class _Nodes:
    """Deployed nodes running the client's own local-DP code, their memory that of one Flower run (a
    new ``_Nodes`` is the resubmitted run: every count from zero); ``released`` counts every noised
    update across runs. In the ``crash``-th round the server dies after the clients released theirs."""

    def __init__(self, released: Counter[str], crash: int = 0) -> None:
        self.released, self.crash, self.rounds = released, crash, 0
        self.states = {c: ClientState() for c in CLIENTS}

    def clients(self) -> list[str]:
        return list(CLIENTS)

    def now(self) -> float:
        return float("nan")

    def train(self, tasks: list[TrainTask], timeout: float) -> list[Reply]:
        replies = [self._reply(t) for t in tasks]
        self.rounds += 1
        if self.rounds == self.crash:
            raise _Killed  # the updates are out; the server never reads them
        return replies

    def _reply(self, task: TrainTask) -> Reply:
        spec, instr = task.instructions.train, task.instructions
        assert task.weights is not None
        delta = {k: np.zeros_like(v) for k, v in task.weights.items()}
        noised, metrics = local_privacy(delta, spec, 0, self.states[task.client])
        self.released[task.client] += 1
        base, version = task.expected_base, instr.version
        data = encode_delta(noised, instr.codec, base_hash=base, version=version, sender=task.client, seed=0)
        return Reply(task.client, envelope=data, metrics=reply_metrics(spec, 1, metrics), nbytes=len(data))


def _driver(nodes: _Nodes, state_dir: Path, *overrides: str) -> tuple[RoundDriver, Weights, ServerConfig]:
    cfg = ServerConfig.from_settings(load_settings("smoke", [*LOCAL, *overrides]), timeout_s=1.0)
    initial = get_weights(build_model(cfg.task))
    return assemble(cfg, nodes, initial, extras=RunExtras(state_dir=state_dir)), initial, cfg


def _eps(cfg: ServerConfig, releases: int) -> float:
    t = cfg.train
    return local_epsilon(t.dp_noise_multiplier, releases, t.dp_delta, t.dp_accountant)


@pytest.mark.parametrize(
    ("calibration", "rounds_done", "releases"),
    [("target_epsilon", [1, 2, 3], 4), ("fixed", [1, 2, 3, 4], 5)],
)
def test_resumed_run_reports_the_epsilon_of_the_releases_before_the_crash(
    tmp_path: Path, calibration: str, rounds_done: list[int], releases: int
) -> None:
    """4 rounds, every client every round; the server dies in round 3 after the clients released
    their updates. The resumed run asks round 3 again (each client's 4th release) and, without a
    cap, round 4 (its 5th); under the target-ε cap round 4 is refused. The clients of the new run
    report ε of 1 and 2 releases, so the reported maximum was ε(2) (the old figure); the tasks sent,
    counted before each push, give ε of every release."""
    over = f"privacy.calibration={calibration}"
    driver, result, cfg, released = crash_then_resume(tmp_path, lambda n: _driver(n, tmp_path, over), _Nodes)
    assert [r.round for r in result.rounds] == rounds_done
    assert_bounded_by_tasks(driver, result.rounds[-1].epsilon, cfg, released, releases)


def crash_then_resume(
    state_dir: Path, make: Callable[[Any], tuple[Any, Weights, ServerConfig]], nodes: Callable[..., Any]
) -> tuple[Any, FederationResult, ServerConfig, Counter[str]]:
    """A run (``make(nodes)``: a driver, its initial weights and config) whose server dies in its 3rd
    step after the clients released, its checkpoint counting 3 tasks a client; then the resumed run
    with new nodes (their accountants from zero): ``(driver, result, cfg, releases per client)``."""
    released: Counter[str] = Counter()
    driver, initial, _ = make(nodes(released, crash=3))
    with pytest.raises(_Killed):
        driver.run(initial)
    ck = read_checkpoint(state_dir)
    assert ck is not None and ck.step == 2 and ck.state["driver"]["trips"] == {c: 3 for c in CLIENTS}
    driver, initial, cfg = make(nodes(released))
    return driver, driver.run(initial), cfg, released


def assert_bounded_by_tasks(
    driver: Any, final: float | None, cfg: ServerConfig, released: Counter[str], releases: int
) -> None:
    """Every client released ``releases`` updates, each one a task counted; the clients reported ε(2)
    (their accountants restarted); the ``final`` ε is that of every release, within the target."""
    assert released == {c: releases for c in CLIENTS} and driver.budget.trips == released
    assert driver.worst_client_eps == pytest.approx(_eps(cfg, 2), rel=1e-12)  # what was reported
    assert final == pytest.approx(_eps(cfg, releases), rel=1e-12) and final > _eps(cfg, 2) * 1.2
    if cfg.privacy.calibration == "target_epsilon":  # the cap keeps it within the target
        p = cfg.privacy
        assert p.target_epsilon * 0.99 <= final <= p.target_epsilon * (1 + 1e-9)


def test_without_a_crash_the_figure_is_the_clients_own_report(tmp_path: Path) -> None:
    """Every task answered, nothing resumed: each round's ε is what the clients reported (ε of the
    rounds so far), bound and reports agreeing."""
    released: Counter[str] = Counter()
    driver, initial, cfg = _driver(_Nodes(released), tmp_path)
    result = driver.run(initial)
    assert result.stopped is None and released == {c: 4 for c in CLIENTS}
    eps = [r.epsilon for r in result.rounds]
    assert eps == pytest.approx([_eps(cfg, r) for r in (1, 2, 3, 4)], rel=1e-12)
    assert driver.worst_client_eps == pytest.approx(eps[-1], rel=1e-12)


def test_the_statement_says_what_the_worst_client_epsilon_is() -> None:
    """results.json's ``privacy.note``: bounded by the tasks sent under local DP, synchronous or
    asynchronous; the clients' reports, which a resumed deployment restarts, under DP-SGD."""

    def note(*overrides: str) -> str:
        statement = privacy_statement(ServerConfig.from_settings(load_settings("smoke", list(overrides))))
        assert statement is not None
        return str(statement["note"])

    assert "most-asked client" in note("privacy.mode=local")
    dp_sgd = note("privacy.mode=dp_sgd", "privacy.calibration=fixed")
    assert "count from zero again" in dp_sgd and "data size" in dp_sgd
    fedbuff = note("privacy.mode=local", "server.mode=fedbuff")
    assert "most-asked client" in fedbuff and "understate" not in fedbuff
