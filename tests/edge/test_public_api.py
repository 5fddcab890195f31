"""``stamen.edge`` exports every refusal its runtime raises to callers."""

from __future__ import annotations

import stamen.edge


def test_refused_base_is_exported_and_is_what_the_runtime_raises() -> None:
    """``RefusedBase`` (caught by ``stamen.client.node``) was importable only from ``stamen.edge.errors``,
    unlike its siblings ``StaleVersion`` and ``StoreCorrupt``."""
    from stamen.edge import RefusedBase, runtime

    assert RefusedBase is runtime.RefusedBase
    assert {"RefusedBase", "StaleVersion", "StoreCorrupt"} <= set(stamen.edge.__all__)
    assert issubclass(RefusedBase, ValueError)
