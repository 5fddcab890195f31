"""The class-delay set computed in chunks equals the per-client definition, pool and attacks included."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.simulations.hooks import delayed_by_class
from stamen.simulations.provider import DataSpec, client_data
from stamen.simulations.timing import clients_holding_class


def _reference(spec: DataSpec, cls: int, share: float) -> frozenset[int]:
    labels = [np.asarray(client_data(spec, pid).y) for pid in range(spec.num_clients)]
    return clients_holding_class(labels, cls, share)


@pytest.mark.parametrize(
    "spec",
    [
        DataSpec(dataset="digits", partition="dirichlet", alpha=0.3, num_clients=40),  # unequal sizes
        DataSpec(dataset="digits", partition="pool", alpha=0.3, num_clients=600, samples_per_client=10),
        DataSpec(
            dataset="digits",
            partition="dirichlet",
            alpha=0.3,
            num_clients=40,
            data_attack="label_flip",
            malicious=(0, 5, 7, 30),
        ),
    ],
    ids=["dirichlet", "pool", "label-flip"],
)
def test_equals_the_per_client_definition(spec: DataSpec) -> None:
    found = set()
    for cls, share in ((3, 0.5), (9, 0.3)):
        got = delayed_by_class(spec, cls, share, chunk=7)  # chunks that do not divide the clients
        assert got == _reference(spec, cls, share)
        found |= got
    assert found  # the cases are not vacuous


def test_poisoned_labels_count() -> None:
    """Pinned: label flipping moves malicious client 30 out of class 3's majority and client 0 into
    class 9's 30 % (the honest clients 1, 12, 20, 36, 37 stay)."""
    clean = DataSpec(dataset="digits", partition="dirichlet", alpha=0.3, num_clients=40)
    flipped = DataSpec(**{**clean.__dict__, "data_attack": "label_flip", "malicious": (0, 5, 7, 30)})
    assert (delayed_by_class(clean, 3, 0.5), delayed_by_class(flipped, 3, 0.5)) == ({30}, frozenset())
    assert delayed_by_class(clean, 9, 0.3) == {1, 12, 20, 36, 37}
    assert delayed_by_class(flipped, 9, 0.3) == {0, 1, 12, 20, 36, 37}


def test_by_hand() -> None:
    """iid over 4 clients of digits: no client is half class 0 (about 10 % each)."""
    assert delayed_by_class(DataSpec(dataset="digits", num_clients=4), 0, 0.5) == frozenset()
