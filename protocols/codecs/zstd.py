"""``zstd(level=3)``: lossless Zstandard compression of the serialized container.

Buys little on dense float noise and a lot on index streams and low-entropy int8 codes. Decoding
is bounded: the frame must declare a content size no larger than ``max_size``, its window must
fit, exactly one frame with no trailing bytes is accepted, and every failure is a
:class:`~stamen.protocols.errors.MalformedUpdate` — so a zip bomb costs microseconds, not memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

import zstandard

from ..errors import CodecError, MalformedUpdate
from .base import ByteStage, Scalar, register

__all__ = ["Zstd"]

_MIN_WINDOW = 1 << 20
_MAX_WINDOW = 1 << 27  # zstd's default decoder limit (128 MiB)


def _window_limit(max_size: int) -> int:
    """Smallest power of two >= max_size, clamped to [1 MiB, 128 MiB]."""
    return min(_MAX_WINDOW, max(_MIN_WINDOW, 1 << max(0, max_size - 1).bit_length()))


@register
class Zstd(ByteStage):
    """Zstandard compression.

    Parameters
    ----------
    level : int, default 3
        Compression level in 1..22 (higher: smaller and slower).
    """

    name = "zstd"
    defaults: ClassVar[Mapping[str, Scalar]] = MappingProxyType({"level": 3})

    @classmethod
    def check_params(cls, params: Mapping[str, Scalar]) -> None:
        """``level`` must lie in 1..22."""
        level = params["level"]
        if not 1 <= int(level) <= 22:
            raise CodecError(f"codec stage 'zstd' param 'level': {level!r} not in 1..22")

    def encode(self, data: bytes) -> bytes:
        """Compress into one frame that records its content size."""
        level = int(self.params["level"])
        return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)

    def decode(self, data: bytes, max_size: int) -> bytes:
        """Decompress one frame of at most ``max_size`` bytes.

        Raises
        ------
        MalformedUpdate
            If the frame is corrupt, truncated, followed by other bytes, declares no or a
            larger content size than ``max_size``, or needs a too-large window.
        """
        try:
            frame = zstandard.get_frame_parameters(data)
        except zstandard.ZstdError as exc:
            raise MalformedUpdate(f"zstd: bad frame header: {exc}") from None
        size = frame.content_size
        if size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
            raise MalformedUpdate("zstd: frame does not declare its content size")
        if size > max_size:
            raise MalformedUpdate(f"zstd: content size {size} exceeds the limit {max_size}")
        if frame.window_size > _window_limit(max_size):
            raise MalformedUpdate(f"zstd: window of {frame.window_size} bytes is too large")
        dctx = zstandard.ZstdDecompressor(max_window_size=_window_limit(max_size))
        try:
            out = dctx.decompress(data, max_output_size=max(1, max_size), allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise MalformedUpdate(f"zstd: corrupt data: {exc}") from None
        if len(out) != size:
            raise MalformedUpdate("zstd: decompressed size differs from the declared size")
        return out
