"""Envelope headers of known fields: the canonical bytes built once, filled in per sender.

A round's envelopes differ in their headers only by the sender (and, when signed, the payload
digest): every client of a round names the same codec, base model, version, tensor table and, for
a fixed-size codec, payload length. :func:`header_template` serializes such fields once with
:func:`~stamen.protocols._header.serialize` (the one canonical writer, which validates them),
marker values standing in for the sender and the digest, and splits the bytes at the markers.
:meth:`HeaderTemplate.fill` then joins the pieces around a sender's JSON string (and a digest) —
exactly the bytes ``serialize`` writes for those fields, since the canonical JSON writes every
value on its own (``json.encoder.encode_basestring_ascii`` for a str, as ``serialize`` does).

Used both ways (:mod:`stamen.protocols.envelope`): :func:`~stamen.protocols.envelope.pack` writes
the filled header instead of serializing it anew, and a receiver that knows what it expects
compares a received header with the filled one byte for byte; equal bytes *are* the fields, so
nothing is parsed (any other header goes through the strict parser, which names what differs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii

from . import _header
from .errors import MalformedUpdate
from .tensors import TensorInfo

_SENDER = "\x00stamen-sender\x00"  # a valid sender no other field can hold (\u0000 in JSON)
_DIGEST = "0f1e2d3c4b5a6978" * 4  # a valid digest (64 hex), unique in a header by the check below
_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON joins an escaped surrogate pair into one character
_MAX_TEMPLATES = 64
_TEMPLATES: dict[tuple[object, ...], tuple[tuple[TensorInfo, ...], HeaderTemplate | None]] = {}


@dataclass(frozen=True)
class HeaderTemplate:
    """A canonical header split around its sender (and digest): ``pieces[0] + [digest +
    pieces[1]] + sender + pieces[-1]``."""

    pieces: tuple[bytes, ...]

    def fill(self, sender: object, digest: str | None) -> bytes | None:
        """The header with ``sender`` (and ``digest`` when signed); None when ``sender`` is not a
        valid one (the strict path then raises), holds a surrogate code point (its JSON escape may
        parse back as another string: the strict path then compares what it reads), or the
        digest's presence does not fit."""
        if type(sender) is not str or len(sender) > _header.MAX_SENDER:
            return None
        if not sender.isascii() and _SURROGATE.search(sender):  # parses back as another string
            return None
        snd = encode_basestring_ascii(sender).encode("ascii")
        if len(self.pieces) == 2:
            return None if digest is not None else b"".join((self.pieces[0], snd, self.pieces[1]))
        if digest is None:
            return None
        return b"".join((self.pieces[0], digest.encode("ascii"), self.pieces[1], snd, self.pieces[2]))


def header_template(
    codec: str, base: str, version: int, tensors: tuple[TensorInfo, ...], length: int, signed: bool
) -> HeaderTemplate | None:
    """The template of a header with these fields and no meta, remembered per field values and
    table object; None when they are not a valid header (the strict path then names why)."""
    if type(tensors) is not tuple:
        return None
    key = (codec, type(codec), base, type(base), version, type(version), id(tensors), length, signed)
    hit = _TEMPLATES.get(key)
    if hit is not None and hit[0] is tensors:
        return hit[1]
    made = _make(codec, base, version, tensors, length, signed)
    if len(_TEMPLATES) >= _MAX_TEMPLATES:
        _TEMPLATES.clear()
    _TEMPLATES[key] = (tensors, made)
    return made


def _make(
    codec: str, base: str, version: int, tensors: tuple[TensorInfo, ...], length: int, signed: bool
) -> HeaderTemplate | None:
    fields = {
        "schema": _header.SCHEMA_VERSION,
        "codec": codec,
        "base": base,
        "ver": version,
        "snd": _SENDER,
        "tensors": tensors,
        "meta": {},
        "len": length,
        "sha": _DIGEST if signed else None,
    }
    try:
        raw = _header.serialize(fields, signed=signed)
    except MalformedUpdate:
        return None
    markers = [encode_basestring_ascii(_SENDER).encode("ascii")]
    if signed:
        markers.insert(0, _DIGEST.encode("ascii"))
    return _split(raw, markers)


def _split(raw: bytes, markers: list[bytes]) -> HeaderTemplate | None:
    """``raw`` cut at each marker, in order; None unless each occurs exactly once, in that order."""
    pieces, rest = [], raw
    for marker in markers:
        if raw.count(marker) != 1 or rest.count(marker) != 1:
            return None
        head, _, rest = rest.partition(marker)
        pieces.append(head)
    pieces.append(rest)
    return HeaderTemplate(tuple(pieces))
