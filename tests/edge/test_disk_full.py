"""A full disk (ENOSPC) during an apply: the error names the file being written, the store stays
at the old version (or, for a fault after the commit rename, consistently at the new one), and the
next apply works. Faults are injected into ``os.pwrite`` / ``os.write`` / ``os.fsync`` for file
descriptors inside the store only, and, as root, produced for real by a tiny tmpfs in a private
mount namespace (``enospc_child.py``)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_helpers import perturbed, store_bytes

from stamen.cli import main
from stamen.edge import EdgeRuntime, create_delta
from stamen.protocols import Signer

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
CHILD = Path(__file__).with_name("enospc_child.py")


def _inject(monkeypatch: pytest.MonkeyPatch, store: Path, name: str, nth: int) -> list[int]:
    """Make the ``nth`` call of ``os.<name>`` on a file in ``store`` fail with ENOSPC (0: never);
    returns the live call counter."""
    real, calls, root = getattr(os, name), [0], str(store.resolve())

    def fake(fd: int, *args: Any) -> Any:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(root):
            calls[0] += 1
            if calls[0] == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, *args)

    monkeypatch.setattr(os, name, fake)
    return calls


def _update(rt: EdgeRuntime, signer: Signer, version: int) -> bytes:
    cur = {k: np.array(v) for k, v in rt.global_weights().items()}
    return create_delta(cur, perturbed(cur, version), "dense", signer, version=version)


@pytest.mark.parametrize(("backend", "call"), [("onnx", "pwrite"), ("torch", "write")])
def test_write_enospc_names_file_and_keeps_old_version(
    make_store: Callable[[str], Path],
    signer: Signer,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    call: str,
) -> None:
    rt = EdgeRuntime.open(make_store(backend))
    files, update = store_bytes(rt.store), _update(rt, signer, 1)
    with monkeypatch.context() as m:
        calls = _inject(m, rt.store, call, nth=1)
        with pytest.raises(OSError, match="No space left on device") as info:
            rt.apply(update)
    assert calls[0] == 1 and info.value.errno == errno.ENOSPC
    name = "weights.data" if backend == "onnx" else "weights.safetensors"
    assert info.value.filename is not None and info.value.filename.endswith(f".shadow-apply/{name}")
    assert store_bytes(rt.store) == files and rt.version().version == 0
    assert EdgeRuntime.open(rt.store).version().version == 0
    assert rt.apply(update).version == 1  # the disk has room again: the same update goes through


def test_every_fsync_fault_leaves_a_consistent_store(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = EdgeRuntime.open(make_store("onnx"))
    with monkeypatch.context() as m:
        counter = _inject(m, rt.store, "fsync", nth=0)
        rt.apply(_update(rt, signer, 1))
    total = counter[0]
    assert total >= 4  # weights, graph, version dir, manifest, store dir
    for nth in range(1, total + 1):
        rt = EdgeRuntime.open(rt.store)
        before, update = rt.version().version, _update(rt, signer, rt.version().version + 1)
        with monkeypatch.context() as m:
            _inject(m, rt.store, "fsync", nth=nth)
            with pytest.raises(OSError) as info:
                rt.apply(update)
        assert info.value.filename is not None and str(rt.store) in info.value.filename, nth
        now = EdgeRuntime.open(rt.store).version().version  # opens and verifies its hash
        assert now == before or (now == before + 1 and nth == total), (nth, now)
        rt = EdgeRuntime.open(rt.store)
        assert rt.apply(_update(rt, signer, now + 1)).version == now + 1


def test_cli_disk_full_is_one_line_naming_the_file(
    make_store: Callable[[str], Path],
    signer: Signer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = make_store("onnx")
    (tmp_path / "u.stamen").write_bytes(_update(EdgeRuntime.open(store), signer, 1))
    files = store_bytes(store)
    with monkeypatch.context() as m:
        _inject(m, store, "pwrite", nth=1)
        code = main(["edge", "apply", "--model", str(store), str(tmp_path / "u.stamen")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "None" not in err
    assert err.startswith("stamen: error: No space left on device: ") and "weights.data" in err
    assert store_bytes(store) == files


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_real_full_tmpfs(tmp_path: Path, model_files: dict[str, Path], keydir: Path) -> None:
    """A 256 kB tmpfs filled up: the apply fails naming the file, the store keeps version 0, and
    after space is freed the same update applies."""
    cmd = ["unshare", "-m", "--propagation", "private", sys.executable, str(CHILD)]
    args = [str(tmp_path / "mnt"), str(model_files["onnx"]), str(keydir)]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip() or "mounting a tmpfs is not permitted here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["errno"] == errno.ENOSPC and "/.shadow-apply/" in out["filename"]
    assert out["version_after_failure"] == 0 and out["files_unchanged"]
    assert out["version_after_retry"] == 1
