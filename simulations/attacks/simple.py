"""Non-adaptive update attacks: ``sign_flip``, ``scaling``, ``gaussian``.

* ``sign_flip`` -- every malicious client sends ``-scale`` times its own honestly trained update
  (Allen-Zhu, Ebrahimian, Li, Alistarh, "Byzantine-Resilient Non-Convex Stochastic Gradient
  Descent", ICLR 2021; Karimireddy et al. 2021 use the same "bit/sign flipping" attacker).
* ``scaling`` -- every malicious client boosts its own update by ``scale`` (the model-replacement
  boost of Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020, without a
  backdoor task; the FRL code's FedAvg baseline sends ``1e5`` times the model instead).
* ``gaussian`` -- every malicious row is i.i.d. ``N(mean, std^2)`` noise, independent of training
  (ByzFL's ``Gaussian`` attack; Bristle's "noise" attacker draws uniform noise instead).

The first two use the malicious clients' own rows when the engine passes them (``own=``, see
:mod:`.base`); without them (a direct call) each attacker uses a uniformly drawn honest row as a
stand-in for its own update.
"""

from __future__ import annotations

import numpy as np

from stamen.simulations.attacks.base import (
    OwnUpdateAttack,
    UpdateAttack,
    as_number,
    check_honest,
    register_update_attack,
)


def own_or_drawn(
    honest: np.ndarray, num_malicious: int, rng: np.random.Generator, own: np.ndarray | None
) -> np.ndarray:
    """The attackers' own rows, or honest rows drawn (without replacement when possible)."""
    if own is not None:
        rows = np.asarray(own, dtype=np.float32)
        if rows.shape != (num_malicious, honest.shape[1]):
            raise ValueError(
                f"own updates have shape {rows.shape}, expected {(num_malicious, honest.shape[1])}"
            )
        return rows
    pick = rng.choice(honest.shape[0], size=num_malicious, replace=num_malicious > honest.shape[0])
    return honest[pick]


class ScaledOwnUpdate(OwnUpdateAttack):
    """``factor * own update`` for every malicious client (negative factor: sign flipping)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(
        self, honest: np.ndarray, num_malicious: int, rng: np.random.Generator, own: np.ndarray | None = None
    ) -> np.ndarray:
        """Scale each attacker's own (or stand-in) update."""
        x = check_honest(honest, num_malicious)
        return (np.float32(self.factor) * own_or_drawn(x, num_malicious, rng, own)).astype(np.float32)


@register_update_attack("sign_flip")
def sign_flip(scale: float = 1.0) -> UpdateAttack:
    """Send ``-scale * own update``; ``scale > 0``, default 1 (plain sign flip)."""
    return ScaledOwnUpdate(-as_number("sign_flip: scale", scale, positive=True))


@register_update_attack("scaling")
def scaling(scale: float = 10.0) -> UpdateAttack:
    """Send ``scale * own update``; ``scale > 0``, default 10."""
    return ScaledOwnUpdate(as_number("scaling: scale", scale, positive=True))


@register_update_attack("gaussian")
def gaussian(mean: float = 0.0, std: float = 1.0) -> UpdateAttack:
    """Send i.i.d. ``N(mean, std^2)`` rows (update units); defaults 0 and 1 as ByzFL's."""
    mu = as_number("gaussian: mean", mean)
    sigma = as_number("gaussian: std", std, positive=True)

    def attack(honest: np.ndarray, num_malicious: int, rng: np.random.Generator) -> np.ndarray:
        x = check_honest(honest, num_malicious)
        return rng.normal(mu, sigma, size=(num_malicious, x.shape[1])).astype(np.float32)

    return attack
