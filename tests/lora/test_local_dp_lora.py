"""Local DP composes with LoRA / Fed-SB / sparse: only the trained tensors are clipped and noised.

Before, the local mode noised every tensor, so a LoRA update became a dense update of the whole
frozen model (and the noise wrecked the pretrained weights). These tests pin that the privatized
update is non-zero exactly on ``TrainResult.trained``, that the lora codec sends as many bytes as
without DP, that the noise std is ``z·C``, and that the Flower mods carry the set from the handler.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch import nn

from stamen.client.core import encode_delta, local_privacy, local_update
from stamen.client.mods import DELTA, TRAINED, make_codec_mod, make_local_dp_mod, trained_record
from stamen.client.node import Node
from stamen.client.state import ClientState
from stamen.protocols import keys
from stamen.task.data import ArraySource, TaskData
from stamen.task.settings import SparseConfig
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec
from stamen.task.weights import get_weights

SPEC = dict(epochs=2, batch_size=8, lr=5e-3, optimizer="adam")


def nonzero(delta: dict[str, np.ndarray]) -> set[str]:
    return {k for k, v in delta.items() if np.any(v != 0)}


def _envelope(delta: dict[str, np.ndarray]) -> bytes:
    return encode_delta(delta, "lora", base_hash="0" * 64, version=1, sender="c", seed=0)


@pytest.mark.parametrize(
    ("kind", "trainer", "markers"),
    [("lora", "lora", (".lora_A.", ".lora_B.")), ("fedsb", "fedsb", (".lora_R.",))],
)
def test_adapter_update_under_local_dp_stays_adapter_only(
    tiny: Callable[..., nn.Module], data: TaskData, kind: str, trainer: str, markers: tuple[str, ...]
) -> None:
    model = tiny(kind, rank=2, alpha=4.0)
    spec = TrainSpec(trainer=trainer, local_dp=True, dp_noise_multiplier=1.0, dp_clip=1e-6, **SPEC)
    result = local_update(model, get_weights(model), data, spec, seed=5)
    expected = {k for k in result.delta if any(m in k for m in markers) or k.startswith("classifier.")}
    assert set(result.trained or ()) == expected
    noised, metrics = local_privacy(result.delta, spec, 5, ClientState(), result.trained)
    assert nonzero(dict(noised)) == expected
    assert len(_envelope(dict(noised))) == len(_envelope(result.delta))  # same sparse wire format
    everything, _ = local_privacy(result.delta, spec, 5, ClientState())  # the old behaviour
    assert len(_envelope(dict(noised))) * 20 < len(_envelope(dict(everything)))
    # C = 1e-6: the clipped signal is negligible, what is left is N(0, (z·C)²) on ~600 entries
    values = np.concatenate([np.asarray(noised[k]).ravel() for k in sorted(expected)])
    assert np.std(values) == pytest.approx(1.0 * 1e-6, rel=0.15)
    assert metrics["epsilon"] > 0


def test_sparse_update_under_local_dp_leaves_the_embeddings_alone(
    tiny: Callable[..., nn.Module], data: TaskData
) -> None:
    model = tiny()
    spec = TrainSpec(trainer="sparse", local_dp=True, sparse=SparseConfig(density=0.05, warmup=1), **SPEC)
    result = local_update(model, get_weights(model), data, spec, seed=6)
    assert result.trained is not None and not any("embeddings" in k for k in result.trained)
    noised, _ = local_privacy(result.delta, spec, 6, ClientState(), result.trained)
    assert nonzero(dict(noised)) == set(result.trained)


def _train_message(spec: TrainSpec) -> Message:
    instr = RoundInstructions(1, 1, 3, "lora", False, TaskSpec(), spec)
    cfg = ConfigRecord(instr.to_config())
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    return Message(RecordDict({keys.CONFIG: cfg, keys.ARRAYS: arrays}), dst_node_id=1, message_type="train")


def test_flower_mods_use_and_drop_the_trained_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler's ``trained`` record reaches the DP mod, and never leaves the client."""
    from flwr.supercore.task_identity import TaskIdentity  # a ServerApp process would set these

    for attr in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    spec = TrainSpec(local_dp=True, dp_noise_multiplier=2.0, dp_clip=1.0)
    delta = {"frozen": np.zeros(1000, np.float32), "adapter": np.ones(10, np.float32)}
    msg = _train_message(spec)
    ctx = Context(run_id=0, node_id=1, node_config={}, state=RecordDict(), run_config={})
    node = Node(
        ArraySource(TaskData(np.zeros((1, 2), np.float32), np.zeros(1, np.int64), 2, 2)), "client-0", 0
    )
    codec_mod, local_dp_mod = make_codec_mod(lambda c: node), make_local_dp_mod(lambda c: node)

    def handler(m: Message, c: Context) -> Message:
        del c
        content = RecordDict(
            {
                DELTA: ArrayRecord({k: Array(v) for k, v in delta.items()}),
                keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 1}),
                keys.BASE: ConfigRecord({"hash": "0" * 64}),
                **trained_record(("adapter",)),
            }
        )
        return Message(content, reply_to=m)

    inner = local_dp_mod(msg, ctx, handler)
    got = {k: a.numpy() for k, a in inner.content.array_records[DELTA].items()}
    assert nonzero(got) == {"adapter"} and TRAINED in inner.content.config_records
    out = codec_mod(msg, ctx, lambda m, c: local_dp_mod(m, c, handler))
    assert TRAINED not in out.content.config_records and DELTA not in out.content.array_records
    assert keys.UPDATE in out.content.array_records and keys.BASE not in out.content.config_records


def test_fedsb_noise_enters_delta_w_linearly_and_unamplified(tiny: Callable[..., nn.Module]) -> None:
    """Why Fed-SB suits DP: noise N on R moves ΔW by exactly (α/r)·B N A, whose Frobenius norm is
    (α/r)·||N|| (A's rows and B's columns are orthonormal from the SVD init). Noise on both LoRA
    factors adds the product term N_B N_A: the change is not linear in the noise."""
    from stamen.task.models.lora import LoRALinear, adapter_layers

    gen = np.random.default_rng(0)
    sb = next(iter(adapter_layers(tiny("fedsb", rank=4, alpha=4.0)).values()))
    lo = next(iter(adapter_layers(tiny("lora", rank=4, alpha=4.0)).values()))
    with torch.no_grad():
        lo.lora_B.weight.normal_()  # a trained B (B = 0 at init)

    def moved(
        layer: LoRALinear, params: list[torch.Tensor], scale: float
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        noises = [torch.tensor(gen.standard_normal(p.shape), dtype=torch.float32) for p in params]
        with torch.no_grad():
            before = layer.delta_weight().clone()
            for p, n in zip(params, noises, strict=True):
                p.add_(scale * n)
            after = layer.delta_weight().clone()
            for p, n in zip(params, noises, strict=True):
                p.sub_(scale * n)
        return after - before, noises

    with torch.no_grad():
        sb.lora_R.weight.requires_grad_(False)
        lo.lora_A.weight.requires_grad_(False)
        lo.lora_B.weight.requires_grad_(False)
    change, (noise,) = moved(sb, [sb.lora_R.weight], 1.0)
    expect = sb.lora_scale * (sb.lora_B.weight @ noise @ sb.lora_A.weight)
    torch.testing.assert_close(change, expect, rtol=1e-4, atol=1e-6)
    assert float(change.norm()) == pytest.approx(float(sb.lora_scale) * float(noise.norm()), rel=1e-4)
    change, (n_a, n_b) = moved(lo, [lo.lora_A.weight, lo.lora_B.weight], 1.0)
    linear = lo.lora_scale * (n_b @ lo.lora_A.weight + lo.lora_B.weight @ n_a)
    product = lo.lora_scale * (n_b @ n_a)
    torch.testing.assert_close(change, linear + product, rtol=1e-4, atol=1e-5)
    assert float(product.norm()) > 0.1 * float(linear.norm())  # the amplification is not negligible
