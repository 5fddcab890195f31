"""A deployed device whose store rotted: the daemon's start-up check repairs it and logs one line,
the ClientApp then answers the server's next delta with the version it holds, and the server's
following update starts there. By then the server has moved its record of the device on by one
more delta (the one refused), so it no longer has the repaired version's weights and sends a full
replacement, unless that version is one it keeps anyway (the provisioned model): then a delta."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from edge_helpers import perturbed

from stamen.client.node import DeviceHolds, Node, Received, start_weights
from stamen.device.config import DeviceConfig
from stamen.device.daemon import check_device
from stamen.edge import EdgeRuntime, StoreCorrupt
from stamen.edge.store import version_dir
from stamen.protocols import Signer, unpack
from stamen.server.driver.types import Reply
from stamen.server.edge_downlink import DEVICE_RETAINS, DeviceDownlink, EdgeDownlink
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

INSTR = RoundInstructions(1, 1, 0, "dense", False, TaskSpec(), TrainSpec())


def _config(tmp: Path, store: Path) -> DeviceConfig:
    keys = tmp / "keys"
    keys.mkdir()
    Signer.generate().save(keys / "device-signing.pem", keys / "device-signing.pub.pem")
    for name in ("node.key", "device-signing.endorsement"):
        (keys / name).write_bytes(b"present")  # check_device only needs them to exist
    return DeviceConfig(
        superlink="127.0.0.1:9092",
        node_key=str(keys / "node.key"),
        signing_key=str(keys / "device-signing.pem"),
        endorsement=str(keys / "device-signing.endorsement"),
        store=str(store),
        data_source=str(tmp / "data.npz"),
        flwr_home=str(tmp / "flwr"),
        insecure=True,
    )


def _round(node: Node, edge: EdgeDownlink, rnd: int, target: dict[str, np.ndarray]) -> str:
    """One downlink: the server's payload, applied by the node; the hash the server expects."""
    payload = edge.payload("node-1", rnd, target)
    assert payload.delta is not None
    start_weights(node, Received(INSTR, downlink=payload.delta))
    return payload.base


@pytest.mark.parametrize(
    ("rounds", "rotten", "earlier", "server_sends"),
    [
        (3, (3,), 1, "replace"),
        (3, (3, 2), 1, "replace"),
        (2, (2, 1), 1, "delta"),  # back at the provisioned model, which the server always keeps
        (3, (3,), DEVICE_RETAINS, "delta"),  # a deployed server keeps what a store retains
        (3, (3, 2), DEVICE_RETAINS, "delta"),
    ],
)
def test_a_repaired_device_is_resynchronized_by_the_server(
    make_store: Callable[[str], Path],
    signer: Signer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    rounds: int,
    rotten: tuple[int, ...],
    earlier: int,
    server_sends: str,
) -> None:
    store = make_store("onnx")
    node = Node(cast(Any, None), "node-1", 1, EdgeRuntime.open(store))
    assert node.store is not None
    w0 = {k: np.array(v) for k, v in node.store.global_weights().items()}
    edge = EdgeDownlink(DeviceDownlink(w0, signer, "dense", "tiny", earlier=earlier), seed=0)
    for rnd in range(1, rounds + 1):  # keep=3: the device retains its last three versions
        assert _round(node, edge, rnd, perturbed(w0, rnd)) == node.store.version().hash
    history = {h.version: h.hash for h in node.store.manifest.history}
    for version in rotten:
        (version_dir(store, version) / "weights.data").write_bytes(b"rot")
    cfg = _config(tmp_path, store)
    with pytest.raises(StoreCorrupt, match="stamen edge repair"):
        check_device(cfg)  # `stamen device status`: reports, changes nothing
    with caplog.at_level(logging.WARNING, logger="stamen.device"):
        status = check_device(cfg, repair=True)  # `stamen device run`
    back = min(rotten) - 1
    assert status["version"] == back and status["hash"] == history[back]
    lines = [r.getMessage() for r in caplog.records if "repaired" in r.getMessage()]
    assert len(lines) == 1 and f"version {rounds} -> {back}" in lines[0]
    node.store = EdgeRuntime.open(store)  # the SuperNode's ClientApp opens the repaired store
    payload = edge.payload("node-1", 4, perturbed(w0, 4))  # the server's record: the rotten version
    with pytest.raises(DeviceHolds) as held:
        start_weights(node, Received(INSTR, downlink=payload.delta))
    assert (held.value.held_hash, held.value.version) == (history[back], back)
    edge.observe([Reply("node-1", error=str(held.value), held=held.value.held_hash)])
    target = perturbed(w0, 5)
    payload = edge.payload("node-1", 5, target)
    assert payload.delta is not None
    env = unpack(payload.delta)
    assert env.base_hash == history[back]
    assert env.meta.get("kind", "delta") == server_sends
    start_weights(node, Received(INSTR, downlink=payload.delta))
    assert node.store.version().version == 5 and node.store.version().hash == payload.base


def test_the_client_app_repairs_the_store_it_opens(
    make_store: Callable[[str], Path], signer: Signer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A SuperNode's ClientApp (re)started after the files rotted opens its store repaired, with one
    warning, and serves the newest intact version; it does not refuse every round until the daemon
    restarts."""
    from stamen.client.app import EDGE_STORE, _configured

    store, node, _, _ = _device_at_v2(make_store, signer)
    assert node.store is not None
    v1 = next(h.hash for h in node.store.manifest.history if h.version == 1)
    (version_dir(store, 2) / "weights.data").write_bytes(b"rot")
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 8), np.float32), y=np.zeros(4, np.int64))
    node_cfg = ((EDGE_STORE, str(store)), ("data-source", str(tmp_path / "train.npz")))
    with caplog.at_level(logging.WARNING, logger="stamen.client"):
        opened = _configured(7, node_cfg, ())
    assert opened.store is not None
    assert (opened.store.version().version, opened.store.version().hash) == (1, v1)
    lines = [r.getMessage() for r in caplog.records if "repaired" in r.getMessage()]
    assert len(lines) == 1 and "version 2 -> 1" in lines[0]


def _device_at_v2(
    make_store: Callable[[str], Path], signer: Signer, backend: str = "onnx"
) -> tuple[Path, Node, EdgeDownlink, Any]:
    store = make_store(backend)
    node = Node(cast(Any, None), "node-1", 1, EdgeRuntime.open(store))
    assert node.store is not None
    w0 = {k: np.array(v) for k, v in node.store.global_weights().items()}
    edge = EdgeDownlink(DeviceDownlink(w0, signer, "dense", "tiny"), seed=0)
    for rnd in (1, 2):
        _round(node, edge, rnd, perturbed(w0, rnd))
    return store, node, edge, w0


ROT = {  # how the current version's weights rot, and what the failed apply says
    "flip": "signed target",
    "truncate": "",
    "delete": "",
}


@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("how", list(ROT))
def test_files_that_rot_while_the_node_runs_are_repaired_at_the_next_delta(
    make_store: Callable[[str], Path],
    signer: Signer,
    caplog: pytest.LogCaptureFixture,
    backend: str,
    how: str,
) -> None:
    """The store rots under a running ClientApp: the next delta fails on it (its result misses the
    signed target hash, or the weights cannot be read), the store is repaired (one warning), the
    node holds the repaired store and says which version it holds; the server's resynchronization
    then applies."""
    store, node, edge, w0 = _device_at_v2(make_store, signer, backend)
    old = node.store
    assert old is not None
    v1 = next(h.hash for h in old.manifest.history if h.version == 1)
    weights = version_dir(store, 2) / ("weights.data" if backend == "onnx" else "weights.safetensors")
    raw = bytearray(weights.read_bytes())
    if how == "delete":
        weights.unlink()
    else:
        raw[0 if backend == "onnx" else -1] ^= 0x40
        weights.write_bytes(bytes(raw) if how == "flip" else bytes(raw[: len(raw) // 2]))
    payload = edge.payload("node-1", 3, perturbed(w0, 3))
    with caplog.at_level(logging.WARNING, logger="stamen.client"), pytest.raises(DeviceHolds) as held:
        start_weights(node, Received(INSTR, downlink=payload.delta))
    assert (held.value.version, held.value.held_hash) == (1, v1)
    assert node.store is not old and node.store is not None and node.store.version().version == 1
    lines = [r.getMessage() for r in caplog.records if "repaired while running" in r.getMessage()]
    assert len(lines) == 1 and f"{ROT[how]}): version 2 -> 1" in lines[0]  # why, and what
    edge.observe([Reply("node-1", error=str(held.value), held=held.value.held_hash)])
    payload = edge.payload("node-1", 4, perturbed(w0, 4))
    start_weights(node, Received(INSTR, downlink=payload.delta))
    assert node.store.version().version == 4 and node.store.version().hash == payload.base


def test_a_delta_that_fails_on_a_sound_store_is_raised(
    make_store: Callable[[str], Path], signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure that is not the device's files (here: the apply refuses the result) is raised as it
    is, after the store checked sound; the node keeps its store."""
    from stamen.protocols import ValidationError

    _, node, edge, w0 = _device_at_v2(make_store, signer)
    old = node.store

    def refuse(self: EdgeRuntime, data: bytes) -> None:
        raise ValidationError("updated weights hash differs from the signed target")

    opened: list[bool] = []
    real_open = EdgeRuntime.open.__func__  # type: ignore[attr-defined]

    def spy(cls: type[EdgeRuntime], store: Path, **kwargs: Any) -> EdgeRuntime:
        opened.append(bool(kwargs.get("repair")))
        return cast(EdgeRuntime, real_open(cls, store, **kwargs))

    monkeypatch.setattr(EdgeRuntime, "apply", refuse)
    monkeypatch.setattr(EdgeRuntime, "open", classmethod(spy))
    payload = edge.payload("node-1", 3, perturbed(w0, 3))
    with pytest.raises(ValidationError, match="signed target"):
        start_weights(node, Received(INSTR, downlink=payload.delta))
    assert opened == [True] and node.store is old  # checked, found sound, kept


def test_a_version_changed_by_another_process_is_reported_as_held(
    make_store: Callable[[str], Path], signer: Signer
) -> None:
    """An operator's rollback (another process) after the node read its version: the apply finds
    another base and the node says what it now holds instead of failing the round."""
    store, node, edge, w0 = _device_at_v2(make_store, signer)
    assert node.store is not None
    back = EdgeRuntime.open(store).rollback()
    payload = edge.payload("node-1", 3, perturbed(w0, 3))
    with pytest.raises(DeviceHolds) as held:
        start_weights(node, Received(INSTR, downlink=payload.delta))
    assert (held.value.version, held.value.held_hash) == (back.version, back.hash) == (1, back.hash)


def test_an_io_error_under_stamen_device_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stamen device status|run` on a failing card (EIO reading the store, which repair does not
    take for rot): a one-line error, no traceback."""
    import errno

    import stamen.device.cli as device_cli
    from stamen.cli import main

    def failing(args: Any) -> int:
        raise OSError(errno.EIO, "Input/output error", "/store/versions/v2/weights.data")

    monkeypatch.setattr(device_cli, "_status", failing)
    assert main(["device", "status", "--config", "device.toml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "stamen: error: Input/output error: /store/versions/v2/weights.data"
