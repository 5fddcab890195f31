"""One federated LoRA round end to end: trainer -> ``lora`` codec envelope -> the driver's collector
-> exact."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from torch import nn

from stamen.client.core import encode_delta, local_update
from stamen.protocols import keys, model_hash
from stamen.server.aggregators import create
from stamen.server.driver.collect import CollectPolicy
from stamen.server.driver.offline import aggregate_replies
from stamen.server.driver.types import Reply
from stamen.task.data import TaskData
from stamen.task.models.lora import merge_adapters
from stamen.task.spec import TrainSpec
from stamen.task.weights import get_weights, set_weights


def merged_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    set_weights(model, weights)
    return {k: v.detach().double().numpy() for k, v in merge_adapters(model).state_dict().items()}


@pytest.mark.parametrize("rule", ["lora_exact", "lora_naive"])
def test_round_with_envelopes(
    tiny: Callable[..., nn.Module], make_data: Callable[[int, int], TaskData], rule: str
) -> None:
    model = tiny("lora", rank=2, alpha=4.0)
    base = get_weights(model)
    spec = TrainSpec(trainer="lora", epochs=1, batch_size=8, lr=2e-2, optimizer="adam")
    agg, replies = create(rule), []
    locals_, sizes = [], []
    for pid in range(3):
        data = make_data(16 + 8 * pid, pid)
        result = local_update(model, base, data, spec, seed=pid)
        locals_.append({k: base[k] + result.delta[k] for k in base})
        payload = encode_delta(
            result.delta, "lora", base_hash=model_hash(base), version=1, sender=f"c{pid}", seed=pid
        )
        replies.append(Reply(f"c{pid}", envelope=payload, metrics={keys.NUM_EXAMPLES: result.num_examples}))
        sizes.append(result.num_examples)
    new, stats = aggregate_replies(base, replies, agg, policy=CollectPolicy(max_norm=1e3))
    assert new is not None and stats.rejected == 0
    w = np.asarray(sizes, dtype=np.float64) / sum(sizes)
    target = {
        k: sum(wi * merged_weights(model, loc)[k] for wi, loc in zip(w, locals_, strict=True))
        for k in merged_weights(model, base)
    }
    got = merged_weights(model, new)
    layer = "bert.encoder.layer.1.attention.self.value.weight"
    err = np.max(np.abs(got[layer] - target[layer]))
    if rule == "lora_exact":
        assert err < 1e-5  # the exact weighted average of the client models
        for k in got:
            np.testing.assert_allclose(got[k], target[k], atol=1e-5)
    else:
        assert err > 1e-5  # naive factor averaging misses mean(B A) - mean(B) mean(A)
        assert agg.last_gap > 0  # type: ignore[attr-defined]
    head = sum(wi * loc["classifier.weight"] for wi, loc in zip(w, locals_, strict=True))
    np.testing.assert_allclose(new["classifier.weight"], head, rtol=0, atol=1e-6)
