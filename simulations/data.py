"""Offline data sets for simulations: sklearn ``digits`` and procedural ``mnist1d``.

Both load without network access and deterministically from a seed.

``digits``
    sklearn's bundled 8x8 handwritten digits (1797 samples, 64 features scaled to ``[0, 1]`` by
    ``/16``, 10 classes), with a stratified train/test split drawn from the seed.
``mnist1d``
    Greydanus, "Scaling down Deep Learning" (2020): 40-feature 1-D signals, 10 classes, generated
    by ``mnist1d.data.make_dataset`` with mnist1d's own 80/20 train/test split. Features are kept as
    mnist1d emits them (already centred, unit variance over the whole set), as ``float32``.
    ``mnist1d.data.get_dataset`` is never called: it downloads from GitHub and, on failure, writes a
    pickle into the current directory. ``make_dataset`` reseeds the global ``random`` and
    ``np.random`` generators, so their state is saved and restored around it. Generated arrays are
    cached on disk (see :func:`cache_dir`) and in memory.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from stamen.simulations.arrays import Dataset, read_npz, write_npz
from stamen.simulations.text_data import load_pydocs
from stamen.task.cache import cache_dir

DATASETS: tuple[str, ...] = ("digits", "mnist1d", "pydocs")
"""Allowed data set names (and values of ``DataConfig.dataset``)."""

_CACHE_FORMAT = 1  # bump when the cached file layout changes
_SAY_GENERATING = 20_000  # mnist1d samples from which generating takes seconds: say so first
_log = logging.getLogger(__name__)


def load_dataset(
    name: str, *, seed: int = 0, test_fraction: float = 0.2, num_samples: int = 5000, seq_len: int = 32
) -> Dataset:
    """Load a data set by name, deterministically from ``seed``.

    Parameters
    ----------
    name : str
        ``"digits"``, ``"mnist1d"`` or ``"pydocs"`` (text; ``seq_len`` tokens per sample).
    seed : int, default 0
        ``0 <= seed < 2**32``. For ``digits`` it picks the stratified test split; for ``mnist1d`` it
        is the generator seed.
    test_fraction : float, default 0.2
        Share of ``digits`` samples held out for testing, in ``(0, 1)``. Ignored for ``mnist1d``.
    num_samples : int, default 5000
        Samples ``mnist1d`` generates (train + test, 80/20), ``>= 10``; mnist1d rounds it down to a
        multiple of 10 (equal classes). Ignored for ``digits``.

    Returns
    -------
    Dataset
        Read-only arrays; repeated calls with the same arguments return the same object.

    Raises
    ------
    ValueError
        For an unknown name or an argument out of range.
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if name == "digits":
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        return _load_digits(seed, float(test_fraction))
    if name == "mnist1d":
        if num_samples < 10:
            raise ValueError(f"num_samples must be >= 10 for mnist1d, got {num_samples}")
        return _load_mnist1d(int(num_samples), seed)
    if name == "pydocs":  # text: int64 token ids (n, seq_len); see stamen.simulations.text_data
        return load_pydocs(seed, num_samples=num_samples, test_fraction=test_fraction, seq_len=seq_len)
    raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


def clear_memory_cache() -> None:
    """Forget the in-process cache (the disk cache stays)."""
    _load_digits.cache_clear()
    _load_mnist1d.cache_clear()
    load_pydocs.cache_clear()


def _frozen(name: str, arrays: dict[str, np.ndarray], num_classes: int) -> Dataset:
    x_train = np.ascontiguousarray(arrays["x_train"], dtype=np.float32)
    x_test = np.ascontiguousarray(arrays["x_test"], dtype=np.float32)
    y_train = np.ascontiguousarray(arrays["y_train"], dtype=np.int64)
    y_test = np.ascontiguousarray(arrays["y_test"], dtype=np.int64)
    for a in (x_train, x_test, y_train, y_test):
        a.setflags(write=False)
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes)


@functools.lru_cache(maxsize=8)
def _load_digits(seed: int, test_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data / 16.0  # (1797, 64) in [0, 1]
    y = bunch.target
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    arrays = {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}
    return _frozen("digits", arrays, 10)


def _mnist1d_version() -> str:
    try:
        return importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - installed as a dependency
        return "unknown"


def _mnist1d_cache_file(num_samples: int, seed: int) -> Path:
    stem = f"mnist1d-v{_mnist1d_version()}-n{num_samples}-s{seed}-f{_CACHE_FORMAT}"
    return cache_dir() / f"{stem}.npz"


@functools.lru_cache(maxsize=8)
def _load_mnist1d(num_samples: int, seed: int) -> Dataset:
    path = _mnist1d_cache_file(num_samples, seed)
    arrays = read_npz(path)
    if arrays is None:
        if num_samples >= _SAY_GENERATING:  # else a first run is silent for up to minutes
            _log.warning(
                "mnist1d: generating %s samples, once (a per-sample Python loop: tens of seconds, "
                "minutes on a loaded machine); later runs read %s",
                f"{num_samples:,}",
                path,
            )
        arrays = _generate_mnist1d(num_samples, seed)
        write_npz(path, arrays)
    return _frozen("mnist1d", arrays, 10)


@contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """Restore the global ``random`` and ``np.random`` states on exit (mnist1d reseeds them)."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _generate_mnist1d(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    # make_dataset only; get_dataset would try the network and write ./mnist1d_data.pkl
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    with _global_rng_preserved():
        raw = make_dataset(args)
    return {
        "x_train": np.asarray(raw["x"], dtype=np.float32),
        "y_train": np.asarray(raw["y"], dtype=np.int64),
        "x_test": np.asarray(raw["x_test"], dtype=np.float32),
        "y_test": np.asarray(raw["y_test"], dtype=np.int64),
    }
