"""``zstd(level=3)``: lossless Zstandard compression of the serialized container.

Buys little on dense float noise and a lot on index streams and low-entropy int8 codes. Decoding
is bounded: the pipeline passes the exact container size the codec and tensor table imply (or an
upper bound for data-dependent codecs); a frame's declared content size is checked against it
before anything is allocated, a frame without one is streamed with a hard cap, its window must
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
_PIECE = 1 << 20  # output bytes per streamed read of a frame without a declared size


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

    def decode(self, data: bytes, max_size: int, *, exact: bool = False) -> bytes:
        """Decompress one frame of at most (``exact``: exactly) ``max_size`` bytes.

        A frame that declares its content size is checked against the bound before anything is
        allocated; one that does not is first streamed in 1 MiB pieces to learn its size, and
        given up as soon as it passes the bound. Either way memory stays within ``max_size``
        plus the bounded window.

        Raises
        ------
        MalformedUpdate
            If the frame is corrupt, truncated, followed by other bytes, needs a too-large
            window, or decompresses to more than ``max_size`` bytes (or, with ``exact``, to
            any other size).
        """
        window = _window_limit(max_size)
        try:
            frame = zstandard.get_frame_parameters(data)
        except zstandard.ZstdError as exc:
            raise MalformedUpdate(f"zstd: bad frame header: {exc}") from None
        if frame.window_size > window:
            raise MalformedUpdate(f"zstd: window of {frame.window_size} bytes is too large")
        dctx = zstandard.ZstdDecompressor(max_window_size=window)
        size = frame.content_size
        if size == zstandard.CONTENTSIZE_ERROR:
            raise MalformedUpdate("zstd: bad frame content size")
        if size == zstandard.CONTENTSIZE_UNKNOWN:
            size = _streamed_size(dctx, data, max_size)
        if size > max_size or (exact and size != max_size):
            want = "exactly" if exact else "at most"
            raise MalformedUpdate(
                f"zstd: content size {size} bytes, the codec and tensor table imply {want} {max_size}"
            )
        try:
            out = dctx.decompress(data, max_output_size=max(1, size), allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise MalformedUpdate(f"zstd: corrupt data: {exc}") from None
        if len(out) != size:
            raise MalformedUpdate("zstd: decompressed size differs from the declared size")
        return out


def _streamed_size(dctx: zstandard.ZstdDecompressor, data: bytes, max_size: int) -> int:
    """Decompressed size of a frame without a declared size, learnt piece by piece.

    Each piece is dropped once counted, so at most ``_PIECE`` output bytes exist at a time;
    reading stops one byte past ``max_size``.
    """
    total = 0
    try:
        reader = dctx.stream_reader(data, read_across_frames=False)
        while total <= max_size:
            piece = reader.read(min(_PIECE, max_size + 1 - total))
            if not piece:
                return total
            total += len(piece)
    except zstandard.ZstdError as exc:
        raise MalformedUpdate(f"zstd: corrupt data: {exc}") from None
    raise MalformedUpdate(f"zstd: frame decompresses to more than the {max_size} bytes the codec implies")
