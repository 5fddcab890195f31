"""Host side: make a signed delta update between two model files (ONNX or safetensors).

The delta format and its signing live in :mod:`stamen.protocols.delta` (the server makes the same
envelopes for the devices it federates); this module reads model files for ``stamen delta create``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stamen.protocols.delta import SignedDelta, create_delta, create_delta_with_result

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
