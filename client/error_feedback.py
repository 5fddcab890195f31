"""Error feedback (residual accumulation) for biased update codecs.

Seide et al., "1-Bit Stochastic Gradient Descent and its Application to Data-Parallel Distributed
Training of Speech DNNs", Interspeech 2014; Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory",
NeurIPS 2018, Algorithm 1 (``g_t = C(e_t + delta_t)``, ``e_{t+1} = e_t + delta_t - g_t``). Each
client keeps what its codec dropped last round and adds it to the next delta, so a biased codec
(top-k, FedZip, ComPEFT) still delivers every coordinate's mass eventually; this is what makes
aggressive sparsity (<= 1 %) train well. Not in the original FedZip, which simply drops it.

Per round, with the client's :class:`~stamen.client.state.ClientState`::

    corrected = apply_error_feedback(delta, state)           # delta + residual
    payload, decoded = pipeline.roundtrip(corrected, rng)     # what the server will decode
    update_residual(state, corrected, decoded)                # residual = corrected - decoded
    # send ``payload`` (or re-encode ``corrected`` with a generator seeded identically:
    # encoding is deterministic given the generator, so the bytes are the same)

Residuals live in ``state.arrays`` under ``"ef/<tensor name>"`` as float32. A residual whose shape
no longer matches its tensor (the model changed) is dropped, not added. For an unbiased stochastic
codec (``int8``, ``dare``, ``rqm``) error feedback is unnecessary; with ``rqm`` it does not weaken
the DP guarantee (the mechanism clips whatever it is given), but it adds nothing either.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from stamen.client.state import ClientState

__all__ = ["PREFIX", "apply_error_feedback", "residual_norm", "update_residual"]

#: Key prefix of the residuals in ``ClientState.arrays``.
PREFIX = "ef/"


def apply_error_feedback(delta: Mapping[str, np.ndarray], state: ClientState) -> dict[str, np.ndarray]:
    """``delta + residual`` per tensor (float32), the input to the codec this round.

    Parameters
    ----------
    delta : Mapping[str, numpy.ndarray]
        This round's update ``local - global``.
    state : ClientState
        The client's memory; read only here. Tensors without a residual (first round) or with a
        residual of another shape are passed through unchanged.

    Returns
    -------
    dict[str, numpy.ndarray]
        The corrected update, same names and shapes as ``delta``.
    """
    out: dict[str, np.ndarray] = {}
    for name, value in delta.items():
        arr = np.asarray(value, np.float32)
        residual = state.arrays.get(PREFIX + name)
        out[name] = arr + residual if residual is not None and residual.shape == arr.shape else arr.copy()
    return out


def update_residual(
    state: ClientState, corrected: Mapping[str, np.ndarray], decoded: Mapping[str, np.ndarray]
) -> None:
    """Store ``residual = corrected - decoded`` per tensor, replacing last round's residuals.

    Parameters
    ----------
    state : ClientState
        Updated in place: ``state.arrays["ef/<name>"]`` for every tensor of ``corrected``;
        residuals of tensors no longer present are removed.
    corrected : Mapping[str, numpy.ndarray]
        What was given to the codec (:func:`apply_error_feedback`'s output).
    decoded : Mapping[str, numpy.ndarray]
        What the receiver decodes from the payload (``CodecPipeline.roundtrip``'s second value).

    Raises
    ------
    ValueError
        If ``decoded`` misses a tensor of ``corrected`` or has another shape for it.
    """
    residuals: dict[str, np.ndarray] = {}
    for name, value in corrected.items():
        got = decoded.get(name)
        if got is None or np.shape(got) != np.shape(value):
            raise ValueError(f"decoded update has no tensor {name!r} of shape {np.shape(value)}")
        diff = np.asarray(value, np.float32) - np.asarray(got, np.float32)
        residuals[PREFIX + name] = diff.astype(np.float32)
    for key in [k for k in state.arrays if k.startswith(PREFIX)]:
        del state.arrays[key]
    state.arrays.update(residuals)


def residual_norm(state: ClientState) -> float:
    """L2 norm of all stored residuals (0 when there are none), e.g. for a client metric."""
    residuals = [v for k, v in state.arrays.items() if k.startswith(PREFIX)]
    total = sum(float(np.sum(np.square(v, dtype=np.float64))) for v in residuals)
    return total**0.5
