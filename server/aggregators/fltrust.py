"""``fltrust``: trust bootstrapping from a small clean root dataset held by the server.

Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping",
NDSS 2021, Algorithm 1 (and Eqs. 2-4). Each round the server trains the current global model on its
own root dataset with the clients' local-training settings, giving the *server update* ``g_0``; then

    TS_i  = ReLU(cos(g_i, g_0))                          trust score            (Eq. 2)
    ḡ_i   = (||g_0|| / ||g_i||) · g_i                    magnitude normalized   (Eq. 3)
    g     = Σ_i TS_i ḡ_i / Σ_j TS_j                      trust-weighted mean    (Eq. 4)

and the global model moves by ``g`` (here ``delta = local − global``, so ``g_0`` is a delta too and
the engine applies ``global + server_lr · g``). The authors' code adds 1e-9 to every norm and to
``Σ TS``; here the limits are exact instead: a zero update (or a zero ``g_0``) has trust 0, and when
no client has positive trust the aggregate is zero (the round does not move the model). Sample
counts are validated and ignored, as in the paper: trust replaces them.

Where ``g_0`` comes from is pluggable (:meth:`FLTrustRule.set_root_update`: any ``base_flat (d,) ->
g_0 (d,)``). :meth:`FLTrustRule.set_validation` installs the case the engines wire up for Bristle's
setting (the same hook and the same server-held labelled slice that ``bristle``'s server mode
receives): a frozen feature extractor plus a trainable bias-free linear output layer, where the
root dataset is given as frozen features ``(m, F)`` and labels, and ``g_0`` is the change of the
output layer after ``root_steps`` minibatch steps of softmax cross-entropy with Adam (L2 weight decay
added to the gradient, as ``torch.optim.Adam(weight_decay=...)``) from the round's global layer; every
other coordinate of ``g_0`` is 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stamen.protocols import TensorInfo
from stamen.server.aggregators._common import as_stack, check_count, check_positive
from stamen.server.aggregators.base import RoundContext, Rule, check_stack, register
from stamen.server.aggregators.bristle import output_segment

RootUpdate = Callable[[np.ndarray], np.ndarray]  # base_flat (d,) -> g_0 (d,)


def trust_scores(updates: np.ndarray, root: np.ndarray) -> np.ndarray:
    """``(n,)`` float64 ``ReLU(cos(g_i, g_0))``; 0 for a zero row or a zero ``g_0`` (Eq. 2)."""
    x = np.asarray(updates, dtype=np.float64)
    g0 = np.asarray(root, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(g0)  # (n,)
    dots = x @ g0  # (n,)
    cos = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    return np.maximum(cos, 0.0)


def fltrust_aggregate(updates: np.ndarray, root: np.ndarray) -> np.ndarray:
    """FLTrust's aggregate ``(d,)`` float32 of ``updates (n, d)`` given the server update ``root (d,)``
    (Eqs. 2-4 of the module docstring); zeros when no row has positive trust."""
    x = as_stack(updates)
    if root.shape != (x.shape[1],):
        raise ValueError(f"fltrust: server update has shape {root.shape}, updates have d = {x.shape[1]}")
    scores = trust_scores(x, root)
    total = scores.sum()
    if total <= 0:
        return np.zeros(x.shape[1], dtype=np.float32)
    norms = np.linalg.norm(x.astype(np.float64), axis=1)  # rows with trust > 0 have norm > 0
    scale = np.divide(scores, norms, out=np.zeros_like(scores), where=scores > 0)
    coef = scale * np.linalg.norm(np.asarray(root, dtype=np.float64)) / total  # (n,)
    return np.asarray(coef.astype(np.float32) @ x, dtype=np.float32)


def softmax_head_update(
    head: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    steps: tuple[int, int],
    adam: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Change ``(C, F)`` of a bias-free linear head ``logits = features @ head.T`` after training.

    ``steps = (num_steps, batch_size)``: minibatches drawn epoch by epoch from a fresh permutation of
    the ``m`` root samples (the last batch of an epoch may be short). ``adam = (lr, weight_decay)``:
    Adam (β = 0.9, 0.999, ε = 1e-8, bias-corrected) on the mean cross-entropy plus
    ``weight_decay · W`` in the gradient.
    """
    num_steps, batch = steps
    lr, decay = adam
    w = np.asarray(head, dtype=np.float64).copy()
    m1, m2 = np.zeros_like(w), np.zeros_like(w)
    order: np.ndarray = np.empty(0, dtype=np.int64)
    for t in range(1, num_steps + 1):
        if order.size == 0:
            order = rng.permutation(len(labels))
        idx, order = order[:batch], order[batch:]
        x = np.asarray(features[idx], dtype=np.float64)  # (b, F)
        logits = x @ w.T  # (b, C)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(idx)), labels[idx]] -= 1.0
        grad = p.T @ x / len(idx) + decay * w  # (C, F)
        m1 = 0.9 * m1 + 0.1 * grad
        m2 = 0.999 * m2 + 0.001 * grad**2
        w -= lr * (m1 / (1 - 0.9**t)) / (np.sqrt(m2 / (1 - 0.999**t)) + 1e-8)
    return w - head


class FLTrustRule(Rule):
    """FLTrust: ``(stack (n, d), weights) -> (d,)`` once a server update is available.

    Parameters
    ----------
    root_lr : float
        Learning rate of the server's Adam on the root dataset, > 0 (use the clients').
    root_steps : int
        Minibatch steps per round on the root dataset, >= 1 (the paper's server runs the clients'
        number of local iterations).
    root_batch_size : int
        Root minibatch size, >= 1.
    root_weight_decay : float
        L2 coefficient added to the gradient, >= 0.
    seed : int
        Seeds the root minibatch order (``build_aggregator`` passes a stage seed).
    layer : str
        Output-layer tensor for :meth:`set_validation`; ``""`` picks the last 2-D tensor.

    Attributes
    ----------
    last_scores : ndarray | None
        Trust scores ``(n,)`` of the last aggregation.
    last_root_norm : float
        ``||g_0||`` of the last aggregation.
    """

    def __init__(
        self,
        root_lr: float,
        root_steps: int,
        root_batch_size: int,
        root_weight_decay: float,
        seed: int = 0,
        layer: str = "",
    ) -> None:
        self.adam = (check_positive("fltrust: root_lr", root_lr), float(root_weight_decay))
        if not root_weight_decay >= 0:
            raise ValueError(f"fltrust: root_weight_decay must be >= 0, got {root_weight_decay}")
        self.steps = (
            check_count("fltrust: root_steps", root_steps, 1),
            check_count("fltrust: root_batch_size", root_batch_size, 1),
        )
        self.layer = layer
        self._rng = np.random.default_rng(seed)
        self._root_update: RootUpdate | None = None
        self._base: np.ndarray | None = None
        self._table: tuple[TensorInfo, ...] | None = None
        self.last_scores: np.ndarray | None = None
        self.last_root_norm = float("nan")

    def set_root_update(self, fn: RootUpdate) -> None:
        """Any ``base_flat (d,) -> g_0 (d,)``: the server's update from the round's global weights."""
        self._root_update = fn

    def set_validation(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Root dataset as frozen features ``(m, F)`` and labels ``(m,)`` for a linear output layer."""
        feats, labs = np.asarray(features, dtype=np.float32), np.asarray(labels, dtype=np.int64)
        if feats.ndim != 2 or labs.shape != (feats.shape[0],) or feats.shape[0] == 0:
            raise ValueError(
                f"fltrust: root data must be (m, F) features and (m,) labels, m >= 1; "
                f"got {feats.shape}, {labs.shape}"
            )
        self._root_update = lambda base: self._head_update(base, feats, labs)

    def _head_update(self, base: np.ndarray, feats: np.ndarray, labs: np.ndarray) -> np.ndarray:
        if self._table is None:
            raise ValueError("fltrust: begin_round(ctx) must be called before aggregating")
        a, b, shape = output_segment(self._table, self.layer)
        if feats.shape[1] != shape[1] or int(labs.max()) >= shape[0] or int(labs.min()) < 0:
            raise ValueError(f"fltrust: root data {feats.shape} / labels do not fit the output layer {shape}")
        out = np.zeros(base.shape[0], dtype=np.float32)
        head = base[a:b].reshape(shape)
        out[a:b] = softmax_head_update(head, feats, labs, self.steps, self.adam, self._rng).reshape(-1)
        return out

    def begin_round(self, ctx: RoundContext) -> None:
        """Remember the round's tensor table and global weights (the server update starts there)."""
        self._table, self._base = tuple(ctx.table), np.asarray(ctx.base, dtype=np.float32)

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Compute ``g_0`` from this round's global weights, then FLTrust's trust-weighted mean."""
        check_stack(updates, weights)
        if self._root_update is None:
            raise ValueError("fltrust: set_validation(...) or set_root_update(...) must be called first")
        if self._base is None or self._base.shape[0] != updates.shape[1]:
            raise ValueError("fltrust: begin_round(ctx) must be called before aggregating")
        root = np.asarray(self._root_update(self._base), dtype=np.float32)
        self.last_scores = trust_scores(updates, root)
        self.last_root_norm = float(np.linalg.norm(root))
        return fltrust_aggregate(updates, root)


@register("fltrust")
def fltrust(
    root_lr: float = 1e-3,
    root_steps: int = 80,
    root_batch_size: int = 5,
    root_weight_decay: float = 5e-3,
    seed: int = 0,
    layer: str = "",
) -> FLTrustRule:
    """FLTrust (NDSS 2021). Defaults are the ``bristle`` scenario's client training: Adam lr 1e-3,
    L2 5e-3, batch 5, and 80 steps (one epoch of a client's ≈ 400 samples)."""
    return FLTrustRule(root_lr, root_steps, root_batch_size, root_weight_decay, seed, layer)
