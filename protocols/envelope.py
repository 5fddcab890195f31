"""The envelope: one update on the wire, optionally signed.

Binary layout (integers little-endian)::

    offset  size        field
    0       4           magic b"STM\\x01"
    4       1           flags (bit 0: signed; other bits must be 0)
    5       4           header_len, u32, <= 1 MiB
    9       header_len  header: canonical compact JSON (sorted keys, no spaces, ASCII) with
                        schema, codec, base, ver, snd, tensors [[name, [dims], dtype], ...],
                        meta (only if non-empty), len (payload bytes), sha (payload SHA-256
                        hex; only when signed)
    if signed:
            8           key_id, ASCII, zero padded (first 8 hex chars of sha256(public key))
            64          Ed25519 signature over every byte before it
    ...     len         payload (codec output)

The signature covers the header, which pins the payload by its digest (the TUF / in-toto
pattern): a forged or unknown-key envelope is rejected in about 0.1 ms, before the JSON is parsed
and before a large payload is hashed (``research/edge.md`` §7). Unsigned envelopes carry no
digest, to stay small. :func:`unpack` turns any input into an :class:`Envelope` or a
:class:`~stamen.protocols.errors.StamenError`, with no allocation driven by a length field.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _header
from ._header import SCHEMA_VERSION
from ._template import header_template
from .errors import MalformedUpdate, SignatureError
from .signing import KEY_ID_LENGTH, SIGNATURE_LENGTH, Signer, Verifier
from .tensors import TensorInfo

__all__ = ["MAGIC", "MAX_HEADER", "SCHEMA_VERSION", "Envelope", "pack", "unpack", "unpack_expected"]

MAGIC = b"STM\x01"
MAX_HEADER = 1 << 20
_FIXED = struct.Struct("<4sBI")
_SIGNED = 0x01
_TRAILER = KEY_ID_LENGTH + SIGNATURE_LENGTH
_KEY_ID_RE = re.compile(rb"[!-~]{1,8}\x00*")


@dataclass(frozen=True)
class Envelope:
    """One update with everything needed to verify, check and decode it.

    Attributes
    ----------
    codec : str
        ``CodecSpec.to_string()`` of the codec that made ``payload``.
    base_hash : str
        ``model_hash`` (lowercase hex) of the weights the delta applies to.
    version : int
        Model version / server round the update is based on, >= 0.
    sender : str
        Sender id, <= 128 characters.
    tensors : tuple[TensorInfo, ...]
        Tensor table; the payload refers to tensors by their index here.
    payload : bytes or memoryview
        Codec output (a read-only view into the input when unpacked with ``zero_copy=True``).
    meta : Mapping[str, int | float | str]
        Small extras (<= 4 KiB packed), e.g. ``num_examples``.
    schema : int
        Header schema version.
    key_id, signature : str or None, bytes or None
        Set by :func:`unpack` when the bytes were signed; ignored by :func:`pack`.
    """

    codec: str
    base_hash: str
    version: int
    sender: str
    tensors: tuple[TensorInfo, ...]
    payload: bytes | memoryview
    meta: Mapping[str, int | float | str] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION
    key_id: str | None = None
    signature: bytes | None = None


def _header_bytes(envelope: Envelope, digest: str | None) -> bytes:
    """Build, serialize and re-validate the header exactly as :func:`unpack` will read it (from a
    :mod:`~stamen.protocols._template` of the fields when there is no meta: the same bytes)."""
    raw = _templated(envelope, digest)
    if raw is not None:
        return raw
    fields = {
        "schema": envelope.schema,
        "codec": envelope.codec,
        "base": envelope.base_hash,
        "ver": envelope.version,
        "snd": envelope.sender,
        "tensors": envelope.tensors,
        "meta": dict(envelope.meta) if isinstance(envelope.meta, Mapping) else envelope.meta,
        "len": len(envelope.payload),
        "sha": digest,
    }
    raw = _header.serialize(fields, signed=digest is not None)
    if len(raw) > MAX_HEADER:
        raise MalformedUpdate(f"envelope header of {len(raw)} bytes exceeds {MAX_HEADER}")
    return raw


def _templated(envelope: Envelope, digest: str | None) -> bytes | None:
    """The header filled into its template; None when there is meta or no valid template."""
    meta, schema = envelope.meta, envelope.schema
    if not isinstance(meta, Mapping) or meta or type(schema) is not int or schema != SCHEMA_VERSION:
        return None
    tensors, signed = envelope.tensors, digest is not None
    length = len(envelope.payload)
    tpl = header_template(envelope.codec, envelope.base_hash, envelope.version, tensors, length, signed)
    raw = tpl.fill(envelope.sender, digest) if tpl is not None else None
    return raw if raw is not None and len(raw) <= MAX_HEADER else None


def pack(envelope: Envelope, signer: Signer | None = None) -> bytes:
    """Serialize an envelope, signing it when ``signer`` is given.

    Parameters
    ----------
    envelope : Envelope
        The update; its ``key_id`` and ``signature`` fields are ignored.
    signer : Signer or None
        Signs the header (which then includes the payload's SHA-256).

    Returns
    -------
    bytes
        The packed envelope.

    Raises
    ------
    MalformedUpdate
        If a field fails the checks :func:`unpack` applies.
    """
    payload = envelope.payload
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise MalformedUpdate(f"payload must be bytes, got {type(payload).__name__}")
    digest = hashlib.sha256(payload).hexdigest() if signer is not None else None
    header = _header_bytes(envelope, digest)
    flags = _SIGNED if signer is not None else 0
    prefix = _FIXED.pack(MAGIC, flags, len(header)) + header
    if signer is None:
        return b"".join([prefix, payload])
    prefix += signer.key_id.encode("ascii").ljust(KEY_ID_LENGTH, b"\x00")
    return b"".join([prefix, signer.sign(prefix), payload])


@dataclass(frozen=True)
class _Frame:
    """Offsets found from the fixed-size fields alone (nothing parsed yet)."""

    signed: bool
    header_end: int
    payload_start: int


def _frame(data: bytes) -> _Frame:
    if len(data) < _FIXED.size:
        raise MalformedUpdate(f"envelope of {len(data)} bytes is shorter than its fixed fields")
    _, flags, header_len = _FIXED.unpack_from(data)
    if flags & ~_SIGNED:
        raise MalformedUpdate(f"unknown envelope flags {flags:#04x}")
    if header_len > MAX_HEADER or header_len > len(data) - _FIXED.size:
        raise MalformedUpdate(f"header length {header_len} exceeds the limit or the input")
    signed = bool(flags & _SIGNED)
    header_end = _FIXED.size + header_len
    payload_start = header_end + (_TRAILER if signed else 0)
    if payload_start > len(data):
        raise MalformedUpdate("envelope truncated before its signature")
    return _Frame(signed, header_end, payload_start)


def _key_id(raw: bytes) -> str:
    if not _KEY_ID_RE.fullmatch(raw):
        raise MalformedUpdate("key id must be printable ASCII, zero padded")
    return raw.rstrip(b"\x00").decode("ascii")


def _verify(data: bytes, verifier: Verifier) -> _Frame:
    """Check the signature from the fixed-size fields only, before any parsing."""
    try:
        frame = _frame(data)
        if not frame.signed:
            raise SignatureError("envelope is not signed but a signature is required")
        key_id = _key_id(data[frame.header_end : frame.header_end + KEY_ID_LENGTH])
    except MalformedUpdate as exc:
        raise SignatureError(f"no verifiable signature: {exc}") from None
    signature_at = frame.header_end + KEY_ID_LENGTH
    verifier.verify(key_id, data[:signature_at], data[signature_at : frame.payload_start])
    return frame


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise MalformedUpdate(f"envelope must be bytes, got {type(data).__name__}")


def _check_digest(
    data: bytes, frame: _Frame, payload: bytes | memoryview, sha: str, tamper: type[Exception]
) -> tuple[str, bytes]:
    """A signed envelope's payload digest against its header; returns ``(key_id, signature)``."""
    if not hmac.compare_digest(hashlib.sha256(payload).hexdigest(), sha):
        raise tamper("payload digest does not match the header")
    key_id = _key_id(data[frame.header_end : frame.header_end + KEY_ID_LENGTH])
    return key_id, data[frame.header_end + KEY_ID_LENGTH : frame.payload_start]


def unpack(
    data: bytes,
    verifier: Verifier | None = None,
    *,
    zero_copy: bool = False,
    on_authenticated: Callable[[], None] | None = None,
) -> Envelope:
    """Parse (and, with ``verifier``, authenticate) an untrusted envelope.

    With ``verifier`` the envelope must be signed by one of its keys: the signature is checked over
    the raw bytes before the header is parsed, then the payload digest. ``zero_copy`` returns the
    payload as a read-only ``memoryview`` into ``data`` (a 100 MB dense payload is never copied).
    ``on_authenticated`` (verifier only) is called once the signature has verified and before the
    payload's SHA-256 is checked, so a receiver can prepare work that does not read the payload;
    it is never called for input that fails the signature check. Returns an :class:`Envelope`
    (``key_id`` and ``signature`` set when signed).

    Raises
    ------
    SignatureError
        With a verifier: unsigned input, unknown key, bad signature, or a payload whose length
        or digest differs from the signed header.
    MalformedUpdate
        For anything else that is not a well-formed envelope.
    """
    data = _as_bytes(data)
    frame, fields = _frame_and_header(data, verifier)
    payload, key_id, signature = _authentic_payload(data, frame, fields, verifier, on_authenticated)
    return Envelope(
        codec=fields["codec"],
        base_hash=fields["base"],
        version=fields["ver"],
        sender=fields["snd"],
        tensors=fields["tensors"],
        payload=payload if zero_copy else bytes(payload),
        meta=fields["meta"],
        schema=SCHEMA_VERSION,
        key_id=key_id,
        signature=signature,
    )


def _frame_and_header(data: bytes, verifier: Verifier | None) -> tuple[_Frame, dict[str, Any]]:
    """Phase 1: magic, frame (the signature over the raw bytes when verifying), the parsed header."""
    if data[: len(MAGIC)] != MAGIC:
        raise MalformedUpdate("not a stamen envelope (bad magic)")
    frame = _verify(data, verifier) if verifier is not None else _frame(data)
    return frame, _header.validate(_header.loads(data[_FIXED.size : frame.header_end]), frame.signed)


def _authentic_payload(
    data: bytes,
    frame: _Frame,
    fields: dict[str, Any],
    verifier: Verifier | None,
    on_authenticated: Callable[[], None] | None,
) -> tuple[memoryview, str | None, bytes | None]:
    """Phase 2: the payload (a view into ``data``) checked against the header's length and, when
    signed, its digest; ``(payload, key_id, signature)``."""
    payload = memoryview(data)[frame.payload_start :]
    tamper = SignatureError if verifier is not None else MalformedUpdate
    if len(payload) != fields["len"]:
        raise tamper(f"payload is {len(payload)} bytes, header says {fields['len']}")
    if verifier is not None and on_authenticated is not None:
        on_authenticated()
    if not frame.signed:
        return payload, None, None
    key_id, signature = _check_digest(data, frame, payload, fields["sha"], tamper)
    return payload, key_id, signature


def unpack_expected(
    data: object,
    codec: str,
    base_hash: str,
    version: int,
    sender: str,
    tensors: tuple[TensorInfo, ...],
    verifier: Verifier | None = None,
) -> Envelope | None:
    """:func:`unpack` of ``data`` (payload zero copy) when its header is byte for byte the one
    :func:`pack` writes for these fields with no meta: the bytes then *are* those fields, so nothing
    is parsed. None for any other input, refused or not: the caller runs :func:`unpack` (and its own
    checks), which names what differs. With ``verifier`` the signature is checked first, as
    :func:`unpack` does, and a ``SignatureError`` propagates (it is the same error)."""
    if type(data) is not bytes or data[: len(MAGIC)] != MAGIC:
        return None
    try:
        frame = _verify(data, verifier) if verifier is not None else _frame(data)
    except MalformedUpdate:
        return None
    payload = memoryview(data)[frame.payload_start :]
    tpl = header_template(codec, base_hash, version, tensors, len(payload), frame.signed)
    header = data[_FIXED.size : frame.header_end]
    if tpl is None or not header.startswith(tpl.pieces[0]):  # before hashing a payload for nothing
        return None
    digest = hashlib.sha256(payload).hexdigest() if frame.signed else None
    if header != tpl.fill(sender, digest):
        return None
    key_id, signature = None, None
    if frame.signed:
        try:
            key_id = _key_id(data[frame.header_end : frame.header_end + KEY_ID_LENGTH])
        except MalformedUpdate:
            return None
        signature = data[frame.header_end + KEY_ID_LENGTH : frame.payload_start]
    return Envelope(
        codec, base_hash, version, sender, tensors, payload, {}, SCHEMA_VERSION, key_id, signature
    )
