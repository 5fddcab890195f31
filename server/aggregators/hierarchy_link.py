"""The intermediate -> root hop of a hierarchy: what a region forwards, its bytes and its latency.

An intermediate aggregator sends its region's ``(d,)`` update to the root as a stamen Envelope
encoded with the hierarchy's codec (``"dense"``: float32, lossless). The root aggregates what it
*decodes*, so a lossy forward codec changes the result exactly as it would in a deployment, and
``nbytes`` is ``len()`` of the packed envelope (measured, not estimated).

Latency model (simulated seconds): the root's ingress link, ``link_bandwidth`` bytes/s shared by
every region, plus one ``link_latency_s``::

    root_latency = link_latency_s + sum(region envelope bytes) / link_bandwidth

which is the level-2 cost; a flat round puts all clients' envelopes through the same ingress
(``bytes_up / link_bandwidth``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stamen.protocols import CodecSpec, TensorInfo, tensor_table
from stamen.protocols.update import decode_update, encode_update

PLACEHOLDER_BASE = "0" * 64  # hex length of a model_hash: the envelope's size does not depend on it


@dataclass(frozen=True)
class Link:
    """Region -> root link: forward codec, root ingress bandwidth (bytes/s, > 0), latency (s, >= 0)."""

    codec: str = "dense"
    bandwidth: float = 12.5e6
    latency_s: float = 0.02

    def __post_init__(self) -> None:
        CodecSpec.parse(self.codec)  # unknown stage or bad parameter: one line naming it
        if not (np.isfinite(self.bandwidth) and self.bandwidth > 0):
            raise ValueError(f"hierarchy: link_bandwidth must be a finite number > 0, got {self.bandwidth}")
        if not (np.isfinite(self.latency_s) and self.latency_s >= 0):
            raise ValueError(f"hierarchy: link_latency_s must be a finite number >= 0, got {self.latency_s}")

    def seconds(self, nbytes: int) -> float:
        """Level-2 latency of ``nbytes`` through the root's ingress."""
        return self.latency_s + nbytes / self.bandwidth


def split(row: np.ndarray, table: Sequence[TensorInfo]) -> dict[str, np.ndarray]:
    """The ``(d,)`` row as named tensors of ``table`` (views); one tensor ``"update"`` without a table."""
    if not table:
        return {"update": row}
    out, offset = {}, 0
    for info in table:
        out[info.name] = row[offset : offset + info.size].reshape(info.shape)
        offset += info.size
    return out


def forward(
    row: np.ndarray, table: Sequence[TensorInfo], link: Link, sender: str, version: int, seed: int
) -> tuple[np.ndarray, int]:
    """What the root receives from one region: ``(decoded (d,) float32, envelope bytes)``.

    ``seed`` drives a stochastic codec stage (e.g. RQM); it is derived per round and region by the
    caller, so runs are reproducible.
    """
    parts = split(np.ascontiguousarray(row, dtype=np.float32), table)
    data = encode_update(
        parts,
        CodecSpec.parse(link.codec),
        base_hash=PLACEHOLDER_BASE,
        version=max(version, 0),
        sender=sender,
        rng=np.random.default_rng(seed),
    )
    _, decoded = decode_update(data, expected_tensors=tensor_table(parts))
    flat = np.concatenate([np.asarray(decoded[k], np.float32).reshape(-1) for k in parts])
    return flat, len(data)
