"""Input files are checked against the store's model before anything runs (one line, exit 2, the
store unchanged), ``edge predict`` prints a summary unless ``--all``, and the torch-free pieces
behind them (InputSpec, state_shapes, the own SGD) match their references."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from edge_helpers import TINY_CNN, store_bytes
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from stamen.cli import main
from stamen.cli_edge import prediction_summary
from stamen.edge import create_store
from stamen.edge.arch import build_model
from stamen.edge.archspec import parse_arch, state_shapes
from stamen.edge.inputs import InputSpec
from stamen.edge.sgd import SGD


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _linear_store(tmp_path: Path, keydir: Path) -> Path:
    """ONNX ``y = x @ W.T`` with W = [[1,0,0,0],[0,1,0,0],[0,0,1,1]]: no arch spec, input (n, 4)."""
    w = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [onnx.numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save_model(model, tmp_path / "lin.onnx")
    create_store(tmp_path / "lin", tmp_path / "lin.onnx", keydir / "public.pem")
    return tmp_path / "lin"


def test_predict_summary_by_hand(tmp_path: Path, keydir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _linear_store(tmp_path, keydir)
    # rows pick class 0, 2, 2, 1, 2, ...: feature 3 counts for class 2 through W[2, 3] = 1
    x = np.zeros((14, 4), np.float32)
    hot = [0, 3, 2, 1, 2, 3, 0, 1, 3, 3, 2, 0, 1, 3]
    x[np.arange(14), hot] = 1.0
    want = [min(h, 2) for h in hot]
    np.savez(tmp_path / "x.npz", x=x, y=np.array([0] * 14))
    code, out, _ = _cli(capsys, "edge", "predict", "--model", str(store), "--input", str(tmp_path / "x.npz"))
    assert code == 0 and json.loads(out) == {
        "version": 0,
        "count": 14,
        "first": want[:10],
        "class_counts": [3, 3, 8],
        "accuracy": 3 / 14,
    }
    code, out, _ = _cli(
        capsys, "edge", "predict", "--model", str(store), "--input", str(tmp_path / "x.npz"), "--all"
    )
    assert code == 0 and json.loads(out)["predictions"] == want


def test_prediction_summary_without_labels() -> None:
    pred = np.array([4, 4, 0])
    assert prediction_summary(7, pred, np.zeros(0), 5, first=2) == {
        "version": 7,
        "count": 3,
        "first": [4, 4],
        "class_counts": [1, 0, 0, 0, 2],
    }


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("command", ["predict", "personalize"])
def test_wrong_input_shape_is_one_line_exit_2(
    make_store: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    backend: str,
    command: str,
) -> None:
    store = make_store(backend)
    np.savez(tmp_path / "bad.npz", x=np.zeros((6, 5), np.float32), y=np.zeros(6, np.int64))
    files = store_bytes(store)
    flag = "--input" if command == "predict" else "--data"
    extra = [] if command == "predict" else ["--plan", "bias"]
    code, out, err = _cli(
        capsys, "edge", command, "--model", str(store), flag, str(tmp_path / "bad.npz"), *extra
    )
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == (
        f"stamen: error: {tmp_path / 'bad.npz'}: x has per-sample shape (5), "
        "the model takes (1x4x4) or 16 values flattened\n"
    )
    assert store_bytes(store) == files


def test_wrong_shape_on_a_store_without_arch(
    tmp_path: Path, keydir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No arch spec: the graph's own input (n, 4) is the reference."""
    store = _linear_store(tmp_path, keydir)
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 3, 3), np.float32))
    code, _, err = _cli(
        capsys, "edge", "predict", "--model", str(store), "--input", str(tmp_path / "bad.npz")
    )
    assert code == 2 and err.count("\n") == 1 and "per-sample shape (3x3), the model takes (4)" in err


def test_personalize_without_labels_is_one_line(
    make_store: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_store("torch")
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((6, 16), np.float32))
    code, _, err = _cli(
        capsys, "edge", "personalize", "--model", str(store), "--data", str(tmp_path / "nolabels.npz"),
        "--plan", "bias",
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "needs labels" in err


def test_input_spec_by_hand() -> None:
    cnn = InputSpec((1, 8, 8), flat_ok=True)
    for ok in [(2, 64), (2, 1, 8, 8), (1, 8, 8, 1)]:
        cnn.check(np.zeros(ok), "f")
    with pytest.raises(ValueError, match=r"^f: x has per-sample shape \(63\), the model takes \(1x8x8\)"):
        cnn.check(np.zeros((2, 63)), "f")
    free = InputSpec((None, 4))  # an ONNX input (n, seq, 4) with a symbolic seq
    free.check(np.zeros((1, 9, 4)), "f")
    with pytest.raises(ValueError, match=r"takes \(\?x4\)$"):
        free.check(np.zeros((1, 36)), "f")


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=3),
    st.lists(st.integers(1, 5), min_size=1, max_size=3),
    st.booleans(),
)
def test_input_spec_property(shape: list[int], other: list[int], flat_ok: bool) -> None:
    """Exact shapes always pass; with flat_ok, exactly the shapes with as many values pass."""
    spec = InputSpec(tuple(shape), flat_ok=flat_ok)
    spec.check(np.zeros((2, *shape)), "f")
    fits = tuple(other) == tuple(shape) or (flat_ok and np.prod(other) == np.prod(shape))
    if fits:
        spec.check(np.zeros((2, *other)), "f")
    else:
        with pytest.raises(ValueError):
            spec.check(np.zeros((2, *other)), "f")


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(1, 6), min_size=0, max_size=3),
    st.lists(st.integers(1, 6), min_size=0, max_size=2),
    st.integers(1, 5),
    st.booleans(),
)
def test_state_shapes_match_build_model(
    channels: list[int], hidden: list[int], classes: int, cnn: bool
) -> None:
    spec = {"name": "mlp", "input_shape": [7], "hidden": hidden, "classes": classes}
    if cnn and channels:
        spec = {
            "name": "cnn",
            "input_shape": [2, 5, 5],
            "channels": channels,
            "hidden": hidden,
            "classes": classes,
        }
    want = {k: tuple(v.shape) for k, v in build_model(spec).state_dict().items()}
    assert state_shapes(parse_arch(spec)) == want


def test_state_shapes_pinned() -> None:
    assert state_shapes(parse_arch(TINY_CNN)) == {
        "layers.0.weight": (3, 1, 3, 3),
        "layers.0.bias": (3,),
        "layers.1.weight": (4, 3, 3, 3),
        "layers.1.bias": (4,),
        "layers.2.weight": (5, 4),
        "layers.2.bias": (5,),
        "layers.3.weight": (3, 5),
        "layers.3.bias": (3,),
    }


def test_sgd_by_hand() -> None:
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = SGD([p], lr=0.5, momentum=0.5)
    for _ in range(2):  # gradient of sum(p) is 1: buffers 1 then 1.5
        opt.zero_grad()
        p.sum().backward()
        opt.step()
    assert p.tolist() == [1.0 - 0.5 - 0.75, 2.0 - 0.5 - 0.75]


@settings(max_examples=20, deadline=None)
@given(st.floats(1e-3, 1.0), st.sampled_from([0.0, 0.5, 0.9]), st.integers(1, 4), st.integers(0, 99))
def test_sgd_bit_identical_to_torch_optim(lr: float, momentum: float, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    grads = [[torch.randn(t.shape, generator=gen) for t in init] for _ in range(steps)]
    ours = [t.clone().requires_grad_() for t in init]
    ref = [t.clone().requires_grad_() for t in init]
    a, b = SGD(ours, lr=lr, momentum=momentum), torch.optim.SGD(ref, lr=lr, momentum=momentum)
    for g in grads:
        for p, q, gi in zip(ours, ref, g, strict=True):
            p.grad, q.grad = gi.clone(), gi.clone()
        a.step()
        b.step()
    assert all(torch.equal(p, q) for p, q in zip(ours, ref, strict=True))
