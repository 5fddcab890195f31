"""DeviceDownlink: signed deltas against what each device holds, and the hash it holds after."""

from __future__ import annotations

import numpy as np

from stamen.protocols import Signer, Verifier, decode_update, model_hash
from stamen.server.edge_downlink import DeviceDownlink


def test_updates_track_what_each_device_computes() -> None:
    rng = np.random.default_rng(0)
    initial = {"w": rng.normal(size=(6, 5)).astype(np.float32), "b": np.zeros(5, np.float32)}
    signer = Signer.generate()
    down = DeviceDownlink(initial, signer, "int8", "m")  # lossy: held != target
    verifier = Verifier([signer.public_key_bytes()])
    held = {k: initial[k].copy() for k in sorted(initial)}
    for version in (1, 2):
        target = {k: v + rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in initial.items()}
        data, digest = down.make_update(3, target, version, seed=version)
        env, delta = decode_update(data, verifier=verifier, expected_base=model_hash(held))
        held = {k: held[k] + delta[k] for k in held}  # the device's arithmetic
        assert digest == model_hash(held) == env.meta["target"] == down.held_hash(3)
        assert env.version == version and env.meta["model"] == "m"
        assert digest != model_hash(target)  # int8 is lossy: the tracker follows the device
    assert down.held_hash(4) == model_hash(initial)  # another device still holds version 0
