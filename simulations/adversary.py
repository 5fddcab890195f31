"""Build the server-side hook that simulates update attacks (omniscient, per round).

The simulated adversary runs on the server in both engines (it replaces the malicious clients' rows
just before aggregation). An attack that pools the attackers' own training (``pool_size``, e.g.
FRL's ``rank_reversal``) gets a ``pool`` callback that trains ``min(len(malicious), pool_size)``
malicious partitions, drawn per round from *all* attackers, from the round's global model, exactly
as ``FL_train.py::FRL_train`` of SPIN-UMass/FRL does. To do so the adversary loads those malicious
partitions **on the server**, in the ``flower`` engine too: acceptable only because the simulated
adversary is omniscient and colludes with all attackers; a real server never holds client data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from stamen.server.config import ServerConfig
from stamen.server.rounds import AttackHook, PoolFn

AttackFactory = Callable[[int], AttackHook | None]
POOL_STREAM = 0x9001  # the pool draw's own random stream, apart from the attack's rng


def pool_members(malicious: Sequence[int], pool_size: int, seed: int, server_round: int) -> list[int]:
    """The malicious partitions whose training the attackers pool this round: ``min(m, pool_size)``
    drawn without replacement from all ``m`` attackers (the code's ``np.random.choice(n_attackers,
    min(n_attackers, rand_mal_clients), replace=False)``), in draw order."""
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    rng = np.random.default_rng([seed, server_round, 0xBAD, POOL_STREAM])
    picks = rng.choice(len(malicious), size=min(len(malicious), pool_size), replace=False)
    return [int(malicious[i]) for i in picks]


def pool_trainer(
    cfg: ServerConfig, server_round: int, pool_size: int, model: list[torch.nn.Module]
) -> PoolFn:
    """``base weights -> [update of each pooled malicious partition]``, trained with the run's own
    trainer, spec of the round and per-client seed (so a pooled partition that is also in the round
    produces exactly the update it would have sent). ``model`` caches one model across rounds."""
    from stamen.client.core import client_seed, local_update
    from stamen.client.task import build_model, client_data

    members = pool_members(cfg.malicious, pool_size, cfg.seed, server_round)
    spec = cfg.train_for_round(server_round)

    def train(base: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        if not model:
            model.append(build_model(cfg.task))
        out = []
        for pid in members:
            seed = client_seed(cfg.seed, server_round, pid)
            out.append(dict(local_update(model[0], base, client_data(cfg.task, pid), spec, seed).delta))
        return out

    return train


def attack_factory(cfg: ServerConfig) -> AttackFactory | None:
    """``round -> AttackHook`` for an update attack in ``cfg``; None without one (or for data attacks).

    The malicious clients are ``cfg.malicious`` (sender ids ``client-<partition id>``); the attack's
    randomness is seeded by ``(seed, round)`` so both engines forge the same rows. An attack with a
    ``pool_size`` attribute gets the :func:`pool_trainer` callback (see the module docstring).
    """
    if cfg.attack_kind == "none" or not cfg.malicious:
        return None
    from stamen.simulations.attacks import attack_type, create_update_attack

    if attack_type(cfg.attack_kind) != "update":
        return None
    attack = create_update_attack(cfg.attack_kind, **dict(cfg.attack_params))
    senders = frozenset(f"client-{pid}" for pid in cfg.malicious)
    pool_size = int(getattr(attack, "pool_size", 0)) if getattr(attack, "uses_own_updates", False) else 0
    model: list[torch.nn.Module] = []  # built on first use, reused by every round's pool

    def hook(server_round: int) -> AttackHook:
        rng = np.random.default_rng([cfg.seed, server_round, 0xBAD])
        pool = pool_trainer(cfg, server_round, pool_size, model) if pool_size else None
        return AttackHook(attack=attack, malicious=senders, rng=rng, pool=pool)

    return hook
