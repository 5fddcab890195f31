"""Build the server-side hook that simulates update attacks (omniscient, per round)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stamen.server.config import ServerConfig
from stamen.server.rounds import AttackHook

AttackFactory = Callable[[int], AttackHook | None]


def attack_factory(cfg: ServerConfig) -> AttackFactory | None:
    """``round -> AttackHook`` for an update attack in ``cfg``; None without one (or for data attacks).

    The malicious clients are ``cfg.malicious`` (sender ids ``client-<partition id>``); the attack's
    randomness is seeded by ``(seed, round)`` so both engines forge the same rows.
    """
    if cfg.attack_kind == "none" or not cfg.malicious:
        return None
    from stamen.simulations.attacks import attack_type, create_update_attack

    if attack_type(cfg.attack_kind) != "update":
        return None
    attack = create_update_attack(cfg.attack_kind, **dict(cfg.attack_params))
    senders = frozenset(f"client-{pid}" for pid in cfg.malicious)

    def hook(server_round: int) -> AttackHook:
        rng = np.random.default_rng([cfg.seed, server_round, 0xBAD])
        return AttackHook(attack=attack, malicious=senders, rng=rng)

    return hook
