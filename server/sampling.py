"""Deterministic client sampling, shared by both engines so they pick the same partitions.

Two schemes (``clients.sampling``):

- ``"fixed"``: ``k = clients.per_round`` distinct clients, uniform without replacement
  (:func:`sample_clients`);
- ``"poisson"``: every client flips its own coin with probability ``q = per_round / num_clients``
  (:func:`poisson_sample`), so the cohort size is Binomial(N, q) and may be 0. This is the sampling
  the central-DP accountant analyses (the Poisson-subsampled Gaussian mechanism: Mironov, Talwar,
  Zhang 2019; McMahan et al. 2018, Algorithm 1 "C^t <- (sample users with probability q)").

``"auto"`` (the default) is ``"poisson"`` for synchronous central DP and ``"fixed"`` otherwise
(:func:`resolve_sampling`). Both draws are functions of ``(seed, round)`` only, whatever the process
drew before, so a resumed run or the other engine picks the same cohort. Under central DP the
driver passes a fresh secret seed every round instead of the run seed (``privacy.noise = "secret"``,
:attr:`~stamen.server.config.ServerConfig.secret_cohorts`): the cohort must not be computable by the
clients, who all know the run seed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

MAX_DRAWS = 10_000  # bound on FRL's "resample until the malicious are a minority" loop
SCHEMES = ("fixed", "poisson")
POISSON_TAG = 0x9015  # stream tag: the Poisson coins never share a stream with the fixed draw


def minority_feasible(num_clients: int, k: int, num_malicious: int) -> bool:
    """Whether a cohort of ``k`` out of ``num_clients`` can hold fewer than ``k / 2`` of the
    ``num_malicious`` attackers (the fewest it can hold is ``max(0, k - honest)``)."""
    return 2 * max(0, k - (num_clients - num_malicious)) < k


def sample_clients(
    seed: int, server_round: int, num_clients: int, k: int, minority_of: Collection[int] = ()
) -> list[int]:
    """Pick ``k`` distinct partition ids out of ``range(num_clients)`` for ``server_round``.

    Uniform without replacement from a generator seeded by ``(seed, server_round)``; the result is
    sorted so that replies are aggregated in a fixed order. With ``minority_of`` (the malicious ids),
    the cohort is redrawn from the same generator until fewer than ``k / 2`` of them are in it, as
    ``FL_train.py`` of SPIN-UMass/FRL does every round (``while len(round_malicious) >=
    round_nclients / 2``); a first draw that already qualifies is returned unchanged.

    Raises
    ------
    ValueError
        If ``k`` is not in ``[1, num_clients]``, if no cohort can have a malicious minority, or if
        :data:`MAX_DRAWS` draws found none.
    """
    if not 1 <= k <= num_clients:
        raise ValueError(f"k must be in [1, {num_clients}], got {k}")
    bad = frozenset(minority_of)
    if bad and not minority_feasible(num_clients, k, len(bad)):
        raise ValueError(
            f"no cohort of {k} out of {num_clients} clients has fewer than {k / 2:g} of the "
            f"{len(bad)} malicious ones; set attack.malicious_minority=false to allow it"
        )
    if k == num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng([seed, server_round, 0x5EED])
    for _ in range(MAX_DRAWS):
        cohort = sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False))
        if 2 * sum(p in bad for p in cohort) < k:
            return cohort
    raise ValueError(f"round {server_round}: {MAX_DRAWS} draws found no cohort with a malicious minority")


def poisson_sample(seed: int, server_round: int, num_clients: int, rate: float) -> list[int]:
    """The ids in ``range(num_clients)`` whose coin came up in ``server_round``: each independently
    with probability ``rate`` (Poisson sampling), sorted.

    Parameters
    ----------
    seed : int
        Run seed, ``>= 0``.
    server_round : int
        Round number, ``>= 0``; with ``seed`` the only input of the generator
        ``default_rng([seed, server_round, POISSON_TAG])``.
    num_clients : int
        Population ``N >= 0`` (the clients available this round).
    rate : float
        Inclusion probability ``q`` in ``[0, 1]``; ``E[cohort size] = q·N``, and the cohort may be
        empty.

    Raises
    ------
    ValueError
        If ``rate`` is outside ``[0, 1]`` or ``num_clients < 0``.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"sampling rate must be in [0, 1], got {rate}")
    if num_clients < 0:
        raise ValueError(f"num_clients must be >= 0, got {num_clients}")
    rng = np.random.default_rng([seed, server_round, POISSON_TAG])
    coins = rng.random(num_clients)  # (N,) one uniform per client, in id order
    return [int(i) for i in np.flatnonzero(coins < rate)]


def resolve_sampling(sampling: str, privacy_mode: str, server_mode: str) -> str:
    """``"fixed"`` or ``"poisson"`` for the ``clients.sampling`` setting (``"auto"``: Poisson exactly
    when the run is synchronous with central DP, the case whose accountant assumes it)."""
    if sampling == "auto":
        return "poisson" if privacy_mode == "central" and server_mode == "sync" else "fixed"
    if sampling not in SCHEMES:
        raise ValueError(f"clients.sampling must be one of {('auto', *SCHEMES)}, got {sampling!r}")
    return sampling


def draw_cohort(
    scheme: str, seed: int, server_round: int, clients: Sequence[str], k: int, rate: float
) -> list[str]:
    """This round's cohort out of ``clients`` (sorted ids): ``k`` of them without replacement
    (``"fixed"``), or each with probability ``rate`` (``"poisson"``; possibly none)."""
    if scheme == "poisson":
        return [clients[i] for i in poisson_sample(seed, server_round, len(clients), rate)]
    if scheme != "fixed":
        raise ValueError(f"sampling scheme must be one of {SCHEMES}, got {scheme!r}")
    return [clients[i] for i in sample_clients(seed, server_round, len(clients), k)]
