"""``ipm``: inner-product manipulation (Xie, Koyejo, Gupta, UAI 2019, "Fall of Empires").

All malicious clients send ``-epsilon * mean(honest)``: with a small ``epsilon`` the attackers hide
near the honest cloud and still make the aggregate's inner product with the true mean negative for
median / Krum; with a large one they overwhelm averaging. The paper's experiments use ``epsilon = 0.1``
(against Krum-like rules) and large values against the mean.
"""

from __future__ import annotations

import numpy as np

from stamen.simulations.attacks.base import (
    UpdateAttack,
    as_number,
    check_honest,
    register_update_attack,
    repeat_row,
)


@register_update_attack("ipm")
def ipm(epsilon: float = 0.1) -> UpdateAttack:
    """Send ``-epsilon * mean(honest)``; ``epsilon > 0``, default 0.1."""
    eps = as_number("ipm: epsilon", epsilon, positive=True)

    def attack(honest: np.ndarray, num_malicious: int, rng: np.random.Generator) -> np.ndarray:
        del rng  # deterministic
        x = check_honest(honest, num_malicious)
        return repeat_row(-eps * x.astype(np.float64).mean(axis=0), num_malicious)

    return attack
