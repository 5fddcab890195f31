"""Content-addressed checkpoint parts (server/checkpoint_store.py): an asynchronous checkpoint
writes what changed, not the model history again; unreferenced parts are collected; a crash at
any step of a write resumes from a whole checkpoint; a damaged part is one line."""

from __future__ import annotations

import dataclasses
import json
import os
import select
import struct
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stamen.server import checkpoint as cpt
from stamen.server import checkpoint_run
from stamen.server.checkpoint import Checkpoint, CheckpointError, read_checkpoint, write_checkpoint
from stamen.server.checkpoint_store import PARTS_DIR, PartStore, lock_state_dir, unlock_state_dir
from stamen.simulations.engines.inprocess import run_inprocess
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario
from tests.server.test_checkpoint_resume_async import _killed_at_save

# 64 -> 256 -> 10: 19,210 parameters (75 KiB, above the part threshold); dcasgd keeps the history
ASYNC = [
    "server.mode=fedasync",
    "server.compensation=dcasgd",
    "rounds=14",
    "model.hidden=256",
    "eval.every=100",
]


FEDBUFF = [*ASYNC, "server.mode=fedbuff", "rounds=6"]  # buffer of 3: rows are parts too


def _plan(state_dir: Path | None, overrides: list[str] = ASYNC) -> SimulationPlan:
    plan = SimulationPlan.from_scenario(load_scenario("async-speeds-quick", overrides))
    plan.state_dir = state_dir
    return plan


def _run_recording(state_dir: Path) -> tuple[Any, list[int]]:
    """The run and the bytes each checkpoint wrote."""
    states: list[checkpoint_run.RunState] = []
    init = checkpoint_run.RunState.__init__

    def remember(self: checkpoint_run.RunState, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        states.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint_run.RunState, "__init__", remember)
        result = run_inprocess(_plan(state_dir))
    return result, [b for _, b in states[0].writes]


def test_per_reply_write_does_not_grow_with_the_history(tmp_path: Path) -> None:
    result, written = _run_recording(tmp_path)
    model = sum(np.asarray(w).nbytes for w in result.weights.values())
    ck = read_checkpoint(tmp_path)
    assert ck is not None and len(ck.state["driver"]["history"]["versions"]) == 15  # versions 0..14
    assert len(written) == 15 and written[0] > 6 * model  # the first: model and 6 envelopes in flight
    # after the first, a reply writes its new version and the next task's envelope (+ a small
    # manifest), not the 15 versions of the history again (the old whole-file write: > 15 models)
    assert max(written[1:]) < 3 * model, [round(b / model, 2) for b in written]


def test_no_unreferenced_part_is_left_after_a_run(tmp_path: Path) -> None:
    _run_recording(tmp_path)
    ck = read_checkpoint(tmp_path)
    assert ck is not None and ck.finished and ck.parts
    on_disk = {p.name for p in (tmp_path / PARTS_DIR).iterdir()}
    assert on_disk == {f"{name}.safetensors" for name in ck.parts}
    assert sorted(p.name for p in tmp_path.iterdir()) == [cpt.FILE_NAME, PARTS_DIR]


def _ck(step: int, history: dict[int, np.ndarray]) -> Checkpoint:
    """A checkpoint whose weights are history[step] and whose state holds every history version."""
    arrays = {f"history/{v}/w": a for v, a in history.items()}
    groups = {f"history/{v}/": ["w"] for v in history}
    return Checkpoint(
        step,
        "fedasync",
        {"w": history[step]},
        (),
        {"seed": "0"},
        {"v": sorted(history)},
        arrays,
        groups=groups,
    )


def _model(v: int) -> np.ndarray:
    return np.full(20_000, v, np.float32)  # 80 kB: a part


@contextmanager
def _crash_at(n: int, mp: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Raise at the ``n``-th step of a write: writing a file, renaming, fsyncing, deleting."""
    steps: list[str] = []

    def step(name: str, real: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            steps.append(f"rename:{Path(args[1]).name}" if name == "rename" else name)
            if len(steps) == n:
                raise KeyboardInterrupt(f"killed at {name}")
            return real(*args, **kwargs)

        return wrapped

    mp.setattr(cpt, "_write_all", step("write", cpt._write_all))
    mp.setattr(cpt.os, "replace", step("rename", os.replace))
    mp.setattr(cpt.os, "fsync", step("fsync", os.fsync))
    mp.setattr(Path, "unlink", step("unlink", Path.unlink))
    yield steps


def test_a_crash_at_every_step_of_a_write_resumes_a_whole_checkpoint(tmp_path: Path) -> None:
    old = _ck(1, {0: _model(0), 1: _model(1)})
    new = _ck(2, {1: _model(1), 2: _model(2)})  # keeps version 1, drops 0, adds 2
    for n in range(1, 40):  # bounded: a write has about 15 steps
        state_dir = tmp_path / str(n)
        write_checkpoint(state_dir, old)
        with pytest.MonkeyPatch.context() as mp, _crash_at(n, mp) as steps:
            with suppress(KeyboardInterrupt):
                write_checkpoint(state_dir, new, PartStore(state_dir))
            done = len(steps) < n
        state = checkpoint_run.RunState(state_dir, {"seed": "0"}, "fedasync")
        ck = state.load()  # as a restarted run does: read, then collect the unreferenced parts
        assert ck is not None
        committed = f"rename:{cpt.FILE_NAME}" in steps[: n - 1]  # the manifest's rename happened
        want = new if done or committed else old
        assert ck.step == want.step, (n, steps)
        for v in want.state["v"]:
            np.testing.assert_array_equal(ck.arrays[f"history/{v}/w"], _model(v))
        parts = {p.name for p in (state_dir / PARTS_DIR).iterdir()}
        assert parts == {f"{name}.safetensors" for name in ck.parts}, (n, steps)
        if done:
            break
    else:
        pytest.fail("the write never completed")
    assert n > 8  # every step was crashed at once


def test_a_damaged_or_missing_part_is_one_line(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, _ck(1, {0: _model(0), 1: _model(1)}))
    part = sorted((tmp_path / PARTS_DIR).iterdir())[0]
    data = bytearray(part.read_bytes())
    data[-1] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt: its contents do not match its name"):
        read_checkpoint(tmp_path)
    part.unlink()
    with pytest.raises(CheckpointError, match=r"^checkpoint is incomplete: part .* is missing$"):
        read_checkpoint(tmp_path)


def test_the_same_model_twice_is_one_part(tmp_path: Path) -> None:
    """The weights and the history's newest version are one file."""
    write_checkpoint(tmp_path, _ck(1, {0: _model(0), 1: _model(1)}))
    assert len(list((tmp_path / PARTS_DIR).iterdir())) == 2


def test_big_endian_arrays_round_trip_through_parts(tmp_path: Path) -> None:
    """Files hold little-endian bytes: a ``>f4`` array (a part, or inline) is hashed as those, so
    it reads back (same values) instead of failing its hash check."""
    big = {v: (np.arange(20_000) + v).astype(">f4") for v in (0, 1)}
    ck = _ck(1, big)
    write_checkpoint(tmp_path, dataclasses.replace(ck, arrays={**ck.arrays, "m": np.arange(3).astype(">i8")}))
    back = read_checkpoint(tmp_path)
    np.testing.assert_array_equal(back.arrays["m"], [0, 1, 2])  # inline (a small array)
    np.testing.assert_allclose(back.weights["w"], np.arange(20_000) + 1.0, rtol=0, atol=0)
    np.testing.assert_allclose(back.arrays["history/0/w"], np.arange(20_000), rtol=0, atol=0)
    write_checkpoint(tmp_path / "le", _ck(1, {v: a.astype("<f4") for v, a in big.items()}))
    names = [sorted(p.name for p in (d / PARTS_DIR).iterdir()) for d in (tmp_path, tmp_path / "le")]
    assert names[0] == names[1]  # the same parts as the little-endian arrays'
    store = PartStore(tmp_path / "direct")  # the part store alone, too
    np.testing.assert_array_equal(store.get(store.put({"w": big[0]}))["w"], big[0])


def _assert_same(got: Any, ref: Any) -> None:
    assert cpt.records_equal(got.rounds, ref.rounds)
    for k in ref.weights:
        np.testing.assert_allclose(got.weights[k], ref.weights[k], rtol=0, atol=1e-7)


def test_a_run_kept_in_parts_resumes_exactly(tmp_path: Path) -> None:
    """Killed mid-buffer (two rows buffered, five replies in flight), the model history, the rows
    and the envelopes in part files: the resumed run is the uninterrupted one."""
    ref = run_inprocess(_plan(None, FEDBUFF))
    _killed_at_save("async-speeds-quick", FEDBUFF, tmp_path, 8)
    ck = read_checkpoint(tmp_path)
    assert ck is not None and ck.step == 2 and len(ck.state["driver"]["step"]["rows"]) == 2
    assert {f"s/{k}" for k in ck.state["driver"]["step"]["rows"]} <= set(_part_keys(tmp_path))
    _assert_same(run_inprocess(_plan(tmp_path, FEDBUFF)), ref)


def _part_keys(state_dir: Path) -> list[str]:
    data = (state_dir / cpt.FILE_NAME).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(json.loads(data[8 : 8 + n])["__metadata__"][cpt.META_KEY])
    return list(meta["parts"])


def test_a_version_1_checkpoint_with_stacked_rows_still_resumes_exactly(tmp_path: Path) -> None:
    """Written before the parts (one file, the open buffer one stacked array): read and resumed."""
    ref = run_inprocess(_plan(None, FEDBUFF))
    _killed_at_save("async-speeds-quick", FEDBUFF, tmp_path, 8)
    ck = read_checkpoint(tmp_path)
    assert ck is not None
    step = dict(ck.state["driver"]["step"])
    rows, arrays = step["rows"], dict(ck.arrays)
    arrays["buffer/rows"] = np.stack([arrays.pop(k) for k in rows])
    step["rows"] = "buffer/rows"
    state = {**ck.state, "driver": {**ck.state["driver"], "step": step}}
    old = Checkpoint(ck.step, ck.mode, ck.weights, ck.records, ck.fingerprint, state, arrays)
    (tmp_path / cpt.FILE_NAME).write_bytes(cpt.encode_checkpoint(old))  # version 1: all inline
    assert read_checkpoint(tmp_path) is not None
    _assert_same(run_inprocess(_plan(tmp_path, FEDBUFF)), ref)
    assert not list((tmp_path / PARTS_DIR).glob("*.tmp"))


def test_a_second_run_on_a_state_dir_in_use_is_refused(tmp_path: Path) -> None:
    """Run A has written its next checkpoint's new parts but not yet its manifest when run B (same
    configuration) is started on the same state-dir: a server restarted while the old one still
    runs. B must be refused before it touches the directory: collecting the parts no committed
    manifest names would delete A's, and A's manifest, committed next, would name missing files."""
    runs: list[checkpoint_run.RunState] = []
    refused: list[str] = []
    sync, save = PartStore.sync, checkpoint_run.RunState.save

    def sync_then_start_b(self: PartStore) -> None:
        if len(runs) == 3:  # A's third write: its new parts are on disk, not yet named
            try:
                checkpoint_run.RunState(tmp_path, runs[0].fingerprint, "fedasync").load()
            except CheckpointError as exc:
                refused.append(str(exc))
        sync(self)

    def save_then_stop(self: checkpoint_run.RunState, *args: Any, **kwargs: Any) -> None:
        runs.append(self)
        save(self, *args, **kwargs)
        if len(runs) == 3:
            raise KeyboardInterrupt  # A stops right after the write B interfered with

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PartStore, "sync", sync_then_start_b)
        mp.setattr(checkpoint_run.RunState, "save", save_then_stop)
        run_inprocess(_plan(tmp_path))
    assert read_checkpoint(tmp_path) is not None  # A's last checkpoint is whole
    assert len(refused) == 1 and "is in use by another run" in refused[0] and "\n" not in refused[0]
    assert checkpoint_run.RunState(tmp_path, runs[0].fingerprint, "fedasync").load() is not None  # A let go


def test_the_parts_folder_is_durable_before_the_first_manifest_names_it(tmp_path: Path) -> None:
    """The first write creates ``parts/``: its entry in the state-dir is fsync'd before the manifest
    that names its files is renamed into place (else a power cut could keep the manifest and lose
    the folder, and the checkpoint would name missing parts)."""
    events: list[str] = []
    rename, sync_dir = os.replace, cpt.fsync_dir

    def renamed(src: Any, dst: Any) -> None:
        events.append(f"rename:{Path(dst).relative_to(tmp_path)}")
        rename(src, dst)

    def synced(path: Path) -> None:
        events.append(f"fsync:{Path(path).relative_to(tmp_path.parent)}")
        sync_dir(path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpt.os, "replace", renamed)
        mp.setattr(cpt, "fsync_dir", synced)
        write_checkpoint(tmp_path, _ck(0, {0: _model(0)}))
        first, events[:] = list(events), []
        write_checkpoint(tmp_path, _ck(1, {0: _model(0), 1: _model(1)}))  # one new part
    assert f"fsync:{tmp_path.name}" in first[: first.index(f"rename:{cpt.FILE_NAME}")], first
    for ev in (first, events):  # each write: new part renamed, parts/ fsync'd, then the manifest
        part = next(i for i, e in enumerate(ev) if e.startswith(f"rename:{PARTS_DIR}/"))
        synced_parts = ev.index(f"fsync:{tmp_path.name}/{PARTS_DIR}")
        assert part < synced_parts < ev.index(f"rename:{cpt.FILE_NAME}"), ev


def test_a_forked_child_does_not_keep_the_state_dir_locked(tmp_path: Path) -> None:
    """A simulation's worker processes are forks of the engine: had they kept their copy of the
    state-dir lock, a run restarted after the engine died would be refused while a worker lived."""
    fd = lock_state_dir(tmp_path)
    assert fd is not None
    r, w = os.pipe()  # the parent's word to the child: leave
    up_r, up_w = os.pipe()  # the child's: running (its after-fork hooks have run)
    pid = os.fork()
    if pid == 0:  # the child: wait (30 s at most) for the parent's word, then leave at once
        os.close(w)
        os.write(up_w, b"up")
        select.select([r], [], [], 30)
        os._exit(0)
    os.close(r)
    os.close(up_w)
    try:
        assert select.select([up_r], [], [], 30)[0] and os.read(up_r, 2) == b"up"
        unlock_state_dir(fd)
        again = lock_state_dir(tmp_path)  # the child is alive: refused if it held a copy
        assert again is not None
        unlock_state_dir(again)
    finally:
        os.close(w)
        os.close(up_r)
        os.waitpid(pid, 0)
