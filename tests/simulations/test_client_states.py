"""ClientStates: per-client memory bounded in RAM, spilled to disk, nothing lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stamen.client.state import ClientState
from stamen.simulations.client_states import ClientStates, load_state, save_state, state_bytes


def _state(pid: int, d: int = 100) -> ClientState:
    rng = np.random.default_rng(pid)
    return ClientState({"ef/0.weight": rng.normal(size=(d,)).astype(np.float32)}, {"dp/steps": float(pid)})


def _same(a: ClientState, b: ClientState) -> None:
    assert a.arrays.keys() == b.arrays.keys() and a.scalars == b.scalars
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
        assert a.arrays[k].dtype == b.arrays[k].dtype


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    state = ClientState({"ef/a/b": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"dp/steps": 3.0, "x": 0.5})
    save_state(tmp_path / "1.npz", state)
    _same(load_state(tmp_path / "1.npz"), state)


def test_spills_least_recently_used_past_the_bound_and_reads_them_back(tmp_path: Path) -> None:
    states = ClientStates(memory_bytes=3 * state_bytes(_state(0)), spill_dir=tmp_path)
    for pid in range(10):
        states[pid] = _state(pid)
    _ = states[0]  # 0 becomes the most recently used
    states.settle()
    held, nbytes = states.in_memory()
    assert held == 3 and nbytes <= states.memory_bytes and len(states) == 10 and states.spilled == 7
    assert sorted(int(p.stem) for p in tmp_path.glob("*.npz")) == [1, 2, 3, 4, 5, 6, 7]
    for pid in range(10):  # every state is intact, spilled or not
        _same(states[pid], _state(pid))
    assert not list(tmp_path.glob("*.npz"))  # read back: files removed
    assert sorted(states) == list(range(10))


def test_a_state_handed_out_is_not_spilled_before_settle(tmp_path: Path) -> None:
    states = ClientStates(memory_bytes=0, spill_dir=tmp_path)
    mine = states.setdefault(5, ClientState())
    states[6] = _state(6)
    mine.arrays["ef/w"] = np.ones(4, np.float32)  # client code mutates its state during the round
    states.settle()
    assert states.in_memory() == (0, 0) and states.spilled == 2
    np.testing.assert_array_equal(states.peek(5).arrays["ef/w"], np.ones(4, np.float32))
    assert states.in_memory()[0] == 0  # peek does not load
    np.testing.assert_array_equal(states[5].arrays["ef/w"], np.ones(4, np.float32))


def test_empty_states_are_dropped_at_settle() -> None:
    states = ClientStates()
    for pid in range(5):
        states.setdefault(pid, ClientState())
    states[2].scalars["dp/steps"] = 1.0
    states.settle()
    assert list(states) == [2]


def test_delete_overwrite_close_and_bad_bound(tmp_path: Path) -> None:
    states = ClientStates(memory_bytes=0)
    states[1], states[2] = _state(1), _state(2)
    states.settle()
    spill_dir = next(iter(Path(p).parent for p in [states._path(1)]))
    states[1] = _state(9)  # overwrite a spilled state: its file goes
    del states[2]
    assert sorted(states) == [1] and not list(spill_dir.glob("*.npz"))
    _same(states[1], _state(9))
    with pytest.raises(KeyError):
        del states[2]
    states.close()
    assert not spill_dir.exists() and len(states) == 0
    with pytest.raises(ValueError, match="memory_bytes"):
        ClientStates(memory_bytes=-1)


def test_client_names_behave_like_the_list() -> None:
    from stamen.simulations.nodes import ClientNames

    names, ref = ClientNames(12), [f"client-{i}" for i in range(12)]
    assert len(names) == 12 and list(names) == ref and names == ref
    assert names[3] == "client-3" and names[-1] == "client-11" and names[2:9:3] == ref[2:9:3]
    assert "client-11" in names and "client-12" not in names and "client-03" not in names and 3 not in names
    with pytest.raises(IndexError):
        names[12]


def test_membership_does_not_load_a_spilled_state(tmp_path: Path) -> None:
    states = ClientStates(memory_bytes=0, spill_dir=tmp_path)
    states[4] = _state(4)
    states.settle()
    assert 4 in states and 5 not in states
    assert states.in_memory()[0] == 0 and (tmp_path / "4.npz").exists()
