"""``min_max`` and ``min_sum`` (Shejwalkar & Houmansadr, NDSS 2021), AGR-agnostic.

Shejwalkar, Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses
for Federated Learning", Sec. IV-B: all malicious clients send ``m = mu - gamma * delta`` with ``mu``
the honest mean and ``delta`` a perturbation direction (``dev_type``):

* ``unit_vec``: ``mu / ||mu||`` (inverse unit vector), ``sign``: ``sign(mu)``, ``std``: the
  coordinate-wise standard deviation (``ddof=1``, like ``torch.std`` in the authors' code).

``gamma`` is the largest value the binary search of the authors' code (``our_attack_dist`` /
``our_attack_score``, ``lamda = 10``, ``threshold_diff = 1e-5``) finds such that

* **min-max**: ``max_i ||m - x_i||^2 <= max_{i,j} ||x_i - x_j||^2`` (no farther from any honest
  update than the two farthest honest updates are from each other);
* **min-sum**: ``sum_i ||m - x_i||^2 <= min_i sum_j ||x_i - x_j||^2``.

The search: start at ``gamma_init``, step = ``gamma_init``; on success remember ``gamma`` and add
step/2, else subtract step/2; halve the step; stop when the candidate is within ``tol`` of the last
success. Distances to ``m`` are ``a_i + 2 gamma b_i + gamma^2 c`` (``a_i = ||x_i - mu||^2``,
``b_i = (x_i - mu) . delta``, ``c = ||delta||^2``), so every step is O(h).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stamen.simulations.attacks.base import (
    UpdateAttack,
    as_number,
    check_honest,
    register_update_attack,
    repeat_row,
)

DEV_TYPES = ("unit_vec", "sign", "std")


def deviation(x: np.ndarray, mu: np.ndarray, dev_type: str) -> np.ndarray:
    """The perturbation direction ``delta`` of the honest float64 stack ``x`` with mean ``mu``."""
    if dev_type == "unit_vec":
        norm = float(np.linalg.norm(mu))
        return mu / norm if norm > 0 else np.zeros_like(mu)
    if dev_type == "sign":
        return np.sign(mu)
    return x.std(axis=0, ddof=1 if x.shape[0] > 1 else 0)


def gamma_search(ok: Callable[[float], bool], gamma_init: float, tol: float) -> float:
    """Largest ``gamma`` accepted by ``ok`` along the authors' halving search (0 if none)."""
    gamma, step, success = gamma_init, gamma_init, 0.0
    while abs(success - gamma) > tol:
        if ok(gamma):
            success = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return success


def _factory(rule: str) -> Callable[..., UpdateAttack]:
    def factory(dev_type: str = "unit_vec", gamma_init: float = 10.0, tol: float = 1e-5) -> UpdateAttack:
        if dev_type not in DEV_TYPES:
            raise ValueError(f"{rule}: dev_type must be one of {', '.join(DEV_TYPES)}, got {dev_type!r}")
        g0 = as_number(f"{rule}: gamma_init", gamma_init, positive=True)
        tol_ = as_number(f"{rule}: tol", tol, positive=True)

        def attack(honest: np.ndarray, num_malicious: int, rng: np.random.Generator) -> np.ndarray:
            del rng  # deterministic
            x = check_honest(honest, num_malicious).astype(np.float64)
            mu = x.mean(axis=0)
            delta = deviation(x, mu, dev_type)
            centred = x - mu  # (h, d)
            gram = centred @ centred.T  # (h, h)
            sq = np.diag(gram)
            pair = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)  # honest squared distances
            b, c = centred @ delta, float(delta @ delta)

            def dists(gamma: float) -> np.ndarray:  # ||x_i - (mu - gamma delta)||^2
                return sq + 2.0 * gamma * b + gamma * gamma * c

            if rule == "min_max":
                bound = float(pair.max())
                gamma = gamma_search(lambda g: float(dists(g).max()) <= bound, g0, tol_)
            else:
                bound = float(pair.sum(axis=1).min())
                gamma = gamma_search(lambda g: float(dists(g).sum()) <= bound, g0, tol_)
            return repeat_row(mu - gamma * delta, num_malicious)

        return attack

    factory.__doc__ = (
        f"``{rule}`` attack. ``dev_type`` in {DEV_TYPES} (default ``unit_vec``), ``gamma_init > 0`` "
        "(default 10, the authors' ``lamda``), ``tol > 0`` (default 1e-5, their ``threshold_diff``)."
    )
    return factory


min_max = register_update_attack("min_max")(_factory("min_max"))
min_sum = register_update_attack("min_sum")(_factory("min_sum"))
