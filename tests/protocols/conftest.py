"""Shared fixtures for the protocols tests (small, seeded inputs; everything runs in ms)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stamen.protocols import Signer

# pytest runs with --import-mode=importlib, which does not put test folders on sys.path; the
# shared helpers (proto_helpers.py) are imported as a plain module from here.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture(scope="session")
def other_signer() -> Signer:
    return Signer.generate()
