"""Bristle's transfer model: a frozen pre-trained feature extractor and a trainable output layer.

Verbraeken et al., "Bristle", arXiv 2110.11006, Section "transfer learning": all non-output layers
come from a network pre-trained on a *related but different* task and are frozen; only the output
layer (softmax, no bias, initialised to 0 in the code: ``outputLayer.params().muli(0)``) is trained
and exchanged. The code pre-trains its MNIST network on **EMNIST letters** (26 classes) and uses it
on MNIST digits: same input domain (handwriting), disjoint label set.

Our offline analogue, **"mnist1d-letters"**: mnist1d (Greydanus 2020) makes each digit sample by
pushing one of 10 hand-made 12-point 1-D templates through random padding, translation, scaling,
shear and correlated noise. We draw 26 new 12-point templates (smoothed random walks, whitened and
anchored like mnist1d's; seed fixed; each kept only if its |correlation| with every digit
template and every earlier letter is < 0.9), generate 26 x 250 samples with mnist1d's own
generator and defaults, and pre-train on them: same generative input domain, no digit template,
26 classes. The network mirrors the code's MNIST net in 1-D: conv(k5, 10) -> LeakyReLU ->
maxpool2 -> conv(k5, 50) -> LeakyReLU -> maxpool2 -> 350 features -> linear output (no bias).
Pre-training: Adam (lr 3e-3), batch 64, 15 epochs, torch seed 0, one thread; a few seconds,
deterministic, cached on disk (``<stamen cache>/bristle-letters-*.pt``) and in memory.
Letters test accuracy after pre-training: 0.76 (the slow test in ``tests/bristle`` checks > 0.6
and bit-for-bit determinism). During development, one linear probe (Adam lr 1e-3, L2 5e-3, 30
epochs over the 4000 mnist1d training digits) on the frozen features reached 0.87 test accuracy,
against 0.55 for the same net with random weights: the letters pre-training transfers.

The extractor is deliberately **not** in the model's ``state_dict``: like the code's pre-trained
asset it is distributed out of band (rebuilt from the cache), so weights, deltas and the wire
carry the output layer only (``head.weight``, ``(C, F)``).
"""

from __future__ import annotations

import functools
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stamen.task.cache import cache_dir
from stamen.task.models.registry import register_model

INPUT_DIM = 40  # mnist1d's final_seq_length
NUM_LETTERS = 26
SAMPLES_PER_LETTER = 250
TEMPLATE_SEED = 26
DATA_SEED = 12345
_CACHE_VERSION = 1


def letter_templates() -> dict[str, np.ndarray]:
    """26 mnist1d-style templates unlike the 10 digit templates (see module docstring)."""
    from mnist1d.data import get_templates

    digits = get_templates()["x"]  # (10, 12)
    rng = np.random.default_rng(TEMPLATE_SEED)
    kept: list[np.ndarray] = []
    while len(kept) < NUM_LETTERS:
        walk = np.cumsum(rng.normal(size=12))
        x = np.convolve(np.pad(walk, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")  # (12,)
        x = (x - x.mean()) / x.std()
        x = (x - x[0]) / 6.0  # mnist1d: starts at 0, scaled by 1/6
        others = np.vstack([digits, *kept])
        if max(abs(np.corrcoef(x, t)[0, 1]) for t in others) < 0.9:
            kept.append(x)
    return {"x": np.stack(kept), "t": np.linspace(-5, 5, 12) / 6.0, "y": np.arange(NUM_LETTERS)}


def letters_dataset() -> dict[str, np.ndarray]:
    """mnist1d-letters arrays ``x, y, x_test, y_test`` (global RNG states are restored)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = NUM_LETTERS * SAMPLES_PER_LETTER, DATA_SEED
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        raw = make_dataset(args, template=letter_templates())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: np.asarray(raw[k]) for k in ("x", "y", "x_test", "y_test")}


def make_extractor() -> nn.Sequential:
    """The 1-D analogue of the code's MNIST feature layers; ``(batch, 40) -> (batch, 350)``."""
    return nn.Sequential(
        nn.Unflatten(1, (1, INPUT_DIM)),
        nn.Conv1d(1, 10, 5),
        nn.LeakyReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(10, 50, 5),
        nn.LeakyReLU(),
        nn.MaxPool1d(2),
        nn.Flatten(),
    )


FEATURES = 350  # 50 channels x 7 positions


def pretrain(epochs: int = 15) -> tuple[nn.Sequential, float]:
    """Pre-train extractor + 26-way head on mnist1d-letters; return the extractor and test accuracy."""
    data = letters_dataset()
    x, y = torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"], dtype=torch.int64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(), torch.enable_grad():  # callers may hold no_grad (extract_features)
            torch.manual_seed(0)
            extractor = make_extractor()
            net = nn.Sequential(extractor, nn.Linear(FEATURES, NUM_LETTERS, bias=False))
            opt = torch.optim.Adam(net.parameters(), lr=3e-3)
            gen = torch.Generator().manual_seed(0)
            for _ in range(epochs):
                order = torch.randperm(len(y), generator=gen)
                for i in range(0, len(y), 64):
                    idx = order[i : i + 64]
                    opt.zero_grad(set_to_none=True)
                    nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
                    opt.step()
            with torch.no_grad():
                xt = torch.tensor(data["x_test"], dtype=torch.float32)
                acc = float((net(xt).argmax(1) == torch.tensor(data["y_test"])).float().mean())
    finally:
        torch.set_num_threads(threads)
    return extractor, acc


def _cache_file() -> Path:
    tag = torch.__version__.split("+")[0]
    return cache_dir() / f"bristle-letters-v{_CACHE_VERSION}-torch{tag}.pt"


@functools.lru_cache(maxsize=1)
def pretrained_extractor() -> nn.Sequential:
    """The frozen pre-trained extractor (disk + memory cache; built once per machine)."""
    extractor, path = make_extractor(), _cache_file()
    try:
        extractor.load_state_dict(torch.load(path, weights_only=True))
    except (OSError, RuntimeError, ValueError, EOFError):
        extractor, _ = pretrain()
        _save_atomic(extractor.state_dict(), path)
    for p in extractor.parameters():
        p.requires_grad_(False)
    return extractor.eval()


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs the pre-training next time
        pass


class BristleTransferNet(nn.Module):
    """Frozen extractor (outside the state dict) + trainable ``head`` (no bias, zeros at init)."""

    extractor: nn.Sequential  # set with object.__setattr__: shared, frozen, not a submodule

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        object.__setattr__(self, "extractor", pretrained_extractor())  # not a registered submodule
        self.head = nn.Linear(FEATURES, num_classes, bias=False)
        nn.init.zeros_(self.head.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen features ``(batch, 350)``."""
        with torch.no_grad():
            return self.extractor(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)``."""
        return self.head(self.features(x))


@register_model("bristle_transfer")
def bristle_transfer(input_dim: int, num_classes: int, hidden: Sequence[int]) -> nn.Module:
    """Bristle transfer model for mnist1d (``input_dim`` must be 40; ``hidden`` is ignored)."""
    del hidden
    if input_dim != INPUT_DIM:
        raise ValueError(f"bristle_transfer is pre-trained for mnist1d (input_dim=40), got {input_dim}")
    return BristleTransferNet(num_classes)


def extract_features(x: np.ndarray) -> np.ndarray:
    """Frozen features ``(m, 350)`` float32 of mnist1d inputs ``(m, 40)``."""
    with torch.no_grad():
        return pretrained_extractor()(torch.from_numpy(np.array(x, dtype=np.float32))).numpy()
