"""Bristle's distance-based prioritizer: the closest peers plus a few random ones.

Verbraeken, de Vos and Pouwelse, "Bristle: Decentralized Federated Learning in Byzantine, Non-i.i.d.
Environments", arXiv 2110.11006 (2021), Section "distance-based prioritizer" ("prioritizes the model
updates based on their distance to the peer's own model and an explore-exploit trade-off").

Which version of the code (jverbraeken/trustchain-superapp, ``fedml/.../gar/Bristle.kt``): we
follow **43492302 ("Updates")**: sort the received output layers by Euclidean distance
``||W_p - W_own||_2`` to the node's own freshly trained layer (ascending, ties to the lower peer
index), keep the ``num_closest = 20`` closest (exploitation) and ``num_random = 5`` drawn uniformly
from the rest (exploration). The later commit a505112b ("Add alpha") computes a near / middle /
far split with ``alpha = 0.4`` but leaves it commented out and takes 10 peers uniformly at random;
that variant is ``num_closest=0, num_random=10``. With fewer than ``num_closest`` peers (e.g. 9
peers among 10 nodes) every peer is kept in both versions of the explore-exploit rule.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CLOSEST = 20  # NUM_MODELS_EXPLOITATION
DEFAULT_RANDOM = 5  # NUM_MODELS_EXPLORATION


def distances(own: np.ndarray, peers: np.ndarray) -> np.ndarray:
    """``(p,)`` Euclidean (Frobenius) distances of the peers' layers ``(p, C, F)`` to ``own (C, F)``."""
    diff = peers.reshape(len(peers), own.size).astype(np.float64) - own.reshape(1, -1).astype(np.float64)
    return np.sqrt(np.einsum("pd,pd->p", diff, diff))


def prioritize(
    own: np.ndarray,
    peers: np.ndarray,
    rng: np.random.Generator,
    num_closest: int = DEFAULT_CLOSEST,
    num_random: int = DEFAULT_RANDOM,
) -> np.ndarray:
    """Indices (ascending) of the peers to integrate: the closest plus a random few of the rest.

    Parameters
    ----------
    own : ndarray
        ``(C, F)`` the node's own layer.
    peers : ndarray
        ``(p, C, F)`` received layers.
    rng : numpy.random.Generator
        Draws the exploration peers.
    num_closest, num_random : int
        Exploitation and exploration counts, both ``>= 0`` (code: 20 and 5).

    Raises
    ------
    ValueError
        For negative counts or mismatched shapes.
    """
    if num_closest < 0 or num_random < 0:
        raise ValueError(f"num_closest and num_random must be >= 0, got {num_closest}, {num_random}")
    if peers.ndim != 3 or peers.shape[1:] != own.shape:
        raise ValueError(f"peers must be (p, {own.shape[0]}, {own.shape[1]}), got {peers.shape}")
    order = np.argsort(distances(own, peers), kind="stable")
    close, rest = order[:num_closest], order[num_closest:]
    explore = rng.permutation(rest)[:num_random] if len(rest) else rest
    return np.sort(np.concatenate([close, explore])).astype(np.int64)
