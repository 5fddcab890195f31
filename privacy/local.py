"""Accounting of local (client-side) DP: the Gaussian mechanism on a whole clipped update.

Sensitivity ``2C`` (any two local datasets; see :mod:`stamen.client.privacy` for the mechanism and the
guarantee), composed over the rounds a client actually released, no subsampling amplification.
"""

from __future__ import annotations

from stamen.privacy.accounting import calibrate_noise_multiplier, epsilon_after

LDP_SENSITIVITY_FACTOR = 2.0  # L2 sensitivity of a clipped update under local DP: 2C


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
