"""``lora`` trainer: train only the LoRA factors (and the dense head) of an adapter-carrying model.

Hu et al., "LoRA", ICLR 2022: the pretrained weights stay frozen and each adapted layer learns
``ΔW = (α/r) · B A``. The adapters are part of the global model (see :mod:`stamen.client.lora`, which
attaches them when the task's ``[lora] adapter = "lora"``), so this trainer is plain local SGD/Adam
(:func:`stamen.client.trainers.full.run_epochs`) over exactly the parameters left trainable; the
update ``local - global`` is exactly zero on every frozen tensor, and the ``lora`` codec sends only
the factor and head deltas (``r · (in + out)`` numbers per adapted layer instead of ``in · out``).
"""

from __future__ import annotations

from torch import nn

from stamen.client.state import ClientState
from stamen.client.trainers.base import TrainResult, register_trainer
from stamen.client.trainers.full import run_epochs, train_delta
from stamen.protocols import keys
from stamen.task.data import TaskData
from stamen.task.models.lora import LoRALinear, LoRASBLinear, adapter_layers, trainable_names
from stamen.task.spec import TrainSpec


def check_adapters(model: nn.Module, kind: type[LoRALinear], trainer: str, adapter: str) -> int:
    """Number of ``kind`` layers in ``model``; ``ValueError`` naming the missing setting if none."""
    layers = [m for m in adapter_layers(model).values() if type(m) is kind]
    if not layers:
        raise ValueError(
            f"trainer {trainer!r} needs a model with {adapter} adapters: "
            f"set [lora] adapter = {adapter!r} in the scenario"
        )
    return len(layers)


def train_adapted(model: nn.Module, data: TaskData, spec: TrainSpec, seed: int) -> TrainResult:
    """Train the model's trainable parameters in place; ``delta = local - global`` for all tensors,
    exactly zero outside ``trained`` (the factors and the head)."""
    trained = tuple(trainable_names(model))
    delta, loss = train_delta(model, data, lambda: run_epochs(model, data, spec, seed), trained)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return TrainResult(
        delta=delta,
        num_examples=len(data.y),
        metrics={keys.TRAIN_LOSS: loss, "trainable-params": float(trainable)},
        trained=trained,
    )


class LoRATrainer:
    """Local training of LoRA factors ``A``, ``B`` and the head; the base stays frozen."""

    name = "lora"

    def train(
        self, model: nn.Module, data: TaskData, spec: TrainSpec, seed: int, state: ClientState
    ) -> TrainResult:
        """Train in place and return the update (``state`` is not used)."""
        del state
        if any(isinstance(m, LoRASBLinear) for m in model.modules()):
            raise ValueError(
                "trainer 'lora' got a Fed-SB model: use trainer 'fedsb' for [lora] adapter = 'fedsb'"
            )
        check_adapters(model, LoRALinear, self.name, "lora")
        return train_adapted(model, data, spec, seed)


register_trainer("lora")(LoRATrainer)
