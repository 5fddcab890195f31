"""``centered_clipping`` (Karimireddy, He, Jaggi, ICML 2021).

Karimireddy et al., "Learning from History for Byzantine Robust Optimization", Sec. 4, Eq. (CC):
starting from a centre ``v_0``, iterate ``l = 0 .. L-1``

    v_{l+1} = v_l + (1/n) sum_i (x_i - v_l) * min(1, tau / ||x_i - v_l||),

and return ``v_L``. The centre is the previous round's aggregate (the paper's momentum ``v``), zero in
the first round -- as in the authors' ``Clipping`` aggregator (epfml/byzantine-robust-optimizer,
``tau``, ``n_iter=1``). The rule is therefore **stateful**: one callable per run, and it remembers
its last output. ``weights`` are validated and ignored (the paper averages uniformly).

Each iterate is an affine combination of the rows and ``v_0`` (coefficients summing to 1), so the
``L`` steps run on the ``(n+1, n+1)`` Gram matrix of ``[x; v_0]``; the stack is read twice in total.
"""

from __future__ import annotations

import numpy as np

from stamen.server.aggregators._common import as_stack, centered_gram, check_count, check_positive
from stamen.server.aggregators.base import Aggregator, check_stack, register


def clipping_coefficients(gram: np.ndarray, tau: float, iters: int) -> np.ndarray:
    """Coefficients ``c`` (length ``n + 1``, last = the centre) of ``v_L = sum_j c_j z_j``."""
    n = gram.shape[0] - 1
    coef = np.zeros(n + 1, dtype=np.float64)
    coef[n] = 1.0  # v_0 = the centre
    diag = np.diag(gram)[:n]
    for _ in range(iters):
        g_coef = gram @ coef
        dist = np.sqrt(np.maximum(diag - 2.0 * g_coef[:n] + coef @ g_coef, 0.0))  # ||x_i - v_l||
        ratio = np.divide(tau, dist, out=np.full_like(dist, np.inf), where=dist > 0)  # 0 -> unclipped
        scale = np.minimum(1.0, ratio) / n  # (n,)
        coef = coef * (1.0 - scale.sum())
        coef[:n] += scale
    return coef


class CenteredClipping:
    """Stateful centered-clipping rule; ``center`` is the last aggregate (``None`` before round 1)."""

    def __init__(self, tau: float, iters: int) -> None:
        self.tau = tau
        self.iters = iters
        self.center: np.ndarray | None = None

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Clip around the previous aggregate, return the new one and keep it as the next centre."""
        check_stack(updates, weights)
        x = as_stack(updates)
        d = x.shape[1]
        center = np.zeros(d, dtype=np.float32) if self.center is None else self.center
        if center.shape != (d,):
            raise ValueError(
                f"centered_clipping: update size {d} differs from the previous round's "
                f"{center.shape[0]}; build one aggregator per run"
            )
        coef = clipping_coefficients(centered_gram(x, center[None, :]), self.tau, self.iters)
        out = coef[:-1].astype(np.float32) @ x + np.float32(coef[-1]) * center
        self.center = np.asarray(out, dtype=np.float32)
        return self.center.copy()


@register("centered_clipping")
def centered_clipping(tau: float = 10.0, iters: int = 1) -> Aggregator:
    """Centered clipping around the previous round's aggregate.

    Parameters
    ----------
    tau : float, default 10.0
        Clipping radius ``> 0`` in the L2 units of the updates. Scale-dependent: the paper tunes it
        (the authors' sweep: 0.1, 10, 1000); set it near the norm of an honest update's deviation
        from the running aggregate.
    iters : int, default 1
        Clipping iterations ``L >= 1`` per round (the authors' default ``n_iter=1``).
    """
    return CenteredClipping(
        check_positive("centered_clipping: tau", tau), check_count("centered_clipping: iters", iters, 1)
    )
