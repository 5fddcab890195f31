"""Privacy accounting for the Poisson-subsampled Gaussian mechanism: ε after T steps, and the noise
multiplier that reaches a target ε.

Accountants (both from opacus, already a dependency for DP-SGD):

- ``"rdp"`` (default): Rényi DP of the sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019,
  "Rényi Differential Privacy of the Sampled Gaussian Mechanism", §3.3), composed additively over
  steps and converted to (ε, δ) with Balle et al. 2020 ("Hypothesis testing interpretations and Rényi
  DP", Thm. 21): ``ε = min_α RDP(α) + log((α-1)/α) - (log δ + log α)/(α-1)``. Analytic, monotone,
  an upper bound with no numerical-error term, ~50 ms per call; it is what DP-FedAvg (McMahan et al.
  2018) and opacus' ``get_noise_multiplier`` use, so our calibration is checked against opacus.
- ``"prv"``: numerical composition of privacy-loss random variables (Gopi, Lee, Wutschitz 2021),
  5-15 % tighter ε in our measurements (upper bound of the estimate at ``eps_error=0.01``).

Google's ``dp-accounting`` is not used: its RDP accountant computes the same RDP bound as opacus', and
its PLD accountant is the same tight numerical approach as PRV; adding it would add a dependency
without a better guarantee.

Neighbouring relation: add/remove one record (for central DP one *client*), Poisson sampling with
rate ``q`` per step — the setting of both analyses.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

ACCOUNTANTS = ("rdp", "prv")
# opacus' default orders plus larger ones, so that small-ε / many-step settings are not loosened by
# a truncated grid (the bound is a min over orders: more orders can only tighten it).
RDP_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *range(12, 64),
    64,
    80,
    96,
    128,
    160,
    192,
    256,
    384,
    512,
)
MAX_NOISE_MULTIPLIER = 1e6

# one segment of the accountant's history: (noise_multiplier, sample_rate, steps)
Segment = tuple[float, float, int]


def check_accounting_args(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> None:
    """Raise ``ValueError`` naming the first argument outside its range."""
    if not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def epsilon_of_history(history: Sequence[Segment], delta: float, accountant: str = "rdp") -> float:
    """ε (at ``delta``) of the composition of Gaussian-mechanism segments ``(z, q, steps)``.

    Returns 0 for an empty history (or zero steps) and ``inf`` when any segment has ``z = 0``.
    """
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    segments = [(float(z), float(q), int(t)) for z, q, t in history if int(t) > 0]
    for z, q, t in segments:
        check_accounting_args(z, q, t, delta)
    if not segments:
        return 0.0
    if any(z == 0 for z, _, _ in segments):
        return math.inf
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # "optimal order is the largest/smallest alpha": the bound stays valid, only less tight;
        # PRV at q = 1 takes log(1 - q) = -inf on purpose
        warnings.filterwarnings("ignore", message="Optimal order")
        if accountant == "rdp":
            from opacus.accountants.analysis.rdp import get_privacy_spent

            rdp = sum(t * np.asarray(_rdp_per_step(z, q)) for z, q, t in segments)
            return float(get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)[0])
        from opacus.accountants import PRVAccountant  # lazy: importing opacus costs ~1 s

        acc = PRVAccountant()
        acc.history = list(segments)
        return float(acc.get_epsilon(delta=delta))


@lru_cache(maxsize=1024)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """RDP of one sampled-Gaussian step at every order (opacus' ``compute_rdp``, which is linear in
    the number of steps): cached, since a run re-evaluates the same (z, q) every round."""
    from opacus.accountants.analysis.rdp import compute_rdp  # lazy: importing opacus costs ~1 s

    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS))
    return tuple(float(v) for v in np.atleast_1d(rdp))


def epsilon_after(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """ε after ``steps`` Poisson-subsampled Gaussian steps.

    Parameters
    ----------
    noise_multiplier : float
        ``z = σ / Δ₂``: noise standard deviation over the L2 sensitivity, >= 0 (0 gives ``inf``).
    sample_rate : float
        Poisson sampling probability ``q`` per step, in (0, 1] (1 = no amplification).
    steps : int
        Number of compositions ``T`` (rounds for central DP, optimizer steps for DP-SGD), >= 0.
    delta : float
        Target δ in (0, 1), e.g. 1e-5.
    accountant : {"rdp", "prv"}
        See the module docstring.
    """
    check_accounting_args(noise_multiplier, sample_rate, steps, delta)
    return epsilon_of_history([(noise_multiplier, sample_rate, steps)], delta, accountant)


@lru_cache(maxsize=256)  # pure in its scalar arguments; runs re-plan the same budgets
def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    rtol: float = 1e-3,
) -> float:
    """Smallest noise multiplier ``z`` (to ``rtol``) whose ε after ``steps`` is <= ``target_epsilon``.

    Bisection on ``z`` (ε is decreasing in ``z``) after doubling an upper bracket from 1. The result
    always satisfies ``epsilon_after(z, ...) <= target_epsilon`` and, unless the bracket collapsed,
    ``epsilon_after(z, ...) >= target_epsilon * (1 - rtol)`` or ``z`` is within ``rtol`` relative of
    the boundary.

    Raises
    ------
    ValueError
        On arguments out of range, or when even ``z = 1e6`` does not reach the target.
    """
    if not target_epsilon > 0 or math.isinf(target_epsilon):
        raise ValueError(f"target_epsilon must be finite and > 0, got {target_epsilon}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1 to calibrate, got {steps}")
    if not 0 < rtol < 1:
        raise ValueError(f"rtol must be in (0, 1), got {rtol}")
    check_accounting_args(1.0, sample_rate, steps, delta)

    def eps(z: float) -> float:
        return epsilon_of_history([(z, sample_rate, steps)], delta, accountant)

    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, 2.0 * hi
        if hi > MAX_NOISE_MULTIPLIER:
            raise ValueError(
                f"target_epsilon={target_epsilon} at delta={delta} is unreachable: even "
                f"noise_multiplier={MAX_NOISE_MULTIPLIER:g} gives epsilon={eps(MAX_NOISE_MULTIPLIER):.4g}"
            )
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        e = eps(mid)
        if e <= target_epsilon:
            hi = mid
            if e >= target_epsilon * (1 - rtol):
                break
        else:
            lo = mid
    return hi
