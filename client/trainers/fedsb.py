"""``fedsb`` trainer: Fed-SB — train only the ``r × r`` matrix ``R`` of every LoRA-SB layer.

Singhal et al., "Fed-SB: A Silver Bullet for Extreme Communication Efficiency and Performance in
(Private) Federated LoRA Fine-Tuning", arXiv 2502.15436 (on LoRA-SB, Ponkshe et al., arXiv
2411.19557): ``ΔW = (α/r) · B R A`` with ``A``, ``B`` fixed by the gradient-SVD initialization (the
same on every client: they are part of the global model, see :mod:`stamen.client.lora`) and only
``R`` (plus the dense head) trained. The update is ``r²`` numbers per adapted layer, and the server's
plain (weighted) mean of the ``R_i`` is exact: ``B · Σ w_i R_i · A = Σ w_i B R_i A``. With DP-SGD
(``trainer = "dp_sgd"`` on a Fed-SB model) only ``R`` is noised, so the noise enters ``ΔW`` linearly
(``B N A``), unlike DP on both LoRA factors, where ``(B + N_B)(A + N_A)`` has the product term
``N_B N_A``.
"""

from __future__ import annotations

from torch import nn

from stamen.client.state import ClientState
from stamen.client.trainers.base import TrainResult, register_trainer
from stamen.client.trainers.lora import check_adapters, train_adapted
from stamen.task.data import TaskData
from stamen.task.models.lora import LoRASBLinear
from stamen.task.spec import TrainSpec


class FedSBTrainer:
    """Local training of the LoRA-SB matrices ``R`` and the head."""

    name = "fedsb"

    def train(
        self, model: nn.Module, data: TaskData, spec: TrainSpec, seed: int, state: ClientState
    ) -> TrainResult:
        """Train in place and return the update (``state`` is not used)."""
        del state
        check_adapters(model, LoRASBLinear, self.name, "fedsb")
        return train_adapted(model, data, spec, seed)


register_trainer("fedsb")(FedSBTrainer)
