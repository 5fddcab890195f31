"""Bristle's transfer model (frozen mnist1d-letters extractor + zero-initialised head) and the
``bristle`` trainer (output-layer update restricted to the client's own classes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stamen.client.core import local_update
from stamen.simulations.provider import DataSpec, client_data, task_for
from stamen.task.models import build_model, create_model
from stamen.task.models.bristle_transfer import (
    FEATURES,
    extract_features,
    letter_templates,
    pretrain,
    pretrained_extractor,
)
from stamen.task.spec import TrainSpec
from stamen.task.weights import get_weights

DATA = DataSpec(
    dataset="mnist1d", num_samples=1000, partition="shards", shards_per_client=2, num_clients=10, seed=0
)
TASK = task_for(DATA, model="bristle_transfer")
SPEC = TrainSpec(trainer="bristle", epochs=1, batch_size=5, lr=1e-3, optimizer="adam", weight_decay=5e-3)


def test_letter_templates_are_new_shapes() -> None:
    from mnist1d.data import get_templates

    t = letter_templates()
    assert t["x"].shape == (26, 12) and t["y"].tolist() == list(range(26))
    digits = get_templates()["x"]
    corr = np.corrcoef(np.vstack([digits, t["x"]]))[:10, 10:]
    assert np.abs(corr).max() < 0.9
    np.testing.assert_array_equal(letter_templates()["x"], t["x"])
    np.testing.assert_allclose(t["x"][:, 0], 0.0)


def test_model_exchanges_only_the_zero_initialised_head() -> None:
    model = create_model("bristle_transfer", 40, 10, (), seed=3)
    state = model.state_dict()
    assert list(state) == ["head.weight"] and tuple(state["head.weight"].shape) == (10, FEATURES)
    assert not state["head.weight"].any()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight"]
    x = np.random.default_rng(0).normal(size=(7, 40)).astype(np.float32)
    feats = extract_features(x)
    assert feats.shape == (7, FEATURES) and feats.dtype == np.float32
    np.testing.assert_array_equal(model.features(torch.from_numpy(x)).numpy(), feats)
    assert all(not p.requires_grad for p in pretrained_extractor().parameters())
    with pytest.raises(ValueError, match="mnist1d"):
        create_model("bristle_transfer", 64, 10, (), seed=0)


def test_extractor_pinned_features() -> None:
    # After 15 epochs of Adam the features depend on the CPU's float kernels (64.96 where this was
    # pinned, 64.42 on another machine of the same kind, 63.18 with ATen's default kernels): pinned
    # within 5 %, which still tells the pre-trained extractor from an untrained one (35.4).
    x = np.linspace(-2, 2, 40, dtype=np.float32)[None]
    assert float(extract_features(x).sum()) == pytest.approx(PINNED, rel=0.05)


PINNED = 64.95679473876953


def test_trainer_sends_only_rows_of_own_classes() -> None:
    model = build_model(TASK)
    data = client_data(DATA, 0)
    res = local_update(model, get_weights(model), data, SPEC, seed=1)
    d = res.delta["head.weight"]
    present = set(np.unique(data.y).tolist())
    assert present and len(present) < 10
    for c in range(10):
        assert bool(np.any(d[c])) == (c in present)
    np.testing.assert_array_equal(d[sorted(present)], get_weights(model)["head.weight"][sorted(present)])


@pytest.mark.slow
def test_pretraining_is_deterministic_and_transfers() -> None:
    a, acc = pretrain()
    b, _ = pretrain()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
        assert torch.equal(v, pretrained_extractor().state_dict()[k])  # what the cache holds
    assert acc > 0.6  # letters test accuracy (measured 0.76)


def test_validation_slice_per_class_and_node() -> None:
    from stamen.simulations.bristle_data import validation_slice

    feats, labels = validation_slice(0)
    assert feats.shape == (100, FEATURES) and np.bincount(labels).tolist() == [10] * 10
    f2, l2 = validation_slice(0, classes=(3, 5), per_class=4, node=2)
    assert f2.shape == (8, FEATURES) and sorted(l2.tolist()) == [3] * 4 + [5] * 4
    again, _ = validation_slice(0, classes=(3, 5), per_class=4, node=2)
    other, _ = validation_slice(0, classes=(3, 5), per_class=4, node=3)
    np.testing.assert_array_equal(f2, again)
    assert not np.array_equal(f2, other)
    with pytest.raises(ValueError, match="per_class"):
        validation_slice(0, per_class=0)
