"""Bristle's performance-based integrator: per-class F1 decides how much of each peer to take.

Verbraeken, de Vos and Pouwelse, "Bristle: Decentralized Federated Learning in Byzantine, Non-i.i.d.
Environments", arXiv 2110.11006 (2021), Section "performance-based integrator"; ported from
``fedml/.../ai/gar/Bristle.kt`` of jverbraeken/trustchain-superapp @ a505112b (May 2021). Layers are
``(C, F)`` (row ``c`` = class ``c``; the code's DL4J matrices are the transpose). With the node's
own freshly trained layer ``W_own``, peers ``W_p`` and a small local test slice whose classes are
the node's *familiar* classes (all others are *foreign*):

1. ``F1_own[c]``, ``F1_p[c]``: per-class F1 of the frozen network with the layer plugged in,
   predictions ``argmax_c' (x W^T)`` over **all** classes, scored on the slice (familiar ``c``);
   DL4J ``Evaluation.f1``: ``2 TP / (2 TP + FP + FN)`` and 0 when ``TP = 0``.
2. Class selection: peer ``p`` gets its ``k_p`` best familiar classes by ``F1_p`` (descending,
   ties to the lower class id); ``k_p`` is the peer's class count (PSI-CA in the paper), default
   all familiar classes.
3. ``diff = 10 |F1_p[c] - F1_own[c]|``; ``score = diff^(3 + F1_own[c])`` if ``F1_p[c] > F1_own[c]``
   else ``-diff^(4 + F1_own[c])``; the *bounded* score is ``max(-100, score)``.
4. ``certainty_p = max(0, mean(F1_p[sel]) - std(F1_p[sel]))`` (population std).
5. ``w_{p,c} = max(0, 10 sigmoid(score_bounded / 100) - 4) * certainty_p`` in ``[0, 6]``.
6. Familiar rows: ``W[c] = (W_own[c] + sum_p w_{p,c} W_p[c]) / (1 + sum_p w_{p,c})`` (selected
   classes of each peer only).
7. Foreign rows: ``w_p = max(0, 10 sigmoid(sum_{c in sel} score_unbounded / 100) - 4) *
   certainty_p`` and ``W[c] = (W[c] + sum_p w_p W_p[c]) / (1 + sum_p w_p)``.

Choices between ambiguous versions (all documented in the report):

- When ``k_p`` equals the number of familiar classes, the code selects the class *ids*
  ``0 .. k_p - 1`` (``(0 until selectionSize)``), which are the familiar classes only when the
  node knows all classes; we select the familiar classes themselves (the evident intent).
- ``k_p`` larger than the number of familiar classes selects all of them (``take`` semantics).
- A peer with no selected class (``k_p = 0``) gets weight 0 (the code would produce NaN).
- The sigmoid is evaluated in a numerically stable form (the code's ``exp`` may overflow to inf,
  which gives the same limit 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SCORE_FLOOR = -100.0  # bounded per-class scores
DIFF_SCALE = 10.0


def predictions(layer: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Predicted classes ``(m,)``: ``argmax`` over classes of ``features @ layer.T`` (first on ties)."""
    return np.argmax(features.astype(np.float64) @ layer.astype(np.float64).T, axis=1)


def f1_per_class(pred: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Per-class F1 ``(len(classes),)``: ``2 TP / (2 TP + FP + FN)``, 0 when ``TP = 0``."""
    out = np.zeros(len(classes), dtype=np.float64)
    for i, c in enumerate(classes):
        tp = int(np.sum((pred == c) & (labels == c)))
        fp = int(np.sum((pred == c) & (labels != c)))
        fn = int(np.sum((pred != c) & (labels == c)))
        out[i] = 2.0 * tp / (2.0 * tp + fp + fn) if tp > 0 else 0.0
    return out


def class_scores(peer_f1: np.ndarray, own_f1: np.ndarray, bounded: bool) -> np.ndarray:
    """Step 3: per-class scores of a peer (same shape as the F1 arrays)."""
    diff = DIFF_SCALE * np.abs(peer_f1 - own_f1)
    score = np.where(peer_f1 > own_f1, diff ** (3.0 + own_f1), -(diff ** (4.0 + own_f1)))
    return np.maximum(SCORE_FLOOR, score) if bounded else score


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def score_weight(score: np.ndarray | float) -> np.ndarray:
    """Steps 5/7 without the certainty: ``max(0, 10 sigmoid(score / 100) - 4)``, in ``[0, 6]``."""
    s = np.atleast_1d(np.asarray(score, dtype=np.float64))
    return np.maximum(0.0, 10.0 * _sigmoid(s / 100.0) - 4.0)


def certainty(selected_f1: np.ndarray) -> float:
    """Step 4: ``max(0, mean - population std)`` of a peer's F1 on its selected classes (0 if none)."""
    if selected_f1.size == 0:
        return 0.0
    return max(0.0, float(selected_f1.mean() - selected_f1.std()))


def select_classes(peer_f1: np.ndarray, count: int | None) -> np.ndarray:
    """Step 2: positions (into the familiar classes) of the peer's ``count`` best classes, sorted."""
    k = len(peer_f1) if count is None else max(0, min(int(count), len(peer_f1)))
    if k == len(peer_f1):
        return np.arange(k)
    order = np.argsort(-peer_f1, kind="stable")  # descending, ties to the lower class id
    return np.sort(order[:k])


@dataclass(frozen=True)
class IntegrationResult:
    """The integrated layer and the quantities that produced it (for tests and logging).

    Attributes
    ----------
    layer : ndarray
        ``(C, F)`` float32 integrated layer (before any centering).
    familiar : tuple[int, ...]
        Classes present in the local test slice, ascending.
    own_f1 : ndarray
        ``(k,)`` own F1 per familiar class.
    peer_f1 : ndarray
        ``(p, k)`` peers' F1 per familiar class.
    class_weights : ndarray
        ``(p, C)`` ``w_{p,c}`` (0 for unselected and foreign classes).
    foreign_weights : ndarray
        ``(p,)`` ``w_p`` used for the foreign rows.
    certainty : ndarray
        ``(p,)`` certainty per peer.
    """

    layer: np.ndarray
    familiar: tuple[int, ...]
    own_f1: np.ndarray
    peer_f1: np.ndarray
    class_weights: np.ndarray
    foreign_weights: np.ndarray
    certainty: np.ndarray


def _peer_weights(
    pf1: np.ndarray, own_f1: np.ndarray, count: int | None, familiar: Sequence[int], num_classes: int
) -> tuple[np.ndarray, float, float]:
    """One peer's ``(w_{p,c} over C, w_p, certainty)`` (steps 2-5 and 7's weight)."""
    sel = select_classes(pf1, count)
    cert = certainty(pf1[sel])
    row = np.zeros(num_classes, dtype=np.float64)
    if sel.size == 0:
        return row, 0.0, cert
    bounded = class_scores(pf1[sel], own_f1[sel], bounded=True)
    row[np.asarray(familiar)[sel]] = score_weight(bounded) * cert
    unbounded = class_scores(pf1[sel], own_f1[sel], bounded=False)
    return row, float(score_weight(float(unbounded.sum()))[0]) * cert, cert


def integrate(
    own: np.ndarray,
    peers: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    class_counts: Sequence[int | None] | None = None,
) -> IntegrationResult:
    """Bristle's integrator (steps 1-7 of the module docstring).

    Parameters
    ----------
    own : ndarray
        ``(C, F)`` the node's own freshly trained output layer.
    peers : ndarray
        ``(p, C, F)`` the prioritized peers' layers (``p >= 0``).
    features, labels : ndarray
        ``(m, F)`` frozen features and ``(m,)`` int labels of the local test slice (``m >= 1``).
    class_counts : sequence of (int or None), optional
        Per peer, how many classes to select (``None``: all familiar classes).

    Raises
    ------
    ValueError
        On inconsistent shapes, an empty test slice, or labels outside ``[0, C)``.
    """
    num_classes = own.shape[0]
    _check_inputs(own, peers, features, labels, class_counts)
    familiar = tuple(int(c) for c in np.unique(labels))
    foreign = [c for c in range(num_classes) if c not in familiar]
    own_f1 = f1_per_class(predictions(own, features), labels, familiar)
    peer_f1 = np.array([f1_per_class(predictions(w, features), labels, familiar) for w in peers])
    peer_f1 = peer_f1.reshape(len(peers), len(familiar))
    counts = list(class_counts) if class_counts is not None else [None] * len(peers)
    parts = [_peer_weights(peer_f1[i], own_f1, counts[i], familiar, num_classes) for i in range(len(peers))]
    cw = np.array([p[0] for p in parts]).reshape(len(peers), num_classes)  # (p, C)
    fw = np.array([p[1] for p in parts], dtype=np.float64)  # (p,)
    peers64 = peers.astype(np.float64)
    layer = (own.astype(np.float64) + np.einsum("pc,pcf->cf", cw, peers64)) / (1.0 + cw.sum(0))[:, None]
    if foreign and len(peers):
        extra = np.einsum("p,pcf->cf", fw, peers64[:, foreign])
        layer[foreign] = (layer[foreign] + extra) / (1.0 + fw.sum())
    return IntegrationResult(
        layer.astype(np.float32),
        familiar,
        own_f1,
        peer_f1,
        cw,
        fw,
        np.array([p[2] for p in parts], dtype=np.float64),
    )


def _check_inputs(
    own: np.ndarray,
    peers: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    class_counts: Sequence[int | None] | None,
) -> None:
    if own.ndim != 2 or peers.ndim != 3 or peers.shape[1:] != own.shape:
        raise ValueError(f"own must be (C, F) and peers (p, C, F); got {own.shape} and {peers.shape}")
    if features.ndim != 2 or features.shape[1] != own.shape[1] or len(labels) != len(features):
        raise ValueError(
            f"features must be (m, {own.shape[1]}) with m labels; got {features.shape}, {len(labels)}"
        )
    if len(labels) == 0:
        raise ValueError("the local test slice is empty: Bristle needs labelled samples per familiar class")
    if int(np.min(labels)) < 0 or int(np.max(labels)) >= own.shape[0]:
        raise ValueError(f"labels must lie in [0, {own.shape[0]})")
    if class_counts is not None and len(class_counts) != len(peers):
        raise ValueError(f"class_counts needs one entry per peer ({len(peers)}), got {len(class_counts)}")
