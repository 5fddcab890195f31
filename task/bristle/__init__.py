"""Bristle (Verbraeken, de Vos and Pouwelse, arXiv 2110.11006): prioritizer, integrator, peer mode.

Pure numpy functions over output layers ``(C, F)`` (one row per class, torch ``nn.Linear`` layout;
the DL4J code stores the transpose, one *column* per class) and frozen features ``(m, F)`` of a
small local test slice. The server-mode rule ``bristle`` lives in
:mod:`stamen.server.aggregators.bristle`; peer mode's relay (:mod:`.relay`) and Flower strategy
(:mod:`.peer_strategy`) are the only modules here that touch Flower records.
"""

from stamen.task.bristle.integrator import IntegrationResult, f1_per_class, integrate
from stamen.task.bristle.prioritizer import prioritize

__all__ = ["IntegrationResult", "f1_per_class", "integrate", "prioritize"]
