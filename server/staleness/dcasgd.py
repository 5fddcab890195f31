"""DC-ASGD first-order delay compensation of a stale delta.

Formula (our convention, delta = local - global)::

    delta_hat = delta - lam * delta ⊙ delta ⊙ (w_t - w_{t-tau})

Derivation and sign check
-------------------------
DC-ASGD (Zheng et al., "Asynchronous Stochastic Gradient Descent with Delay Compensation", ICML
2017) corrects a gradient computed at a stale point by the first-order Taylor term, with the
Hessian approximated by the diagonal of the gradient's outer product::

    g(w_t) ≈ g(w_{t-tau}) + lam_g * g ⊙ g ⊙ (w_t - w_{t-tau})

The parameter server then steps ``w <- w - eta * g(w_t)``. A client delta is a descent step,
``delta = -eta * g`` (so ``g ⊙ g = delta ⊙ delta / eta^2``), hence the compensated delta is
``-eta * g(w_t) = delta - (lam_g / eta) * delta ⊙ delta ⊙ (w_t - w_{t-tau})``: a **minus** sign with
``lam = lam_g / eta``. The square makes the correction term independent of the delta's sign, so
with the opposite convention (pseudo-gradient ``p = global - local = -delta``) the same correction
reads ``p + lam p ⊙ p ⊙ (w_t - w_{t-tau})``; with ours it is a minus.

The staleness paper's baseline (pittisl/FL-with-intertwined-heterogeneity ``fixed.py`` at commit
4ec51ab, branch ``dc == 3``) aggregates ``w_t + delta - lam * delta * delta * (w_t - w0)`` with
``delta = w_local - w0``, ``w0 = w_{t-tau}`` and ``lam = 4``: the same formula and sign as here.
For its local procedure (5 steps of lr 0.01, so ``delta ≈ -0.05 g``) ``lam = 4`` corresponds to
``lam_g ≈ 0.2`` in DC-ASGD's own units [DERIVED]. DC-ASGD's adaptive variant (``lam`` scaled by a
running mean square of the gradient) is not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from stamen.server.staleness.compensation import ModelVersions, Weights, as_float32, check_versions, register
from stamen.server.staleness.errors import check_tau


@register("dcasgd", needs_versions=True)
@dataclass(frozen=True)
class DcAsgd:
    """``delta - lam * delta ⊙ delta ⊙ (w_t - w_{t-tau})`` (see the module docstring).

    Parameters
    ----------
    lam : float, default 4.0
        Compensation strength in delta units (``>= 0``; ``0`` is direct aggregation). 4.0 is the
        staleness paper's setting.
    """

    name: ClassVar[str]
    needs_versions: ClassVar[bool]
    lam: float = 4.0

    def __post_init__(self) -> None:
        ok = not isinstance(self.lam, bool) and isinstance(self.lam, int | float) and math.isfinite(self.lam)
        if not ok or self.lam < 0:
            raise ValueError(f"dcasgd: lam must be a finite number >= 0, got {self.lam!r}")
        object.__setattr__(self, "lam", float(self.lam))

    def __call__(
        self,
        delta: Mapping[str, np.ndarray],
        tau: int,
        versions: ModelVersions | None = None,
        *,
        client: int | None = None,
    ) -> Weights:
        out = as_float32(delta)
        if check_tau(tau) == 0:
            return out  # w_t == w_{t-tau}: nothing to compensate
        check_versions(out, versions, "dcasgd")
        assert versions is not None
        for key, d in out.items():
            drift = np.asarray(versions.current[key], np.float64) - np.asarray(
                versions.stale_base[key], np.float64
            )
            d64 = d.astype(np.float64)
            out[key] = (d64 - self.lam * d64 * d64 * drift).astype(np.float32)
        return out
