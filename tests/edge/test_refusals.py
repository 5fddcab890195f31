"""Every bad update is refused with its own error and leaves the store (files and served outputs)
untouched; hypothesis fuzzes the update reader with mutated bytes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import perturbed, store_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stamen.edge import EdgeRuntime, StaleVersion, StoreCorrupt, create_delta
from stamen.protocols import (
    BaseModelMismatch,
    CodecPipeline,
    CodecSpec,
    Envelope,
    MalformedUpdate,
    SignatureError,
    Signer,
    StamenError,
    ValidationError,
    model_hash,
    pack,
    tensor_table,
)

X = np.random.default_rng(1).normal(size=(4, 16)).astype(np.float32)


def _signed(
    delta: dict[str, np.ndarray],
    base_hash: str,
    signer: Signer | None,
    version: int = 1,
    meta: dict | None = None,
) -> bytes:
    pipeline = CodecPipeline(CodecSpec.parse("dense"))
    env = Envelope(
        "dense",
        base_hash,
        version,
        "test",
        tensor_table(delta),
        pipeline.encode(delta, np.random.default_rng(0)),
        meta or {},
    )
    return pack(env, signer)


@pytest.fixture
def device(make_store: Callable[[str], Path], signer: Signer) -> EdgeRuntime:
    """An ONNX store already at version 1 (so replays and older versions can be tried)."""
    rt = EdgeRuntime.open(make_store("onnx"))
    w0 = {k: np.array(v) for k, v in rt.global_weights().items()}
    rt.apply(create_delta(w0, perturbed(w0, 1), "dense", signer, version=1, model_id="tiny"))
    return rt


def _refused(rt: EdgeRuntime, data: bytes, error: type[Exception], match: str) -> None:
    files, outputs, version = store_bytes(rt.store), rt.predict(X), rt.version()
    with pytest.raises(error, match=match):
        rt.apply(data)
    assert store_bytes(rt.store) == files and rt.version() == version
    np.testing.assert_array_equal(rt.predict(X), outputs)
    assert EdgeRuntime.open(rt.store).version() == version


def _good(rt: EdgeRuntime, signer: Signer, version: int = 2, model_id: str | None = None) -> bytes:
    cur = {k: np.array(v) for k, v in rt.global_weights().items()}
    return create_delta(cur, perturbed(cur, version), "dense", signer, version=version, model_id=model_id)


def test_tampered_payload_byte(device: EdgeRuntime, signer: Signer) -> None:
    data = bytearray(_good(device, signer))
    data[-5] ^= 0x01
    _refused(device, bytes(data), SignatureError, "digest")


def test_tampered_header_byte(device: EdgeRuntime, signer: Signer) -> None:
    data = bytearray(_good(device, signer))
    data[20] ^= 0x01
    _refused(device, bytes(data), SignatureError, "bad signature")


def test_wrong_key(device: EdgeRuntime, other_signer: Signer) -> None:
    _refused(device, _good(device, other_signer), SignatureError, "unknown signing key")


def test_unsigned(device: EdgeRuntime) -> None:
    cur = {k: np.array(v) for k, v in device.global_weights().items()}
    _refused(device, _signed(cur, model_hash(cur), None, 2), SignatureError, "not signed")


def test_replay_of_applied_update(device: EdgeRuntime, signer: Signer) -> None:
    data = _good(device, signer)
    device.apply(data)
    _refused(device, data, BaseModelMismatch, "based on")


@pytest.mark.parametrize("version", [0, 1])
def test_older_or_same_version(device: EdgeRuntime, signer: Signer, version: int) -> None:
    cur = {k: np.array(v) for k, v in device.global_weights().items()}
    delta = {k: np.zeros_like(v) for k, v in cur.items()}
    _refused(device, _signed(delta, model_hash(cur), signer, version), StaleVersion, "not newer")


def test_wrong_base(device: EdgeRuntime, signer: Signer) -> None:
    cur = {k: np.array(v) for k, v in device.global_weights().items()}
    other = perturbed(cur, 77)
    _refused(device, create_delta(other, cur, "dense", signer, version=2), BaseModelMismatch, "based on")


def test_wrong_model_id(device: EdgeRuntime, signer: Signer) -> None:
    _refused(device, _good(device, signer, model_id="other"), BaseModelMismatch, "for model 'other'")


@pytest.mark.parametrize("refused", ["apply", "rollback"])
def test_a_refusal_after_another_process_changed_the_store_keeps_the_served_version(
    device: EdgeRuntime, signer: Signer, refused: str
) -> None:
    """Another session (a process) moves the store on; a refused apply or rollback here must not make
    ``status()`` name a version this session does not serve (it once named the re-read manifest's)."""
    served, outputs = device.version(), device.predict(X)  # version 1
    other = EdgeRuntime.open(device.store, serve=False)
    other.apply(_good(other, signer, version=2))  # committed: [0, 1, 2]
    if refused == "apply":
        cur = {k: np.array(v) for k, v in other.global_weights().items()}
        with pytest.raises(SignatureError, match="not signed"):
            device.apply(_signed(cur, model_hash(cur), None, 3))
    else:
        other.rollback()
        other.rollback()  # committed: [0]
        with pytest.raises(ValueError, match=r"no earlier version .* \(at version 0\)"):
            device.rollback()
    assert device.status()["version"] == device.version().version == served.version == 1
    assert device.status()["hash"] == served.hash
    np.testing.assert_array_equal(device.predict(X), outputs)


@pytest.mark.parametrize("cut", [3, 9, 40, -70, -1])
def test_truncated(device: EdgeRuntime, signer: Signer, cut: int) -> None:
    _refused(device, _good(device, signer)[:cut], StamenError, ".")


def test_nan_weights(device: EdgeRuntime, signer: Signer) -> None:
    cur = {k: np.array(v) for k, v in device.global_weights().items()}
    delta = {k: np.zeros_like(v) for k, v in cur.items()}
    delta["layers.1.weight"][0, 0, 0, 0] = np.nan
    _refused(device, _signed(delta, model_hash(cur), signer, 2), ValidationError, "non-finite")


def test_inf_weights(device: EdgeRuntime, signer: Signer) -> None:
    cur = {k: np.array(v) for k, v in device.global_weights().items()}
    delta = {k: np.zeros_like(v) for k, v in cur.items()}
    delta["layers.0.bias"][1] = -np.inf
    _refused(device, _signed(delta, model_hash(cur), signer, 2), ValidationError, "non-finite")


def test_shape_mismatch(device: EdgeRuntime, signer: Signer) -> None:
    cur = {k: np.array(v) for k, v in device.global_weights().items()}
    delta = {k: np.zeros_like(v) for k, v in cur.items()}
    delta["layers.3.bias"] = np.zeros(4, np.float32)  # model has 3 classes
    _refused(device, _signed(delta, model_hash(cur), signer, 2), ValidationError, "table")


def test_target_hash_mismatch(device: EdgeRuntime, signer: Signer) -> None:
    cur = {k: np.array(v) for k, v in device.global_weights().items()}
    delta = {k: np.zeros_like(v) for k, v in cur.items()}
    data = _signed(delta, model_hash(cur), signer, 2, meta={"target": "0" * 64})
    _refused(device, data, ValidationError, "target")


def test_not_an_envelope(device: EdgeRuntime) -> None:
    _refused(device, b"\x00" * 200, MalformedUpdate, "magic")


def test_corrupt_weights_file_detected_on_open(device: EdgeRuntime) -> None:
    data_file = device.store / "versions" / f"v{1:020d}" / "weights.data"  # the current version
    raw = bytearray(data_file.read_bytes())
    raw[0] ^= 0x40
    data_file.write_bytes(bytes(raw))
    with pytest.raises(StoreCorrupt, match="hash"):
        EdgeRuntime.open(device.store)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_update_bytes(device: EdgeRuntime, signer: Signer, data: st.DataObject) -> None:
    good = _good(device, signer, version=10**6)
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[pos:]
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif raw:
            del raw[pos]
    if bytes(raw) == good:
        return
    files, version = store_bytes(device.store), device.version()
    with pytest.raises(StamenError):
        device.apply(bytes(raw))
    assert store_bytes(device.store) == files and device.version() == version
