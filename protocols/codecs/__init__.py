"""Update codecs: registered stages composed by a :class:`CodecPipeline`.

Importing this package registers every built-in stage: ``dense``, ``fp16``, ``topk``, ``int8``,
``lowrank``, ``fedzip``, ``compeft``, ``dare``, ``rqm`` (array stages) and ``zstd`` (byte stage).
A new codec is a new module with an ``@register``-ed stage class, imported below.
"""

from __future__ import annotations

from . import compeft, dare, dense, fedzip, fp16, int8, lowrank, rqm, topk, zstd  # noqa: F401  (registers the stages)
from . import frl_rank as _frl_rank  # noqa: F401  (registers frl_rank: FRL rankings, bit-packed)
from . import lora as _lora  # noqa: F401  (registers lora: zero/sparse/dense exact encoding)
from .base import (
    Arrays,
    ArrayStage,
    ByteStage,
    CodecSpec,
    Scalar,
    StageSpec,
    available,
    register,
)
from .pipeline import CodecPipeline

__all__ = [
    "ArrayStage",
    "Arrays",
    "ByteStage",
    "CodecPipeline",
    "CodecSpec",
    "Scalar",
    "StageSpec",
    "available",
    "register",
]
