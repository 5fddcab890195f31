"""``cnn``: a small convolutional network for flat inputs (8x8 digits images, 40-long mnist1d signals).

The staleness paper's ``CNNMnist`` (Wang & Gao, arXiv 2309.13536; pittisl/FL-with-intertwined-
heterogeneity ``models.py``: conv5-10, pool, conv5-20, dropout, pool, fc 320-50, dropout, fc 50-10)
scaled to CPU-sized inputs. Each convolution has kernel 3 and padding 1 (the size is kept), then a
ReLU and a 2-wide max pool (skipped once the size is 1); the ReLU comes before the pool, which gives
the same output as the paper's ``relu(max_pool(conv))`` (both are monotone). Dropout is left out,
so local training is deterministic from its seed and the network is cohort-batchable.

Input layout, from ``input_dim`` (features arrive flat, as for ``mlp``)::

    input_dim = s * s, s >= 4 (e.g. 64)  ->  one-channel s x s image, Conv2d   (digits 8x8)
    otherwise (e.g. 40)                   ->  one-channel signal of input_dim, Conv1d   (mnist1d)

``hidden`` is ``(channels..., width)``: the output channels of each convolution, then the width of
the dense layer before the classifier, e.g. ``(10, 20, 50)`` (the paper's widths). For digits this is
conv 1->10 (8x8 -> 4x4), conv 10->20 (-> 2x2), fc 80->50->10: 6,480 parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from stamen.task.models.registry import register_model

KERNEL = 3
POOL = 2
MIN_IMAGE_SIDE = 4  # a square input_dim smaller than 4x4 is treated as a signal


def input_layout(input_dim: int) -> tuple[int, ...]:
    """``(1, s, s)`` when ``input_dim = s * s`` with ``s >= 4``, else ``(1, input_dim)``."""
    side = math.isqrt(input_dim)
    if side >= MIN_IMAGE_SIDE and side * side == input_dim:
        return (1, side, side)
    return (1, input_dim)


def _split_hidden(hidden: Sequence[int]) -> tuple[tuple[int, ...], int]:
    """``(conv channels, dense width)`` from ``hidden``; at least one convolution is required."""
    if len(hidden) < 2 or any(int(h) < 1 for h in hidden):
        raise ValueError(
            "model 'cnn' reads model.hidden as conv channels then the dense width, at least two "
            f"positive ints such as [10, 20, 50]; got {list(hidden)}"
        )
    return tuple(int(h) for h in hidden[:-1]), int(hidden[-1])


@register_model("cnn")
def _cnn(input_dim: int, num_classes: int, hidden: Sequence[int]) -> nn.Module:
    """Conv stack (kernel 3, ReLU, max pool 2) -> dense ReLU -> classifier; see the module docstring."""
    channels, width = _split_hidden(hidden)
    layout = input_layout(input_dim)
    conv, pool = (nn.Conv2d, nn.MaxPool2d) if len(layout) == 3 else (nn.Conv1d, nn.MaxPool1d)
    size = layout[1]  # side of the image or length of the signal
    layers: list[nn.Module] = [nn.Unflatten(1, layout)]  # (n, input_dim) -> (n, 1, *spatial)
    prev = 1
    for ch in channels:
        layers += [conv(prev, ch, KERNEL, padding=KERNEL // 2), nn.ReLU()]
        if size >= POOL:
            layers.append(pool(POOL))
            size //= POOL
        prev = ch
    flat = prev * size ** (len(layout) - 1)  # (n, C, *spatial) -> (n, flat)
    layers += [nn.Flatten(), nn.Linear(flat, width), nn.ReLU(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)
