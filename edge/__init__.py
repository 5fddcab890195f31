"""stamen.edge: the on-device runtime (must not import stamen.server or stamen.simulations).

- :class:`EdgeRuntime` — a model store on a device: apply signed delta updates crash-safely,
  roll back, serve predictions (onnxruntime or torch), keep a personal overlay.
- :class:`Repair` — what ``EdgeRuntime.open(store, repair=True)`` changed when the current version
  was corrupt (it serves the newest intact retained version instead).
- :func:`create_store` — make a store from an ONNX or safetensors model and a trusted key.
- :func:`create_delta`, :func:`load_weights` — the host side: sign ``target - base`` for a device.
- :func:`personalize` — sparse-backprop fine-tuning (``full``, ``bias``, ``last_k=K``,
  ``channels=R``, ``budget=SIZE``) stored as the overlay (imports torch; loaded lazily).
- :class:`RefusedBase` (a ``BaseModelMismatch`` naming the version ``held``), :class:`StaleVersion`,
  :class:`StoreCorrupt` — the store's refusals.

Serving an ONNX store needs numpy, onnx, onnxruntime, safetensors and cryptography — not torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real imports happen on first attribute access (PEP 562), see below
    from .delta import create_delta, load_weights
    from .errors import RefusedBase, StaleVersion, StoreCorrupt
    from .personalization import PersonalizeConfig, personalize
    from .repair import Repair
    from .runtime import EdgeRuntime, ModelVersion
    from .store import create_store

__all__ = [
    "EdgeRuntime",
    "ModelVersion",
    "PersonalizeConfig",
    "RefusedBase",
    "Repair",
    "StaleVersion",
    "StoreCorrupt",
    "create_delta",
    "create_store",
    "load_weights",
    "personalize",
]

# Lazy so that `import stamen.edge.inputs` (say) costs only what that module needs: the CLI
# reports a wrong input file before numpy's neighbours, onnxruntime or torch are loaded.
_LAZY = {
    "EdgeRuntime": "runtime",
    "ModelVersion": "runtime",
    "PersonalizeConfig": "personalization",
    "RefusedBase": "errors",
    "Repair": "repair",
    "StaleVersion": "errors",
    "StoreCorrupt": "errors",
    "create_delta": "delta",
    "create_store": "store",
    "load_weights": "delta",
    "personalize": "personalization",
}


def __getattr__(name: str) -> Any:
    """Import the module defining ``name`` on first use (torch only for personalization)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
