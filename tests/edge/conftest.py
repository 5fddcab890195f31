"""Shared fixtures for the edge tests: keys, a tiny CNN exported once, store builders."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from stamen.edge.arch import EdgeNet, build_model
from stamen.edge.export import export_onnx, save_state, state_of
from stamen.edge.store import create_store
from stamen.protocols import Signer

# pytest runs with --import-mode=importlib: make edge_helpers.py importable from the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge_helpers import TINY_CNN

torch.set_num_threads(1)  # the machine has 2 cores and other suites run beside this one


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture(scope="session")
def other_signer() -> Signer:
    return Signer.generate()


@pytest.fixture(scope="session")
def keydir(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Path:
    d = tmp_path_factory.mktemp("keys")
    signer.save(d / "private.pem", d / "public.pem")
    return d


@pytest.fixture(scope="session")
def tiny_model() -> EdgeNet:
    torch.set_num_threads(1)
    return build_model(TINY_CNN, seed=3)


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory, tiny_model: EdgeNet) -> dict[str, Path]:
    """The tiny CNN exported once as ONNX (external data) and as safetensors."""
    d = tmp_path_factory.mktemp("models")
    export_onnx(tiny_model, d / "m.onnx")
    save_state(tiny_model, d / "m.safetensors")
    return {"onnx": d / "m.onnx", "torch": d / "m.safetensors"}


@pytest.fixture
def make_store(tmp_path: Path, model_files: dict[str, Path], keydir: Path) -> Callable[[str], Path]:
    """``make_store(backend)`` -> path of a fresh store at version 0 of the tiny CNN."""

    def make(backend: str) -> Path:
        store = tmp_path / f"store-{backend}"
        create_store(store, model_files[backend], keydir / "public.pem", model_id="tiny")
        return store

    return make


@pytest.fixture(scope="session")
def base_weights(tiny_model: EdgeNet) -> dict[str, np.ndarray]:
    return dict(sorted(state_of(tiny_model).items()))
