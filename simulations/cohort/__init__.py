"""Cohort-batched local training for the small-model family (see :mod:`.train`).

``cannot_batch_reason(task, train)`` says when the engine must fall back to the per-client loop.
"""

from stamen.simulations.cohort.data import CohortData, default_device
from stamen.simulations.cohort.seeds import client_seeds
from stamen.simulations.cohort.support import cannot_batch_reason, module_reason
from stamen.simulations.cohort.train import CohortResult, train_cohort

__all__ = [
    "CohortData",
    "CohortResult",
    "cannot_batch_reason",
    "client_seeds",
    "default_device",
    "module_reason",
    "train_cohort",
]
