"""Offline data sets: shapes, dtypes, determinism, the mnist1d cache and its traps."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stamen.simulations import data
from stamen.simulations.data import clear_memory_cache, load_dataset
from stamen.task.cache import cache_dir

SMALL = 200  # mnist1d samples: 160 train + 40 test, generated in a few milliseconds


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test gets an empty disk cache under tmp_path and an empty memory cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("STAMEN_CACHE_DIR", str(path))
    clear_memory_cache()
    yield path
    clear_memory_cache()


def test_digits_shapes_dtypes_and_stratified_split() -> None:
    ds = load_dataset("digits", seed=0, test_fraction=0.2)
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_dim == 64
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.y_test.dtype == np.int64 and ds.x_test.dtype == np.float32
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0  # /16
    train, test = np.bincount(ds.y_train), np.bincount(ds.y_test)
    assert np.all(np.abs(test - 0.2 * (train + test)) <= 1)  # stratified


def test_digits_deterministic_from_the_seed() -> None:
    a = load_dataset("digits", seed=3)
    clear_memory_cache()
    b = load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)
    assert a is not b
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)
    assert load_dataset("digits", seed=4) is c  # memory cache


def test_arrays_are_read_only() -> None:
    ds = load_dataset("digits")
    with pytest.raises(ValueError, match="read-only"):
        ds.x_train[0, 0] = 1.0


def test_mnist1d_shapes_and_dtypes() -> None:
    ds = load_dataset("mnist1d", seed=0, num_samples=SMALL)
    assert ds.name == "mnist1d" and ds.num_classes == 10 and ds.input_dim == 40
    assert ds.x_train.shape == (160, 40) and ds.x_test.shape == (40, 40)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert set(np.unique(np.concatenate([ds.y_train, ds.y_test]))) <= set(range(10))


def test_mnist1d_deterministic_from_the_seed() -> None:
    a = load_dataset("mnist1d", seed=5, num_samples=SMALL)
    b = load_dataset("mnist1d", seed=6, num_samples=SMALL)
    assert not np.array_equal(a.x_train, b.x_train)
    first = a.x_train.copy()
    clear_memory_cache()
    data._mnist1d_cache_file(SMALL, 5).unlink()  # force a fresh generation
    assert np.array_equal(load_dataset("mnist1d", seed=5, num_samples=SMALL).x_train, first)


def test_mnist1d_disk_cache_hit(_isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_dataset("mnist1d", seed=1, num_samples=SMALL)
    files = list(_isolated_cache.iterdir())
    assert [f.name for f in files] == [data._mnist1d_cache_file(SMALL, 1).name]
    assert "n200-s1" in files[0].name and files[0].suffix == ".npz"

    def _no_generation(num_samples: int, seed: int) -> dict[str, np.ndarray]:
        raise AssertionError("cache miss: mnist1d was generated again")

    monkeypatch.setattr(data, "_generate_mnist1d", _no_generation)
    clear_memory_cache()
    again = load_dataset("mnist1d", seed=1, num_samples=SMALL)
    assert again is not first and np.array_equal(again.x_test, first.x_test)
    assert again.x_train.dtype == np.float32 and again.y_train.dtype == np.int64


def test_a_long_generation_is_announced_once(
    _isolated_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A first scale-100k run generated for tens of seconds (minutes under load) without a word."""
    small = data._generate_mnist1d(SMALL, 0)
    monkeypatch.setattr(data, "_generate_mnist1d", lambda num_samples, seed: small)
    with caplog.at_level(logging.WARNING, logger="stamen"):
        load_dataset("mnist1d", seed=0, num_samples=100_000)
        clear_memory_cache()
        load_dataset("mnist1d", seed=0, num_samples=100_000)  # read from the disk cache: no notice
        load_dataset("mnist1d", seed=0, num_samples=SMALL)  # generated in milliseconds: no notice
    said = [r.getMessage() for r in caplog.records if "generating" in r.getMessage()]
    assert len(said) == 1 and "100,000 samples" in said[0], said
    assert str(data._mnist1d_cache_file(100_000, 0)) in said[0]


def test_corrupt_cache_file_is_regenerated(_isolated_cache: Path) -> None:
    good = load_dataset("mnist1d", seed=2, num_samples=SMALL).x_train.copy()
    path = data._mnist1d_cache_file(SMALL, 2)
    path.write_bytes(b"not a zip file")
    clear_memory_cache()
    assert np.array_equal(load_dataset("mnist1d", seed=2, num_samples=SMALL).x_train, good)
    assert path.stat().st_size > 100  # rewritten


def test_unwritable_cache_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("STAMEN_CACHE_DIR", str(blocker / "sub"))
    ds = load_dataset("mnist1d", seed=0, num_samples=SMALL)
    assert ds.x_train.shape == (160, 40)


def test_global_rng_state_untouched() -> None:
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = _np_global_state(), random.getstate()
    load_dataset("mnist1d", seed=0, num_samples=SMALL)  # mnist1d's make_dataset reseeds both
    load_dataset("digits", seed=0)
    assert random.getstate() == py_before
    assert _np_global_state() == np_before


def _np_global_state() -> tuple[Any, ...]:
    state = np.random.get_state(legacy=False)
    assert isinstance(state, dict)
    inner = state["state"]
    return inner["key"].tolist(), inner["pos"], state["has_gauss"], state["gauss"]


def test_mnist1d_never_touches_the_network_or_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mnist1d.data
    import requests

    def _forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("network or get_dataset used")

    monkeypatch.setattr(requests, "get", _forbidden)
    monkeypatch.setattr(mnist1d.data, "get_dataset", _forbidden)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    ds = load_dataset("mnist1d", seed=0, num_samples=SMALL)
    assert ds.x_train.shape == (160, 40)
    assert list(workdir.iterdir()) == []  # no ./mnist1d_data.pkl


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAMEN_CACHE_DIR", "/x/explicit")
    assert cache_dir() == Path("/x/explicit")
    monkeypatch.delenv("STAMEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/xdg")
    assert cache_dir() == Path("/x/xdg/stamen")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/x/home")
    assert cache_dir() == Path("/x/home/.cache/stamen")


@pytest.mark.parametrize(
    ("name", "kwargs", "needle"),
    [
        ("cifar10", {}, "unknown dataset 'cifar10'; allowed: digits, mnist1d"),
        ("digits", {"test_fraction": 1.0}, "test_fraction must be in (0, 1)"),
        ("mnist1d", {"num_samples": 9}, "num_samples must be >= 10"),
        ("digits", {"seed": -1}, "seed must be in [0, 2**32)"),
    ],
)
def test_bad_arguments(name: str, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        load_dataset(name, **kwargs)
