"""Error feedback: a hand-computed residual, the telescoping property (everything sent plus the
residual equals everything computed), bounded drift vs unbounded without feedback, a pinned
residual norm, and the re-encode determinism the wiring relies on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.client.error_feedback import PREFIX, apply_error_feedback, residual_norm, update_residual
from stamen.client.state import ClientState
from stamen.protocols import CodecPipeline, CodecSpec


def _pipe(text: str) -> CodecPipeline:
    return CodecPipeline(CodecSpec.parse(text))


def _round(delta: dict, state: ClientState, pipe: CodecPipeline, seed: int) -> dict:
    corrected = apply_error_feedback(delta, state)
    _, decoded = pipe.roundtrip(corrected, np.random.default_rng(seed))
    update_residual(state, corrected, decoded)
    return decoded


def test_two_rounds_by_hand() -> None:
    state, pipe = ClientState(), _pipe("topk(ratio=0.5)")  # keeps 2 of 3
    sent = _round({"w": np.array([1.0, 2.0, -3.0], np.float32)}, state, pipe, 0)
    assert sent["w"].tolist() == [0, 2, -3] and state.arrays[PREFIX + "w"].tolist() == [1, 0, 0]
    sent = _round({"w": np.array([0.5, 0.25, 0.0], np.float32)}, state, pipe, 1)  # corrected 1.5, .25, 0
    assert sent["w"].tolist() == [1.5, 0.25, 0] and state.arrays[PREFIX + "w"].tolist() == [0, 0, 0]
    assert residual_norm(state) == 0.0


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(["topk(ratio=0.1)", "fedzip(density=0.05)", "compeft(density=0.1)", "fedzip+zstd"]),
    st.integers(1, 6),
    st.integers(0, 2**32),
)
def test_sent_plus_residual_telescopes_to_the_sum_of_deltas(codec: str, rounds: int, seed: int) -> None:
    rng, state, pipe = np.random.default_rng(seed), ClientState(), _pipe(codec)
    total_delta = np.zeros((5, 8)), np.zeros(3)
    total_sent = np.zeros((5, 8)), np.zeros(3)
    for t in range(rounds):
        delta = {"w": rng.normal(size=(5, 8)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
        sent = _round(delta, state, pipe, t)
        for i, name in enumerate(("w", "b")):
            total_delta[i][...] += delta[name]
            total_sent[i][...] += sent[name]
    for i, name in enumerate(("w", "b")):
        np.testing.assert_allclose(total_sent[i] + state.arrays[PREFIX + name], total_delta[i], atol=1e-4)


def test_feedback_keeps_the_drift_bounded_and_the_norm_is_pinned() -> None:
    delta = {"w": np.linspace(0.1, 1.0, 100, dtype=np.float32)}  # the same small push every round
    pipe, state = _pipe("topk(ratio=0.05)"), ClientState()
    drift_ef, drift_plain = [], []
    sent_ef, sent_plain = np.zeros(100), np.zeros(100)
    for t in range(40):
        sent_ef += _round(delta, state, pipe, t)["w"]
        sent_plain += pipe.roundtrip(delta, np.random.default_rng(t))[1]["w"]
        drift_ef.append(np.linalg.norm((t + 1) * delta["w"] - sent_ef))
        drift_plain.append(np.linalg.norm((t + 1) * delta["w"] - sent_plain))
    assert drift_plain[-1] > 3 * drift_plain[9]  # grows linearly without feedback
    assert max(drift_ef[20:]) < 1.5 * max(drift_ef[:20])  # bounded with it
    assert residual_norm(state) == pytest.approx(drift_ef[-1], rel=1e-5)
    assert residual_norm(state) == pytest.approx(60.99295445003022, rel=1e-6)  # ~20 rounds of backlog


def test_shape_change_missing_tensor_and_stale_residuals() -> None:
    state = ClientState(arrays={PREFIX + "w": np.ones(3, np.float32), PREFIX + "old": np.ones(2, np.float32)})
    out = apply_error_feedback({"w": np.zeros((2, 2), np.float32)}, state)
    assert out["w"].tolist() == [[0, 0], [0, 0]]  # residual of another shape is not added
    with pytest.raises(ValueError, match="'w'"):
        update_residual(state, out, {})
    update_residual(state, out, {"w": np.ones((2, 2), np.float32)})
    assert set(state.arrays) == {PREFIX + "w"} and state.arrays[PREFIX + "w"].tolist() == [[-1, -1], [-1, -1]]
    state.arrays["dp/other"] = np.zeros(1)
    update_residual(state, out, out)
    assert "dp/other" in state.arrays  # only ef/ keys are managed here


@pytest.mark.parametrize(
    "codec", ["fedzip", "compeft", "dare", "rqm", "topk+int8", "fedzip(density=0.01)+zstd"]
)
def test_roundtrip_payload_equals_a_fresh_encode_with_the_same_seed(codec: str) -> None:
    delta = {"w": np.random.default_rng(1).normal(0, 0.1, size=(30, 20)).astype(np.float32)}
    pipe = _pipe(codec)
    payload, _ = pipe.roundtrip(delta, np.random.default_rng(42))
    assert payload == pipe.encode(delta, np.random.default_rng(42))
