"""The model a node builds itself for a task, before any message: the cached downlink's cold start.

:func:`~stamen.task.models.model_structure` is deterministic from the task (the pretrained weights,
``task.seed``'s adapter and head initialization), so a client that has never received a model still
holds this one. For LoRA and sparse fine-tuning it is the run's initial model; Fed-SB's server
initializes its factors from data, and the difference travels in the first patch. Both sides hash it
(``model_hash``): the server names it as a patch's base, and a client whose own build differs
(another torch version, another pretrained file) refuses the patch and gets the full model.
"""

from __future__ import annotations

from functools import lru_cache

from stamen.protocols import model_hash
from stamen.task.models import model_structure
from stamen.task.spec import TaskSpec
from stamen.task.weights import Weights, get_weights

__all__ = ["local_base"]


@lru_cache(maxsize=2)
def local_base(task: TaskSpec) -> tuple[str, Weights]:
    """``(model_hash, weights)`` of ``model_structure(task)``; built once per process and task.

    The arrays are shared by every caller: treat them as read-only.
    """
    weights = get_weights(model_structure(task))
    return model_hash(weights), weights
