"""Shared fixtures for the protocols tests (small, seeded inputs; everything runs in ms)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from stamen.protocols import Signer

# pytest runs with --import-mode=importlib, which does not put test folders on sys.path; the
# shared helpers (proto_helpers.py) are imported as a plain module from here.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def small_delta(seed: int = 0) -> dict[str, np.ndarray]:
    """Three float32 tensors of mixed rank with Gaussian entries."""
    rng = np.random.default_rng(seed)
    return {
        "encoder.layer.0.weight": rng.normal(size=(8, 5)).astype(np.float32),
        "encoder.layer.0.bias": rng.normal(size=(5,)).astype(np.float32),
        "head.scale": np.array(0.75, dtype=np.float32),
    }


@pytest.fixture
def delta() -> dict[str, np.ndarray]:
    return small_delta()


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture(scope="session")
def other_signer() -> Signer:
    return Signer.generate()
