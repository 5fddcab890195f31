"""Exact Rényi DP of the Randomized Quantization Mechanism (RQM), composed and converted to (ε, δ).

Youn, Hu, Ziani, Abernethy, "Randomized Quantization is All You Need for Differential Privacy in
Federated Learning" (arXiv 2306.11913), Algorithm 2; the mechanism is the codec stage
:mod:`stamen.protocols.codecs.rqm`. Instead of the paper's closed-form bound, the privacy loss is
computed *exactly*, numerically:

1. **Output law of one coordinate.** For an input ``x`` in ``[-c, c]`` with grid index ``l``
   (``B(l) <= x < B(l+1)``), the kept neighbours are independent: the lower one is ``a = 0`` with
   probability ``(1-q)^l`` and ``a in 1..l`` with ``q (1-q)^(l-a)``; the upper one is ``b = m-1``
   with ``(1-q)^(m-2-l)`` and ``b in l+1..m-2`` with ``q (1-q)^(b-l-1)``. Then
   ``P(z=a | a,b) = (B(b)-x)/(B(b)-B(a))`` and ``P(z=b | a,b) = (x-B(a))/(B(b)-B(a))``. Summing over
   the ``O(m^2)`` neighbour pairs gives ``P_x`` exactly (:func:`output_pmf`); for small ``m`` it is
   checked against brute-force enumeration of all ``2^(m-2)`` keep patterns
   (:func:`output_pmf_enumerated`).
2. **Worst-case pair.** ``eps(α) = sup_{x,x' in [-c,c]} D_α(P_x || P_x')`` with
   ``D_α(P||Q) = log(sum_j P_j^α Q_j^(1-α)) / (α-1)``. For every keep pattern, ``P(z=j)`` is affine
   in ``x`` between consecutive grid levels, so ``x -> P_x`` is continuous and piecewise affine with
   breakpoints at the levels. ``(p, q) -> p^α q^(1-α)`` is jointly convex for ``α > 1`` (a
   perspective of ``t^α``), so on each rectangle of breakpoints the objective is convex in
   ``(x, x')`` and its maximum is at a corner. Hence the supremum is a maximum over the finite set
   ``S = {-c, c} ∪ {B(i) : -c < B(i) < c}`` (:func:`critical_inputs`) — exact, not a grid search.
   (In every setting we tried the maximiser is ``(x, x') = (-c, c)`` or ``(c, -c)``, as the notes
   suggest, but the accountant does not rely on it.)
3. **Composition.** Coordinates use independent randomness, so the output is a product law and
   Rényi divergences add: ``d`` coordinates that can all change (per-coordinate clipping allows
   that) cost ``d · eps(α)``; ``R`` participations cost ``R · d · eps(α)`` (adaptive composition,
   Mironov 2017, Prop. 1).
4. **Conversion** to (ε, δ): Balle et al. 2020, "Hypothesis testing interpretations and Rényi
   DP", Thm. 21 (opacus' ``get_privacy_spent``), minimised over the orders.

Threat model and what is *not* claimed: RQM is a local mechanism — the server sees every client's
``z`` and knows who sent it — so **no amplification by client subsampling is claimed**; a client's
ε counts the rounds it actually took part in (:class:`RqmAccountant`). The neighbouring relation
is "the client's whole update changes arbitrarily" (any clipped value in every coordinate).
``eps`` depends on ``c`` and ``delta`` only through ``delta / c`` (everything scales), is finite
iff ``delta > 0`` and ``q < 1``, and for ``m = 2`` is pure ε-DP with ``e^ε = 1 + 2c/delta``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

__all__ = [
    "DEFAULT_ORDERS",
    "RqmAccountant",
    "RqmParams",
    "calibrate_delta",
    "compose",
    "coordinate_rdp",
    "critical_inputs",
    "epsilon",
    "log_output_pmf",
    "output_pmf",
    "output_pmf_enumerated",
    "rdp_curve",
    "rdp_to_dp",
    "renyi_divergence",
    "renyi_divergence_log",
]

#: Rényi orders: opacus' defaults plus larger ones (the conversion takes the best).
DEFAULT_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *range(12, 64),
    64,
    80,
    96,
    128,
    192,
    256,
    512,
)
_MAX_ENUMERATED_LEVELS = 18
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class RqmParams:
    """RQM parameters (the ``rqm`` codec stage's ``c``, ``delta``, ``m``, ``q``).

    Attributes
    ----------
    c : float
        Clip bound, > 0.
    delta : float
        Extension of the level range beyond ``c``, > 0.
    m : int
        Number of levels, 2..256.
    q : float
        Keep probability of each interior level, in [0, 1].
    """

    c: float
    delta: float
    m: int
    q: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.c) and self.c > 0):
            raise ValueError(f"RQM c must be finite and > 0, got {self.c!r}")
        if not (math.isfinite(self.delta) and self.delta > 0):
            raise ValueError(f"RQM delta must be finite and > 0, got {self.delta!r}")
        if not (isinstance(self.m, int) and 2 <= self.m <= 256):
            raise ValueError(f"RQM m must be an int in 2..256, got {self.m!r}")
        if not 0.0 <= self.q <= 1.0:
            raise ValueError(f"RQM q must be in [0, 1], got {self.q!r}")

    @classmethod
    def from_stage(cls, params: Mapping[str, object]) -> RqmParams:
        """From the ``rqm`` stage params, e.g. ``dict(CodecSpec.parse(...).stages[0].params)``."""
        c, delta, m, q = (params[k] for k in ("c", "delta", "m", "q"))
        return cls(float(c), float(delta), int(m), float(q))  # type: ignore[arg-type,call-overload]

    def levels(self) -> np.ndarray:
        """(m,) levels ``B(i) = -X + 2iX/(m-1)``, ``X = c + delta`` (float64)."""
        x_max = self.c + self.delta
        return -x_max + 2.0 * np.arange(self.m) * x_max / (self.m - 1)


def _grid_index(x: float, grid: np.ndarray) -> int:
    """``l`` with ``B(l) <= x < B(l+1)``, in ``0 .. m-2``."""
    index = int(np.searchsorted(grid, x, side="right")) - 1
    return min(max(index, 0), grid.size - 2)


def _logsumexp(v: np.ndarray, axis: int) -> np.ndarray:
    """``log(sum(exp(v)))`` along ``axis``; ``-inf`` where every term is ``-inf``."""
    top = v.max(axis=axis, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(safe + np.log(np.exp(v - safe).sum(axis=axis, keepdims=True)), axis=axis)


def _log_powers(k: np.ndarray, log_base: float) -> np.ndarray:
    """``k * log_base`` with ``0 * (-inf) = 0`` (a power 0 of a zero probability is 1)."""
    with np.errstate(invalid="ignore"):  # 0 * -inf, replaced below
        return np.where(k == 0, 0.0, k * log_base)


def _log_pmf_one(x: float, p: RqmParams, grid: np.ndarray) -> np.ndarray:
    """(m,) exact ``log P(z = j)`` of one clipped input, summed in log space over neighbour pairs.

    Log space keeps tiny ``q`` (or ``1 - q``) from underflowing to a false zero probability, which
    would turn a finite divergence into an infinite one.
    """
    m, low = p.m, _grid_index(x, grid)
    log_q = math.log(p.q) if p.q > 0 else -math.inf
    log_1q = math.log1p(-p.q) if p.q < 1 else -math.inf
    a = np.arange(low + 1)  # lower neighbour candidates 0..l
    b = np.arange(low + 1, m)  # upper neighbour candidates l+1..m-1
    log_pa = np.where(a == 0, _log_powers(np.array(low), log_1q), log_q + _log_powers(low - a, log_1q))
    log_pb = np.where(
        b == m - 1, _log_powers(np.array(m - 2 - low), log_1q), log_q + _log_powers(b - low - 1, log_1q)
    )
    gap = grid[b][None, :] - grid[a][:, None]  # (l+1, m-1-l), > 0
    log_joint = log_pa[:, None] + log_pb[None, :]
    with np.errstate(divide="ignore"):
        down = log_joint + np.log((grid[b][None, :] - x) / gap)  # z = a
        up = log_joint + np.log((x - grid[a][:, None]) / gap)  # z = b
    return np.concatenate([_logsumexp(down, axis=1), _logsumexp(up, axis=0)])


def log_output_pmf(x: float | Sequence[float] | np.ndarray, params: RqmParams) -> np.ndarray:
    """Exact ``log P(z = j)`` of RQM for each input (clipped to ``[-c, c]``): (len(x), m)."""
    grid = params.levels()
    xs = np.clip(np.atleast_1d(np.asarray(x, np.float64)), -params.c, params.c)
    return np.stack([_log_pmf_one(float(v), params, grid) for v in xs])


def output_pmf(x: float | Sequence[float] | np.ndarray, params: RqmParams) -> np.ndarray:
    """Exact output law ``P(z = j)`` of RQM for each input (clipped to ``[-c, c]``).

    Returns
    -------
    numpy.ndarray
        (len(x), m) float64 rows summing to 1.
    """
    return np.exp(log_output_pmf(x, params))


def output_pmf_enumerated(x: float, params: RqmParams) -> np.ndarray:
    """Reference output law by enumerating all ``2^(m-2)`` keep patterns (``m <= 18``).

    Slow on purpose: it follows Algorithm 2 literally and checks :func:`output_pmf`.
    """
    if params.m > _MAX_ENUMERATED_LEVELS:
        raise ValueError(f"enumeration needs m <= {_MAX_ENUMERATED_LEVELS}, got {params.m}")
    grid, m, q = params.levels(), params.m, params.q
    v = min(max(float(x), -params.c), params.c)
    pmf = np.zeros(m)
    for pattern in itertools.product((False, True), repeat=m - 2):
        kept = [0, *(i + 1 for i, k in enumerate(pattern) if k), m - 1]
        weight = math.prod(q if k else 1 - q for k in pattern)
        a = max(i for i in kept if grid[i] <= v)
        b = min(i for i in kept if i > a)
        up = (v - grid[a]) / (grid[b] - grid[a])
        pmf[a] += weight * (1 - up)
        pmf[b] += weight * up
    return pmf


def critical_inputs(params: RqmParams) -> np.ndarray:
    """The finite set ``{-c, c} ∪ {B(i) in (-c, c)}`` on which the worst-case pair lies."""
    grid = params.levels()
    inner = grid[(grid > -params.c) & (grid < params.c)]
    return np.unique(np.concatenate([[-params.c, params.c], inner]))


def _log_moments(log_p: np.ndarray, log_q: np.ndarray, alpha: float) -> np.ndarray:
    """``log sum_j P_ij^α Q_kj^(1-α)`` for all rows i of P and k of Q: (rows_p, rows_q)."""
    pos = np.isfinite(log_p)[:, None, :]  # P_ij > 0
    with np.errstate(invalid="ignore"):
        terms = alpha * log_p[:, None, :] + (1 - alpha) * log_q[None, :, :]
    terms = np.where(pos, terms, -np.inf)  # P_ij = 0 terms vanish, even where Q_kj = 0
    top = terms.max(axis=2, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = safe[..., 0] + np.log(np.exp(terms - safe).sum(axis=2))
    return np.where(np.isposinf(top[..., 0]), np.inf, out)


def renyi_divergence(p: np.ndarray, q: np.ndarray, alpha: float) -> float:
    """``D_α(P || Q)`` in nats for discrete laws ``p``, ``q`` (``α > 1``; ``inf`` if unbounded)."""
    with np.errstate(divide="ignore"):
        log_p, log_q = np.log(np.asarray(p, np.float64)), np.log(np.asarray(q, np.float64))
    return renyi_divergence_log(log_p, log_q, alpha)


def renyi_divergence_log(log_p: np.ndarray, log_q: np.ndarray, alpha: float) -> float:
    """``D_α(P || Q)`` from log-probabilities (exact where tiny probabilities would underflow)."""
    if not alpha > 1:
        raise ValueError(f"Rényi order alpha must be > 1, got {alpha!r}")
    moment = _log_moments(np.asarray(log_p, np.float64)[None], np.asarray(log_q, np.float64)[None], alpha)
    return float(max(moment[0, 0], 0.0) / (alpha - 1))


def coordinate_rdp(alpha: float, params: RqmParams) -> tuple[float, float, float]:
    """Exact per-coordinate RDP ``eps(α)`` and a worst-case pair ``(x, x')`` attaining it."""
    if not alpha > 1:
        raise ValueError(f"Rényi order alpha must be > 1, got {alpha!r}")
    xs = critical_inputs(params)
    log_pmf = log_output_pmf(xs, params)  # (|S|, m)
    rows = max(1, _CHUNK_ELEMENTS // (xs.size * params.m))
    best, pair = -np.inf, (float(xs[0]), float(xs[0]))
    for start in range(0, xs.size, rows):
        moments = _log_moments(log_pmf[start : start + rows], log_pmf, alpha)
        i, k = np.unravel_index(int(np.argmax(moments)), moments.shape)
        if moments[i, k] > best:
            best, pair = float(moments[i, k]), (float(xs[start + i]), float(xs[k]))
    return max(best, 0.0) / (alpha - 1), pair[0], pair[1]


def rdp_curve(orders: Sequence[float], params: RqmParams) -> np.ndarray:
    """Per-coordinate ``eps(α)`` for every order (nats)."""
    return np.array([coordinate_rdp(float(a), params)[0] for a in orders])


def compose(rdp: np.ndarray, coordinates: int, rounds: int) -> np.ndarray:
    """RDP of ``rounds`` releases of ``coordinates`` independent coordinates: ``R · d · eps(α)``."""
    if coordinates < 0 or rounds < 0:
        raise ValueError(f"coordinates and rounds must be >= 0, got {coordinates}, {rounds}")
    return np.asarray(rdp, np.float64) * coordinates * rounds


def rdp_to_dp(orders: Sequence[float], rdp: np.ndarray, target_delta: float) -> tuple[float, float]:
    """(ε, best order) at ``target_delta`` (Balle et al. 2020, Thm. 21, via opacus)."""
    if not 0 < target_delta < 1:
        raise ValueError(f"target_delta must be in (0, 1), got {target_delta!r}")
    values = np.asarray(rdp, np.float64)
    if not np.any(values > 0):
        return 0.0, float(orders[0])
    from opacus.accountants.analysis.rdp import get_privacy_spent  # lazy: opacus imports torch

    with warnings.catch_warnings(), np.errstate(invalid="ignore", over="ignore"):
        warnings.filterwarnings("ignore", message="Optimal order")
        eps, order = get_privacy_spent(orders=list(orders), rdp=list(values), delta=target_delta)
    return max(float(eps), 0.0), float(order)


def epsilon(
    params: RqmParams,
    *,
    coordinates: int,
    rounds: int,
    target_delta: float,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> float:
    """(ε, δ)-DP ε of ``rounds`` RQM releases of a ``coordinates``-dimensional update."""
    return rdp_to_dp(orders, compose(rdp_curve(orders, params), coordinates, rounds), target_delta)[0]


@lru_cache(maxsize=64)  # pure (orders is a tuple); runs re-plan the same budgets
def calibrate_delta(
    target_epsilon: float,
    *,
    c: float,
    m: int,
    q: float,
    coordinates: int,
    rounds: int,
    target_delta: float,
    orders: Sequence[float] = DEFAULT_ORDERS,
    rel_tol: float = 1e-3,
) -> float:
    """Smallest extension ``delta`` (to ``rel_tol``) whose ε is at most ``target_epsilon``.

    ε decreases as ``delta / c`` grows (checked by the tests), so this bisects ``log(delta)`` on
    ``[1e-4 c, 1e8 c]``. Raises ``ValueError`` if even ``1e8 c`` does not reach the target.
    """

    def eps_at(d: float) -> float:
        return epsilon(
            RqmParams(c, d, m, q),
            coordinates=coordinates,
            rounds=rounds,
            target_delta=target_delta,
            orders=orders,
        )

    lo, hi = 1e-4 * c, 1e8 * c
    if eps_at(hi) > target_epsilon:
        raise ValueError(f"target_epsilon={target_epsilon} unreachable with q={q}, m={m} (delta <= 1e8 c)")
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if eps_at(mid) <= target_epsilon else (mid, hi)
    return hi


@dataclass
class RqmAccountant:
    """Per-client ε of RQM over rounds (no amplification by sampling is claimed).

    Parameters
    ----------
    params : RqmParams
        The mechanism.
    coordinates : int
        Coordinates each update releases (the model's parameter count).
    orders : Sequence[float]
        Rényi orders.
    """

    params: RqmParams
    coordinates: int
    orders: Sequence[float] = DEFAULT_ORDERS
    participations: Counter[Hashable] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._curve = rdp_curve(self.orders, self.params)

    def step(self, clients: Iterable[Hashable]) -> None:
        """Record the messages of one round (or FedBuff buffer): each entry of ``clients`` is one
        released update, so a client listed twice (two trips into one buffer) is charged twice."""
        self.participations.update(list(clients))

    def epsilon(self, target_delta: float, client: Hashable | None = None) -> float:
        """ε of ``client`` (or the worst client so far) at ``target_delta``."""
        counts = self.participations
        rounds = counts[client] if client is not None else max(counts.values(), default=0)
        return rdp_to_dp(self.orders, compose(self._curve, self.coordinates, rounds), target_delta)[0]
