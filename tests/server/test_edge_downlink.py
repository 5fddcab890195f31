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


def _model(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"w": rng.normal(0, scale, size=(4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}


def test_a_device_that_missed_a_delta_is_resynchronized_from_what_it_holds() -> None:
    rng = np.random.default_rng(1)
    initial, t1, t2 = _model(rng), _model(rng), _model(rng)
    signer = Signer.generate()
    down = DeviceDownlink(initial, signer, "dense", "m")
    verifier = Verifier([signer.public_key_bytes()])
    down.make_update("node-7", t1, 1, seed=1)  # lost on the way: the device still holds version 0
    down.resync("node-7", model_hash(initial))  # what its reply said it holds
    data, digest = down.make_update("node-7", t2, 2, seed=2)
    env, delta = decode_update(data, verifier=verifier, expected_base=model_hash(initial))
    assert "kind" not in env.meta  # a delta from version 0, not a replacement
    np.testing.assert_allclose(initial["w"] + delta["w"], t2["w"], atol=1e-6)
    assert digest == down.held_hash("node-7")


def test_a_device_holding_weights_the_server_dropped_gets_a_replacement() -> None:
    rng = np.random.default_rng(2)
    initial, target = _model(rng), _model(rng)
    signer = Signer.generate()
    down = DeviceDownlink(initial, signer, "int8", "m")
    lost = "ab" * 32  # e.g. a version from before the server lost its history
    down.resync("node-1", lost)
    data, digest = down.make_update("node-1", target, 9, seed=0)
    env, payload = decode_update(data, verifier=Verifier([signer.public_key_bytes()]), expected_base=lost)
    assert env.meta["kind"] == "replace" and env.codec == "dense" and env.version == 9
    np.testing.assert_array_equal(payload["w"], target["w"])  # the whole model, lossless
    assert digest == model_hash(target) == env.meta["target"] == down.held_hash("node-1")


def test_held_reply_becomes_a_resync() -> None:
    from flwr.app import ConfigRecord, RecordDict

    from stamen.protocols import keys
    from stamen.server.driver.flower_transport import reply_of

    good = reply_of("node-3", RecordDict({keys.HELD: ConfigRecord({"hash": "cd" * 32, "version": 4})}))
    assert good.held == "cd" * 32 and good.error is not None and good.envelope is None
    bad = reply_of("node-3", RecordDict({keys.HELD: ConfigRecord({"hash": "x"})}))
    assert bad.held is None and bad.error is not None


def test_a_device_back_at_a_retained_version_gets_a_delta_when_the_server_keeps_it() -> None:
    """The device applied versions 1..3, then repaired back to version 1 (its store retains three)
    while the server sent version 4: keeping the versions it held before (``earlier=3``) the server
    answers with a delta from version 1; keeping one, with the whole model. Both reach the target."""
    rng = np.random.default_rng(3)
    initial, *targets = (_model(rng) for _ in range(6))
    signer = Signer.generate()
    verifier = Verifier([signer.public_key_bytes()])
    for earlier, kind in ((3, "delta"), (1, "replace")):
        down = DeviceDownlink(initial, signer, "dense", "m", earlier=earlier)
        hashes = [down.make_update("d", targets[v - 1], v, seed=v)[1] for v in (1, 2, 3, 4)]
        assert len(down.snapshot()[2]) == 1 + 1 + earlier  # initial, held, earlier (no more)
        down.resync("d", hashes[0])  # what its reply said it holds: version 1
        base = down.snapshot()[2].get(hashes[0])
        data, digest = down.make_update("d", targets[4], 5, seed=5)
        env, payload = decode_update(data, verifier=verifier, expected_base=hashes[0])
        assert env.meta.get("kind", "delta") == kind and (base is None) == (kind == "replace")
        got = payload if base is None else {k: base[k] + payload[k] for k in base}  # the device's sum
        assert model_hash(got) == digest == down.held_hash("d")
        np.testing.assert_allclose(got["w"], targets[4]["w"], atol=1e-6)


def test_a_held_report_that_is_no_model_hash_is_refused_and_never_stops_the_run() -> None:
    """A device's unsigned "held" report becomes the base hash of the next signed envelope; one
    that is not 64 lower-case hex (``"Z" * 64``, upper-case) made the envelope refuse itself and
    stopped the run whenever the device was asked, also after a resume from a checkpoint."""
    from flwr.app import ConfigRecord, RecordDict

    from stamen.protocols import keys
    from stamen.server.driver.flower_transport import reply_of

    rng = np.random.default_rng(5)
    initial, target = _model(rng), _model(rng)
    down = DeviceDownlink(initial, Signer.generate(), "dense", "m")
    for bad in ("Z" * 64, "A" * 64):
        reply = reply_of("node-7", RecordDict({keys.HELD: ConfigRecord({"hash": bad})}))
        assert reply.held is None and reply.error is not None and "64-hex" in reply.error
        down.resync("node-7", bad)  # a caller that did not check: ignored
    assert down.held_hash("node-7") == model_hash(initial)
    down.restore({"node-7": "A" * 64}, {}, down.snapshot()[2])  # a checkpoint of the old code
    data, digest = down.make_update("node-7", target, 1, seed=0)
    assert digest == down.held_hash("node-7") and len(data) > 0
