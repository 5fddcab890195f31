"""Architecture specs of the edge model family (JSON, no torch import: devices read it too).

The spec travels with the weights (ONNX ``metadata_props`` / safetensors metadata under
``"stamen.arch"``), so a device can rebuild the PyTorch module it personalizes from the weights
alone, without re-exporting anything. Spec fields::

    {"name": "mlp", "input_shape": [64], "hidden": [64], "classes": 10}
    {"name": "cnn", "input_shape": [1, 8, 8], "channels": [16, 32], "strides": [1, 2],
     "hidden": [], "classes": 10}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ARCH_KEY", "ArchSpec", "parse_arch", "state_shapes"]

ARCH_KEY = "stamen.arch"
_MAX_WIDTH = 65536


@dataclass(frozen=True)
class ArchSpec:
    """Validated architecture spec (see module docstring)."""

    name: str
    input_shape: tuple[int, ...]
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    hidden: tuple[int, ...]
    classes: int

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored next to the weights."""
        out: dict[str, Any] = {"name": self.name, "input_shape": list(self.input_shape)}
        if self.name == "cnn":
            out |= {"channels": list(self.channels), "strides": list(self.strides)}
        return out | {"hidden": list(self.hidden), "classes": self.classes}

    def dumps(self) -> str:
        """Compact canonical JSON text."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))


def _ints(
    obj: Mapping[str, Any], key: str, lo: int, hi: int, default: Sequence[int] | None = None
) -> tuple[int, ...]:
    value = obj.get(key, default)
    if not isinstance(value, (list, tuple)) or not all(type(v) is int and lo <= v <= hi for v in value):
        raise ValueError(f"arch {key!r} must be a list of ints in [{lo}, {hi}], got {value!r}")
    return tuple(value)


def parse_arch(obj: Mapping[str, Any] | str) -> ArchSpec:
    """Validate an architecture spec (a dict or its JSON text).

    Raises
    ------
    ValueError
        Naming the key: unknown ``name`` (``mlp`` or ``cnn``), unknown keys, or bad values.
    """
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as exc:
            raise ValueError(f"arch spec is not JSON: {exc}") from None
    if not isinstance(obj, Mapping):
        raise ValueError("arch spec must be a JSON object")
    name = obj.get("name")
    allowed = {"mlp": {"name", "input_shape", "hidden", "classes"}}
    allowed["cnn"] = allowed["mlp"] | {"channels", "strides"}
    if name not in allowed:
        raise ValueError(f"arch 'name' must be 'mlp' or 'cnn', got {name!r}")
    unknown = set(obj) - allowed[name]
    if unknown:
        raise ValueError(f"arch {name!r} has unknown keys {sorted(unknown)}")
    shape = _ints(obj, "input_shape", 1, _MAX_WIDTH)
    channels = _ints(obj, "channels", 1, _MAX_WIDTH, []) if name == "cnn" else ()
    strides = _ints(obj, "strides", 1, 4, [1] * len(channels)) if name == "cnn" else ()
    if name == "cnn" and (len(shape) != 3 or not channels or len(strides) != len(channels)):
        raise ValueError("arch 'cnn' needs input_shape [C, H, W] and equally long channels and strides")
    if name == "mlp" and len(shape) != 1:
        raise ValueError("arch 'mlp' needs input_shape [features]")
    classes = obj.get("classes")
    if type(classes) is not int or not 1 <= classes <= _MAX_WIDTH:
        raise ValueError(f"arch 'classes' must be an int in [1, {_MAX_WIDTH}], got {classes!r}")
    hidden = _ints(obj, "hidden", 1, _MAX_WIDTH, [])
    return ArchSpec(str(name), shape, channels, strides, hidden, classes)


def state_shapes(spec: ArchSpec) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the ``state_dict`` of :func:`stamen.edge.arch.build_model` for ``spec``,
    computed without torch: ``layers.<i>.weight`` is ``(out, in, 3, 3)`` for a convolution and
    ``(out, in)`` for a linear layer, ``layers.<i>.bias`` is ``(out,)``."""
    shapes: dict[str, tuple[int, ...]] = {}
    width, i = spec.input_shape[0], 0
    for out in spec.channels:
        shapes |= {f"layers.{i}.weight": (out, width, 3, 3), f"layers.{i}.bias": (out,)}
        width, i = out, i + 1
    if not spec.channels:
        width = math.prod(spec.input_shape)
    for out in (*spec.hidden, spec.classes):
        shapes |= {f"layers.{i}.weight": (out, width), f"layers.{i}.bias": (out,)}
        width, i = out, i + 1
    return shapes
