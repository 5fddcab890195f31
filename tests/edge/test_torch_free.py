"""The ONNX device path needs no torch: each edge command runs in a fresh interpreter and reports
which heavy modules it loaded; and (slow) a real virtual environment with only the ``edge``
extra's packages from PyPI plus ``stamen --no-deps`` runs init, apply, predict, status, rollback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import tomllib
from edge_helpers import perturbed

from stamen.edge import EdgeRuntime, create_delta, create_store
from stamen.edge.onnx_backend import read_onnx_source
from stamen.protocols import Signer

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "onnx", "onnxruntime", "flwr", "sklearn", "scipy")
PROBE = (
    "import json, sys\n"
    "from stamen.cli import main\n"
    "rc = main(sys.argv[2:])\n"
    f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
    "open(sys.argv[1], 'w').write(json.dumps({'rc': rc, 'loaded': loaded}))\n"
)


@pytest.fixture
def device_files(
    tmp_path: Path, model_files: dict[str, Path], keydir: Path, signer: Signer
) -> dict[str, Path]:
    """An update from version 0 of the tiny CNN, a good and a wrongly shaped input file."""
    base, _, _ = read_onnx_source(model_files["onnx"])
    (tmp_path / "u1.stamen").write_bytes(create_delta(base, perturbed(base, 1), "int8", signer, version=1))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", x=rng.normal(size=(6, 16)).astype(np.float32), y=rng.integers(0, 3, 6))
    np.savez(tmp_path / "bad.npz", x=np.zeros((6, 5), np.float32))
    return {"update": tmp_path / "u1.stamen", "x": tmp_path / "x.npz", "bad": tmp_path / "bad.npz"}


def _probe(tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / "probe.json"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.is_file(), proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_onnx_commands_leave_torch_out(
    tmp_path: Path, model_files: dict[str, Path], keydir: Path, device_files: dict[str, Path]
) -> None:
    dev = str(tmp_path / "device")
    init = _probe(tmp_path, "edge", "init", "--onnx", str(model_files["onnx"]), "--model", dev, "--trust",
                  str(keydir / "public.pem"))  # fmt: skip
    assert init["rc"] == 0 and "torch" not in init["loaded"]  # parsing an .onnx file needs onnx
    runs = {
        "status": ["edge", "status", "--model", dev],
        "apply": ["edge", "apply", "--model", dev, str(device_files["update"])],
        "predict": ["edge", "predict", "--model", dev, "--input", str(device_files["x"])],
        "rollback": ["edge", "rollback", "--model", dev],
        "bad input": ["edge", "predict", "--model", dev, "--input", str(device_files["bad"])],
        "no store": ["edge", "status", "--model", str(tmp_path / "nothing")],
    }
    got = {name: _probe(tmp_path, *argv) for name, argv in runs.items()}
    assert got == {
        "status": {"rc": 0, "loaded": []},  # no session is built: not even onnxruntime
        "apply": {"rc": 0, "loaded": ["onnxruntime"]},  # the new version's session, before commit
        "predict": {"rc": 0, "loaded": ["onnxruntime"]},
        "rollback": {"rc": 0, "loaded": ["onnxruntime"]},
        "bad input": {"rc": 2, "loaded": []},  # refused from the store's arch before any session
        "no store": {"rc": 2, "loaded": []},
    }


def _edge_requirements() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["edge"]


def _run(cmd: list[str], timeout: int = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, (cmd, proc.stderr[-3000:])
    return proc


@pytest.mark.slow
def test_venv_without_torch_serves_an_onnx_store(
    tmp_path: Path, model_files: dict[str, Path], keydir: Path, device_files: dict[str, Path]
) -> None:
    """pip install of the extra needs PyPI; skipped when the index cannot be reached."""
    env_dir, wheels = tmp_path / "venv", tmp_path / "wheels"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    pip = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *_edge_requirements()],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if pip.returncode != 0:
        pytest.skip(f"cannot install the edge extra from the package index: {pip.stderr[-300:]}")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ]
    )
    _run([py, "-m", "pip", "install", "-q", "--no-deps", str(next(wheels.glob("stamen-*.whl")))])
    assert subprocess.run([py, "-c", "import torch"], capture_output=True, check=False).returncode != 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def cli(*argv: str) -> dict:
        return json.loads(_run([py, "-m", "stamen.cli", "edge", *argv], env=env, cwd="/").stdout)

    dev = str(tmp_path / "device")
    cli("init", "--onnx", str(model_files["onnx"]), "--model", dev, "--trust", str(keydir / "public.pem"))
    applied = cli("apply", "--model", dev, str(device_files["update"]))
    pred = cli("predict", "--model", dev, "--input", str(device_files["x"]), "--all")
    status = cli("status", "--model", dev)
    assert cli("rollback", "--model", dev)["version"] == 0
    # the same store built and updated here (with torch installed) gives the same answers
    ref = tmp_path / "ref"
    create_store(ref, model_files["onnx"], keydir / "public.pem")
    rt = EdgeRuntime.open(ref)
    rt.apply(device_files["update"].read_bytes())
    x = np.load(device_files["x"])["x"]
    assert applied["version"] == status["version"] == 1 and applied["hash"] == rt.version().hash
    assert pred["predictions"] == rt.predict(x).argmax(1).tolist() and pred["count"] == len(x)
