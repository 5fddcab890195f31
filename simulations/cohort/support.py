"""Which tasks the cohort trainer can batch, and why not when it cannot.

Batched: the ``full`` trainer (plain SGD/Adam, :mod:`stamen.client.trainers.full`) on a model built
only from stateless, deterministic layers (no buffers, no dropout, every parameter trained): today the
registry's ``mlp``, ``logreg`` and ``cnn`` (a convolutional stack of the listed layers). Local DP
is fine (it acts on the finished update). Everything else falls back to the per-client loop, and the
engine shows the reason this module gives.
"""

from __future__ import annotations

from torch import nn

from stamen.task.spec import TaskSpec, TrainSpec

BATCHABLE_MODELS: tuple[str, ...] = ("mlp", "logreg", "cnn")
"""Registered model names the cohort trainer accepts (see :func:`stamen.task.models.create_model`)."""

BATCHABLE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.ReLU,
    nn.Tanh,
    nn.GELU,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
)
"""Layer types a batched model may contain (stateless and deterministic in training mode)."""

_TRAINER_REASONS = {
    "dp_sgd": "trainer 'dp_sgd' clips every example's gradient (per-example clipping is not batched)",
    "lora": "trainer 'lora' trains low-rank adapters on a frozen model (not batched)",
    "fedsb": "trainer 'fedsb' (Fed-SB) trains an adapter's R matrix on a frozen model (not batched)",
    "sparse": "trainer 'sparse' keeps a per-client gradient mask (not batched)",
    "frl": "trainer 'frl' trains supermask scores for rank voting (not batched)",
    "bristle": "trainer 'bristle' trains a personal head on a transfer model (not batched)",
}


def cannot_batch_reason(task: TaskSpec, train: TrainSpec) -> str | None:
    """Why this task cannot be cohort-batched, or ``None`` when it can.

    Parameters
    ----------
    task : TaskSpec
        Model name and adapter are checked (no model is built).
    train : TrainSpec
        The trainer must be ``full``; its optimizer (``sgd`` with any momentum and weight decay, or
        ``adam``) and local DP are supported.

    Returns
    -------
    str or None
        One line for the engine's log, e.g. ``"model 'minilm' is not in the batched family ..."``.
    """
    if train.trainer != "full":
        return _TRAINER_REASONS.get(train.trainer, f"trainer {train.trainer!r} has no cohort-batched version")
    if task.lora.adapter != "none":
        return (
            f"adapter {task.lora.adapter!r} (LoRA/Fed-SB) freezes the model and trains adapters (not batched)"
        )
    if task.model not in BATCHABLE_MODELS:
        return f"model {task.model!r} is not in the batched family {', '.join(BATCHABLE_MODELS)}"
    return None


def module_reason(model: nn.Module) -> str | None:
    """Why ``model``'s structure cannot be batched (buffers, frozen or unknown layers), or ``None``."""
    if any(True for _ in model.buffers()):
        return "the model has buffers (e.g. batch-norm statistics), which are not batched"
    if not all(p.requires_grad for p in model.parameters()):
        return "the model has frozen parameters (adapter training), which are not batched"
    for name, layer in model.named_modules():
        if type(layer) not in BATCHABLE_LAYERS:  # exact: a subclass may override forward
            return f"layer {name!r} ({type(layer).__name__}) is not in the batched layer set"
    return None
