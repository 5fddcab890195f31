"""The envelope's JSON header: building, strict parsing and field validation.

Kept apart from the binary framing in :mod:`stamen.protocols.envelope`. Every check raises
:class:`~stamen.protocols.errors.MalformedUpdate`; parsing never lets another exception escape
(deep nesting, bad UTF-8, huge integers, duplicate keys, NaN constants are all rejected).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

from .errors import MalformedUpdate, StamenError
from .tensors import TensorInfo

__all__ = [
    "DTYPES",
    "SCHEMA_VERSION",
    "HeaderFields",
    "build",
    "dumps",
    "json_exact",
    "loads",
    "serialize",
    "validate",
]

#: Version of the envelope header schema; bumped on any incompatible change.
SCHEMA_VERSION = 1

#: Tensor dtypes an envelope's table may name.
DTYPES = frozenset(
    [
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "float32",
        "float64",
        "bfloat16",
    ]
)
MAX_TENSORS = 100_000
MAX_NAME = 256
MAX_NDIM = 16
MAX_DIM = 2**32 - 1
MAX_TOTAL_ELEMENTS = 2**31  # 8 GiB of float32; receivers should also pass expected_tensors
MAX_SENDER = 128
MAX_CODEC = 1024
MAX_META_BYTES = 4096
MAX_META_STR = 1024
_HEX_RE = re.compile(r"[0-9a-f]{0,128}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_REQUIRED = frozenset(["schema", "codec", "base", "ver", "snd", "tensors", "len"])
_OPTIONAL = frozenset(["meta", "sha"])

_MAX_INFOS = 1 << 16  # distinct table entries kept for sharing (a few models' tensors)
_INFOS: dict[tuple[str, tuple[int, ...], str], TensorInfo] = {}
_MAX_TABLE_JSON = 64  # tables remembered by serialize (the models a process sends updates of)
_TABLE_JSON: dict[int, tuple[object, tuple[TensorInfo, ...], bytes]] = {}  # id -> (table, checked, JSON)

HeaderFields = dict[str, Any]


# json.dumps(obj, **these) builds a JSONEncoder per call; one encoder writes the same text
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)


def dumps(obj: object) -> bytes:
    """Canonical compact JSON: sorted keys, no spaces, ASCII only, no NaN/Infinity."""
    return _ENCODER.encode(obj).encode("ascii")


_SCALARS = (str, int, float, bool, type(None))


def json_exact(obj: object) -> bool:
    """True when ``loads(dumps(obj))`` equals ``obj`` with every type kept: nothing but ``str``,
    ``int``, finite ``float`` (``dumps`` refuses the others), ``bool``, ``None``, ``list`` and
    ``dict`` with ``str`` keys, by exact type (a tuple, a subclass or an int key would change)."""
    kind = type(obj)
    if kind is list:
        return all(json_exact(item) for item in obj)  # type: ignore[attr-defined]
    if kind is dict:
        return all(type(k) is str and json_exact(v) for k, v in obj.items())  # type: ignore[attr-defined]
    return kind in _SCALARS


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise MalformedUpdate("header has a duplicate JSON key")
    return out


def _no_constants(name: str) -> None:
    raise MalformedUpdate(f"header contains the JSON constant {name}")


# what json.loads(text, **these) would build per call (json.loads also refuses a leading BOM, which
# this decoder refuses as an unexpected character: a JSONDecodeError either way)
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def loads(raw: bytes) -> HeaderFields:
    """Parse header bytes as a JSON object; any failure is a :class:`MalformedUpdate`."""
    try:
        obj = _DECODER.decode(raw.decode("utf-8"))
    except StamenError:
        raise
    except RecursionError:
        raise MalformedUpdate("header JSON is nested too deeply") from None
    except (ValueError, UnicodeError, TypeError, KeyError, OverflowError) as exc:
        raise MalformedUpdate(f"header is not valid JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise MalformedUpdate("header is not a JSON object")
    return obj


def _int(value: object, what: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise MalformedUpdate(f"header field {what!r} must be an int in [{lo}, {hi}]")
    return value


def _str(value: object, what: str, max_len: int, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise MalformedUpdate(f"header field {what!r} must be a str of <= {max_len} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise MalformedUpdate(f"header field {what!r} has a bad format")
    return value


def _tensor(entry: object) -> TensorInfo:
    if not isinstance(entry, list) or len(entry) != 3:
        raise MalformedUpdate("tensor table entries must be [name, [dims], dtype]")
    name, dims, dtype = entry
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise MalformedUpdate(f"tensor names must be str of 1..{MAX_NAME} characters")
    if not isinstance(dims, list) or len(dims) > MAX_NDIM:
        raise MalformedUpdate(f"tensor {name!r}: dims must be a list of <= {MAX_NDIM} ints")
    for d in dims:
        if type(d) is not int or not 0 <= d <= MAX_DIM:
            _int(d, f"dims of {name}", 0, MAX_DIM)  # raises, naming the tensor
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise MalformedUpdate(f"tensor {name!r}: dtype {dtype!r} not allowed")
    return _info(name, tuple(dims), dtype)


def _info(name: str, shape: tuple[int, ...], dtype: str) -> TensorInfo:
    """``TensorInfo(name, shape, dtype)`` of checked fields, one shared object per distinct entry
    (tables received from every client of a round then compare by identity)."""
    key = (name, shape, dtype)
    info = _INFOS.get(key)
    if info is None or type(name) is not str:
        info = TensorInfo(name, shape, dtype)
        if type(name) is str:
            if len(_INFOS) >= _MAX_INFOS:
                _INFOS.clear()
            _INFOS[key] = info
    return info


def tensors_from(value: object) -> tuple[TensorInfo, ...]:
    """Validate the tensor table: <= 100k unique names, bounded shapes, allowed dtypes."""
    if not isinstance(value, list) or len(value) > MAX_TENSORS:
        raise MalformedUpdate(f"tensor table must be a list of <= {MAX_TENSORS} entries")
    table = tuple(_tensor(entry) for entry in value)
    if len({info.name for info in table}) != len(table):
        raise MalformedUpdate("tensor table has duplicate names")
    total = 0
    for info in table:
        nominal = 1
        for d in info.shape:
            nominal *= d if d > 1 else 1
        total += nominal
        if total > MAX_TOTAL_ELEMENTS:
            raise MalformedUpdate(f"tensor table exceeds {MAX_TOTAL_ELEMENTS} elements")
    return table


def meta_from(value: object) -> dict[str, int | float | str]:
    """Validate meta: str keys, int/float/str values (no bools, finite floats), <= 4 KiB."""
    if not isinstance(value, dict):
        raise MalformedUpdate("header field 'meta' must be an object")
    if not value:
        return {}  # nothing to check: "{}" is 2 bytes
    for key, item in value.items():
        _str(key, "meta key", MAX_NAME)
        ok = isinstance(item, (int, str)) and not isinstance(item, bool)
        ok = ok or (isinstance(item, float) and math.isfinite(item))
        if not ok or (isinstance(item, str) and len(item) > MAX_META_STR):
            raise MalformedUpdate(f"meta {key!r}: values must be int, finite float or short str")
    if len(dumps(value)) > MAX_META_BYTES:
        raise MalformedUpdate(f"meta exceeds {MAX_META_BYTES} bytes when packed")
    return dict(value)


def validate(fields: HeaderFields, signed: bool, table: tuple[TensorInfo, ...] | None = None) -> HeaderFields:
    """Check every header field's type and range; return them with typed tensors and meta.

    ``table``: the tensor table ``fields["tensors"]`` is already known to describe, validly (its
    check is then skipped; :func:`serialize` passes a table it checked before).

    Raises
    ------
    MalformedUpdate
        Naming the first bad field, for a missing or unknown key, a wrong type or range, an
        unsupported schema, or a digest present when unsigned (or missing when signed).
    """
    keys = set(fields)
    if keys - _REQUIRED - _OPTIONAL or _REQUIRED - keys:
        raise MalformedUpdate(f"header keys {sorted(keys)} differ from the schema")
    if fields["schema"] != SCHEMA_VERSION or type(fields["schema"]) is not int:
        raise MalformedUpdate(f"unsupported envelope schema {fields['schema']!r}")
    if ("sha" in fields) != signed:
        raise MalformedUpdate("payload digest must be present exactly when signed")
    return {
        "codec": _str(fields["codec"], "codec", MAX_CODEC),
        "base": _str(fields["base"], "base", 128, _HEX_RE),
        "ver": _int(fields["ver"], "ver", 0, 2**63 - 1),
        "snd": _str(fields["snd"], "snd", MAX_SENDER),
        "tensors": tensors_from(fields["tensors"]) if table is None else table,
        "meta": meta_from(fields.get("meta", {})),
        "len": _int(fields["len"], "len", 0, 2**63 - 1),
        "sha": _str(fields["sha"], "sha", 64, _SHA_RE) if signed else None,
    }


def build(fields: Mapping[str, object]) -> HeaderFields:
    """Header object for :func:`dumps`: tensors as ``[name, [dims], dtype]``, meta only if any.

    Raises
    ------
    MalformedUpdate
        If ``fields["tensors"]`` is not a sequence of :class:`TensorInfo`.
    """
    tensors = fields["tensors"]
    if not isinstance(tensors, (tuple, list)) or not all(isinstance(t, TensorInfo) for t in tensors):
        raise MalformedUpdate("envelope tensors must be a sequence of TensorInfo")
    header = {key: value for key, value in fields.items() if value is not None}
    header["tensors"] = [[t.name, list(t.shape), t.dtype] for t in tensors]
    if not header.get("meta"):
        header.pop("meta", None)
    return header


def serialize(fields: Mapping[str, object], signed: bool) -> bytes:
    """``dumps(build(fields))``, checked as :func:`validate` checks it once :func:`loads` parsed it.

    When every value keeps its type through JSON (:func:`json_exact`), the built header is what
    ``loads`` would return, so it is validated as it is, without the round trip. A tensor table
    found exact and valid once is remembered by identity (the same tuple object, e.g. a
    :func:`~stamen.protocols.tensors.tensor_table` memo's), with its JSON text.

    Raises
    ------
    MalformedUpdate
        If a field cannot be serialized (``TypeError``/``ValueError`` of the encoder) or fails a
        check of :func:`validate`.
    """
    tensors = fields["tensors"]
    hit = _TABLE_JSON.get(id(tensors))
    known = hit if hit is not None and hit[0] is tensors else None
    header = build(fields if known is None else {**fields, "tensors": ()})
    try:
        raw, table_json = _joined(header, known[2] if known is not None else None)
    except (TypeError, ValueError) as exc:
        raise MalformedUpdate(f"envelope field cannot be serialized: {exc}") from None
    exact = all(json_exact(v) for k, v in header.items() if k != "tensors")
    meta = header.get("meta")
    if exact and isinstance(meta, dict) and len(meta) > 1:  # loads returns it sorted: same error
        header["meta"] = dict(sorted(meta.items()))
    if known is not None and exact:
        validate(header, signed, known[1])
    elif exact and json_exact(header["tensors"]):
        checked = validate(header, signed)["tensors"]
        if type(tensors) is tuple:
            if len(_TABLE_JSON) >= _MAX_TABLE_JSON:
                _TABLE_JSON.clear()
            _TABLE_JSON[id(tensors)] = (tensors, checked, table_json)
    else:
        validate(loads(raw), signed)
    return raw


def _value_json(value: object) -> bytes:
    """``dumps(value)``; a str or an int without the encoder's per-call setup (the encoder writes a
    str with ``encode_basestring_ascii`` and an int with ``int.__repr__``, as here)."""
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value).encode("ascii")  # type: ignore[arg-type]
    if kind is int:
        return int.__repr__(value).encode("ascii")
    return dumps(value)


def _joined(header: HeaderFields, table_json: bytes | None) -> tuple[bytes, bytes]:
    """``dumps(header)`` written key by key as the encoder does (sorted keys, ``,`` and ``:``),
    with the table's JSON when given; returns it and the table's JSON."""
    parts = []
    for key in sorted(header):
        if key == "tensors":
            table_json = dumps(header[key]) if table_json is None else table_json
            value = table_json
        else:
            value = _value_json(header[key])
        parts.append(_value_json(key) + b":" + value)
    assert table_json is not None  # build always writes "tensors"
    return b"{" + b",".join(parts) + b"}", table_json
