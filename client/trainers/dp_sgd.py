"""``dp_sgd`` trainer: sample-level DP-SGD inside each client with opacus.

Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Algorithm 1: every step draws a
Poisson batch (each example independently with rate ``q``), clips each per-example gradient to L2
norm ``C`` (``max_grad_norm``), sums, adds ``N(0, (z·C)² I)`` and divides by the expected batch size
``q·n``. opacus' ``PrivacyEngine`` does exactly this (``poisson_sampling=True``, ``q = 1 / ceil(n/B)``,
``ceil(n/B)`` steps per epoch). The batches and the noise come from generators seeded from OS entropy
unless ``spec.dp_noise = "seeded"`` (then from the client's round seed, which the server can derive).

Guarantee: example-level (ε, δ)-DP for the client's local dataset under add/remove-one-example
adjacency, for everything the client ever sends (the updates are post-processing of the noisy
steps). ε composes every step of every round the client trained in (RDP, or PRV), from a history
``[(z, q, steps), ...]`` kept in ``ClientState.scalars`` under ``dp/seg<i>/{z,q,steps}``; client
sampling by the server is *not* counted as amplification (conservative).

DP parameters come from the round's :class:`~stamen.client.task.TrainSpec`, read with defaults so the
trainer works before the spec carries them: ``dp_noise_multiplier`` (z, default 1.0), ``dp_clip``
(C, default 1.0), ``dp_delta`` (δ, default 1e-5), ``dp_accountant`` (``"rdp"``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from stamen.client.state import ClientState
from stamen.client.trainers.base import TrainResult, register_trainer
from stamen.client.trainers.full import make_optimizer, train_delta
from stamen.privacy.accounting import Segment, epsilon_of_history
from stamen.protocols import keys
from stamen.task.data import TaskData
from stamen.task.models.lora import trainable_names
from stamen.task.seeds import dp_seed
from stamen.task.spec import TrainSpec

SEGMENTS_KEY = "dp/segments"


def load_history(state: ClientState) -> list[Segment]:
    """The accountant history ``[(z, q, steps), ...]`` stored in ``state.scalars``."""
    n = int(state.scalars.get(SEGMENTS_KEY, 0))
    s = state.scalars
    return [(s[f"dp/seg{i}/z"], s[f"dp/seg{i}/q"], int(s[f"dp/seg{i}/steps"])) for i in range(n)]


def append_history(state: ClientState, segment: Segment) -> list[Segment]:
    """Add ``segment`` (merged into the last one when ``z`` and ``q`` are equal); return the history."""
    history = load_history(state)
    z, q, steps = segment
    if history and history[-1][0] == z and history[-1][1] == q:
        history[-1] = (z, q, history[-1][2] + steps)
    elif steps > 0:
        history.append((z, q, steps))
    for i, (zi, qi, ti) in enumerate(history):
        state.scalars[f"dp/seg{i}/z"], state.scalars[f"dp/seg{i}/q"] = float(zi), float(qi)
        state.scalars[f"dp/seg{i}/steps"] = float(ti)
    state.scalars[SEGMENTS_KEY] = float(len(history))
    return history


def private_epochs(
    model: nn.Module, data: TaskData, spec: TrainSpec, seed: int, noise_multiplier: float, clip: float
) -> tuple[float, list[Segment]]:
    """Run ``spec.epochs`` epochs of DP-SGD on ``model`` in place; return (mean loss, opacus history).

    The model is wrapped by opacus only for the duration of the call and its hooks and per-sample
    attributes are removed afterwards, so the same object serves the next client (in-process engine)
    and ``state_dict`` keys stay those of the plain model (no ``_module.`` prefix).
    """
    from opacus import PrivacyEngine  # lazy: importing opacus costs ~1 s, only DP-SGD clients need it

    ds = TensorDataset(torch.tensor(data.x), torch.tensor(data.y))  # copies: cached arrays are read-only
    batches, noise = _generators(spec.dp_noise, seed)
    loader = DataLoader(ds, batch_size=spec.batch_size, generator=batches)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], spec)
    model.train()  # opacus refuses a module in eval mode (e.g. right after an evaluation)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")  # seeded generators on purpose
        engine = PrivacyEngine(accountant="rdp")
        gsm, dp_opt, dp_loader = engine.make_private(
            module=model,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=clip,
            poisson_sampling=True,
            noise_generator=noise,
        )
    try:
        loss = _run_steps(gsm, dp_opt, dp_loader, spec.epochs)
    finally:
        gsm._close()  # remove hooks and grad_sample attributes from the plain model
    history = [(float(z), float(q), int(t)) for z, q, t in engine.accountant.history]
    return loss, history


def _generators(noise: str, seed: int) -> tuple[torch.Generator, torch.Generator]:
    """The generators of opacus' Poisson batches and of its noise: seeded from OS entropy
    (``noise = "secret"``), or from the client's round ``seed`` (``"seeded"``: the server, who knows the
    run seed, could replay the training; :func:`~stamen.task.seeds.dp_seed`). Not opacus'
    ``secure_mode`` (it needs ``torchcsprng``): secret seeds for torch's Mersenne Twister."""
    batches = torch.Generator().manual_seed(dp_seed(noise, seed, bits=64))
    return batches, torch.Generator().manual_seed(dp_seed(noise, seed ^ 0x5EED, bits=64))


def _run_steps(gsm: nn.Module, dp_opt: Any, dp_loader: Any, epochs: int) -> float:
    """The DP-SGD loop over opacus' Poisson batches; the mean loss over non-empty batches."""
    total, batches = 0.0, 0
    gsm.train()
    with warnings.catch_warnings():
        # opacus' full backward hook on the first layer, whose input needs no grad: harmless
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(epochs):
            for xb, yb in dp_loader:
                dp_opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(gsm(xb), yb)
                loss.backward()
                dp_opt.step()  # clip per example, sum, add noise, step (also on an empty batch)
                if len(yb) > 0:
                    total, batches = total + loss.item(), batches + 1
    return total / max(batches, 1)


class DPSGDTrainer:
    """Sample-level DP-SGD with opacus; reports the client's cumulative ε as ``"epsilon"``."""

    name = "dp_sgd"

    def train(
        self, model: nn.Module, data: TaskData, spec: TrainSpec, seed: int, state: ClientState
    ) -> TrainResult:
        """Train privately in place; return ``delta = local - global`` and ε over all rounds so far."""
        z, clip, dp_delta, accountant = (
            spec.dp_noise_multiplier,
            spec.dp_clip,
            spec.dp_delta,
            spec.dp_accountant,
        )
        if not z >= 0 or math.isinf(z):
            raise ValueError(f"dp_noise_multiplier must be finite and >= 0, got {z}")
        if not clip > 0 or math.isinf(clip):
            raise ValueError(f"dp_clip must be finite and > 0, got {clip}")
        trained = tuple(trainable_names(model))
        segments: list[Segment] = []

        def epochs() -> float:
            loss, segs = private_epochs(model, data, spec, seed, z, clip)
            segments.extend(segs)
            return loss

        delta, loss = train_delta(model, data, epochs, trained)  # also refuses an empty partition
        history = load_history(state)
        for seg in segments:
            history = append_history(state, seg)
        eps = epsilon_of_history(history, dp_delta, accountant)
        steps = float(sum(t for _, _, t in history))
        return TrainResult(
            delta=delta,
            num_examples=len(data.y),
            metrics={keys.TRAIN_LOSS: loss, keys.EPSILON: eps, keys.DP_STEPS: steps},
            trained=trained,
        )


register_trainer("dp_sgd")(DPSGDTrainer)
