"""Downlinks: what the driver sends each sampled client besides the round's instructions."""

from __future__ import annotations

from collections.abc import Sequence

from stamen.protocols import model_hash
from stamen.protocols.flower import weights_nbytes
from stamen.server.driver.types import Payload, Reply, TrainTask, Weights


class FullDownlink:
    """The whole global model to every client (``clients.runtime = "memory"``).

    Bytes are counted as Flower serializes the arrays (one ``.npy`` blob per tensor), so both
    engines report the same downlink.
    """

    def __init__(self) -> None:
        self._hash: tuple[tuple[int, int], str] | None = None  # ((round, id of the weights), hash)
        self._size: tuple[tuple[int, int], int] | None = None

    def payload(self, client: str, rnd: int, weights: Weights) -> Payload:
        """``(weights, None, model_hash(weights))`` (the hash is computed once per model)."""
        del client
        key = (rnd, id(weights))  # the weights stay alive for the whole round
        if self._hash is None or self._hash[0] != key:
            self._hash = (key, model_hash(weights))
        return Payload(weights, None, self._hash[1])

    def nbytes(self, tasks: Sequence[TrainTask]) -> int:
        """Serialized model size times the number of clients."""
        if not tasks or tasks[0].weights is None:
            return 0
        weights = tasks[0].weights
        key = (tasks[0].instructions.round, id(weights))
        if self._size is None or self._size[0] != key:
            self._size = (key, weights_nbytes(weights))
        return self._size[1] * len(tasks)

    def observe(self, replies: Sequence[Reply]) -> None:
        """Nothing to track: every client gets the whole model."""
        del replies
