"""Test trio for the client timing model."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.simulations.timing import ClientTiming, TimingConfig, clients_holding_class

_TRIP = {"num_examples": 100, "epochs": 2, "bytes_down": 50_000, "bytes_up": 20_000}


def test_hand_computed_trip_without_randomness() -> None:
    cfg = TimingConfig(
        seconds_per_example=0.01, compute_sigma=0.0, bandwidth_sigma=0.0, latency_s=0.1,
        uplink_bytes_per_s=10_000.0, downlink_bytes_per_s=100_000.0,
    )  # fmt: skip
    timing = ClientTiming(cfg, 3, seed=0)
    trip = timing.trip(1, 5.0, attempt=0, **_TRIP)
    # download 0.1 + 50000/1e5 = 0.6; compute 0.01 * 100 * 2 = 2.0; upload 0.1 + 20000/1e4 = 2.1
    assert (trip.start, trip.download_s, trip.compute_s, trip.upload_s) == pytest.approx((5.0, 0.6, 2.0, 2.1))
    assert trip.finish == pytest.approx(9.7) and trip.delivered and trip.reason == ""
    assert timing.upload_seconds(0, 40_000) == pytest.approx(4.1)  # bigger updates take longer


def test_trips_are_deterministic_and_order_independent() -> None:
    cfg = TimingConfig(
        compute_jitter_sigma=0.3, dropout_prob=0.2, availability="onoff", window_policy="finish"
    )
    a, b = ClientTiming(cfg, 50, seed=4), ClientTiming(cfg, 50, seed=4)
    forward = [a.trip(c, 10.0, attempt=k, **_TRIP) for c in range(50) for k in range(3)]
    backward = [b.trip(c, 10.0, attempt=k, **_TRIP) for c in reversed(range(50)) for k in reversed(range(3))]
    assert forward == list(reversed(backward))
    other = ClientTiming(cfg, 50, seed=5)
    assert [other.trip(c, 10.0, attempt=0, **_TRIP) for c in range(50)] != forward[::3]


def test_speed_spread_and_dropout_rate() -> None:
    cfg = TimingConfig(compute_sigma=1.0, dropout_prob=0.2)
    timing = ClientTiming(cfg, 10_000, seed=0)
    logs = np.log(timing.speed)
    assert abs(np.median(logs)) < 0.05 and abs(np.std(logs) - 1.0) < 0.03
    lost = [not timing.trip(c, 0.0, attempt=0, **_TRIP).delivered for c in range(10_000)]
    assert abs(np.mean(lost) - 0.2) < 0.015


def test_pinned_trip() -> None:
    timing = ClientTiming(TimingConfig(compute_jitter_sigma=0.5), 10, seed=7)
    trip = timing.trip(3, 0.0, attempt=2, **_TRIP)
    assert trip.finish == pytest.approx(0.477152, rel=1e-5)  # checked against the formula by hand


@settings(max_examples=150, deadline=None)
@given(
    availability=st.sampled_from(["always", "onoff", "diurnal"]),
    client=st.integers(0, 19),
    t=st.floats(0, 5 * 86400),
)
def test_next_available_is_the_first_available_time(availability: str, client: int, t: float) -> None:
    timing = ClientTiming(TimingConfig(availability=availability, mean_on_s=600, mean_off_s=1800), 20, seed=1)
    nxt = timing.next_available(client, t)
    assert nxt >= t and timing.available(client, nxt)
    if nxt > t:
        assert not timing.available(client, t)
        assert not timing.available(client, (t + nxt) / 2)
    end = timing.window_end(client, nxt)
    assert end > nxt and (math.isinf(end) or not timing.available(client, end))


def test_window_abort_and_diurnal_windows() -> None:
    cfg = TimingConfig(
        availability="diurnal", diurnal_on_hours=1.0, diurnal_spread_hours=0.0, compute_sigma=0.0
    )
    timing = ClientTiming(cfg, 2, seed=0)
    assert timing.available(0, 0.0) and timing.available(0, 3599.0) and not timing.available(0, 3600.0)
    assert timing.next_available(0, 4000.0) == 86400.0
    long = timing.trip(0, 3000.0, attempt=0, num_examples=1_000_000, epochs=1, bytes_down=0, bytes_up=0)
    assert not long.delivered and long.reason == "window" and long.finish == pytest.approx(3600.0)
    finish = ClientTiming(TimingConfig(**{**cfg.__dict__, "window_policy": "finish"}), 2, seed=0)
    assert finish.trip(
        0, 3000.0, attempt=0, num_examples=1_000_000, epochs=1, bytes_down=0, bytes_up=0
    ).delivered


def test_class_delay_setting() -> None:
    labels = [np.array([5, 5, 5, 1]), np.array([5, 1, 1, 1]), np.array([], np.int64), np.array([5])]
    delayed = clients_holding_class(labels, 5)
    assert delayed == frozenset({0, 3})
    timing = ClientTiming(
        TimingConfig(delay_mode="class", delay_rounds=40), 4, seed=0, delayed_clients=delayed
    )
    assert [timing.round_delay(c) for c in range(4)] == [40, 0, 0, 40]
    plain = ClientTiming(TimingConfig(), 4, seed=0, delayed_clients=delayed)
    assert plain.round_delay(0) == 0  # delay_mode = "none"


def test_config_and_argument_validation() -> None:
    with pytest.raises(ValueError, match=re.escape("unknown key 'timing.speed'; allowed in [timing]")):
        TimingConfig.from_dict({"speed": 2})
    with pytest.raises(ValueError, match=re.escape("timing.dropout_prob must be < 1.0, got 1.0")):
        TimingConfig(dropout_prob=1.0)
    with pytest.raises(ValueError, match=re.escape("timing.availability='sometimes' is not allowed")):
        TimingConfig(availability="sometimes")
    with pytest.raises(ValueError, match="delay_rounds must be >= 1 when delay_mode = 'class'"):
        TimingConfig(delay_mode="class", delay_rounds=0)
    assert TimingConfig.from_dict({"compute_sigma": 2}).compute_sigma == 2.0
    timing = ClientTiming(TimingConfig(), 3, seed=0)
    with pytest.raises(ValueError, match=r"client must be an integer in \[0, 3\), got 3"):
        timing.trip(3, 0.0, attempt=0, **_TRIP)
    with pytest.raises(ValueError, match="bytes_up must be an integer >= 0"):
        timing.trip(0, 0.0, attempt=0, num_examples=1, epochs=1, bytes_down=0, bytes_up=-1)
    with pytest.raises(ValueError, match="delayed clients"):
        ClientTiming(TimingConfig(), 3, seed=0, delayed_clients=[5])
