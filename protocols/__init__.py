"""stamen.protocols: wire formats shared by server, client and edge (numpy only).

Envelope (framing, header, signature), codecs (a pipeline of registered stages), Ed25519
signing, tensor tables and the canonical model hash, and one error hierarchy rooted at
:class:`StamenError`. Only ``flower.py`` may import flwr.
"""

from __future__ import annotations

from .codecs import CodecPipeline, CodecSpec, StageSpec
from .envelope import SCHEMA_VERSION, Envelope, pack, unpack
from .errors import (
    BaseModelMismatch,
    CodecError,
    CodecMismatch,
    MalformedUpdate,
    SignatureError,
    StamenError,
    ValidationError,
)
from .signing import Signer, Verifier
from .tensors import ModelHasher, TensorInfo, is_model_hash, model_hash, tensor_table
from .update import codec_pipeline, decode_expected, decode_update, encode_update

__all__ = [
    "SCHEMA_VERSION",
    "BaseModelMismatch",
    "CodecError",
    "CodecMismatch",
    "CodecPipeline",
    "CodecSpec",
    "Envelope",
    "MalformedUpdate",
    "ModelHasher",
    "SignatureError",
    "Signer",
    "StageSpec",
    "StamenError",
    "TensorInfo",
    "ValidationError",
    "Verifier",
    "codec_pipeline",
    "decode_expected",
    "decode_update",
    "encode_update",
    "is_model_hash",
    "model_hash",
    "pack",
    "tensor_table",
    "unpack",
]
