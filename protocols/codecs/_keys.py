"""Derived-key bookkeeping shared by stages that split one array into several.

A stage that turns array ``b`` into ``b + suffix`` for each of its suffixes (e.g. topk:
``"3" -> "3.i", "3.v", "3.s"``) must let its decoder find exactly the groups it produced, even
when stages repeat or compose (``topk+int8``, ``int8+int8``). Decoders find groups purely from
the key names (:func:`find_groups`); encoders call :func:`check_groups` so that a payload whose
groups would be ambiguous is refused at encode time instead of being decoded wrongly.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, MutableMapping
from typing import TypeVar

import numpy as np

from ..container import WireArray
from ..errors import CodecError

Arrays = dict[str, np.ndarray]
Layout = dict[str, WireArray]

__all__ = ["check_groups", "derive_layout", "find_groups", "put_new", "split_arrays", "varint_size"]

_T = TypeVar("_T")


def find_groups(keys: Collection[str], suffixes: tuple[str, ...]) -> list[str]:
    """Bases ``b`` such that ``b + s`` is a key for every suffix ``s``, in key order.

    Parameters
    ----------
    keys : Collection[str]
        Keys present in the stage's decode input.
    suffixes : tuple[str, ...]
        The stage's suffixes; the first one anchors the search.
    """
    head = suffixes[0]
    bases = (key[: -len(head)] for key in keys if key.endswith(head) and len(key) > len(head))
    return [b for b in bases if all(b + s in keys for s in suffixes[1:])]


def check_groups(
    stage: str, out_keys: Collection[str], produced: Iterable[str], suffixes: tuple[str, ...]
) -> None:
    """Refuse an encoding whose groups the decoder would not recover exactly.

    Raises
    ------
    CodecError
        If a derived key collides with a passed-through key or the decoder would find a
        different set of groups than ``produced``.
    """
    expected = set(produced)
    if set(find_groups(out_keys, suffixes)) != expected:
        raise CodecError(f"{stage}: derived keys {suffixes} collide with other array keys")


def put_new(out: MutableMapping[str, _T], key: str, value: _T, stage: str) -> None:
    """``out[key] = value``, refusing to overwrite an existing key.

    Raises
    ------
    CodecError
        If ``key`` is already present (a derived key collides with another array's key).
    """
    if key in out:
        raise CodecError(f"{stage}: derived key {key!r} collides with another array key")
    out[key] = value


def split_arrays(
    arrays: Mapping[str, np.ndarray],
    stage: str,
    suffixes: tuple[str, ...],
    split: Callable[[str, np.ndarray], dict[str, np.ndarray]],
) -> Arrays:
    """The encode loop of a splitting stage: each floating array ``b`` becomes ``b + suffix`` for
    every ``suffix -> part`` of ``split(b, array)`` (called in key order, so a stage's random draws
    keep their order); other arrays pass through; the groups are checked (:func:`check_groups`)."""
    out: Arrays = {}
    produced = []
    for key, arr in arrays.items():
        if arr.dtype.kind != "f":
            put_new(out, key, arr, stage)
            continue
        for suffix, part in split(key, arr).items():
            put_new(out, key + suffix, part, stage)
        produced.append(key)
    check_groups(stage, out, produced, suffixes)
    return out


def decode_blob_groups(
    arrays: Arrays,
    suffix: str,
    decode_one: Callable[[str, np.ndarray, int], np.ndarray],
    max_elements: int,
    stage: str,
) -> Arrays:
    """Decode every ``<base><suffix>`` blob with ``decode_one(base, blob, budget)``; other arrays
    pass through. ``budget`` (elements still allowed) shrinks with each decoded tensor, so a hostile
    payload cannot make the decoders allocate more than ``max_elements`` in total."""
    groups = find_groups(arrays, (suffix,))
    consumed = {base + suffix for base in groups}
    out: Arrays = {k: a for k, a in arrays.items() if k not in consumed}
    budget = max_elements
    for base in groups:
        dense = decode_one(base, arrays[base + suffix], budget)
        budget -= dense.size
        put_new(out, base, dense, stage)
    return out


def varint_size(value: int) -> int:
    """Bytes of ``value`` as an unsigned LEB128 varint (1 for 0)."""
    return max(1, -(-max(0, int(value)).bit_length() // 7))


def derive_layout(layout: Mapping[str, WireArray], derive: Callable[[str, WireArray], Layout]) -> Layout:
    """Apply a stage's per-array layout rule ``derive(key, entry)`` to every floating entry.

    Non-floating entries pass through, as they do through every stage's ``encode``. Entries
    derived from an inexact entry (one that may be smaller or absent) are marked inexact.
    """
    out: Layout = {}
    for key, entry in layout.items():
        if entry.dtype.kind != "f":
            out[key] = entry
            continue
        for new_key, new in derive(key, entry).items():
            out[new_key] = new if entry.exact else new.bound()
    return out
