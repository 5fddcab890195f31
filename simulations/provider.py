"""The simulation's data provider: each virtual client's partition, the test split, the initial model.

Everything a real device would read from its own storage is materialized here from the scenario:
the data set, its partition among ``data.num_clients`` virtual clients, and the simulated data attack
on the malicious partitions. Data loading is cached per process (it matters inside Flower's
long-lived Ray actors). Nothing here ever travels in a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from torch import nn

from stamen.simulations.attacks import create_data_attack
from stamen.simulations.data import Dataset, load_dataset
from stamen.simulations.partition import Partitioning, build_partitioning
from stamen.simulations.pool import PoolPartitioning, build_pool_partitioning
from stamen.task.data import ArraySource, TaskData
from stamen.task.models import build_model
from stamen.task.settings import LoRAConfig
from stamen.task.spec import TaskSpec


@dataclass(frozen=True)
class DataSpec:
    """What materializes the virtual clients' data (hashable: it keys the caches)."""

    dataset: str = "digits"
    num_samples: int = 5000
    test_fraction: float = 0.2
    seq_len: int = 32
    partition: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    num_clients: int = 10
    seed: int = 0
    data_attack: str = "none"  # simulated data poisoning of the malicious partitions
    data_attack_params: tuple[tuple[str, Any], ...] = ()
    malicious: tuple[int, ...] = ()
    samples_per_client: int = 40  # partition = "pool" only

    @classmethod
    def from_scenario(cls, s: Any, malicious: tuple[int, ...] = (), data_attack: bool = False) -> DataSpec:
        """The data spec of scenario ``s``; ``data_attack`` poisons the ``malicious`` partitions."""
        d = s.data
        spec = cls(
            d.dataset,
            d.num_samples,
            d.test_fraction,
            d.seq_len,
            d.partition,
            d.alpha,
            d.shards_per_client,
            d.num_clients,
            s.seed,
            samples_per_client=d.samples_per_client,
        )
        if not data_attack:
            return spec
        params = tuple(sorted(s.attack.params.items()))
        return cls(
            **{
                **spec.__dict__,
                "data_attack": s.attack.kind,
                "data_attack_params": params,
                "malicious": malicious,
            }
        )


@lru_cache(maxsize=4)
def dataset(spec: DataSpec) -> Dataset:
    """The scenario's data set (train and test splits)."""
    return load_dataset(
        spec.dataset,
        seed=spec.seed,
        test_fraction=spec.test_fraction,
        num_samples=spec.num_samples,
        seq_len=spec.seq_len,
    )


@lru_cache(maxsize=4)
def partitions(spec: DataSpec) -> Partitioning | PoolPartitioning:
    """Every client's partition of the training split, as lazy index views (memory does not grow
    with one array per client; ``.indices(pid)`` is client ``pid``'s sorted index array). With
    ``partition = "pool"`` the clients draw from the training split as a shared pool."""
    if spec.partition == "pool":
        return build_pool_partitioning(
            dataset(spec).y_train,
            spec.num_clients,
            spec.samples_per_client,
            alpha=spec.alpha,
            seed=spec.seed,
        )
    return build_partitioning(
        dataset(spec).y_train,
        spec.num_clients,
        spec.partition,
        seed=spec.seed,
        alpha=spec.alpha,
        shards_per_client=spec.shards_per_client,
    )


def client_data(spec: DataSpec, partition_id: int) -> TaskData:
    """Training data of client ``partition_id`` (0 <= id < ``spec.num_clients``), poisoned for a
    malicious client under a data attack."""
    if not 0 <= partition_id < spec.num_clients:
        raise ValueError(f"partition-id {partition_id} out of range [0, {spec.num_clients})")
    ds = dataset(spec)
    idx = partitions(spec).indices(partition_id)
    x, y = ds.x_train[idx], ds.y_train[idx]
    if spec.data_attack != "none" and partition_id in spec.malicious:
        x, y = _poison(spec, partition_id, x, y, ds.num_classes)
    return TaskData(x, y, ds.num_classes, ds.input_dim)


def _poison(
    spec: DataSpec, pid: int, x: np.ndarray, y: np.ndarray, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the scenario's data attack to a malicious client's partition."""
    attack = create_data_attack(spec.data_attack, **dict(spec.data_attack_params))
    rng = np.random.default_rng([spec.seed, pid, 0xDA7A])
    return attack(x, y, classes, rng)


def client_source(spec: DataSpec, partition_id: int) -> ArraySource:
    """Virtual client ``partition_id``'s :class:`~stamen.task.data.DataSource`."""
    return ArraySource(client_data(spec, partition_id))


def test_data(spec: DataSpec) -> TaskData:
    """The fixed held-out test split used for centralized evaluation."""
    ds = dataset(spec)
    return TaskData(ds.x_test, ds.y_test, ds.num_classes, ds.input_dim)


def partition_sizes(spec: DataSpec) -> list[int]:
    """Number of training samples of every client, by partition id."""
    return [int(n) for n in partitions(spec).sizes()]


def initial_model(task: TaskSpec, spec: DataSpec) -> nn.Module:
    """The run's initial model; Fed-SB's adapter init draws on the pooled training data (a simulation
    shortcut: a deployed server would need its own sample)."""
    ds = dataset(spec)
    return build_model(task, sample=(ds.x_train, ds.y_train) if task.lora.adapter == "fedsb" else None)


def task_for(
    spec: DataSpec, model: str = "mlp", hidden: tuple[int, ...] = (64,), lora: LoRAConfig | None = None
) -> TaskSpec:
    """The :class:`~stamen.task.spec.TaskSpec` of ``model`` on ``spec``'s data set (its shape)."""
    ds = dataset(spec)
    return TaskSpec(model, ds.input_dim, ds.num_classes, tuple(hidden), spec.seed, lora or LoRAConfig())
