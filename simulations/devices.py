"""Simulated edge devices (``clients.runtime = "edge"``): a store per virtual client, provisioned
once with the run's initial model and the server's public key — what ``stamen device init`` does on
a real device — under a temporary directory removed with :meth:`SimulatedDevices.close`.

The server side is the same as in a deployment: it signs a delta against the version each device
holds (:class:`~stamen.server.edge_downlink.EdgeDownlink`); each device verifies and applies it in
its store (:meth:`stamen.edge.EdgeRuntime.apply`) and trains from what it then holds.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from stamen.edge import EdgeRuntime, create_store
from stamen.protocols import Signer
from stamen.server.edge_downlink import DeviceDownlink, EdgeDownlink


@lru_cache(maxsize=256)
def _open(path: str) -> EdgeRuntime:
    return EdgeRuntime.open(Path(path))


def device_store(
    root: Path, pid: int, initial: Mapping[str, np.ndarray], model_id: str, trust: Path
) -> EdgeRuntime:
    """Open device ``pid``'s store under ``root``, provisioning it on first use."""
    store = root / f"device-{pid}"
    if not (store / "manifest.json").exists() and not (store.is_dir() and any(store.iterdir())):
        store.parent.mkdir(parents=True, exist_ok=True)
        source = root / f".provision-{pid}.safetensors"
        save_file({k: np.ascontiguousarray(v) for k, v in sorted(initial.items())}, str(source))
        create_store(store, source, trust, model_id=model_id)
        source.unlink()
    return _open(str(store))


@dataclass(frozen=True)
class DeviceFleet:
    """What the devices hold (picklable: it travels to Flower's client processes): the directory of
    their stores, the public key they trust, the model they were provisioned with."""

    root: Path
    trust: Path
    initial: Mapping[str, np.ndarray]
    model_id: str

    def store(self, pid: int) -> EdgeRuntime:
        """Device ``pid``'s store (provisioned on first use)."""
        return device_store(self.root, pid, self.initial, self.model_id, self.trust)


class SimulatedDevices:
    """A run's simulated devices: the signing key they trust, their stores, the server's downlink.

    Parameters
    ----------
    initial : mapping
        The run's initial model (every device is provisioned with it).
    codec : str
        Downlink codec spec (``codec.downlink``).
    model_id : str
        Recorded in every delta; a device refuses another model's.
    seed : int
        Run seed (the deltas' codec randomness).
    """

    def __init__(self, initial: Mapping[str, np.ndarray], codec: str, model_id: str, seed: int) -> None:
        root = Path(tempfile.mkdtemp(prefix="stamen-edge-"))
        signer = Signer.generate()  # the server's key; only its public half is on the devices
        signer.save(root / "server.key", root / "server.pub")
        weights = {k: np.asarray(v, np.float32) for k, v in initial.items()}
        self.fleet = DeviceFleet(root, root / "server.pub", weights, model_id)
        self.downlink = EdgeDownlink(DeviceDownlink(initial, signer, codec, model_id), seed)

    def close(self) -> None:
        """Delete the devices' stores and the run key."""
        shutil.rmtree(self.fleet.root, ignore_errors=True)
