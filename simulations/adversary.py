"""The simulated adversary: the round driver's hooks (:class:`~stamen.server.driver.RoundHooks`).

Two injection points, simulation only (a deployed server has neither):

- **sampling**: with ``attack.malicious_minority`` the cohort is redrawn until fewer than half of it
  are attackers, as ``FL_train.py`` of SPIN-UMass/FRL does every round;
- **update attacks** (omniscient): the malicious senders' decoded rows are replaced by
  ``attack(honest rows, num_malicious, rng)`` just before (pre-)aggregation. An
  :class:`~stamen.simulations.attacks.base.OwnUpdateAttack` also gets ``own=`` its clients' own
  rows; one with a ``pool_size`` (FRL's ``rank_reversal``) gets instead the updates of
  ``min(#attackers, pool_size)`` malicious partitions drawn per round from *all* attackers and
  trained from the round's global model, exactly as the official code does. To do so the adversary
  loads those partitions **on the server side of the simulation**: acceptable only because the
  simulated adversary is omniscient and colludes with all attackers.

The attack's randomness is seeded by ``(seed, round)``, so every engine forges the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stamen.client.core import local_update
from stamen.server.aggregators.base import RoundContext
from stamen.server.driver.collect import CollectedUpdates, flatten
from stamen.server.sampling import sample_clients
from stamen.simulations.attacks import UpdateAttack, attack_type, create_update_attack
from stamen.simulations.attacks.base import OwnUpdateAttack
from stamen.simulations.provider import DataSpec, client_data
from stamen.simulations.scenario import Scenario
from stamen.task.models import model_structure
from stamen.task.seeds import client_seed
from stamen.task.spec import TaskSpec, TrainSpec

log = logging.getLogger("stamen.simulations")
POOL_STREAM = 0x9001  # the pool draw's own random stream, apart from the attack's rng
PoolFn = Callable[[Mapping[str, np.ndarray]], Sequence[Mapping[str, np.ndarray]]]


def pool_members(malicious: Sequence[int], pool_size: int, seed: int, server_round: int) -> list[int]:
    """The malicious partitions whose training the attackers pool this round: ``min(m, pool_size)``
    drawn without replacement from all ``m`` attackers (the code's ``np.random.choice(n_attackers,
    min(n_attackers, rand_mal_clients), replace=False)``), in draw order."""
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    rng = np.random.default_rng([seed, server_round, 0xBAD, POOL_STREAM])
    picks = rng.choice(len(malicious), size=min(len(malicious), pool_size), replace=False)
    return [int(malicious[i]) for i in picks]


@dataclass(frozen=True)
class PoolTrainer:
    """Trains pooled malicious partitions with the run's own trainer, spec of the round and
    per-client seed (a pooled partition also in the round produces exactly the update it sent)."""

    task: TaskSpec
    data: DataSpec
    seed: int
    train_for_round: Callable[[int], TrainSpec]

    def __call__(self, members: Sequence[int], rnd: int, base: Mapping[str, np.ndarray]) -> list[dict]:
        model = _pool_model(self.task)
        spec = self.train_for_round(rnd)
        out = []
        for pid in members:
            seed = client_seed(self.seed, rnd, pid)
            out.append(dict(local_update(model, base, client_data(self.data, pid), spec, seed).delta))
        return out


_MODELS: dict[TaskSpec, torch.nn.Module] = {}


def _pool_model(task: TaskSpec) -> torch.nn.Module:
    if task not in _MODELS:
        _MODELS[task] = model_structure(task)
    return _MODELS[task]


class Adversary:
    """The simulation's :class:`~stamen.server.driver.RoundHooks`.

    Parameters
    ----------
    seed : int
        Run seed.
    malicious : sequence of int
        The attackers' partition ids (senders ``client-<id>``).
    attack : UpdateAttack or None
        The update attack (None for a data attack or no attack: sampling only).
    minority : bool
        Redraw cohorts until the attackers are fewer than half (``attack.malicious_minority``).
    pool : PoolTrainer or None
        Trains pooled malicious partitions (attacks with a ``pool_size``).
    """

    def __init__(
        self,
        seed: int,
        malicious: Sequence[int],
        attack: UpdateAttack | None,
        minority: bool,
        pool: PoolTrainer | None = None,
    ) -> None:
        self.seed, self.malicious, self.attack, self.minority, self.pool = (
            seed,
            tuple(malicious),
            attack,
            minority,
            pool,
        )
        self.senders = frozenset(f"client-{p}" for p in self.malicious)

    def sample(self, rnd: int, clients: Sequence[str], k: int) -> list[str] | None:
        """FRL's sampler (malicious minority), or None for the driver's uniform draw (same stream)."""
        if not self.minority or not self.malicious:
            return None
        index = {c: i for i, c in enumerate(clients)}
        bad = [index[f"client-{p}"] for p in self.malicious if f"client-{p}" in index]
        return [clients[i] for i in sample_clients(self.seed, rnd, len(clients), k, bad)]

    def tamper(self, rnd: int, updates: CollectedUpdates, ctx: RoundContext) -> None:
        """Overwrite the malicious senders' rows with the attack computed from the honest rows."""
        if self.attack is None:
            return
        stack = updates.stack
        bad = [i for i, s in enumerate(updates.senders) if s in self.senders]
        good = [i for i, s in enumerate(updates.senders) if s not in self.senders]
        if not bad:
            return
        if not good:
            log.warning("every accepted update is malicious; the attack has no honest updates to use")
            return
        rng = np.random.default_rng([self.seed, rnd, 0xBAD])
        if isinstance(self.attack, OwnUpdateAttack):  # e.g. sign flipping, FRL rank reversal
            self.attack.begin_round(ctx)
            pooled = self.pool is not None and self.attack.pool_size > 0
            own = self._pooled(rnd, updates, self.attack.pool_size) if pooled else stack[bad].copy()
            forged = self.attack(stack[good].copy(), len(bad), rng, own=own)
        else:
            forged = self.attack(stack[good].copy(), len(bad), rng)
        if forged.shape != (len(bad), stack.shape[1]):
            raise ValueError(f"attack returned shape {forged.shape}, expected {(len(bad), stack.shape[1])}")
        stack[bad] = forged

    def _pooled(self, rnd: int, updates: CollectedUpdates, size: int) -> np.ndarray:
        """The attackers' pooled updates, trained from this round's base, as an ``(m, d)`` stack."""
        assert self.pool is not None
        members = pool_members(self.malicious, size, self.seed, rnd)
        deltas = self.pool(members, rnd, updates.base)
        own = np.empty((len(deltas), updates.stack.shape[1]), dtype=np.float32)
        for row, delta in zip(own, deltas, strict=True):
            flatten(delta, updates.table, row)
        return own


def build_adversary(s: Scenario, malicious: Sequence[int], pool: PoolTrainer | None) -> Adversary | None:
    """The scenario's adversary, or None when it has no attackers."""
    kind = s.attack.kind
    if kind == "none" or not malicious:
        return None
    attack = create_update_attack(kind, **dict(s.attack.params)) if attack_type(kind) == "update" else None
    return Adversary(s.seed, malicious, attack, s.attack.malicious_minority, pool)
