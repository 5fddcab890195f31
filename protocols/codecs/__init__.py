"""Update codecs: registered stages composed by a :class:`CodecPipeline`.

Importing this package registers every built-in stage: ``dense``, ``fp16``, ``topk``, ``int8``
(array stages) and ``zstd`` (byte stage). A new codec is a new module with an ``@register``-ed
stage class, imported below.
"""

from __future__ import annotations

from . import dense, fp16, int8, topk, zstd  # noqa: F401  (registers the stages)
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
