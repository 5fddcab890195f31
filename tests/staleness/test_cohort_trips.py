"""``ClientTiming.trips`` (a cohort at once) equals ``ClientTiming.trip`` per client, bit for bit, and
its draws equal one ``np.random.default_rng`` per trip."""

from __future__ import annotations

import numpy as np
import pytest

from stamen.simulations.timing import ClientTiming, TimingConfig
from stamen.simulations.trip_draws import pcg64_seeded_states, trip_draws

ONOFF = {"availability": "onoff", "mean_on_s": 30.0, "mean_off_s": 20.0}
CONFIGS = [  # (config, the trips' reasons it yields below: every branch of a trip is exercised)
    (TimingConfig(compute_jitter_sigma=0.3, dropout_prob=0.25), {"", "dropout"}),
    (TimingConfig(compute_sigma=1.0, window_policy="abort", **ONOFF), {"", "window"}),
    (TimingConfig(window_policy="finish", dropout_prob=0.1, **{**ONOFF, "mean_on_s": 5.0}), {"", "dropout"}),
    (TimingConfig(availability="diurnal", window_policy="abort", diurnal_on_hours=0.01), {""}),
]


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3])
def test_pcg64_states_and_draws_match_numpy(seed: int) -> None:
    clients = np.array([0, 1, 9, 65_535, 2**32 - 1])
    attempts = np.array([0, 4, 0, 2**31, 1])
    states = pcg64_seeded_states([seed, 0x7A11], [clients, attempts])
    jitter, u_drop, u_where = trip_draws(seed, 0x7A11, clients, attempts, 0.4)
    for k, (c, a) in enumerate(zip(clients.tolist(), attempts.tolist(), strict=True)):
        ref = np.random.PCG64(np.random.SeedSequence([seed, 0x7A11, c, a])).state["state"]
        assert states[k] == (ref["state"], ref["inc"])
        rng = np.random.default_rng([seed, 0x7A11, c, a])
        assert (jitter[k], u_drop[k], u_where[k]) == (
            float(rng.lognormal(0.0, 0.4)),
            rng.random(),
            rng.random(),
        )


@pytest.mark.parametrize(("config", "reasons"), CONFIGS)
@pytest.mark.parametrize("dispatched", [0.0, 1234.5678])
def test_cohort_trips_equal_single_trips(config: TimingConfig, reasons: set[str], dispatched: float) -> None:
    timing, rng = ClientTiming(config, 500, seed=11), np.random.default_rng(3)
    clients = rng.choice(500, size=120, replace=False)
    attempts = rng.integers(0, 5, 120)
    examples, down, up = rng.integers(1, 400, 120), rng.integers(0, 10**6, 120), rng.integers(0, 10**5, 120)
    got = timing.trips(
        clients, dispatched, attempts=attempts, num_examples=examples, epochs=2, bytes_down=down, bytes_up=up
    )
    want = [
        timing.trip(
            int(c),
            dispatched,
            attempt=int(a),
            num_examples=int(n),
            epochs=2,
            bytes_down=int(d),
            bytes_up=int(u),
        )
        for c, a, n, d, u in zip(clients, attempts, examples, down, up, strict=True)
    ]
    assert got == want  # exact: same floats, same lost trips and reasons
    assert {t.reason for t in want} == reasons
    assert any(t.start > dispatched for t in want) == (config.availability != "always")  # waits exercised


def test_cohort_trips_refuse_bad_input() -> None:
    timing = ClientTiming(TimingConfig(), 10, seed=0)
    kw = {"attempts": np.zeros(2, int), "num_examples": np.ones(2, int), "epochs": 1,
          "bytes_down": np.ones(2, int), "bytes_up": np.ones(2, int)}  # fmt: skip
    with pytest.raises(ValueError, match="clients in"):
        timing.trips(np.array([3, 10]), 0.0, **kw)
    with pytest.raises(ValueError, match="attempts must be"):
        timing.trips(np.array([3, 4]), 0.0, **{**kw, "attempts": np.array([0, -1])})
    with pytest.raises(ValueError, match="equal-length"):
        timing.trips(np.array([3]), 0.0, **kw)
    assert (
        timing.trips(np.array([], int), 0.0, **{k: v[:0] if k != "epochs" else v for k, v in kw.items()})
        == []
    )


def test_seeded_states_refuse_a_negative_head() -> None:
    """numpy's SeedSequence refuses negative entropy; the vectorised seeding says so too, where a
    silent ``[]`` word list would have seeded a different generator."""
    from stamen.simulations.trip_draws import pcg64_seeded_states

    with pytest.raises(ValueError, match=">= 0"):
        pcg64_seeded_states([-1, 3], [np.array([0, 1])])
    with pytest.raises(ValueError):
        np.random.SeedSequence([-1, 3, 0])
