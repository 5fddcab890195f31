"""The ServerApp checks ``out-dir`` before round 1: it writes results only after the last round, so
an unusable directory found then would lose every round."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from flwr.app import Context, RecordDict

from stamen.server import app


class _NoGrid:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the run started (grid.{name}) although out-dir is unusable")


def test_an_unusable_out_dir_is_refused_before_round_1(tmp_path: Path) -> None:
    in_the_way = tmp_path / "results"
    in_the_way.write_text("keep me")
    run_config: dict[str, bool | float | int | str] = {"scenario": "smoke", "out-dir": str(in_the_way)}
    context = Context(1, 0, {}, RecordDict(), run_config)
    with pytest.raises(ValueError, match="is an existing file"):
        app.main(cast(Any, _NoGrid()), context)
    assert in_the_way.read_text() == "keep me"
