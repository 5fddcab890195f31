"""RQM vs equal-bits baselines at the mechanism level: MSE of the mean estimate vs ε.

``n`` clients each hold ``d`` coordinates ``x`` in ``[-c, c]`` and send ``b`` bits per coordinate
through a local DP mechanism; the server averages. Two data sets (fixed seed): ``centered``,
``x ~ U[-c, c]`` (true mean near 0, which flatters estimators that shrink towards 0), and ``offset``,
``x ~ U[0, c]`` (true mean c/2, where clipping bias shows). For each bit width and target ε (at ``δ``,
composed over the ``d`` coordinates with one release per client), every mechanism gets its best
parameters *for that data set* subject to ``ε <= target``; we report the MSE of the mean estimate
(per coordinate, bias included):

- **RQM** (Youn et al. 2023): ``m = 2**b`` levels; ``q`` on a grid, ``delta`` the smallest meeting the
  target (log grid, then bisection); exact RDP from :mod:`stamen.server.privacy.rqm_rdp`, exact MSE
  from the output law (unbiased: ``MSE = mean Var / n``), checked by Monte Carlo with the real codec
  sampler.
- **PBM**, the Poisson binomial mechanism (Chen, Özgür, Kairouz, ICML 2022): ``Z ~ Bin(M, 1/2 +
  θx/c)`` with any ``M <= 2**b - 1`` (``b`` bits carry ``Z in [0, M]``; the best ``M`` is chosen like
  RQM's parameters — forcing ``M = 2**b - 1`` is unfair, since more trials cost budget; that figure is
  kept as ``pbm_max_trials``), ``θ <= 1/4``, ``x̂ = c (Z - M/2) / (Mθ)``. Its RDP is
  computed exactly, not by the paper's bound: ``D_α(Bin(M,p)||Bin(M,p')) = M D_α(Bern(p)||Bern(p'))``
  (product law) and the worst pair is ``p, p' = 1/2 ± θ`` (jointly convex divergence, monotone
  Bernoulli family), so ``ε(α) = M D_α(Bern(1/2+θ)||Bern(1/2-θ))``. ``θ`` by bisection.
- **Gaussian + SQ**: ``y = x + N(0, σ²)`` (sensitivity ``2c`` per coordinate, RDP ``2αc²/σ²``), clip
  to ``[-r, r]``, unbiased stochastic rounding to ``2**b`` levels on ``[-r, r]`` (post-processing).
  ``σ`` by bisection; ``r`` = best of ``c + kσ``, ``k`` in a grid (clipping bias counted); MSE by
  quadrature over the noise. Clipping at ``r = c`` under heavy noise shrinks the estimate towards 0,
  which can beat the unbiased mechanisms while being no better than not sending anything: the
  last column is that "estimate 0" MSE (the squared true mean).

All mechanisms are analysed in the same *local* model (each client's message is private on its own;
no secure aggregation). PBM's own guarantee is for the securely aggregated sum (distributed DP),
where it improves with ``n``; that setting is not what is compared here.

All three use the same Rényi orders and the same RDP -> (ε, δ) conversion (Balle et al. 2020). The
anchor measured in the same run is the unquantized Gaussian mechanism at the same ε (infinite bits).

Regenerate::

    .venv/bin/python benchmarks/bench_rqm.py            # bits 1-4, eps 1,2,4,8, d = 1 and 100
    .venv/bin/python benchmarks/bench_rqm.py --quick    # bits 1-3, d = 1

Prints markdown tables and writes ``benchmarks/results/rqm.json``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import _provenance
import numpy as np

from stamen.privacy.rqm_rdp import RqmParams, output_pmf, rdp_curve, rdp_to_dp
from stamen.protocols.codecs.rqm import quantize

ORDERS: tuple[float, ...] = tuple(
    float(a) for a in np.unique(np.concatenate([1 + np.geomspace(0.02, 4, 24), np.geomspace(5, 512, 30)]))
)
Q_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
EXT_GRID = tuple(float(v) for v in np.geomspace(1e-4, 2000.0, 64))  # delta / c
R_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)  # r = c + k sigma


def dp_eps(curve: np.ndarray, dims: int, delta: float) -> float:
    """ε at ``delta`` of ``dims`` coordinates released once (same conversion for every mechanism)."""
    return rdp_to_dp(ORDERS, curve * dims, delta)[0]


def bisect(feasible: Any, lo: float, hi: float, steps: int = 40, geometric: bool = True) -> float:
    """Boundary of a monotone predicate: ``feasible(hi)`` true, ``feasible(lo)`` false."""
    for _ in range(steps):
        mid = math.sqrt(lo * hi) if geometric else (lo + hi) / 2
        lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    return hi


# ---- RQM ---------------------------------------------------------------------------------------


@functools.cache
def rqm_curve(m: int, q: float, ext: float) -> np.ndarray:
    """Per-coordinate RDP curve of RQM with c = 1 (cached: shared by every ε and d)."""
    return rdp_curve(ORDERS, RqmParams(1.0, ext, m, q))


def rqm_mse(p: RqmParams, xs: np.ndarray) -> float:
    """Exact per-coordinate MSE of the mean of ``len(xs)`` unbiased RQM outputs."""
    pmf = output_pmf(xs, p)  # (n, m)
    grid = p.levels()
    var = (pmf * grid[None, :] ** 2).sum(axis=1) - np.clip(xs, -p.c, p.c) ** 2
    return float(var.sum() / xs.size**2)


def rqm_best(m: int, eps: float, dims: int, delta: float, xs: np.ndarray) -> dict[str, Any]:
    """Lowest-MSE RQM with ``m`` levels and ``ε <= eps``: q on a grid, delta by grid + bisection."""
    best: dict[str, Any] = {"mse": math.inf}
    for q in Q_GRID if m > 2 else (0.0,):

        def ok(ext: float, q: float = q) -> bool:
            return dp_eps(rqm_curve(m, q, ext), dims, delta) <= eps

        feasible = [e for e in EXT_GRID if ok(e)]
        if not feasible:
            continue
        i = EXT_GRID.index(feasible[0])
        ext = feasible[0] if i == 0 else bisect(ok, EXT_GRID[i - 1], feasible[0], steps=8)
        mse = rqm_mse(RqmParams(1.0, ext, m, q), xs)
        if mse < best["mse"]:
            best = {"mse": mse, "q": q, "delta_over_c": ext}
    return best


def rqm_monte_carlo(best: dict[str, Any], m: int, xs: np.ndarray, trials: int, seed: int) -> float:
    """Empirical MSE of the mean with the real codec sampler (``trials`` rounds of ``n`` clients)."""
    rng = np.random.default_rng(seed)
    p = RqmParams(1.0, best["delta_over_c"], m, best["q"])
    grid = p.levels()
    z = quantize(np.tile(xs, trials), 1.0, p.delta, m, p.q, rng).reshape(trials, xs.size)
    return float(np.mean((grid[z.astype(int)].mean(axis=1) - xs.mean()) ** 2))


# ---- PBM ---------------------------------------------------------------------------------------


def bernoulli_rdp(p: float, p2: float) -> np.ndarray:
    """``D_α(Bern(p)||Bern(p2))`` for every order."""
    a = np.array(ORDERS)
    return np.log(p**a * p2 ** (1 - a) + (1 - p) ** a * (1 - p2) ** (1 - a)) / (a - 1)


def pbm_fixed(trials_m: int, eps: float, dims: int, delta: float, xs: np.ndarray) -> dict[str, Any]:
    """PBM with ``M`` trials: the largest ``θ <= 1/4`` meeting the target, and its exact MSE."""

    def ok(theta: float) -> bool:
        return dp_eps(trials_m * bernoulli_rdp(0.5 + theta, 0.5 - theta), dims, delta) <= eps

    # feasible for small θ: bisect on 1/θ, which returns a point on the feasible side
    theta = 0.25 if ok(0.25) else 1.0 / bisect(lambda inv: ok(1.0 / inv), 4.0, 1e9)
    p = 0.5 + theta * np.clip(xs, -1, 1)
    var = p * (1 - p) / (trials_m * theta**2)  # c = 1
    return {"mse": float(var.sum() / xs.size**2), "theta": theta, "trials": trials_m}


def pbm_best(max_trials: int, eps: float, dims: int, delta: float, xs: np.ndarray) -> dict[str, Any]:
    """Lowest-MSE PBM with any ``M <= max_trials`` trials (``b`` bits carry ``M <= 2**b - 1``).

    More trials are not always better: ``ε(α) = M·D_α`` grows with ``M``, so at a fixed budget
    ``θ`` shrinks, and once ``θ < 1/4`` binds the variance ``p(1-p)/(Mθ²)`` can grow with ``M``.
    """
    return min((pbm_fixed(m, eps, dims, delta, xs) for m in range(1, max_trials + 1)), key=lambda r: r["mse"])


# ---- Gaussian + stochastic quantization ---------------------------------------------------------


def gaussian_sigma(eps: float, dims: int, delta: float) -> float:
    """Smallest σ (c = 1, sensitivity 2) with ``ε <= eps``: RDP ``α · 4 / (2σ²)`` per coordinate."""
    a = np.array(ORDERS)
    return bisect(lambda s: dp_eps(a * 2.0 / s**2, dims, delta) <= eps, 1e-3, 1e5)


def gauss_sq_stats(x: float, sigma: float, r: float, levels: int) -> tuple[float, float]:
    """(bias, variance) of ``SQ(clip(x + N(0, σ²), -r, r))`` by quadrature on 4001 points."""
    y = x + sigma * np.linspace(-8, 8, 4001)
    w = np.exp(-0.5 * np.linspace(-8, 8, 4001) ** 2)
    w /= w.sum()
    v = np.clip(y, -r, r)
    step = 2 * r / (levels - 1)
    frac = (v + r) / step - np.floor((v + r) / step)
    mean = float((w * v).sum())
    var = float((w * v**2).sum() - mean**2 + (w * step**2 * frac * (1 - frac)).sum())
    return mean - x, var


def gauss_sq_best(levels: int, eps: float, dims: int, delta: float, xs: np.ndarray) -> dict[str, Any]:
    """Gaussian + SQ at the calibrated σ, with the best clipping range ``r = c + kσ``."""
    sigma = gaussian_sigma(eps, dims, delta)
    best: dict[str, Any] = {"mse": math.inf, "sigma": sigma}
    for k in R_GRID:
        r = 1.0 + k * sigma
        stats = np.array([gauss_sq_stats(float(x), sigma, r, levels) for x in xs])  # (n, 2)
        mse = float(stats[:, 0].mean() ** 2 + stats[:, 1].sum() / xs.size**2)
        if mse < best["mse"]:
            best.update(mse=mse, r_over_c=r)
    return best


# ---- driver ------------------------------------------------------------------------------------


def run_cell(
    bits: int, eps: float, dims: int, delta: float, data: tuple[str, np.ndarray], mc: int
) -> dict[str, Any]:
    """All mechanisms at one (bits, ε, d, data set)."""
    name, xs = data
    rqm = rqm_best(2**bits, eps, dims, delta, xs)
    if math.isfinite(rqm["mse"]) and mc:
        rqm["mse_monte_carlo"] = rqm_monte_carlo(rqm, 2**bits, xs, mc, seed=bits)
    sigma = gaussian_sigma(eps, dims, delta)
    return {
        "bits": bits,
        "epsilon": eps,
        "dims": dims,
        "data": name,
        "rqm": rqm,
        "pbm": pbm_best(2**bits - 1, eps, dims, delta, xs),
        "pbm_max_trials": pbm_fixed(2**bits - 1, eps, dims, delta, xs),  # M forced to 2^b - 1 (before)
        "gauss_sq": gauss_sq_best(2**bits, eps, dims, delta, xs),
        "anchor_gaussian_mse": sigma**2 / xs.size,
        "zero_estimator_mse": float(xs.mean() ** 2),  # "send nothing": a shrinkage floor
    }


def markdown(rows: list[dict[str, Any]], dims: int, data: str) -> str:
    """One table per (d, data): each mechanism's MSE and its ratio to the unquantized Gaussian."""
    lines = [
        f"**d = {dims}, data `{data}`** — MSE of the mean per coordinate (ratio to the anchor)",
        "",
        "| bits | ε | RQM (q, Δ/c) | RQM Monte Carlo | PBM, best M ≤ 2^b−1 (M, θ) | PBM, M = 2^b−1 "
        "| Gauss + SQ (σ, r/c) | anchor: Gaussian, ∞ bits | estimate 0 | PBM / RQM | Gauss+SQ / RQM |",
        "|---:|---:|---|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in (r for r in rows if r["dims"] == dims and r["data"] == data):
        a, rq, pb, gs = row["anchor_gaussian_mse"], row["rqm"], row["pbm"], row["gauss_sq"]
        forced = row["pbm_max_trials"]["mse"]
        rq_text = (
            f"{rq['mse']:.3g} ({rq['mse'] / a:.2f}×; q={rq['q']}, Δ/c={rq['delta_over_c']:.3g})"
            if math.isfinite(rq["mse"])
            else "infeasible"
        )
        lines.append(
            f"| {row['bits']} | {row['epsilon']:g} | {rq_text} | {rq.get('mse_monte_carlo', math.nan):.3g} "
            f"| {pb['mse']:.3g} ({pb['mse'] / a:.2f}×; M={pb['trials']}, θ={pb['theta']:.3g}) | {forced:.3g} "
            f"| {gs['mse']:.3g} ({gs['mse'] / a:.2f}×; σ={gs['sigma']:.3g}, r={gs['r_over_c']:.3g}) "
            f"| {a:.3g} | {row['zero_estimator_mse']:.3g} | {pb['mse'] / rq['mse']:.2f} "
            f"| {gs['mse'] / rq['mse']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = _provenance.parser(__doc__, quick="bits 1-3, d = 1, fewer Monte Carlo trials", out="rqm.json")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    prov = _provenance.Provenance.capture()
    bits_list, dims_list = ((1, 2, 3), (1,)) if args.quick else ((1, 2, 3, 4), (1, 100))
    eps_list, mc = (1.0, 2.0, 4.0, 8.0), (500 if args.quick else 4000)
    rng = np.random.default_rng(args.seed)  # c = 1
    datasets = {
        "centered": rng.uniform(-1.0, 1.0, args.clients),
        "offset": rng.uniform(0.0, 1.0, args.clients),
    }
    rows = []
    for dims in dims_list:
        for item in datasets.items():
            for bits in bits_list:
                for eps in eps_list:
                    rows.append(run_cell(bits, eps, dims, args.delta, item, mc))
    for dims in dims_list:
        for name in datasets:
            print(markdown(rows, dims, name) + "\n")
    config = {
        "clients": args.clients,
        "delta": args.delta,
        "c": 1.0,
        "seed": args.seed,
        "data": {"centered": "x ~ U[-c, c]", "offset": "x ~ U[0, c]"},
        "orders": list(ORDERS),
        "q_grid": list(Q_GRID),
        "quick": args.quick,
        "monte_carlo_trials": mc,
    }
    prov.write(_provenance.out_path(args), {"config": config, "rows": rows})


if __name__ == "__main__":
    main()
