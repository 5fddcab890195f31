"""One client round as pure functions, shared by the ClientApp (Flower) and the in-process engine.

``global weights -> trainer -> delta = local - global -> codec pipeline -> packed Envelope``.
The ClientApp's train handler calls :func:`local_update`; its codec mod calls :func:`encode_delta`;
the in-process engine calls both directly. Keeping them here is what makes the two engines run the
same code.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from stamen.client.error_feedback import apply_error_feedback, update_residual
from stamen.client.privacy import privatize_update
from stamen.client.state import ClientState
from stamen.client.trainers import TrainResult, create_trainer
from stamen.protocols import Envelope, Signer, codec_pipeline, encode_update, keys, pack, tensor_table
from stamen.task.data import TaskData
from stamen.task.seeds import dp_seed
from stamen.task.spec import TrainSpec
from stamen.task.weights import set_weights

#: The generator passed to a pipeline that never draws from it (``CodecPipeline.uses_rng``).
_NO_DRAWS = np.random.default_rng(0)
#: What a client under client-side DP (``TrainSpec.private_reply``) reports besides the update: the
#: accountant's outputs, functions of the configuration and of the rounds it took part in only.
PRIVATE_METRICS = (keys.EPSILON, keys.DP_ROUNDS)
#: The ``num-examples`` such a client reports: a constant (its true count is private data).
PRIVATE_EXAMPLES = 1


def local_update(
    model: nn.Module,
    global_weights: Mapping[str, np.ndarray],
    data: TaskData,
    spec: TrainSpec,
    seed: int,
    state: ClientState | None = None,
) -> TrainResult:
    """Load the global weights into ``model``, train locally, return ``delta = local - global``.

    ``state`` is the client's persistent memory (a fresh one if None).
    """
    set_weights(model, global_weights)
    trainer = create_trainer(spec.trainer)
    # Seed only the CPU generator and restore it afterwards: torch.manual_seed also walks the
    # CUDA/XPU/MTIA lazy-init hooks, which costs ~0.5 ms per call (measured) on every client.
    saved = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        return trainer.train(model, data, spec, seed, state if state is not None else ClientState())
    finally:
        torch.set_rng_state(saved)


def encode_delta(
    delta: Mapping[str, np.ndarray],
    codec: str,
    *,
    base_hash: str,
    version: int,
    sender: str,
    seed: int,
    signer: Signer | None = None,
    state: ClientState | None = None,
    error_feedback: bool = False,
) -> bytes:
    """Encode ``delta`` with the codec spec the server asked for and pack it into an Envelope.

    The codec's randomness (e.g. stochastic rounding) comes from ``seed``, so the bytes are
    reproducible. The returned bytes are exactly what goes on the wire (``len()`` is bytes up).
    With ``error_feedback`` the residual kept in ``state`` is added before encoding and replaced
    by what this encoding lost (Seide et al. 2014; Karimireddy et al. 2019, EF-SGD).
    """
    pipeline = codec_pipeline(codec)  # CodecSpec.parse's spec, its pipeline built once per process
    spec = pipeline.spec
    rng = np.random.default_rng(seed) if pipeline.uses_rng else _NO_DRAWS  # seeding costs ~8 us
    if not error_feedback:
        return encode_update(
            delta, spec, base_hash=base_hash, version=version, sender=sender, rng=rng, signer=signer
        )
    if state is None:
        raise ValueError("error feedback needs the client's state")
    corrected = apply_error_feedback(delta, state)
    payload, decoded = pipeline.roundtrip(corrected, rng)
    update_residual(state, corrected, decoded)
    envelope = Envelope(
        codec=spec.to_string(),
        base_hash=base_hash,
        version=version,
        sender=sender,
        tensors=tensor_table(corrected),
        payload=payload,
    )
    return pack(envelope, signer)


def local_privacy(
    delta: Mapping[str, np.ndarray],
    spec: TrainSpec,
    seed: int,
    state: ClientState,
    trained: Collection[str] | None = None,
) -> tuple[Mapping[str, np.ndarray], dict[str, float]]:
    """Local DP (``spec.local_dp``): clip + Gaussian noise before any codec, ε counted in ``state``.

    Only the ``trained`` tensors (``TrainResult.trained``; all if ``None``) are clipped and noised;
    the others are exactly zero by construction and stay so (a LoRA update stays adapter-only).
    Returns the (possibly) privatized update and the metrics to report (empty without local DP).
    Both the ClientApp's ``local_dp_mod`` and the in-process engine call this. The noise comes from OS
    entropy unless ``spec.dp_noise = "seeded"`` (then from ``seed``: reproducible, not private against
    whoever knows the run seed; :func:`~stamen.task.seeds.dp_seed`).
    """
    if not spec.local_dp:
        return delta, {}
    rng = np.random.default_rng(dp_seed(spec.dp_noise, seed ^ 0x1D9))
    return privatize_update(
        delta, spec.dp_clip, spec.dp_noise_multiplier, spec.dp_delta, rng, state, spec.dp_accountant, trained
    )


def reply_metrics(spec: TrainSpec, num_examples: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics a train reply carries (before ``bytes-up``, which the codec step adds).

    Without client-side DP: ``{"num-examples": num_examples, **metrics}``, as always. Under
    client-side DP (``spec.private_reply``) only what is not computed from the client's data: the
    constant :data:`PRIVATE_EXAMPLES` and the :data:`PRIVATE_METRICS` present in ``metrics``
    (``train-loss``, ``dp-steps``, pre-clipping norms and any trainer metric are dropped).
    """
    if not spec.private_reply:
        return {keys.NUM_EXAMPLES: num_examples, **metrics}
    return {keys.NUM_EXAMPLES: PRIVATE_EXAMPLES, **{k: metrics[k] for k in PRIVATE_METRICS if k in metrics}}
