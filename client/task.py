"""The learning task a client runs: which data partition, which model, which hyper-parameters.

The server sends a :class:`TaskSpec` and a :class:`TrainSpec` every round as compact JSON strings in
the ``ConfigRecord`` (keys in :mod:`stamen.protocols.keys`), so a ClientApp needs no run config of
its own: the same app serves simulations and deployments. Data loading is cached per process, which
matters inside Flower's long-lived Ray actors.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np
from torch import nn

from stamen.client.models import create_model

_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TaskSpec:
    """Dataset, partitioning and model shared by all clients of a run."""

    dataset: str = "digits"
    num_samples: int = 5000
    test_fraction: float = 0.2
    partition: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    num_clients: int = 10
    seed: int = 0
    model: str = "mlp"
    hidden: tuple[int, ...] = (64,)
    # simulated data-poisoning attack: which partitions are malicious and what they do to their data
    seq_len: int = 32  # text data sets: tokens per sample
    # parameter-efficient fine-tuning: adapters attached to the model ("none", "lora", "fedsb")
    adapter: str = "none"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("query", "value")
    lora_train_modules: tuple[str, ...] = ("classifier",)
    fedsb_init_samples: int = 170
    fedsb_init_lr: float = 5e-4
    data_attack: str = "none"
    data_attack_params: tuple[tuple[str, Any], ...] = ()
    malicious: tuple[int, ...] = ()

    def to_json(self) -> str:
        """Compact canonical JSON (sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TaskSpec:
        """Inverse of :meth:`to_json`; unknown keys raise ``ValueError``."""
        raw = _checked_fields(cls, json.loads(text))
        if "data_attack_params" in raw:  # pairs come back from JSON as lists
            raw["data_attack_params"] = tuple(tuple(p) for p in raw["data_attack_params"])
        return cls(**raw)


@dataclass(frozen=True)
class TrainSpec:
    """Local training hyper-parameters for one round."""

    trainer: str = "full"
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    # sparse fine-tuning (trainer "sparse")
    sparse_density: float = 0.005
    sparse_warmup: int = 4  # batches whose accumulated gradient selects the mask
    sparse_regrow_every: int = 10
    sparse_regrow_fraction: float = 0.2
    sparse_skip: tuple[str, ...] = ("embeddings",)
    sparse_dense: tuple[str, ...] = ("classifier",)
    # differential privacy on the client (privacy.mode = "local" or "dp_sgd")
    local_dp: bool = False
    dp_noise_multiplier: float = 1.0
    dp_clip: float = 1.0
    dp_delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        if self.dp_noise_multiplier < 0 or not self.dp_clip > 0 or not 0 < self.dp_delta < 1:
            raise ValueError(
                "need dp_noise_multiplier >= 0, dp_clip > 0 and 0 < dp_delta < 1, got "
                f"{self.dp_noise_multiplier}, {self.dp_clip}, {self.dp_delta}"
            )

    def to_json(self) -> str:
        """Compact canonical JSON (sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        """Inverse of :meth:`to_json`; unknown keys raise ``ValueError``."""
        return cls(**_checked_fields(cls, json.loads(text)))


def _checked_fields(cls: type, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


@dataclass(frozen=True)
class TaskData:
    """Arrays of one client partition (or the test split)."""

    x: np.ndarray  # (n, features) float32
    y: np.ndarray  # (n,) int64
    num_classes: int
    input_dim: int


@lru_cache(maxsize=4)
def _dataset(task: TaskSpec) -> Any:
    from stamen.simulations.data import load_dataset

    return load_dataset(
        task.dataset,
        seed=task.seed,
        test_fraction=task.test_fraction,
        num_samples=task.num_samples,
        seq_len=task.seq_len,
    )


@lru_cache(maxsize=4)
def _partitions(task: TaskSpec) -> list[np.ndarray]:
    from stamen.simulations.partition import partition

    ds = _dataset(task)
    return partition(
        ds.y_train,
        task.num_clients,
        task.partition,
        seed=task.seed,
        alpha=task.alpha,
        shards_per_client=task.shards_per_client,
    )


def client_data(task: TaskSpec, partition_id: int) -> TaskData:
    """Training data of client ``partition_id`` (0 <= id < ``task.num_clients``)."""
    if not 0 <= partition_id < task.num_clients:
        raise ValueError(f"partition-id {partition_id} out of range [0, {task.num_clients})")
    ds = _dataset(task)
    idx = _partitions(task)[partition_id]
    x, y = ds.x_train[idx], ds.y_train[idx]
    if task.data_attack != "none" and partition_id in task.malicious:
        x, y = _poison(task, partition_id, x, y, ds.num_classes)
    return TaskData(x, y, ds.num_classes, ds.input_dim)


def _poison(
    task: TaskSpec, pid: int, x: np.ndarray, y: np.ndarray, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the scenario's data attack to a malicious client's partition (simulation only)."""
    from stamen.simulations.attacks import create_data_attack

    attack = create_data_attack(task.data_attack, **dict(task.data_attack_params))
    rng = np.random.default_rng([task.seed, pid, 0xDA7A])
    return attack(x, y, classes, rng)


def test_data(task: TaskSpec) -> TaskData:
    """The fixed held-out test split used for centralized evaluation."""
    ds = _dataset(task)
    return TaskData(ds.x_test, ds.y_test, ds.num_classes, ds.input_dim)


def partition_sizes(task: TaskSpec) -> list[int]:
    """Number of training samples of every client, by partition id."""
    return [len(p) for p in _partitions(task)]


def build_model(task: TaskSpec) -> nn.Module:
    """The task's model with its deterministic initial weights (seeded by ``task.seed``)."""
    ds = _dataset(task)
    model = create_model(task.model, ds.input_dim, ds.num_classes, task.hidden, seed=task.seed)
    if task.adapter == "none":
        return model
    from stamen.client.lora import adapter_config, attach_adapters

    return attach_adapters(model, adapter_config(task), seed=task.seed, sample=(ds.x_train, ds.y_train))
