"""The ``gi`` compensation policy: gradient-inversion conversion with a server-side switch-back.

Glue between :mod:`stamen.server.staleness.gi_conversion` (the conversion) and
:class:`stamen.server.staleness.gi_switch.SwitchBack` (when to stop converting). While the rule
says "convert", every stale update (``tau >= 1``) is converted; afterwards, and at ``tau = 0``,
the stale delta is aggregated as it is (the paper's "vanilla FL" after the switch).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from stamen.server.staleness.compensation import ModelVersions, Weights, as_float32, check_versions, register
from stamen.server.staleness.errors import check_tau
from stamen.server.staleness.gi_conversion import (
    Conversion,
    GIConfig,
    LocalProcedure,
    Reconstruction,
    UnrolledSGD,
    convert_stale_update,
)
from stamen.server.staleness.gi_switch import SwitchBack

WarmEntry = tuple[int, np.ndarray, np.ndarray, float]
"""One cached reconstruction: ``(client, x, label logits, inversion loss)``."""


def _count(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _read_back(x: np.ndarray, label_logits: np.ndarray, loss: float) -> Reconstruction:
    """A checkpointed warm start: inputs and label logits (no replay or loss trace)."""
    inputs, logits = (torch.from_numpy(np.array(a, np.float32)) for a in (x, label_logits))
    return Reconstruction(inputs, logits, float(loss), {}, ())


@register("gi", needs_versions=True)
class GIConversionPolicy:
    """Convert stale deltas by gradient inversion until the switch-back rule fires.

    Parameters
    ----------
    model : nn.Module or callable returning one
        The architecture (the policy keeps its own instance; its weights are never read).
    input_shape : sequence of int
        Shape of one client input, e.g. ``(64,)``.
    num_classes : int
        Number of classes of the soft labels.
    procedure : LocalProcedure, default ``UnrolledSGD()`` (5 full-batch steps, lr 0.01)
        The clients' local procedure, differentiable.
    config : GIConfig, default ``GIConfig()``
        Inversion settings.
    switch : SwitchBack or None, default ``SwitchBack()``
        When to stop converting.
    warm_start_clients : int, default 0
        Keep the last reconstruction of this many clients (least recently used evicted) and start
        their next inversion from it; ``0`` disables warm starts.

    Attributes
    ----------
    last : Conversion or None
        The most recent conversion (for records).
    counts : dict
        ``converted``, ``passed_through`` (after the switch), ``fresh`` (``tau = 0``) and ``failed``
        (the conversion produced non-finite values; the stale delta was aggregated instead) updates.
    """

    name: ClassVar[str]
    needs_versions: ClassVar[bool]

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        input_shape: Sequence[int],
        num_classes: int,
        procedure: LocalProcedure | None = None,
        config: GIConfig | None = None,
        switch: SwitchBack | None = None,
        warm_start_clients: int = 0,
    ) -> None:
        built = copy.deepcopy(model) if isinstance(model, nn.Module) else model()  # own copy: buffers get set
        if not isinstance(built, nn.Module):
            kind = type(built).__name__
            raise ValueError(f"gi: model must be an nn.Module or a factory of one, got {kind}")
        self.model = built
        self.input_shape, self.num_classes = tuple(int(d) for d in input_shape), int(num_classes)
        self.procedure = procedure if procedure is not None else UnrolledSGD()
        self.config = config if config is not None else GIConfig()
        self.switch = switch if switch is not None else SwitchBack()
        if (
            isinstance(warm_start_clients, bool)
            or not isinstance(warm_start_clients, int)
            or warm_start_clients < 0
        ):
            raise ValueError(f"gi: warm_start_clients must be an integer >= 0, got {warm_start_clients!r}")
        self.warm_start_clients = warm_start_clients
        self._warm: OrderedDict[int, Reconstruction] = OrderedDict()
        self.last: Conversion | None = None
        self.counts: dict[str, int] = {"converted": 0, "passed_through": 0, "fresh": 0, "failed": 0}

    def __call__(
        self,
        delta: Mapping[str, np.ndarray],
        tau: int,
        versions: ModelVersions | None = None,
        *,
        client: int | None = None,
    ) -> Weights:
        out, t = as_float32(delta), check_tau(tau)
        if t == 0:
            self.counts["fresh"] += 1
            return out
        check_versions(out, versions, "gi")
        assert versions is not None
        if not self.switch.converting(versions.current_version):
            self.counts["passed_through"] += 1
            return out
        conv = convert_stale_update(
            self.model, versions, out, self.procedure,
            input_shape=self.input_shape, num_classes=self.num_classes,
            config=self.config, init=self._warm_start(client),
        )  # fmt: skip
        if not all(np.all(np.isfinite(v)) for v in conv.delta.values()) or not math.isfinite(conv.shift_l1):
            self.counts["failed"] += 1  # a diverged inversion must not poison the model: keep the stale delta
            return out
        self.switch.observe(versions.current_version, t, conv.residual_l1, conv.shift_l1)
        self._remember(client, conv.reconstruction)
        self.last = conv
        self.counts["converted"] += 1
        return conv.delta

    def state(self) -> dict[str, Any]:
        """Counts, the switch version (``None`` while converting) and the warm-start cache size."""
        return {**self.counts, "switch_at": self.switch.switch_at, "warm_cached": len(self._warm)}

    def warm_cache(self) -> list[WarmEntry]:
        """The warm-start cache, least recently used first: ``(client, x, label logits, inversion
        loss)`` (copies; what a checkpoint keeps)."""
        return [
            (c, r.x.numpy().copy(), r.label_logits.numpy().copy(), r.residual_l1)
            for c, r in self._warm.items()
        ]

    def resume(
        self, counts: Mapping[str, int], switch_at: int | None, streak: int, warm: Sequence[WarmEntry]
    ) -> None:
        """Put a checkpointed state back: :meth:`state`'s counts and switch version, the switch
        rule's streak and :meth:`warm_cache`. The cached reconstructions come back without their
        replay and loss trace, which a warm start does not read (``ValueError`` for bad values)."""
        if set(counts) != set(self.counts) or not all(_count(n) for n in counts.values()):
            raise ValueError(
                f"gi: counts must be {sorted(self.counts)} as integers >= 0, got {dict(counts)!r}"
            )
        if len(warm) > self.warm_start_clients:
            raise ValueError(
                f"gi: {len(warm)} warm starts, more than warm_start_clients={self.warm_start_clients}"
            )
        self.switch.resume(switch_at, streak)
        self.counts = {k: int(n) for k, n in counts.items()}
        self._warm = OrderedDict((int(c), _read_back(x, y, loss)) for c, x, y, loss in warm)

    def _warm_start(self, client: int | None) -> Reconstruction | None:
        if client is None or client not in self._warm:
            return None
        self._warm.move_to_end(client)
        return self._warm[client]

    def _remember(self, client: int | None, rec: Reconstruction) -> None:
        if client is None or self.warm_start_clients == 0:
            return
        self._warm[client] = rec
        self._warm.move_to_end(client)
        while len(self._warm) > self.warm_start_clients:
            self._warm.popitem(last=False)
