"""Local (client-side) differential privacy: clip the whole update, add Gaussian noise, count ε.

The Gaussian mechanism (Dwork & Roth 2014, App. A; RDP of the Gaussian: Mironov 2017, Prop. 7,
``RDP(α) = α Δ₂² / (2σ²)``) applied by each client to its own update before anything leaves it:

``Δ̃ = Δ · min(1, C / ||Δ||₂) + N(0, (z·C)² I)`` (one L2 clip over *all* tensors, then i.i.d. noise).

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
from collections.abc import Mapping

import numpy as np

from stamen.client.state import ClientState
from stamen.server.privacy.accounting import calibrate_noise_multiplier, epsilon_after

ROUNDS_KEY = "dp/rounds"  # ClientState.scalars: rounds this client released a noised update
LDP_SENSITIVITY_FACTOR = 2.0  # L2 sensitivity of a clipped update under local DP: 2C


def clip_and_noise(
    delta: Mapping[str, np.ndarray], clip: float, noise_multiplier: float, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], float]:
    """Clip the whole update to L2 norm ``clip``, then add ``N(0, (noise_multiplier·clip)²)`` per entry.

    Parameters
    ----------
    delta : mapping of str to ndarray
        The update ``local - global`` (float32 tensors); not modified.
    clip : float
        ``C > 0``: bound on the L2 norm over all tensors together.
    noise_multiplier : float
        ``z >= 0``; the per-coordinate noise std is ``z·C`` (``z = 0`` only clips).
    rng : numpy.random.Generator
        Noise source; tensors are drawn in ``delta``'s order (reproducible).

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
    norm = math.sqrt(sum(float(np.dot(a.ravel().astype(np.float64), a.ravel())) for a in arrays.values()))
    scale = np.float32(min(1.0, clip / norm) if norm > 0 else 1.0)
    std = np.float32(noise_multiplier * clip)
    out: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        noise = rng.standard_normal(a.shape, dtype=np.float32)  # same shape as the tensor
        out[name] = a * scale + noise * std
    return out, norm


def local_epsilon(
    noise_multiplier: float, rounds_participated: int, delta: float, accountant: str = "rdp"
) -> float:
    """ε (at ``delta``) of a client that released ``rounds_participated`` noised updates.

    The composition of ``rounds_participated`` Gaussian mechanisms with multiplier
    ``z / LDP_SENSITIVITY_FACTOR`` (sensitivity ``2C``), sampling rate 1 (no amplification). ``0``
    rounds give ε = 0; ``z = 0`` gives ``inf``.
    """
    if rounds_participated < 0:
        raise ValueError(f"rounds_participated must be >= 0, got {rounds_participated}")
    if not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    z_eff = noise_multiplier / LDP_SENSITIVITY_FACTOR
    return epsilon_after(z_eff, 1.0, rounds_participated, delta, accountant)


def calibrate_local_noise_multiplier(
    target_epsilon: float, delta: float, rounds: int, accountant: str = "rdp"
) -> float:
    """The ``z`` for :func:`clip_and_noise` such that a client taking part in all ``rounds`` rounds
    spends at most ``target_epsilon`` (worst case; clients sampled less often spend less)."""
    z_eff = calibrate_noise_multiplier(target_epsilon, delta, 1.0, rounds, accountant)
    return z_eff * LDP_SENSITIVITY_FACTOR


def privatize_update(
    delta: Mapping[str, np.ndarray],
    clip: float,
    noise_multiplier: float,
    dp_delta: float,
    rng: np.random.Generator,
    state: ClientState,
    accountant: str = "rdp",
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One client round of local DP: clip + noise, count the round in ``state``, report ε.

    Returns the privatized update and metrics ``{"epsilon": ε after this round, "update-norm": norm
    before clipping, "dp-rounds": rounds so far}``. This is the function both the ClientApp's mod
    and the in-process engine call.
    """
    noised, norm = clip_and_noise(delta, clip, noise_multiplier, rng)
    rounds = int(state.scalars.get(ROUNDS_KEY, 0)) + 1
    state.scalars[ROUNDS_KEY] = float(rounds)
    eps = local_epsilon(noise_multiplier, rounds, dp_delta, accountant)
    return noised, {"epsilon": eps, "update-norm": norm, "dp-rounds": float(rounds)}
