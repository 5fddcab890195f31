"""``fang_krum`` and ``fang_trmean``: full-knowledge local model poisoning (Fang et al. 2020).

Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning",
USENIX Security 2020, Sec. 3. ``s = sign(mean of the honest updates)`` is the direction in which
each parameter would move without attack; the attackers push against it. Applied to updates
(``delta = local - global``), as in Shejwalkar & Houmansadr's and Bristle's re-implementations.

* ``fang_krum`` (Sec. 3.2, Krum): all ``c`` attackers send ``-lambda * s``. ``lambda`` starts at the
  paper's upper bound, with ``m = h + c`` clients and ``d`` coordinates,

      lambda_0 = min_i sum_{j in N_i} ||x_i - x_j|| / ((m - 2c - 1) sqrt(d)) + max_i ||x_i|| / sqrt(d),

  ``N_i`` the ``m - c - 2`` honest updates closest to honest ``x_i`` (``||x_i||`` is the distance of
  local model ``i`` to the global model), and is halved until Krum with the *assumed*
  ``assumed_byzantine`` (default: the actual ``c``) picks a crafted update, or ``lambda`` falls below
  ``threshold`` -- then, as in the NDSS'21 code, the attackers send ``mean - lambda * s``.
* ``fang_trmean`` (Sec. 3.2, trimmed mean / median): with ``w_max``, ``w_min`` the coordinate-wise
  honest max and min, where ``s_j < 0`` each attacker samples uniformly in ``[w_max, b w_max]``
  (``w_max > 0``) or ``[w_max, w_max / b]`` (else); where ``s_j > 0`` in ``[w_min / b, w_min]``
  (``w_min > 0``) or ``[b w_min, w_min]`` (else); ``s_j = 0`` gives 0. ``b = 2`` as in the paper. (The
  NDSS'21 notebook's version multiplies both branches by ``deviation > 0``; we follow the paper.)
"""

from __future__ import annotations

import math

import numpy as np

from stamen.server.aggregators.krum import krum_scores
from stamen.simulations.attacks.base import (
    UpdateAttack,
    as_number,
    check_honest,
    register_update_attack,
    repeat_row,
)


def lambda_upper_bound(x: np.ndarray, c: int) -> float:
    """Fang et al.'s starting ``lambda`` for ``h`` honest float64 rows ``x`` and ``c`` attackers."""
    h, d = x.shape
    sq = np.einsum("ij,ij->i", x, x)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0))  # (h, h)
    np.fill_diagonal(dist, np.inf)
    k = min(max(h - 2, 0), h - 1)  # m - c - 2 honest neighbours
    near = np.sort(dist, axis=1)[:, :k].sum(axis=1).min() if k > 0 else 0.0
    return float(near / (max(h - c - 1, 1) * math.sqrt(d)) + np.sqrt(sq.max()) / math.sqrt(d))


def krum_picks_crafted(x: np.ndarray, mal: np.ndarray, c: int, f: int) -> bool:
    """Whether Krum (``f`` assumed) over ``c`` copies of ``mal`` and the honest ``x`` picks a copy."""
    h = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x)
    honest_d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    cross = np.maximum(sq - 2.0 * (x @ mal) + mal @ mal, 0.0)  # (h,)
    d2 = np.zeros((c + h, c + h))
    d2[c:, c:] = honest_d2
    d2[:c, c:] = cross[None, :]
    d2[c:, :c] = cross[:, None]
    np.fill_diagonal(d2, 0.0)
    return int(np.argmin(krum_scores(d2, f))) < c


@register_update_attack("fang_krum")
def fang_krum(assumed_byzantine: int | None = None, threshold: float = 1e-5) -> UpdateAttack:
    """Fang et al.'s full-knowledge attack on Krum (``assumed_byzantine`` = the rule's ``f``)."""
    if assumed_byzantine is not None and (
        isinstance(assumed_byzantine, bool) or not isinstance(assumed_byzantine, int) or assumed_byzantine < 0
    ):
        raise ValueError(f"fang_krum: assumed_byzantine must be an integer >= 0, got {assumed_byzantine!r}")
    thr = as_number("fang_krum: threshold", threshold, positive=True)

    def attack(honest: np.ndarray, num_malicious: int, rng: np.random.Generator) -> np.ndarray:
        del rng  # deterministic
        x = check_honest(honest, num_malicious).astype(np.float64)
        if num_malicious == 0:
            return np.zeros((0, x.shape[1]), np.float32)
        f = num_malicious if assumed_byzantine is None else assumed_byzantine
        mu = x.mean(axis=0)
        s = np.sign(mu)
        lam = lambda_upper_bound(x, num_malicious)
        while lam > thr:
            if krum_picks_crafted(x, -lam * s, num_malicious, f):
                return repeat_row(-lam * s, num_malicious)
            lam *= 0.5
        return repeat_row(mu - lam * s, num_malicious)

    return attack


@register_update_attack("fang_trmean")
def fang_trmean(b: float = 2.0) -> UpdateAttack:
    """Fang et al.'s full-knowledge attack on trimmed mean / median; ``b > 1`` (default 2)."""
    b_ = as_number("fang_trmean: b", b, positive=True)
    if b_ <= 1:
        raise ValueError(f"fang_trmean: b must be > 1, got {b!r}")

    def attack(honest: np.ndarray, num_malicious: int, rng: np.random.Generator) -> np.ndarray:
        x = check_honest(honest, num_malicious)
        w_max, w_min = x.max(axis=0).astype(np.float64), x.min(axis=0).astype(np.float64)
        s = np.sign(x.astype(np.float64).mean(axis=0))
        up_hi = np.where(w_max > 0, b_ * w_max, w_max / b_)  # interval [w_max, up_hi] (or reversed)
        down_lo = np.where(w_min > 0, w_min / b_, b_ * w_min)  # interval [down_lo, w_min]
        u = rng.random((num_malicious, x.shape[1]))
        up = w_max + u * (up_hi - w_max)
        down = down_lo + u * (w_min - down_lo)
        return np.where(s < 0, up, np.where(s > 0, down, 0.0)).astype(np.float32)

    return attack
