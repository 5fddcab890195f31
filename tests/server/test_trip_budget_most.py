"""``TripBudget.most()``: the most tasks sent to one client, kept as tasks are counted (local DP's
ε bound reads it every round or version) and recounted after a checkpoint's restore."""

from __future__ import annotations

from collections import Counter

from stamen.server.driver.task_counts import TaskCounts
from stamen.server.driver.trip_budget import TripBudget


def test_most_follows_spend() -> None:
    budget = TripBudget()
    assert budget.most() == 0
    for client in ["a", "b", "a", "c", "a", "b"]:
        budget.spend(client)
        assert budget.most() == max(budget.trips.values())
    assert budget.most() == 3


def test_most_follows_spend_all() -> None:
    """The sync driver counts a round's tasks at once; a client named twice is two tasks."""
    budget = TripBudget()
    budget.spend_all(["a", "b", "c"])
    assert budget.most() == 1
    budget.spend_all(["b", "b", "c"])
    assert budget.most() == 3 and budget.trips == Counter({"b": 3, "c": 2, "a": 1})


def test_most_is_recounted_after_trips_are_replaced() -> None:
    """A restore assigns a new Counter (``checkpoint_parts``, ``checkpoint_async``): the kept figure
    must not survive it, higher or lower."""
    budget = TripBudget()
    for _ in range(5):
        budget.spend("a")
    assert budget.most() == 5
    budget.trips = Counter({"b": 2, "c": 1})
    assert budget.most() == 2
    budget.spend("c")
    budget.spend("c")
    assert budget.most() == 3
    budget.trips = Counter({"d": 7})
    assert budget.most() == 7


def test_most_follows_writes_in_place() -> None:
    """``count_before_push`` counts a task for the checkpoint and takes it back; tests and restores
    write ``trips`` in place: the figure follows every write, up and down."""
    budget = TripBudget()
    budget.spend("a")
    budget.trips["a"] += 1  # counted for the save
    assert budget.most() == 2
    budget.trips["a"] -= 1  # taken back
    assert budget.most() == 1
    budget.trips["b"] = 4
    assert budget.most() == 4
    budget.trips.update({"c": 2})
    assert budget.most() == 4
    del budget.trips["b"]
    assert budget.most() == 2


def test_trips_stay_task_counts_when_assigned_and_pickled() -> None:
    import pickle

    budget = TripBudget(trips=Counter({"a": 3}))  # type: ignore[arg-type]
    assert isinstance(budget.trips, TaskCounts) and budget.most() == 3
    copied = pickle.loads(pickle.dumps(budget))
    assert isinstance(copied.trips, TaskCounts) and copied.most() == 3 and copied.trips == {"a": 3}
    copied.trips.clear()
    assert copied.most() == 0
