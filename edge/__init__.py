"""stamen.edge: the on-device runtime (must not import stamen.server or stamen.simulations).

- :class:`EdgeRuntime` — a model store on a device: apply signed delta updates crash-safely,
  roll back, serve predictions (onnxruntime or torch), keep a personal overlay.
- :func:`create_store` — make a store from an ONNX or safetensors model and a trusted key.
- :func:`create_delta`, :func:`load_weights` — the host side: sign ``target - base`` for a device.
- :func:`personalize` — sparse-backprop fine-tuning (``full``, ``bias``, ``last_k=K``,
  ``channels=R``, ``budget=SIZE``) stored as the overlay (imports torch; loaded lazily).

Serving an ONNX store needs numpy, onnx, onnxruntime, safetensors and cryptography — not torch.
"""

from __future__ import annotations

from typing import Any

from .delta import create_delta, load_weights
from .errors import StaleVersion, StoreCorrupt
from .runtime import EdgeRuntime, ModelVersion
from .store import create_store

__all__ = [
    "EdgeRuntime",
    "ModelVersion",
    "PersonalizeConfig",
    "StaleVersion",
    "StoreCorrupt",
    "create_delta",
    "create_store",
    "load_weights",
    "personalize",
]

_LAZY = {"personalize": "personalization", "PersonalizeConfig": "personalization"}


def __getattr__(name: str) -> Any:
    """Import the torch-based parts on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
