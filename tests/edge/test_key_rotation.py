"""Rotating the update-signing key on a device (docs/deployment.md, section 8): its trust file
holds the old and the new public key side by side, the server switches to the new private key, the
device applies an update signed with it, and the old key can then be removed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from edge_helpers import perturbed

from stamen.edge import EdgeRuntime, StoreCorrupt, create_delta
from stamen.protocols import SignatureError, Signer


def test_a_device_follows_the_documented_key_rotation(
    make_store: Callable[[str], Path], signer: Signer, tmp_path: Path
) -> None:
    store = make_store("onnx")
    old_pub = (store / "trusted.pem").read_bytes()
    new = Signer.generate()
    new.save(tmp_path / "new.pem", tmp_path / "new.pub.pem")
    (store / "trusted.pem").write_bytes(old_pub + (tmp_path / "new.pub.pem").read_bytes())  # step 1
    rt = EdgeRuntime.open(store)
    base = {k: np.array(v) for k, v in rt.global_weights().items()}
    assert rt.apply(create_delta(base, perturbed(base, 1), "dense", signer, version=1)).version == 1
    (store / "trusted.pem").write_bytes((tmp_path / "new.pub.pem").read_bytes())  # too early
    with pytest.raises(StoreCorrupt, match=r"no longer holds key .* keep it until the device has applied"):
        EdgeRuntime.open(store)
    (store / "trusted.pem").write_bytes(old_pub + (tmp_path / "new.pub.pem").read_bytes())
    rt = EdgeRuntime.open(store)
    held = {k: np.array(v) for k, v in rt.global_weights().items()}
    assert rt.apply(create_delta(held, perturbed(base, 2), "dense", new, version=2)).version == 2  # step 2
    (store / "trusted.pem").write_bytes((tmp_path / "new.pub.pem").read_bytes())  # step 3
    again = EdgeRuntime.open(store)
    assert again.version().version == 2 and again.status()["key_id"] == new.key_id
    now = {k: np.array(v) for k, v in again.global_weights().items()}
    with pytest.raises(SignatureError):  # the old key is no longer trusted
        again.apply(create_delta(now, perturbed(base, 3), "dense", signer, version=3))
