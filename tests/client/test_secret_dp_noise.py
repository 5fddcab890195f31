"""The client's DP draws (local DP noise, RQM's randomized rounding, DP-SGD's batches and noise) are
secret by default (``privacy.noise = "secret"``): the server, who knows the run seed, the round and
the sender, cannot rebuild them. With ``"seeded"`` they replay bit for bit (reviewer's c2, c9)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import numpy as np
import pytest
import torch

from stamen.client.core import encode_delta, local_privacy, local_update
from stamen.client.node import CODEC_SEED, Node, Trained, codec_seed, release
from stamen.client.state import ClientState
from stamen.client.trainers import TrainResult
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.provider import client_data
from stamen.simulations.scenario import load_scenario
from stamen.task.models import model_structure
from stamen.task.seeds import client_seed
from stamen.task.spec import RoundInstructions

PID, RND = 3, 2


def _instr(*sets: str) -> tuple[SimulationPlan, RoundInstructions]:
    plan = SimulationPlan.from_scenario(load_scenario("smoke", ["rounds=3", *sets]))
    return plan, plan.cfg.instructions(RND, RND - 1)


def _delta() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "w": rng.standard_normal((50, 20)).astype(np.float32),
        "b": rng.standard_normal(20).astype(np.float32),
    }


def _local(*sets: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """Two privatizations of one delta (same seed) and the server's best guess error, as c2 does:
    regenerate the noise from ``client_seed(run seed, round, pid)`` and subtract it."""
    plan, instr = _instr("privacy.mode=local", *sets)
    spec, delta = instr.train, _delta()
    seed = client_seed(instr.seed, instr.round, PID)  # what client/node.py:train uses
    a, _ = local_privacy(delta, spec, seed, ClientState())
    b, _ = local_privacy(delta, spec, seed, ClientState())
    g = np.random.default_rng(client_seed(plan.cfg.seed, RND, PID) ^ 0x1D9)
    norm = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in delta.values()))
    scale, std = min(1.0, spec.dp_clip / norm), np.float32(spec.dp_noise_multiplier * spec.dp_clip)
    err = 0.0
    for k, v in delta.items():
        noise = g.standard_normal(v.shape, dtype=np.float32) * std
        err = max(err, float(np.abs(a[k] - noise - v * np.float32(scale)).max()))
    return dict(a), dict(b), err


def test_local_dp_noise_is_secret_by_default() -> None:
    a, b, err = _local()
    assert not np.array_equal(a["w"], b["w"])  # fresh noise every time
    assert err > 1.0  # the server's regenerated noise is not the client's (std z·C >> 1 here)


def test_seeded_local_dp_noise_replays() -> None:
    a, b, err = _local("privacy.noise=seeded")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert err < 1e-5  # the server removes the noise exactly: the mode says so in results.json


def _rqm_payloads(*sets: str) -> tuple[list[bytes], bytes]:
    """Two releases of one delta by the same node (same seed), and the encoding under the codec seed
    the server can derive (``client_seed ^ CODEC_SEED``)."""
    _, instr = _instr("privacy.mode=rqm", "codec.pipeline=rqm", *sets)
    node = Node(cast(Any, None), f"client-{PID}", PID)  # release never reads the data
    delta = {"w": np.full(2000, 0.05, np.float32)}
    seed = client_seed(instr.seed, instr.round, PID)
    trained = Trained(TrainResult(delta, 1, {}), "0" * 64, seed)
    sent = [release(node, instr, trained, ClientState())[0] for _ in range(2)]
    known = encode_delta(
        delta,
        instr.codec,
        base_hash="0" * 64,
        version=instr.version,
        sender=node.sender,
        seed=seed ^ CODEC_SEED,
    )
    return sent, known


def test_rqm_rounding_is_secret_by_default() -> None:
    (a, b), known = _rqm_payloads()
    assert a != b and a != known


def test_seeded_rqm_replays_and_other_codecs_keep_their_seed() -> None:
    (a, b), known = _rqm_payloads("privacy.noise=seeded")
    assert a == b == known
    _, plain = _instr("codec.pipeline=rqm")  # RQM as a compressor: not a DP draw, stays seeded
    assert not plain.train.dp_codec and codec_seed(plain.train, 12) == 12 ^ CODEC_SEED


def _dp_sgd(*sets: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Two DP-SGD rounds of client 0 from the same weights and seed (the server's replay, c9)."""
    plan, instr = _instr("privacy.mode=dp_sgd", *sets)
    data, seed = client_data(plan.data, 0), client_seed(instr.seed, instr.round, 0)
    model = model_structure(instr.task)
    g0 = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    runs = [local_update(model_structure(instr.task), g0, data, instr.train, seed).delta for _ in range(2)]
    return runs[0], runs[1]


def test_dp_sgd_is_not_replayable_by_default() -> None:
    a, b = _dp_sgd()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) > 1e-4


def test_seeded_dp_sgd_replays_and_restores_the_torch_generator() -> None:
    before = torch.get_rng_state()
    a, b = _dp_sgd("privacy.noise=seeded")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert torch.equal(torch.get_rng_state(), before)


def test_spec_default_is_secret_and_the_wire_carries_the_mode() -> None:
    _, instr = _instr("privacy.mode=local", "privacy.noise=seeded")
    back = RoundInstructions.from_config(instr.to_config())  # what a deployed ClientApp decodes
    assert back.train.dp_noise == "seeded" and replace(back.train, dp_noise="secret") != back.train
    assert _instr("privacy.mode=local")[1].train.dp_noise == "secret"


def test_a_deployed_node_refuses_seeded_client_dp_unless_its_config_allows_it() -> None:
    """The server is the adversary of client-side DP: a node follows its request for seeded noise
    only with ``allow-seeded-dp=true`` (a simulated node does); non-private rounds are not affected."""
    from stamen.client.node import check_seeded_dp

    deployed, simulated = Node(cast(Any, None), "node-1", 1, seeded_dp=False), Node(cast(Any, None), "c", 1)
    for sets in (
        ("privacy.mode=local",),
        ("privacy.mode=rqm", "codec.pipeline=rqm"),
        ("privacy.mode=dp_sgd",),
    ):
        seeded = _instr(*sets, "privacy.noise=seeded")[1].train
        with pytest.raises(ValueError, match="allow-seeded-dp=true"):
            check_seeded_dp(deployed, seeded)
        check_seeded_dp(simulated, seeded)
        check_seeded_dp(deployed, _instr(*sets)[1].train)  # secret: followed
    check_seeded_dp(deployed, _instr("privacy.noise=seeded")[1].train)  # not private: nothing to refuse
