"""Frozen weights held as file-backed views or as int8/fp16 (stamen.edge.device_model,
stamen.edge.frozen_layers): hand-computed quantization, gradients against stock autograd, the
same outputs and training memory as a normally loaded model, and anonymous memory measured in a
fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file
from torch import nn

from stamen.edge.device_model import SafetensorsFile, device_model
from stamen.edge.frozen_layers import FrozenEmbedding, FrozenLinear, dequantize, quantize_rows
from stamen.edge.modplans import resolve_module_plan
from stamen.edge.personalization import PersonalizeConfig, train_plan
from stamen.edge.plans import parse_plan
from stamen.task.models.minilm import TINY, TextClassifier


def test_int8_rows_by_hand() -> None:
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [0.3, 0.2, -0.1]])
    q, scale = quantize_rows(w, "int8")
    assert scale is not None
    torch.testing.assert_close(scale, torch.tensor([2 / 127, 1.0, 0.3 / 127]))
    # 1 / (2/127) = 63.5 rounds half to even -> 64; 0.5 / (2/127) = 31.75 -> 32
    assert q.tolist() == [[64, -127, 32], [0, 0, 0], [127, 85, -42]]
    assert q.dtype == torch.int8 and dequantize(q, scale)[1].tolist() == [0.0, 0.0, 0.0]
    half, none = quantize_rows(w, "fp16")
    assert half.dtype == torch.float16 and none is None
    with pytest.raises(ValueError, match="int4"):
        quantize_rows(w, "int4")


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_int8_error_bound(rows: int, cols: int, seed: int) -> None:
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 3
    q, scale = quantize_rows(w, "int8")
    assert scale is not None
    err = (w - dequantize(q, scale)).abs()
    assert bool((err <= scale[:, None] / 2 * (1 + 1e-5)).all())


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 40), st.integers(1, 9), st.integers(1, 400), st.sampled_from(["int8", "fp16", "fp32"]))
def test_blockwise_quantization_equals_whole(rows: int, cols: int, block: int, kind: str) -> None:
    """Quantizing row blocks read on demand gives exactly the whole-tensor result."""
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows * cols))
    q, s = quantize_rows(w, kind, block_bytes=1 << 30)
    q2, s2 = quantize_rows(lambda a, b: w[a:b].clone(), kind, (rows, cols), block_bytes=block)
    assert torch.equal(q, q2) and (s is None) == (s2 is None) and (s is None or torch.equal(s, s2))


def test_embedding_row_subset_by_hand() -> None:
    table = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    q, s = quantize_rows(table[[1, 4]], "fp32")
    emb = FrozenEmbedding(q, s, torch.tensor([1, 4]), num_embeddings=6)
    assert emb(torch.tensor([[4, 1], [1, 1]])).tolist() == [[[8.0, 9.0], [2.0, 3.0]], [[2.0, 3.0]] * 2]
    with pytest.raises(ValueError, match="outside the rows kept"):
        emb(torch.tensor([0]))
    with pytest.raises(ValueError, match="only some rows"):
        _ = emb.weight
    assert emb.weight_bytes() == 4 * 4 + 4 * 6  # two float32 rows + the int32 index


@pytest.mark.parametrize("kind", ["int8", "fp16"])
def test_frozen_linear_matches_stock_autograd(kind: str) -> None:
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(5, 7, generator=gen), nn.Parameter(torch.randn(5, generator=gen))
    layer = FrozenLinear.from_weight(w, b, kind)
    x = torch.randn(3, 4, 7, generator=gen, requires_grad=True)
    layer(x).pow(2).sum().backward()
    gx, gb = x.grad, b.grad
    x2, b2 = x.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    F.linear(x2, dequantize(layer.qweight, layer.scale), b2).pow(2).sum().backward()
    torch.testing.assert_close(gx, x2.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gb, b2.grad, rtol=1e-6, atol=1e-6)
    assert layer.weight_bytes() == (35 + 20 if kind == "int8" else 70)


def _tiny_file(tmp_path: Path) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = TextClassifier(TINY, 3).eval()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.numpy() for k, v in model.state_dict().items()}, str(path))
    return path, model


def _ids(n: int = 6) -> torch.Tensor:
    return torch.randint(1, 2000, (n, 12), generator=torch.Generator().manual_seed(1))


def _build(path: Path, trained: set[str], frozen: str) -> nn.Module:
    return device_model(lambda: TextClassifier(TINY, 3), [SafetensorsFile(path)], trained, frozen)


@pytest.mark.parametrize("frozen", ["copy", "mmap", "fp16", "int8"])
def test_device_model_outputs(tmp_path: Path, frozen: str) -> None:
    path, ref = _tiny_file(tmp_path)
    head = {"classifier.weight", "classifier.bias"}
    model = _build(path, head, frozen)
    with torch.no_grad():
        err = float((model(_ids()) - ref(_ids())).abs().max())
    assert err == 0.0 if frozen in ("copy", "mmap") else err < {"fp16": 1e-3, "int8": 5e-2}[frozen]
    params = dict(model.named_parameters())
    assert {n for n, p in params.items() if p.requires_grad} == head
    assert isinstance(model.classifier, nn.Linear)  # trained linears stay float32 nn.Linear
    quantized = isinstance(model.bert.encoder.layer[0].intermediate.dense, FrozenLinear)
    assert quantized == (frozen in ("fp16", "int8"))


def test_embedding_rows_keep_outputs_exact(tmp_path: Path) -> None:
    path, ref = _tiny_file(tmp_path)
    ids = _ids()
    rows = {"bert.embeddings.word_embeddings.weight": ids.unique().numpy()}
    source = [SafetensorsFile(path)]
    model = device_model(lambda: TextClassifier(TINY, 3), source, {"classifier.bias"}, "mmap", rows)
    word = model.bert.embeddings.word_embeddings
    assert isinstance(word, FrozenEmbedding) and word.qweight.shape[0] == len(rows[next(iter(rows))])
    with torch.no_grad():
        assert torch.equal(model(ids), ref(ids))
    f = source[0]
    name = "bert.embeddings.word_embeddings.weight"
    np.testing.assert_array_equal(f.read(name, (3, 7)), f.view(name)[3:7])
    np.testing.assert_array_equal(f.read_rows(name, np.array([9, 2, 9])), f.view(name)[[9, 2, 9]])


def test_mmap_views_share_the_file_and_trained_are_private(tmp_path: Path) -> None:
    path, _ = _tiny_file(tmp_path)
    source = SafetensorsFile(path)
    model = device_model(lambda: TextClassifier(TINY, 3), [source], {"classifier.weight"}, "mmap")
    assert source._map is not None
    lo, size = source._map.ctypes.data, source._map.size

    def in_file(t: torch.Tensor) -> bool:
        return lo <= t.untyped_storage().data_ptr() < lo + size

    params = dict(model.named_parameters())
    assert in_file(params["bert.embeddings.word_embeddings.weight"]) and not in_file(
        params["classifier.weight"]
    )


def test_safetensors_file_matches_the_library(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(3, 5)).astype(np.float32), "b.c": np.arange(7, dtype=np.float32)}
    save_file({**arrays, "ids": np.arange(4)}, str(tmp_path / "f.safetensors"))
    f = SafetensorsFile(tmp_path / "f.safetensors", prefix="m.")
    assert sorted(f.entries) == ["m.a", "m.b.c"]  # int64 "ids" is not offered
    for k, v in arrays.items():
        np.testing.assert_array_equal(f.view(f"m.{k}"), v)
        np.testing.assert_array_equal(f.read(f"m.{k}"), v)
    with pytest.raises(ValueError, match="no float32 tensor 'bert"):
        device_model(lambda: TextClassifier(TINY, 3), [f], set(), "mmap")


@pytest.mark.parametrize("plan", ["last_k=1", "bias"])
def test_int8_training_keeps_nothing_more(tmp_path: Path, plan: str) -> None:
    """Same plan, same data: FrozenLinear saves no more than a float32 frozen nn.Linear, the
    trained tensors move, and int8 training stays close to the float32 one."""
    path, _ = _tiny_file(tmp_path)
    x, y = _ids(16).numpy(), np.arange(16) % 3
    cfg = PersonalizeConfig(epochs=2, batch_size=8, lr=0.1)
    out = {}
    for frozen in ("copy", "int8"):
        ref = _build(path, set(), "copy")
        resolved = resolve_module_plan(parse_plan(plan), ref)
        trained = set(resolved.params)
        model = _build(path, trained, frozen)
        stats, losses = train_plan(model, x, y, resolved, cfg)
        out[frozen] = (stats.total_bytes, losses)
    assert out["int8"][0] == out["copy"][0]
    assert abs(out["int8"][1][-1] - out["copy"][1][-1]) < 0.05 * abs(out["copy"][1][-1]) + 1e-3


ANON_PROBE = """
import json, re, sys
from pathlib import Path
import torch
from torch import nn
from stamen.edge.device_model import SafetensorsFile, device_model
def anon():
    return 1024 * int(re.search(r"RssAnon:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
src = SafetensorsFile(Path(sys.argv[1]))
with torch.no_grad():  # torch's lazy first-op set-up belongs to the runtime, not to the weights
    nn.Sequential(nn.Embedding(4, 1024), nn.Linear(1024, 4))(torch.arange(4))
before = anon()
net = lambda: nn.Sequential(nn.Embedding(8192, 1024), nn.Linear(1024, 4))
m = device_model(net, [src], {"1.bias"}, sys.argv[2])
with torch.no_grad():
    m(torch.arange(0, 8192, 64))  # touches 128 of the 8192 embedding rows
print(json.dumps({"anon": anon() - before}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc")
def test_frozen_mmap_weights_cost_no_anonymous_memory(tmp_path: Path) -> None:
    """A 32 MiB frozen embedding: ``copy`` adds >= 32 MiB of RssAnon, ``mmap`` under 4 MiB."""
    weights = {"0.weight": np.ones((8192, 1024), np.float32), "1.weight": np.ones((4, 1024), np.float32)}
    save_file({**weights, "1.bias": np.zeros(4, np.float32)}, str(tmp_path / "w.safetensors"))
    got = {}
    for mode in ("copy", "mmap"):
        proc = subprocess.run(
            [sys.executable, "-c", ANON_PROBE, str(tmp_path / "w.safetensors"), mode],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        got[mode] = json.loads(proc.stdout)["anon"]
    assert got["copy"] >= 32 << 20 and got["mmap"] < 4 << 20, got
