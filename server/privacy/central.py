"""Central (server-side) user-level differential privacy: DP-FedAvg.

McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language Models", ICLR
2018, Algorithm 1 with the fixed-denominator estimator (§2, Eq. for ``f̃_f``) and Lemma 1. Per round:

1. every decoded client update ``Δ_k`` is clipped to L2 norm ``C`` (:func:`clip_rows`);
2. the rule aggregates them; for ``mean`` this is the fixed-denominator estimator
   ``f̃_f = Σ_{k∈cohort} clip(Δ_k) / m`` with ``m = q·N`` the *expected* cohort size
   (``clients.per_round``; ``q = per_round / num_clients``, uniform weights ``w_k = 1``, ``W = N``);
3. Gaussian noise ``N(0, (z·S)² I)`` is added, ``S`` the rule's declared L2 sensitivity
   (``C / m`` for ``mean``);
4. the accountant composes one Poisson-subsampled Gaussian step at rate ``q`` with multiplier ``z``
   and reports the cumulative ε.

Neighbouring relation: **add/remove one client** (all of its data), the relation of McMahan et al.
and of the sampled-Gaussian RDP analysis. Under it the fixed-denominator sum/m has sensitivity C/m:
the added client contributes one clipped row and the denominator does not move. (Dividing by the
*realised* count instead would make the noise scale data dependent; under *replace-one* the same
estimator has sensitivity 2C/m, i.e. it would need twice the noise for the same ε.)

Sampling: the accountant analyses Poisson client sampling, which is what a synchronous central-DP
run does by default (``clients.sampling = "auto"`` -> ``"poisson"``, :mod:`stamen.server.sampling`):
every client is in round ``t``'s cohort independently with probability ``q``, so the realised cohort
has Binomial(N, q) members — possibly none, possibly more than ``m``. The estimator above is what
makes that work: its denominator is the *expected* size ``m = q·N``, never the realised count, so
the sensitivity stays ``C/m`` whatever was drawn, and a round that drew nobody still releases
``0 + N(0, (z·C/m)² I)`` around the current model and is counted (the mechanism is defined on every
sampled set, the empty one included; skipping it would reveal that the draw was empty). With
``clients.sampling = "fixed"`` (or FedBuff's buffers) the cohort is a fixed-size draw without
replacement — the usual approximation (Flower's DP wrappers, TFF) that the reported ε does not
formally cover; results.json says which
(:func:`~stamen.server.privacy.statement.privacy_statement`). ``fedavg`` (data-size weights)
declares no sensitivity: with weights ``n_k / Σ n_k`` one client holding many samples can move the
aggregate by up to ~2C, so there is no useful bound without capping the weights (McMahan et al. cap
``w_k = min(n_k / ŵ, 1)``); central DP therefore requires ``aggregation.rule = "mean"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from stamen.privacy.accounting import calibrate_noise_multiplier, epsilon_after
from stamen.server.aggregators.base import RoundContext, Rule, RuleTraits

SensitivityFn = Callable[[int, float], float]


def clip_rows(stack: np.ndarray, clip: float) -> np.ndarray:
    """Clip every row of ``stack`` to L2 norm ``clip`` in place; return the norms before clipping.

    ``row <- row · min(1, C / ||row||₂)`` (McMahan et al. 2018, ``ClipFn``). Rows at or below ``C``
    are untouched, zero rows stay zero.

    Parameters
    ----------
    stack : ndarray, shape (n, d), float32
        Client updates, modified in place.
    clip : float
        ``C > 0``, in the units of the update.

    Returns
    -------
    ndarray, shape (n,), float64
        The L2 norm of each row before clipping.
    """
    if stack.ndim != 2 or stack.dtype != np.float32:
        raise ValueError(f"stack must be a float32 (n, d) array, got {stack.dtype} {stack.shape}")
    if not clip > 0 or math.isinf(clip):
        raise ValueError(f"clip must be finite and > 0, got {clip}")
    norms = np.empty(stack.shape[0], dtype=np.float64)
    for i, row in enumerate(stack):  # row by row: no float64 copy of a possibly huge stack
        norms[i] = math.sqrt(float(np.dot(row.astype(np.float64, copy=False), row)))
        if norms[i] > clip:
            row *= np.float32(clip / norms[i])
    return norms


def declared_sensitivity(rule: Rule, n: int, clip: float, name: str) -> float:
    """The L2 sensitivity ``rule`` declares (:class:`~stamen.server.aggregators.RuleTraits`) for a
    cohort of ``n`` rows clipped to ``clip``.

    A rule without a declared sensitivity — any rule behind a pre-aggregator included — is refused:
    calibrating noise to a guessed sensitivity would silently void the guarantee.

    Raises
    ------
    ValueError
        If the rule declares no sensitivity, ``n < 1``, ``clip <= 0``, or the declared value is not
        finite and positive.
    """
    fn = rule.traits.l2_sensitivity
    if fn is None:
        raise ValueError(
            f"aggregation {name} declares no L2 sensitivity (pre-aggregators never do); central DP "
            "refuses it (use aggregation.rule=mean without aggregation.pre: uniform weights, sensitivity C/m)"
        )
    if n < 1:
        raise ValueError(f"n (cohort size) must be >= 1, got {n}")
    if not clip > 0 or math.isinf(clip):
        raise ValueError(f"clip must be finite and > 0, got {clip}")
    s = float(fn(n, clip))
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"aggregation rule {name} declared an invalid L2 sensitivity {s}")
    return s


class CentralDP:
    """DP-FedAvg noise and accountant for one run (see the module docstring for the guarantee).

    Parameters
    ----------
    noise_multiplier : float
        ``z >= 0``: noise std over the declared sensitivity (``0`` adds no noise; ε is then inf).
    clipping_norm : float
        ``C > 0``: L2 bound applied to every client update by :func:`clip_rows`.
    clients_per_round : int
        Nominal cohort size ``m`` (the fixed denominator), ``1 <= m <= num_clients``.
    num_clients : int
        Population ``N``; the sampling rate is ``q = m / N``.
    rounds : int
        Planned rounds (for calibration and bookkeeping), >= 1.
    delta : float
        Target δ in (0, 1); default 1e-5.
    seed : int
        Noise seed; round ``r`` draws from ``SeedSequence([seed, TAG, r])``. The run passes a secret
        one (:func:`~stamen.task.seeds.dp_seed`), or with ``privacy.noise = "seeded"`` the run seed
        (reproducible, the same on both engines whatever else they draw — and known to every client,
        who could then subtract the noise).
    accountant : {"rdp", "prv"}
        See :mod:`stamen.privacy.accounting`.
    """

    TAG = 0xD9

    def __init__(
        self,
        noise_multiplier: float,
        clipping_norm: float,
        clients_per_round: int,
        num_clients: int,
        rounds: int,
        delta: float = 1e-5,
        seed: int = 0,
        accountant: str = "rdp",
    ) -> None:
        if not 1 <= clients_per_round <= num_clients:
            raise ValueError(f"clients_per_round must be in [1, {num_clients}], got {clients_per_round}")
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        if not clipping_norm > 0 or math.isinf(clipping_norm):
            raise ValueError(f"clipping_norm must be finite and > 0, got {clipping_norm}")
        self.noise_multiplier = float(noise_multiplier)
        self.clipping_norm = float(clipping_norm)
        self.clients_per_round, self.num_clients, self.rounds = clients_per_round, num_clients, rounds
        self.delta, self.seed, self.accountant = float(delta), int(seed), accountant
        self.rounds_done = 0
        self.epsilon = 0.0
        epsilon_after(self.noise_multiplier, self.sample_rate, 0, self.delta, accountant)  # validates

    @classmethod
    def from_target(
        cls,
        target_epsilon: float,
        delta: float,
        clipping_norm: float,
        clients_per_round: int,
        num_clients: int,
        rounds: int,
        seed: int = 0,
        accountant: str = "rdp",
    ) -> CentralDP:
        """Calibrate ``z`` before round 1 so that ε after ``rounds`` rounds is <= ``target_epsilon``."""
        if not 1 <= clients_per_round <= num_clients:
            raise ValueError(f"clients_per_round must be in [1, {num_clients}], got {clients_per_round}")
        z = calibrate_noise_multiplier(
            target_epsilon, delta, clients_per_round / num_clients, rounds, accountant
        )
        return cls(z, clipping_norm, clients_per_round, num_clients, rounds, delta, seed, accountant)

    @property
    def sample_rate(self) -> float:
        """``q = m / N``, the per-round client sampling rate given to the accountant."""
        return self.clients_per_round / self.num_clients

    def sensitivity(self, rule: Rule, name: str) -> float:
        """The rule's declared sensitivity for the nominal cohort ``m``; refuses undeclared rules."""
        return declared_sensitivity(rule, self.clients_per_round, self.clipping_norm, name)

    def epsilon_after_next(self) -> float:
        """The cumulative ε the next release would reach (for the budget guard)."""
        return epsilon_after(
            self.noise_multiplier, self.sample_rate, self.rounds_done + 1, self.delta, self.accountant
        )

    def privatize(self, aggregate: np.ndarray, n_accepted: int, sensitivity: float) -> np.ndarray:
        """Release ``f̃_f + N(0, (z·S)² I)`` for the round about to be counted by :meth:`step`.

        Parameters
        ----------
        aggregate : ndarray, shape (d,)
            The ``mean`` of the ``n_accepted`` clipped rows (zeros if none was accepted).
        n_accepted : int
            Rows that entered the mean, ``0 <= n_accepted <= N`` (a Poisson draw may exceed ``m``).
            The mean is rescaled by ``n_accepted / m`` into the fixed-denominator sum
            ``Σ clip(Δ_k) / m`` (McMahan et al. 2018, ``f̃_f``; a rejected client counts as a zero
            row; when exactly ``m`` were accepted the rescale is the identity).
        sensitivity : float
            ``S`` from :meth:`sensitivity` (``C / m`` for ``mean``), > 0.

        Returns
        -------
        ndarray, shape (d,), float32
            A new array; ``aggregate`` is not modified.
        """
        if not 0 <= n_accepted <= self.num_clients:
            raise ValueError(f"n_accepted must be in [0, {self.num_clients}], got {n_accepted}")
        if not sensitivity > 0 or math.isinf(sensitivity):
            raise ValueError(f"sensitivity must be finite and > 0, got {sensitivity}")
        agg = np.asarray(aggregate, dtype=np.float32).reshape(-1)  # (d,)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.TAG, self.rounds_done + 1]))
        noise = rng.standard_normal(agg.shape[0], dtype=np.float32)  # (d,)
        noise *= np.float32(self.noise_multiplier * sensitivity)
        return agg * np.float32(n_accepted / self.clients_per_round) + noise

    def step(self) -> float:
        """Count one released round; return the cumulative ε (at ``delta``) after it."""
        self.rounds_done += 1
        self.epsilon = epsilon_after(
            self.noise_multiplier, self.sample_rate, self.rounds_done, self.delta, self.accountant
        )
        return self.epsilon


class BudgetExhausted(RuntimeError):
    """A release would spend more than the run's privacy budget; the run stops before it."""


class CentralDPRule(Rule):
    """Central DP as a wrapper around any rule that declares its L2 sensitivity.

    Per round: clip every row to ``C`` (in place), aggregate with the inner rule (zeros when no update
    was accepted: the round is still released and counted), add ``N(0, (z·S)² I)``, step the
    accountant. With a ``budget`` (the target ε the noise was calibrated for), a round whose release
    would pass it is refused with :class:`BudgetExhausted` before anything is released — as Flower's
    DP wrappers stop at the budget.

    Parameters
    ----------
    inner : Rule
        The aggregation rule (e.g. ``mean``); refused here if it declares no sensitivity.
    dp : CentralDP
        Mechanism and accountant.
    name : str
        The rule's name for messages.
    budget : float or None
        Target ε; None = no guard (a fixed noise multiplier).
    """

    def __init__(self, inner: Rule, dp: CentralDP, name: str, budget: float | None = None) -> None:
        self.inner, self.dp, self.budget = inner, dp, budget
        self.sens = dp.sensitivity(inner, name)
        self.traits = RuleTraits(required_server_lr=inner.traits.required_server_lr, releases_empty=True)

    def begin_round(self, ctx: RoundContext) -> None:
        """Hand the round's context to the inner rule."""
        self.inner.begin_round(ctx)

    def epsilon(self) -> float | None:
        """Cumulative ε of the rounds released so far (None before the first)."""
        return self.dp.epsilon if self.dp.rounds_done else None

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Clip, aggregate, noise and count one round; ``updates`` may have zero rows."""
        if self.budget is not None and self.dp.epsilon_after_next() > self.budget * (1 + 1e-9):
            raise BudgetExhausted(
                f"central DP: round {self.dp.rounds_done + 1} would spend ε="
                f"{self.dp.epsilon_after_next():.4g} > the budget {self.budget:g}; the run stops here"
            )
        n = updates.shape[0]
        clip_rows(updates, self.dp.clipping_norm)
        agg = self.inner(updates, weights) if n else np.zeros(updates.shape[1], np.float32)
        out = self.dp.privatize(agg, n, self.sens)
        self.dp.step()
        return out
