"""The per-client loop's bounded chunks (replies, task slices), and that chunking leaves a run unchanged."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

from stamen.server.driver.types import Reply
from stamen.simulations.engines import run_engine
from stamen.simulations.engines.chunks import FIRST_SLICE, reply_chunks, task_slices
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario


def _replies(sizes: list[int]) -> list[Reply]:
    return [Reply(f"client-{i}", envelope=b"x" * n, nbytes=n) for i, n in enumerate(sizes)]


def _sizes(chunks: list[list[Reply]]) -> list[int]:
    return [len(c) for c in chunks]


def test_chunks_keep_order_and_close_at_the_count() -> None:
    replies = _replies([1] * 7)
    chunks = list(reply_chunks(replies, max_count=3))
    assert _sizes(chunks) == [3, 3, 1]
    assert [r for c in chunks for r in c] == replies


def test_chunks_close_at_the_bytes_bound() -> None:
    """A large model's replies are not held many at a time: a chunk closes once it holds the bound."""
    chunks = list(reply_chunks(_replies([40, 70, 10, 100, 5]), max_count=100, max_bytes=100))
    assert _sizes(chunks) == [2, 2, 1]


def test_chunks_close_after_max_seconds_of_training() -> None:
    """Slow clients: the chunk closes when its replies took ``max_seconds`` to make (fake clock)."""
    ticks = itertools.count()
    chunks = list(reply_chunks(_replies([1] * 5), max_count=100, max_seconds=2.0, clock=lambda: next(ticks)))
    # clock: start 0; replies at 1, 2 (2 - 0 >= 2: close); restart 3; replies at 4, 5 (close) ...
    assert _sizes(chunks) == [2, 2, 1]


def test_chunks_are_made_lazily() -> None:
    """A chunk is handed on before later replies are made (the driver verifies it meanwhile)."""
    made: list[int] = []

    def replies() -> Iterator[Reply]:
        for i in range(6):
            made.append(i)
            yield Reply(f"client-{i}", envelope=b"x", nbytes=1)

    first = next(iter(reply_chunks(replies(), max_count=2)))
    assert len(first) == 2 and made == [0, 1]


def test_no_replies_no_chunk() -> None:
    assert list(reply_chunks([])) == []


@pytest.mark.parametrize("bounds", [(0, 1, 1.0), (1, 0, 1.0), (1, 1, 0.0), (1, 1, float("nan"))])
def test_bad_bounds_are_a_clear_error(bounds: tuple[int, int, float]) -> None:
    count, nbytes, seconds = bounds
    with pytest.raises(ValueError, match="chunk bounds must be positive"):
        list(reply_chunks(_replies([1]), max_count=count, max_bytes=nbytes, max_seconds=seconds))


def _lengths(slices: list[slice]) -> list[int]:
    return [s.stop - s.start for s in slices]


def test_task_slices_cover_the_range_in_order() -> None:
    slices = list(task_slices(10, 4, max_count=3))
    assert [i for s in slices for i in range(s.start, s.stop)] == list(range(10))
    assert max(_lengths(slices)) <= 3


def test_task_slices_hold_at_most_max_bytes_of_rows_and_at_least_one() -> None:
    assert set(_lengths(list(task_slices(9, 40, max_bytes=100)))) == {2, 1}  # 2 rows of 40 fit, then 1
    assert _lengths(list(task_slices(3, 500, max_bytes=100))) == [1, 1, 1]  # a row over the bound


def test_task_slices_are_sized_from_the_last_slices_time() -> None:
    """The first slice is timed (fake clock: 1 s a client) and the next sized to ``max_seconds``."""
    now = [0.0]
    work = []
    for part in task_slices(20, 4, max_seconds=3.0, clock=lambda: now[0]):
        work.append(part.stop - part.start)
        now[0] += work[-1]  # the caller's work on the slice: 1 s a client
    assert work[0] == FIRST_SLICE and work[1:] == [3, 3, 3, 3, 3, 1]


def test_task_slices_of_nothing() -> None:
    assert list(task_slices(0, 4)) == []


def _plan(*overrides: str) -> SimulationPlan:
    return SimulationPlan.from_scenario(load_scenario("smoke", list(overrides)))


STATEFUL = (  # error feedback and seeded local DP: per-client state carried between rounds
    "codec.pipeline=topk,int8", "codec.topk.ratio=0.1", "codec.error_feedback=true",
    "privacy.mode=local", "privacy.noise=seeded",
)  # fmt: skip


@pytest.mark.parametrize("rows", [True, False], ids=["as-rows", "client-rounds"])
@pytest.mark.parametrize(
    "extra", [(), STATEFUL, ("clients.downlink=cached",)], ids=["dense", "stateful", "cached"]
)
def test_per_client_loop_is_the_same_in_chunks_or_one_by_one(
    monkeypatch: pytest.MonkeyPatch, rows: bool, extra: tuple[str, ...]
) -> None:
    """The per-client loop in chunks (trained as rows then released, or client round by client
    round; trips drawn a chunk at once) gives the run it gives one client round at a time: simulated
    times, drop-outs, accuracy, bytes, ε and the final weights exactly, with per-client state (error
    feedback, local DP) and with a cached downlink."""
    import stamen.simulations.engines.inprocess as inprocess

    plan = (
        "data.num_clients=40", "clients.per_round=20", "rounds=3", "engine.batching=off",
        "timing.dropout_prob=0.2", "timing.compute_jitter_sigma=0.3", *extra,
    )  # fmt: skip
    if not rows:
        resolved = inprocess.resolve_path
        monkeypatch.setattr(inprocess, "resolve_path", lambda *a: replace(resolved(*a), rows=False))

    def run() -> tuple[list[tuple[float, int, float, int, float | None]], dict[str, np.ndarray]]:
        res = run_engine("inprocess", _plan(*plan))
        records = [(r.sim_time_s, r.rejected, r.accuracy, r.bytes_up, r.epsilon) for r in res.rounds]
        return records, {k: np.asarray(v) for k, v in res.weights.items()}

    chunked, weights = run()
    one_by_one = lambda self, tasks: ([self.run(t)] for t in tasks)  # noqa: E731
    monkeypatch.setattr(inprocess.InProcessTransport, "_per_client", one_by_one)
    again, weights_again = run()
    assert again == chunked
    assert weights.keys() == weights_again.keys()
    assert all(np.array_equal(weights[k], weights_again[k]) for k in weights)
    assert sum(r[1] for r in chunked) > 0  # drop-outs happened


def test_per_client_loop_trains_as_rows_where_clients_can_be_apart() -> None:
    """A sync memory run resolves to rows; an edge run (each device applies its own delta) does not."""
    import torch

    from stamen.simulations.engines.paths import resolve_path

    def rows(*overrides: str) -> bool:
        p = _plan("engine.batching=off", *overrides)
        return resolve_path(p.scenario, p.cfg.task, p.cfg.train, torch.nn.Linear(1, 1), p.peer).rows

    assert rows() and not rows("clients.runtime=edge")


@pytest.mark.parametrize("limit", [4 * 2**20, 16])
def test_rows_only_for_small_models(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """A model whose row exceeds ``MAX_ROW_BYTES`` goes client round by client round (no row copy);
    the smoke model's row (a few KiB) is trained as rows (equal runs: the tests above)."""
    import stamen.simulations.engines.inprocess as inprocess

    as_rows: list[int] = []
    real = inprocess.train_and_release

    def counted(jobs, *a, **k):  # type: ignore[no-untyped-def]
        as_rows.append(len(jobs))
        return real(jobs, *a, **k)

    monkeypatch.setattr(inprocess, "train_and_release", counted)
    monkeypatch.setattr(inprocess, "MAX_ROW_BYTES", limit)
    res = run_engine("inprocess", _plan("engine.batching=off", "rounds=2"))
    assert (sum(as_rows) > 0) == (limit > 16)
    assert [r.round for r in res.rounds] == [1, 2]
