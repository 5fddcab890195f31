"""Low-rank adapters on ``nn.Linear`` layers: LoRA and LoRA-SB (Fed-SB), as part of the model.

LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, eq. 3):
``h = W x + b + (α/r) · B A x`` with ``A (r, in)`` Kaiming-uniform, ``B (out, r)`` zero, ``W`` frozen.

LoRA-SB / Fed-SB (Ponkshe et al., arXiv 2411.19557; Singhal et al., arXiv 2502.15436):
``h = W x + b + (α/r) · B R A x`` with ``A``, ``B`` frozen and only ``R (r, r)`` trained. The
"initialization using update approximation" takes the first full fine-tuning step
``ΔW ≈ -lr · sign(Σ_batches ∇_W L)`` estimated on ``init_samples`` (170) examples, its truncated SVD
``ΔWᵀ ≈ U_r S_r V_rᵀ`` and sets ``A = U_rᵀ``, ``B = V_r``, ``R₀ = diag(S_r)`` (Fed-SB code,
``estimate_and_process_grads_torch`` + ``find_and_initialize_grad``; we use the exact SVD instead of
``torch.svd_lowrank``). Averaging ``R`` is exact: ``B · mean(R_i) · A = mean(B R_i A)``.

The adapters live **in the model** (``state_dict`` names ``<layer>.lora_A.weight``,
``<layer>.lora_B.weight``, ``<layer>.lora_R.weight`` for LoRA-SB, and the scalar buffer
``<layer>.lora_scale = [α/r]``, shape ``(1,)``), so the server's global model holds them, any
trainer (``lora``, ``fedsb``, ``dp_sgd``, ``full``) trains exactly the parameters left trainable,
and the frozen tensors' deltas are exactly zero (the ``lora`` codec then sends nothing for them).
The base weight keeps its name ``<layer>.weight``. Factors are ``nn.Linear`` submodules, which
opacus supports.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from stamen.task.settings import LoRAConfig


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a LoRA branch; ``weight``/``bias`` keep their names and are frozen."""

    lora_scale: torch.Tensor

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        out_f, in_f = base.weight.shape
        if not 1 <= rank <= min(in_f, out_f):
            raise ValueError(
                f"lora.rank must be in [1, {min(in_f, out_f)}] for a {in_f}->{out_f} layer, got {rank}"
            )
        super().__init__(in_f, out_f, bias=base.bias is not None)
        with torch.no_grad():
            self.weight.copy_(base.weight)
            if base.bias is not None and self.bias is not None:
                self.bias.copy_(base.bias)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.lora_A = nn.Linear(in_f, rank, bias=False)  # weight (r, in)
        self.lora_B = nn.Linear(rank, out_f, bias=False)  # weight (out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # peft's default
        nn.init.zeros_(self.lora_B.weight)  # B = 0: the adapter starts as a no-op
        self.register_buffer("lora_scale", torch.tensor([alpha / rank], dtype=torch.float32))  # (1,)
        self.lora_dropout = nn.Dropout(dropout)

    def lora_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``B A x`` (unscaled)."""
        return self.lora_B(self.lora_A(self.lora_dropout(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias) + self.lora_scale * self.lora_branch(x)

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = (α/r) · B A`` of shape ``(out, in)``."""
        return self.lora_scale * (self.lora_B.weight @ self.lora_A.weight)


class LoRASBLinear(LoRALinear):
    """LoRA-SB: ``W x + b + (α/r) · B R A x`` with only ``R`` trainable."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__(base, rank, alpha, dropout)
        self.lora_R = nn.Linear(rank, rank, bias=False)  # weight (r, r)
        nn.init.zeros_(self.lora_R.weight)
        self.lora_A.weight.requires_grad_(False)
        self.lora_B.weight.requires_grad_(False)

    def lora_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``B R A x`` (unscaled)."""
        return self.lora_B(self.lora_R(self.lora_A(self.lora_dropout(x))))

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = (α/r) · B R A``."""
        return self.lora_scale * (self.lora_B.weight @ self.lora_R.weight @ self.lora_A.weight)


def _targets(model: nn.Module, suffixes: Sequence[str]) -> list[str]:
    names = [
        n
        for n, m in model.named_modules()
        if type(m) is nn.Linear and any(n == s or n.endswith("." + s) for s in suffixes)
    ]
    if not names:
        raise ValueError(f"lora.targets {tuple(suffixes)} match no nn.Linear layer of the model")
    return names


def _linear(model: nn.Module, name: str) -> nn.Linear:
    layer = model.get_submodule(name)
    assert isinstance(layer, nn.Linear)
    return layer


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def attach_adapters(
    model: nn.Module,
    cfg: LoRAConfig,
    *,
    seed: int,
    sample: tuple[np.ndarray, np.ndarray] | None = None,
    structure_only: bool = False,
) -> nn.Module:
    """Replace the target layers of ``model`` in place by adapter layers and freeze the rest.

    Parameters
    ----------
    model : nn.Module
        Any model with ``nn.Linear`` layers matching ``cfg.targets``.
    cfg : LoRAConfig
        The ``[lora]`` settings; ``adapter="none"`` returns the model unchanged.
    seed : int
        Seeds the factor initialization (the global torch RNG is restored afterwards).
    sample : (x, y) or None
        Training data for Fed-SB's gradient-based init (required for ``adapter="fedsb"``).
    structure_only : bool
        Build the adapter layers without Fed-SB's data-driven init (a client loads the server's
        factors into them right away); never use it for an initial model.
    """
    if cfg.adapter == "none":
        return model
    names = _targets(model, cfg.targets)
    grads = None
    if cfg.adapter == "fedsb" and not structure_only:
        if sample is None:
            raise ValueError("Fed-SB's initialization needs a data sample (x, y)")
        grads = approx_first_step(model, names, sample, cfg, seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for name in names:
            base = model.get_submodule(name)
            assert isinstance(base, nn.Linear)
            cls = LoRASBLinear if cfg.adapter == "fedsb" else LoRALinear
            _replace(model, name, cls(base, cfg.rank, cfg.alpha, cfg.dropout))
    for p in model.parameters():
        p.requires_grad_(False)
    for mod_name, module in model.named_modules():
        if isinstance(module, LoRASBLinear):
            module.lora_R.weight.requires_grad_(True)
        elif isinstance(module, LoRALinear):
            module.lora_A.weight.requires_grad_(True)
            module.lora_B.weight.requires_grad_(True)
        if any(mod_name == p or mod_name.startswith(p + ".") for p in cfg.train_modules):
            for p in module.parameters():
                p.requires_grad_(True)
    if grads is not None:
        for name in names:
            fedsb_init(model.get_submodule(name), grads[name])
    return model


def approx_first_step(
    model: nn.Module,
    names: list[str],
    sample: tuple[np.ndarray, np.ndarray],
    cfg: LoRAConfig,
    seed: int,
    batch_size: int = 10,
) -> dict[str, torch.Tensor]:
    """``-lr · sign(Σ_b ∇_W L_b)`` for each target layer on ``init_samples`` seeded examples."""
    x, y = sample
    rng = np.random.default_rng([seed, 0x5B])
    idx = np.sort(rng.choice(len(y), size=min(cfg.init_samples, len(y)), replace=False))
    xs, ys = torch.tensor(x[idx]), torch.tensor(y[idx])
    weights = {n: _linear(model, n).weight for n in names}
    saved = {n: w.requires_grad for n, w in weights.items()}
    total = {n: torch.zeros_like(w) for n, w in weights.items()}
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for w in weights.values():
            w.requires_grad_(True)
        for i in range(0, len(ys), batch_size):
            loss = nn.functional.cross_entropy(model(xs[i : i + batch_size]), ys[i : i + batch_size])
            g = torch.autograd.grad(loss, list(weights.values()))
            for n, gi in zip(weights, g, strict=True):
                total[n] += gi
    for n, w in weights.items():
        w.requires_grad_(saved[n])
    return {n: -cfg.init_lr * torch.sign(t) for n, t in total.items()}


@torch.no_grad()
def fedsb_init(layer: nn.Module, step: torch.Tensor) -> None:
    """Set ``A = U_rᵀ``, ``B = V_r``, ``R = diag(S_r)`` from the SVD ``stepᵀ = U S Vᵀ`` (float64)."""
    assert isinstance(layer, LoRASBLinear)
    r = layer.lora_R.weight.shape[0]
    u, s, vt = torch.linalg.svd(step.double().T, full_matrices=False)  # (in, k), (k,), (k, out)
    layer.lora_A.weight.copy_(u[:, :r].T)
    layer.lora_B.weight.copy_(vt[:r].T)
    layer.lora_R.weight.copy_(torch.diag(s[:r]))


def adapter_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Adapter layers of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def trainable_names(model: nn.Module) -> list[str]:
    """``state_dict`` names of the parameters that train (the only ones with non-zero deltas)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def merge_adapters(model: nn.Module) -> nn.Module:
    """A deep copy in which every adapter layer is a plain ``nn.Linear`` with ``W + ΔW``.

    The merged model has the original architecture and ``state_dict`` names (what the edge runtime
    and ONNX export take); its outputs equal the adapted model's up to float32 rounding.
    """
    merged = copy.deepcopy(model)
    for name, layer in adapter_layers(merged).items():
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            plain.weight.copy_((layer.weight.double() + layer.delta_weight().double()).float())
            if layer.bias is not None and plain.bias is not None:
                plain.bias.copy_(layer.bias)
        _replace(merged, name, plain)
    return merged
