"""Operator metrics: hand-computed totals, read back over HTTP as Prometheus parses them."""

from __future__ import annotations

import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from stamen.protocols import errors
from stamen.server.metrics import (
    REJECTION_REASONS,
    ServerMetrics,
    rejection_reason,
    start_metrics_server,
)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return _samples(resp.read().decode())


def test_two_rounds_over_http_hand_computed() -> None:
    server, m = start_metrics_server(0)
    try:
        m.record_round(1, bytes_up=100, bytes_down=400, epsilon=0.5, staleness=[0, 0, 3])
        m.record_rejection("signature")
        m.record_rejection("signature")
        m.record_rejection("duplicate")
        m.record_update(staleness=9)
        m.record_round(2, bytes_up=50, bytes_down=400, epsilon=0.75)
        got = _scrape(server.server_port)
    finally:
        server.shutdown()
    assert got[("stamen_rounds_total", ())] == 2
    assert got[("stamen_round", ())] == 2
    assert got[("stamen_bytes_up_total", ())] == 150
    assert got[("stamen_bytes_down_total", ())] == 800
    assert got[("stamen_dp_epsilon", ())] == 0.75
    assert got[("stamen_updates_accepted_total", ())] == 4
    assert got[("stamen_updates_rejected_total", (("reason", "signature"),))] == 2
    assert got[("stamen_updates_rejected_total", (("reason", "duplicate"),))] == 1
    assert got[("stamen_updates_rejected_total", (("reason", "replay"),))] == 0  # exported from the start
    # staleness 0, 0, 3, 9: cumulative buckets le=0 -> 2, le=2 -> 2, le=4 -> 3, le=16 -> 4
    hist = {dict(k[1])["le"]: v for k, v in got.items() if k[0] == "stamen_update_staleness_rounds_bucket"}
    assert (hist["0.0"], hist["2.0"], hist["4.0"], hist["16.0"], hist["+Inf"]) == (2, 2, 3, 4, 4)
    assert got[("stamen_update_staleness_rounds_sum", ())] == 12


def test_epsilon_none_leaves_the_gauge() -> None:
    m = ServerMetrics()
    m.record_round(1, epsilon=2.0)
    m.record_round(2)
    assert m.epsilon._value.get() == 2.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.record_rejection("client-7 said no"), "unknown rejection reason"),
        (lambda m: m.record_round(1, bytes_up=-1), "bytes_up must be"),
        (lambda m: m.record_round(1, epsilon=float("nan")), "epsilon must be"),
        (lambda m: m.record_round(-1), "round must be"),
        (lambda m: m.record_update(staleness=-2), "staleness must be"),
    ],
)
def test_bad_input_is_refused(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        call(ServerMetrics())


def test_rejection_reason_follows_the_error_hierarchy() -> None:
    class Forged(errors.SignatureError):
        pass

    assert rejection_reason(Forged("x")) == "signature"
    assert rejection_reason(errors.BaseModelMismatch("x")) == "base_model"
    assert rejection_reason(KeyError("x")) == "other"
    assert all(
        rejection_reason(e("x")) in REJECTION_REASONS for e in (errors.MalformedUpdate, errors.CodecError)
    )


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 10**9)), max_size=20))
def test_byte_totals_are_the_sums(rounds: list[tuple[int, int]]) -> None:
    m = ServerMetrics()
    for i, (up, down) in enumerate(rounds):
        m.record_round(i, bytes_up=up, bytes_down=down)
    got = _samples(_exposition(m))
    assert got[("stamen_bytes_up_total", ())] == sum(u for u, _ in rounds)
    assert got[("stamen_bytes_down_total", ())] == sum(d for _, d in rounds)
    assert got[("stamen_rounds_total", ())] == len(rounds)


def _exposition(m: ServerMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(m.registry).decode()
