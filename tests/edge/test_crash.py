"""Crash safety: SIGKILL an applying process at random points, many times; afterwards the store
always opens, verifies its hash, and holds exactly the old or the new version."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stamen.edge import EdgeRuntime, create_delta, create_store
from stamen.edge.manifest import load_manifest
from stamen.edge.store import version_dir
from stamen.protocols import Signer, decode_update, model_hash

CHILD = Path(__file__).with_name("crash_child.py")
KILLS = 24  # the loop is bounded by this count (and each child by pytest's timeout), not by seconds


def _mlp_onnx(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A 1M-parameter MLP (4 MB of weights) built directly with onnx.helper (no torch)."""
    w = {
        "fc1.weight": rng.normal(0, 0.02, (1024, 960)).astype(np.float32),
        "fc1.bias": np.zeros(1024, np.float32),
        "fc2.weight": rng.normal(0, 0.02, (10, 1024)).astype(np.float32),
        "fc2.bias": np.zeros(10, np.float32),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 960])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return w


def _updates(base: dict[str, np.ndarray], signer: Signer, out: Path, n: int) -> dict[int, str]:
    """A chain of n signed updates (alternating codecs); returns the expected hash per version."""
    rng = np.random.default_rng(1)
    expected = {0: model_hash(base)}
    cur = dict(sorted(base.items()))
    codecs = ["dense", "int8", "topk(ratio=0.05)", "lowrank(rank=4)"]
    for v in range(1, n + 1):
        target = {k: a + rng.normal(0, 0.01, a.shape).astype(np.float32) for k, a in cur.items()}
        data = create_delta(cur, target, codecs[v % 4], signer, version=v, seed=v)
        (out / f"{v:06d}.stamen").write_bytes(data)
        _, delta = decode_update(data)
        cur = {k: cur[k] + delta[k] for k in cur}
        expected[v] = model_hash(cur)
    return expected


def _run_child(store: Path, updates: Path, delay: float | None) -> tuple[bool, float]:
    """Start a child, let it apply after "go"; SIGKILL it after ``delay`` s (None: let it finish)."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(store), str(updates)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        start = time.perf_counter()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        if delay is None:
            assert proc.stdout.readline().strip() == "done"
            return True, time.perf_counter() - start
        time.sleep(delay)
        proc.kill()
        return False, delay
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _garbage(store: Path, history: list[int]) -> bool:
    names = {version_dir(store, v).name for v in history}
    return any(p.name not in names for p in (store / "versions").iterdir()) or any(
        ".tmp-" in p.name for p in store.iterdir()
    )


@pytest.mark.slow
def test_sigkill_during_apply_leaves_old_or_new_version(tmp_path: Path, keydir: Path, signer: Signer) -> None:
    rng = np.random.default_rng(0)
    base = _mlp_onnx(tmp_path / "mlp.onnx", rng)
    updates = tmp_path / "updates"
    updates.mkdir()
    expected = _updates(base, signer, updates, KILLS + 5)
    store = tmp_path / "store"
    create_store(store, tmp_path / "mlp.onnx", keydir / "public.pem")
    durations = [_run_child(store, updates, None)[1] for _ in range(3)]  # uninterrupted applies
    window = 1.5 * statistics.median(durations)
    kills, mid_apply, outcomes = 0, 0, {"old": 0, "new": 0}
    while kills < KILLS:
        before = EdgeRuntime.open(store).version()
        _run_child(store, updates, float(rng.uniform(0, window)))
        kills += 1
        mid_apply += _garbage(store, [h.version for h in load_manifest(store).history])
        rt = EdgeRuntime.open(store)  # cleans up, then verifies the current weights' hash
        after = rt.version()
        assert after.version in (before.version, before.version + 1)
        assert after.hash == expected[after.version]
        outcomes["old" if after.version == before.version else "new"] += 1
        assert {p.name for p in (store / "versions").iterdir()} == {
            version_dir(store, h["version"]).name for h in rt.status()["history"]
        }
    print(
        f"\ncrash safety: {kills} SIGKILLs in a {1000 * window:.0f} ms window, {mid_apply} left partial "
        f"files, outcomes {outcomes}, all consistent"
    )
    assert outcomes["old"] > 0 and outcomes["new"] > 0
