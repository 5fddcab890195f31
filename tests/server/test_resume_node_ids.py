"""A resumed deployment whose nodes all came back under new ids (a SuperLink that kept its database
in memory restarted) says so: their per-client task caps and RQM charges start again from zero."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.server.test_async_driver import BASE
from tests.server.test_release_accounting import SYNC_CLIENTS, _Killed, _sync_driver, _SyncNodes

WARNING = (
    "none of the 3 connected nodes is one the checkpoint counted (node ids changed: a SuperLink "
    "restarted without --database?); per-client task caps, RQM charges and the local-DP ε bound start again"
)


class _NewIds(_SyncNodes):
    """The same nodes under new ids."""

    def clients(self) -> list[str]:
        return [f"n-{c}" for c in SYNC_CLIENTS]


class _OneBack(_SyncNodes):
    """One counted node back under its id, and new ones: the seed's cohort of 3 misses it."""

    def clients(self) -> list[str]:
        return ["c-3", *(f"n-{k}" for k in range(9))]


@pytest.mark.parametrize(
    ("nodes", "warned"), [(_SyncNodes, False), (_NewIds, True), (_OneBack, False)], ids=["same", "new", "one"]
)
def test_a_resumed_deployment_warns_when_no_node_id_survived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, nodes: type[_SyncNodes], warned: bool
) -> None:
    """Resumed after round 1: one line when none of the connected nodes is one the checkpoint
    counted; none when they are the same nodes, nor when one of them is back but the round's cohort
    (drawn among more nodes) misses it."""
    with pytest.raises(_Killed):
        _sync_driver(_SyncNodes(2), tmp_path).run(BASE)
    with caplog.at_level(logging.WARNING, logger="stamen.server"):
        assert _sync_driver(nodes(), tmp_path).run(BASE).extra["resumed_from"] == 1
    lines = [r.getMessage() for r in caplog.records if "node ids changed" in r.getMessage()]
    assert lines == ([WARNING] if warned else [])


def test_a_fresh_deployment_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="stamen.server"):
        _sync_driver(_NewIds(), tmp_path).run(BASE)
    assert "node ids changed" not in caplog.text
