"""Client side of the edge client mode: the device's model lives in an edge model store.

A simulated device is provisioned once with the task's initial model (a torch-backend store with a
safetensors state_dict, trusting the server's public key); every round it applies the server's
signed delta with :meth:`stamen.edge.EdgeRuntime.apply` (verify before parsing, base hash, version,
crash-safe write) and trains from the weights the store then holds.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from stamen.client.models import get_weights
from stamen.client.task import TaskSpec, build_model
from stamen.edge import EdgeRuntime, create_store


@lru_cache(maxsize=256)
def _open(path: str) -> EdgeRuntime:
    return EdgeRuntime.open(Path(path))


def device_store(root: Path, partition_id: int, task: TaskSpec, trust: Path) -> EdgeRuntime:
    """Open device ``partition_id``'s store under ``root``, provisioning it on first use."""
    store = root / f"device-{partition_id}"
    if not (store / "manifest.json").exists() and not _provisioned(store):
        weights = get_weights(build_model(task))
        store.parent.mkdir(parents=True, exist_ok=True)
        source = root / f".provision-{partition_id}.safetensors"
        save_file({k: np.ascontiguousarray(v) for k, v in sorted(weights.items())}, str(source))
        create_store(store, source, trust, model_id=task_model_id(task))
        source.unlink()
    return _open(str(store))


def _provisioned(store: Path) -> bool:
    return store.is_dir() and any(store.iterdir())


def task_model_id(task: TaskSpec) -> str:
    """The model id devices and server agree on (model name + seed)."""
    return f"{task.model}-{task.seed}"


def apply_downlink(rt: EdgeRuntime, envelope: bytes) -> dict[str, np.ndarray]:
    """Apply the server's signed delta; return the global weights the device now holds."""
    rt.apply(envelope)
    return rt.global_weights()
