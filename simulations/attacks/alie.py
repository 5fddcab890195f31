"""``alie``: "A Little Is Enough" (Baruch, Baruch, Goldberg, NeurIPS 2019).

All malicious clients send ``mu + z * sigma``, with ``mu`` and ``sigma`` the coordinate-wise mean and
standard deviation of the honest updates (``sigma`` with ``ddof=1`` like ``torch.std``, as in the
authors' and Shejwalkar & Houmansadr's code; ``ddof=0`` for a single honest row). The sign ``+`` is
that of the NDSS'21 reference code and ByzFL. Unless ``z`` is given, it is the paper's (Sec. 3):

    s = floor(n/2 + 1) - f,      z = Phi^{-1}((n - s) / n),

with ``n = h + f`` the round's clients and ``f`` the malicious ones: the largest shift that keeps
the attackers' value closer to the mean than ``s`` honest values ("supporters") are.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from stamen.simulations.attacks.base import (
    UpdateAttack,
    as_number,
    check_honest,
    register_update_attack,
    repeat_row,
)


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s ``z_max`` for ``n`` clients of which ``f`` malicious (needs ``f < n/2 + 1``)."""
    s = math.floor(n / 2 + 1) - f
    if s < 1 or n < 1:
        raise ValueError(f"alie: no z for n={n} clients with f={f} malicious (needs floor(n/2 + 1) - f >= 1)")
    return NormalDist().inv_cdf((n - s) / n)


@register_update_attack("alie")
def alie(z: float | None = None) -> UpdateAttack:
    """ALIE with the paper's ``z`` (from ``n`` and ``f`` each round) or a fixed ``z``."""
    z_fixed = None if z is None else as_number("alie: z", z)

    def attack(honest: np.ndarray, num_malicious: int, rng: np.random.Generator) -> np.ndarray:
        del rng  # deterministic
        x = check_honest(honest, num_malicious).astype(np.float64)
        if num_malicious == 0:
            return np.zeros((0, x.shape[1]), np.float32)
        z_ = alie_z(x.shape[0] + num_malicious, num_malicious) if z_fixed is None else z_fixed
        sigma = x.std(axis=0, ddof=1 if x.shape[0] > 1 else 0)
        return repeat_row(x.mean(axis=0) + z_ * sigma, num_malicious)

    return attack
