"""Host side: make a signed delta update between two model files (ONNX or safetensors).

``delta = target - base`` per tensor (the project's sign convention), encoded with any codec
pipeline and packed into a signed :class:`~stamen.protocols.Envelope` whose

- ``base_hash`` is ``model_hash(base)`` (the device refuses any other base),
- ``version`` is the version the device will hold afterwards (must exceed its high-water mark),
- ``meta["target"]`` is ``model_hash(base + decode(payload))``: exactly the weights the device
  will compute, so it can check the result bit for bit (for lossy codecs this differs from
  ``model_hash(target)``), and ``meta["model"]`` is the model id when given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from stamen.protocols import CodecSpec, Signer
from stamen.protocols.delta import SignedDelta, create_delta_with_result

from .onnx_backend import read_onnx_source
from .torch_backend import read_safetensors_source

__all__ = ["SignedDelta", "create_delta", "create_delta_with_result", "load_weights"]


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """float32 weights of an ``.onnx`` model (its initializers) or a ``.safetensors`` state_dict.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        For another suffix or an unreadable file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file {p} does not exist")
    if p.suffix == ".onnx":
        return read_onnx_source(p)[0]
    if p.suffix == ".safetensors":
        return read_safetensors_source(p)[0]
    raise ValueError(f"{p}: model files must end in .onnx or .safetensors")


def create_delta(
    base: Mapping[str, np.ndarray],
    target: Mapping[str, np.ndarray],
    codec: str | CodecSpec,
    signer: Signer,
    *,
    version: int,
    model_id: str | None = None,
    sender: str = "stamen",
    seed: int = 0,
) -> bytes:
    """Encode and sign ``target - base`` as an update envelope for an edge store (see
    :func:`create_delta_with_result` for the parameters)."""
    signed = create_delta_with_result(
        base, target, codec, signer, version=version, model_id=model_id, sender=sender, seed=seed
    )
    return signed.data
