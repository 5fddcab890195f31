"""Comparing runs for a checkpoint: the configuration fingerprint a state-dir belongs to, and
whether two runs' records agree (:mod:`stamen.server.checkpoint` re-exports both)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from stamen.server.history import RoundRecord
from stamen.server.records import ROUND_KEYS


def fingerprint(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a settings tree into ``{"section.key": canonical JSON of the value}``.

    Two runs have the same configuration exactly when their fingerprints are equal; the keys that
    differ are what :func:`check_fingerprint` names.
    """
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(fingerprint(value, f"{name}."))
        else:
            flat[name] = json.dumps(value, sort_keys=True, default=str)
    return flat


def fingerprint_diff(saved: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """The keys whose values differ (or that only one side has), sorted."""
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


def records_equal(
    a: Sequence[RoundRecord], b: Sequence[RoundRecord], skip: Sequence[str] = ("wall_s",)
) -> bool:
    """Whether two record lists agree on every field but ``skip`` (NaN equals NaN)."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b, strict=True):
        for k in ROUND_KEYS:
            if k in skip:
                continue
            x, y = getattr(ra, k), getattr(rb, k)
            both_nan = isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
            if x != y and not both_nan:
                return False
    return True
