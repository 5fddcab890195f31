"""Local (client-side) differential privacy: clip the whole update, add Gaussian noise, count ε.

The Gaussian mechanism (Dwork & Roth 2014, App. A; RDP of the Gaussian: Mironov 2017, Prop. 7,
``RDP(α) = α Δ₂² / (2σ²)``) applied by each client to its own update before anything leaves it:

``Δ̃ = Δ · min(1, C / ||Δ||₂) + N(0, (z·C)² I)`` (one L2 clip over all *trained* tensors, then i.i.d.
noise on them).

Only the tensors the trainer can move are clipped and noised (``TrainResult.trained``: the adapter
factors and head of a LoRA / Fed-SB model, the eligible tensors of sparse fine-tuning; all tensors
when a trainer does not say). That set is fixed by the model structure and the configuration, not
by the data, and every other tensor is exactly zero for *every* dataset, so it carries no
information: the sensitivity over the released update is still ``2C`` and ε is unchanged, while a
LoRA update stays adapter-only (noising the frozen 22 M MiniLM weights would make it dense and
destroy the model). A non-zero tensor outside the set is refused (``ValueError``), never released
unnoised. The set must not be chosen by looking at which deltas are zero: e.g. LoRA's ``A`` does not
move in a one-step round (``B = 0``), so "non-zero" would depend on the dataset size.

It runs before the codec: compression after it is post-processing and costs no privacy.

Guarantee (local DP, against the server and anyone on the wire): for *any* two local datasets of
this client the clipped updates differ by at most the diameter ``2C`` of the clipping ball, so the
per-round noise multiplier with respect to the sensitivity is ``z / 2``; ε composes over the rounds
the client actually took part in (``ClientState.scalars["dp/rounds"]``). No subsampling amplification
is claimed: the server chose the client and sees its reply, so against the server participation is not
secret. (The weaker "did this client take part at all" relation would have sensitivity ``C``; that is
the central-DP relation, not local DP.)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import numpy as np

from stamen.client.state import ClientState
from stamen.privacy.local import local_epsilon
from stamen.protocols import keys

ROUNDS_KEY = "dp/rounds"  # ClientState.scalars: rounds this client released a noised update


def clip_and_noise(
    delta: Mapping[str, np.ndarray],
    clip: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    noised: Collection[str] | None = None,
) -> tuple[dict[str, np.ndarray], float]:
    """Clip the ``noised`` tensors jointly to L2 norm ``clip``, add ``N(0, (noise_multiplier·clip)²)``
    per entry of each of them, and pass the others (which must be exactly zero) through.

    Parameters
    ----------
    delta : mapping of str to ndarray
        The update ``local - global`` (float32 tensors); not modified.
    clip : float
        ``C > 0``: bound on the L2 norm over the ``noised`` tensors together.
    noise_multiplier : float
        ``z >= 0``; the per-coordinate noise std is ``z·C`` (``z = 0`` only clips).
    rng : numpy.random.Generator
        Noise source; tensors are drawn in ``delta``'s order (reproducible).
    noised : collection of str or None
        Names of the tensors to privatize (data-independent, e.g. ``TrainResult.trained``); ``None``:
        all. Each must be in ``delta``; any other tensor with a non-zero entry is a ``ValueError``.

    Returns
    -------
    (dict of str to ndarray, float)
        The privatized float32 tensors (same names, shapes, order) and the L2 norm before clipping.
    """
    if not clip > 0 or math.isinf(clip):
        raise ValueError(f"clip must be finite and > 0, got {clip}")
    if not noise_multiplier >= 0 or math.isinf(noise_multiplier):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in delta.items()}
    chosen = _noised_set(arrays, noised)
    norm = math.sqrt(
        sum(float(np.dot(arrays[k].ravel().astype(np.float64), arrays[k].ravel())) for k in chosen)
    )
    scale = np.float32(min(1.0, clip / norm) if norm > 0 else 1.0)
    std = np.float32(noise_multiplier * clip)
    out: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        if name not in chosen:
            out[name] = a.copy()  # exactly zero (checked)
            continue
        noise = rng.standard_normal(a.shape, dtype=np.float32)  # same shape as the tensor
        out[name] = a * scale + noise * std
    return out, norm


def _noised_set(arrays: Mapping[str, np.ndarray], noised: Collection[str] | None) -> frozenset[str]:
    """The tensors to privatize; ``ValueError`` for unknown names or non-zero tensors left out."""
    if noised is None:
        return frozenset(arrays)
    chosen = frozenset(noised)
    unknown = sorted(chosen - set(arrays))
    if unknown:
        raise ValueError(f"local DP: trained tensors {unknown[:3]} are not in the update")
    leaked = [k for k, a in arrays.items() if k not in chosen and np.any(a)]
    if leaked:
        raise ValueError(
            f"local DP: tensors {leaked[:3]} changed but are not declared trained; refusing to "
            "release them without noise"
        )
    return chosen


def privatize_update(
    delta: Mapping[str, np.ndarray],
    clip: float,
    noise_multiplier: float,
    dp_delta: float,
    rng: np.random.Generator,
    state: ClientState,
    accountant: str = "rdp",
    noised: Collection[str] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One client round of local DP: clip + noise the ``noised`` tensors (all if ``None``), count the
    round in ``state``, report ε.

    Returns the privatized update and metrics ``{"epsilon": ε after this round, "dp-rounds": rounds
    so far}``, both functions of the configuration and of the client's participation only (the norm
    before clipping is computed from the data: it is never reported). This is the function both the
    ClientApp's mod and the in-process engine call.
    """
    privatized, _ = clip_and_noise(delta, clip, noise_multiplier, rng, noised)
    rounds = int(state.scalars.get(ROUNDS_KEY, 0)) + 1
    state.scalars[ROUNDS_KEY] = float(rounds)
    eps = local_epsilon(noise_multiplier, rounds, dp_delta, accountant)
    return privatized, {keys.EPSILON: eps, keys.DP_ROUNDS: float(rounds)}
