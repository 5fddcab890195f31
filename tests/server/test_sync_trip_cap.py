"""A synchronous deployment under a client-side mechanism calibrated to a target ε (``local``,
``dp_sgd``, ``rqm``): the round run again after a crash must not send a client more tasks than the
``rounds`` releases its noise was calibrated for. A node keeps a pushed task and may release its
update although the server died; the resubmitted run is a new Flower run, so the client's own
accountant starts from zero and cannot refuse either."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from stamen.server.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from stamen.server.config import ServerConfig
from stamen.server.driver.driver import RoundDriver
from stamen.server.driver.types import Reply, TrainTask, Weights
from stamen.server.federation import RunExtras, assemble
from stamen.server.privacy.central import BudgetExhausted
from stamen.task.models import build_model
from stamen.task.settings_load import load_settings
from stamen.task.weights import get_weights

CLIENTS = ("c-1", "c-2", "c-3")
LOCAL = ["privacy.mode=local", "privacy.calibration=target_epsilon", "clients.per_round=3"]


class _Killed(BaseException):
    """The server process dies (the driver does not catch it)."""


class _Nodes:
    """Deployed nodes: count every task pushed (``sent``, across server restarts); in the
    ``crash``-th round the server dies once the tasks are pushed. No reply is read."""

    def __init__(self, sent: Counter[str], crash: int = 0) -> None:
        self.sent, self.crash, self.rounds = sent, crash, 0

    def clients(self) -> list[str]:
        return list(CLIENTS)

    def now(self) -> float:
        return float("nan")

    def train(self, tasks: list[TrainTask], timeout: float) -> list[Reply]:
        self.sent.update(t.client for t in tasks)
        self.rounds += 1
        if self.rounds == self.crash:
            raise _Killed
        return []


def _driver(nodes: _Nodes, state_dir: Path, *overrides: str) -> tuple[RoundDriver, Weights]:
    cfg = ServerConfig.from_settings(load_settings("smoke", [*LOCAL, *overrides]), timeout_s=1.0)
    initial = get_weights(build_model(cfg.task))
    return assemble(cfg, nodes, initial, extras=RunExtras(state_dir=state_dir)), initial


@pytest.mark.parametrize("mode", ["local", "rqm"])
def test_a_round_run_again_after_a_crash_sends_no_client_more_than_calibrated(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """3 rounds, every client every round; the server dies once round 2's tasks are pushed. The
    resumed run asks round 2 again (each client's 3rd task); round 3 would be its 4th: nobody is
    asked, and the run stops with the budget exhausted (before, each client was sent 4 tasks)."""
    sent: Counter[str] = Counter()
    extra = [] if mode == "local" else ["privacy.mode=rqm", "codec.pipeline=rqm"]
    driver, initial = _driver(_Nodes(sent, crash=2), tmp_path, *extra)
    with pytest.raises(_Killed):
        driver.run(initial)
    ck = read_checkpoint(tmp_path)
    assert ck is not None and ck.step == 1
    trips = ck.state["driver"].get("trips")  # round 1's tasks and round 2's, counted before the push
    driver, initial = _driver(_Nodes(sent), tmp_path, *extra)
    with caplog.at_level(logging.INFO, "stamen.server"):
        result = driver.run(initial)
    assert sent == {c: 3 for c in CLIENTS}
    assert result.stopped == "privacy budget exhausted" and [r.round for r in result.rounds] == [1, 2]
    assert "not asked in round 3: sent 3 tasks" in caplog.text
    assert trips == {c: 2 for c in CLIENTS}


def test_no_crash_asks_every_round_and_a_fixed_noise_has_no_cap(tmp_path: Path) -> None:
    """Without a crash every round asks every client (3 tasks each, the cap); with
    ``privacy.calibration = "fixed"`` there is no target, so no cap: a crash costs one more task."""
    sent: Counter[str] = Counter()
    driver, initial = _driver(_Nodes(sent), tmp_path / "a")
    result = driver.run(initial)
    assert result.stopped is None and sent == {c: 3 for c in CLIENTS}
    sent.clear()
    driver, initial = _driver(_Nodes(sent, crash=2), tmp_path / "b", "privacy.calibration=fixed")
    with pytest.raises(_Killed):
        driver.run(initial)
    driver, initial = _driver(_Nodes(sent), tmp_path / "b", "privacy.calibration=fixed")
    assert driver.run(initial).stopped is None and sent == {c: 4 for c in CLIENTS}


def test_only_the_clients_at_their_cap_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """c-1 has had its 3 tasks; c-2 and c-3 are still asked, and the skip is logged once."""
    cfg = ServerConfig.from_settings(load_settings("smoke", LOCAL), timeout_s=1.0)
    initial = get_weights(build_model(cfg.task))
    driver = assemble(cfg, _Nodes(Counter()), initial)
    driver.budget.trips.update({"c-1": 3, "c-2": 2})
    with caplog.at_level(logging.INFO, "stamen.server"):
        tasks = driver.configure(3, initial)
    assert [t.client for t in tasks] == ["c-2", "c-3"]
    assert driver.budget.trips == {"c-1": 3, "c-2": 2}  # counted when the round sends them
    assert caplog.text.count("not asked in round 3") == 1


class _Many(_Nodes):
    """Six available clients (a cohort of two is drawn out of them)."""

    def clients(self) -> list[str]:
        return [f"c-{i}" for i in range(1, 7)]


def _pair(*overrides: str) -> tuple[RoundDriver, Weights]:
    settings = load_settings("smoke", [*LOCAL, "clients.per_round=2", *overrides])
    cfg = ServerConfig.from_settings(settings, timeout_s=1.0)
    initial = get_weights(build_model(cfg.task))
    return assemble(cfg, _Many(Counter()), initial), initial


@pytest.mark.parametrize("capped", [1, 2])
def test_the_cohort_is_drawn_from_the_clients_with_tasks_left(
    capped: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The seed's round-3 cohort of two has ``capped`` clients at their cap (3 tasks): the round
    still asks two clients, none of them capped, the same two for the same seed and counts (before,
    the capped ones were dropped from the drawn cohort: a round of one client, or of none)."""
    driver, initial = _pair()
    drawn = [t.client for t in driver.configure(3, initial)]  # nobody capped: the seed's cohort
    at_cap = {c: 3 for c in drawn[:capped]}
    cohorts = []
    for _ in range(2):
        driver, initial = _pair()
        driver.budget.trips.update(at_cap)
        with caplog.at_level(logging.INFO, "stamen.server"):
            cohorts.append([t.client for t in driver.configure(3, initial)])
    assert len(cohorts[0]) == 2 and not set(cohorts[0]) & set(at_cap)
    assert cohorts[0] == cohorts[1]
    assert f"{', '.join(sorted(at_cap))} not asked in round 3: sent 3 tasks" in caplog.text


def test_without_a_cap_the_cohort_is_the_seeds_draw() -> None:
    """``privacy.calibration = "fixed"``: no cap, so counts above ``rounds`` change nothing."""
    driver, initial = _pair("privacy.calibration=fixed")
    drawn = [t.client for t in driver.configure(3, initial)]
    driver, initial = _pair("privacy.calibration=fixed")
    driver.budget.trips.update({c: 9 for c in drawn})
    assert [t.client for t in driver.configure(3, initial)] == drawn


def test_every_available_client_at_its_cap_exhausts_the_budget() -> None:
    """Nobody available has a task left: the privacy budget is exhausted (the run stops)."""
    driver, initial = _pair()
    driver.budget.trips.update({f"c-{i}": 3 for i in range(1, 7)})
    with pytest.raises(BudgetExhausted, match="no client with privacy budget left"):
        driver.configure(3, initial)


@pytest.mark.parametrize(
    ("setting", "refused"),
    [
        ("privacy.calibration=target_epsilon", True),
        ("privacy.calibration=fixed", True),
        ("privacy.mode=off", False),
    ],
)
def test_an_older_checkpoint_without_task_counts_is_refused_where_they_bound_privacy(
    tmp_path: Path, setting: str, refused: bool
) -> None:
    """A sync checkpoint written before the tasks per client were kept: under local DP it is refused
    with one line naming the file, with a cap (the round run again could send a client more tasks
    than calibrated) and without one (the reported ε is bounded by the tasks sent; at zero, a resumed
    deployment's figure would restart too); without client-side DP it resumes and runs to the end."""
    sent: Counter[str] = Counter()
    driver, initial = _driver(_Nodes(sent, crash=2), tmp_path, setting)
    with pytest.raises(_Killed):
        driver.run(initial)
    ck = read_checkpoint(tmp_path)
    assert ck is not None and "trips" in ck.state["driver"]
    old = {k: v for k, v in ck.state["driver"].items() if k != "trips"}  # as an older stamen wrote it
    write_checkpoint(tmp_path, replace(ck, state={**ck.state, "driver": old}))
    driver, initial = _driver(_Nodes(sent), tmp_path, setting)
    if not refused:
        assert driver.run(initial).stopped is None and sent == {c: 4 for c in CLIENTS}
        return
    with pytest.raises(CheckpointError, match=r"checkpoint\.safetensors lacks the tasks sent to each") as exc:
        driver.run(initial)
    assert "\n" not in str(exc.value) and "new state-dir" in str(exc.value)
    assert sent == {c: 2 for c in CLIENTS}  # nothing sent after the refusal
