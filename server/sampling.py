"""Deterministic client sampling, shared by both engines so they pick the same partitions."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

MAX_DRAWS = 10_000  # bound on FRL's "resample until the malicious are a minority" loop


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
