"""A seeded model of when simulated clients are available and how long their work takes.

One trip of client ``i`` dispatched at simulated time ``t``::

    start    = next time >= t at which i is available           (availability windows)
    download = latency_s + bytes_down / downlink_i               (bytes really sent)
    compute  = seconds_per_example * examples * epochs / speed_i * jitter
    upload   = latency_s + bytes_up / uplink_i                   (bytes of the real envelope)
    arrival  = start + download + compute + upload

Per-client draws, fixed for the run (numpy, from ``seed``): ``speed_i ~ LogNormal(0, compute_sigma)``
(median 1: the median device needs ``seconds_per_example``), ``uplink_i`` and ``downlink_i`` =
median × ``LogNormal(0, bandwidth_sigma)``, and the availability windows:

- ``always``: available all the time;
- ``onoff``: periodic, on for ``on_i ~ Exp(mean_on_s)`` then off for ``off_i ~ Exp(mean_off_s)``,
  with a uniform phase;
- ``diurnal``: a 24 h period, on for ``diurnal_on_hours`` (e.g. charging at night), starting at a
  per-client offset uniform in ``[0, diurnal_spread_hours)``.

Per-trip draws come from a generator keyed by ``(seed, client, attempt)``, so a trip does not
depend on the order other trips are drawn in: the per-dispatch compute ``jitter ~
LogNormal(0, compute_jitter_sigma)``, and a drop-out with probability ``dropout_prob`` at a
uniform point of the trip. With ``window_policy = "abort"`` a trip that outlasts the client's
availability window is lost at the window's end (devices stop training when unplugged); with
``"finish"`` it completes anyway.

The staleness paper's setting (Wang & Gao, arXiv 2309.13536; ``fixed.py`` in
pittisl/FL-with-intertwined-heterogeneity at 4ec51ab: clients holding ``problematic_class = 5``
train from the model of ``delay = 40`` rounds ago) is ``delay_mode = "class"``: the clients whose
data is mostly ``delayed_class`` (:func:`clients_holding_class`) are ``delay_rounds`` rounds stale
(:meth:`ClientTiming.round_delay`). In that code the delayed clients actually start from the model of
``delay - 1`` rounds ago (``weights_history[0]`` after the shift at ``epoch >= delay``); here
``delay_rounds`` is the staleness itself.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from stamen.task.settings_base import _build, _Config, _f

AVAILABILITY: tuple[str, ...] = ("always", "onoff", "diurnal")
WINDOW_POLICIES: tuple[str, ...] = ("abort", "finish")
DELAY_MODES: tuple[str, ...] = ("none", "class")
_DAY_S = 86400.0
_TRIP_TAG = 0x7A11  # separates per-trip streams from the per-client draws


@dataclass(frozen=True)
class TimingConfig(_Config):
    """``[timing]``: client speeds, bandwidths, availability, drop-outs and class delay.

    Times are simulated seconds, bandwidths bytes per second (medians over clients). Every
    field is validated on construction; unknown keys in :meth:`from_dict` fail with their name.
    """

    SECTION: ClassVar[str] = "timing"
    seconds_per_example: float = _f(1e-3, gt=0.0)  # median device, per example and epoch
    compute_sigma: float = _f(1.0, ge=0.0)  # log-normal sigma of per-client speed
    compute_jitter_sigma: float = _f(0.0, ge=0.0)  # log-normal sigma of per-trip noise
    uplink_bytes_per_s: float = _f(1e6, gt=0.0)
    downlink_bytes_per_s: float = _f(5e6, gt=0.0)
    bandwidth_sigma: float = _f(0.5, ge=0.0)
    latency_s: float = _f(0.05, ge=0.0)  # per transfer
    availability: str = _f("always", choices=AVAILABILITY)
    mean_on_s: float = _f(3600.0, gt=0.0)  # onoff
    mean_off_s: float = _f(3600.0, gt=0.0)  # onoff
    diurnal_on_hours: float = _f(8.0, gt=0.0, le=24.0)
    diurnal_spread_hours: float = _f(24.0, ge=0.0, le=24.0)
    window_policy: str = _f("abort", choices=WINDOW_POLICIES)
    dropout_prob: float = _f(0.0, ge=0.0, lt=1.0)
    delay_mode: str = _f("none", choices=DELAY_MODES)
    delayed_class: int = _f(5, ge=0)
    delay_rounds: int = _f(40, ge=0)
    delayed_min_share: float = _f(0.5, gt=0.0, le=1.0)

    def _check(self) -> None:
        if self.delay_mode == "class" and self.delay_rounds < 1:
            raise ValueError(
                f"timing.delay_rounds must be >= 1 when delay_mode = 'class', got {self.delay_rounds}"
            )

    @classmethod
    def from_dict(cls, tree: Mapping[str, Any]) -> TimingConfig:
        """Build from a TOML-shaped ``[timing]`` table (unknown keys fail with their name)."""
        config: TimingConfig = _build(cls, tree, "timing.")
        return config


@dataclass(frozen=True)
class Trip:
    """One dispatch of one client, in simulated seconds.

    ``finish`` is the arrival time when ``delivered``, else when the client was lost;
    ``reason`` is ``""``, ``"dropout"`` or ``"window"``.
    """

    client: int
    dispatched: float
    start: float
    download_s: float
    compute_s: float
    upload_s: float
    finish: float
    delivered: bool
    reason: str


def clients_holding_class(
    labels_by_client: Sequence[np.ndarray], cls: int, min_share: float = 0.5
) -> frozenset[int]:
    """Clients whose labels are at least ``min_share`` class ``cls`` (empty clients never are)."""
    return frozenset(
        i
        for i, labels in enumerate(labels_by_client)
        if len(labels) and np.mean(np.asarray(labels) == cls) >= min_share
    )


class ClientTiming:
    """Per-client timing drawn once from ``seed``; trips computed on demand (no per-client state).

    Parameters
    ----------
    config : TimingConfig
        The timing settings.
    num_clients : int
        Number of clients, ``>= 1`` (clients are ``0 .. num_clients - 1``).
    seed : int
        Seed of every draw, ``0 <= seed < 2**63``.
    delayed_clients : collection of int
        The clients ``delay_mode = "class"`` delays (see :func:`clients_holding_class`).
    """

    def __init__(
        self, config: TimingConfig, num_clients: int, *, seed: int, delayed_clients: Collection[int] = ()
    ) -> None:
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
            raise ValueError(f"ClientTiming: num_clients must be an integer >= 1, got {num_clients!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"ClientTiming: seed must be an integer in [0, 2**63), got {seed!r}")
        bad = sorted(c for c in delayed_clients if not 0 <= c < num_clients)
        if bad:
            raise ValueError(f"ClientTiming: delayed clients {bad[:5]} are outside 0..{num_clients - 1}")
        self.config, self.num_clients, self.seed = config, num_clients, seed
        self.delayed_clients = frozenset(int(c) for c in delayed_clients)
        rng = np.random.default_rng([seed, num_clients])
        n, c = num_clients, config
        self.speed = rng.lognormal(0.0, c.compute_sigma, n)
        self.uplink = c.uplink_bytes_per_s * rng.lognormal(0.0, c.bandwidth_sigma, n)
        self.downlink = c.downlink_bytes_per_s * rng.lognormal(0.0, c.bandwidth_sigma, n)
        self.period, self.on_len, self.phase = _windows(c, rng, n)

    def round_delay(self, client: int) -> int:
        """Rounds of staleness of ``client`` in the class-delay setting (0 otherwise)."""
        self._check_client(client)
        delayed = self.config.delay_mode == "class" and client in self.delayed_clients
        return self.config.delay_rounds if delayed else 0

    def compute_seconds(self, client: int, num_examples: int, epochs: int = 1) -> float:
        """Median-trip compute time of ``num_examples * epochs`` example passes (no jitter)."""
        self._check_client(client)
        return self.config.seconds_per_example * num_examples * epochs / float(self.speed[client])

    def upload_seconds(self, client: int, nbytes: int) -> float:
        """``latency_s + nbytes / uplink_i``."""
        self._check_client(client)
        return self.config.latency_s + nbytes / float(self.uplink[client])

    def download_seconds(self, client: int, nbytes: int) -> float:
        """``latency_s + nbytes / downlink_i``."""
        self._check_client(client)
        return self.config.latency_s + nbytes / float(self.downlink[client])

    def available(self, client: int, time: float) -> bool:
        """Whether ``client`` is inside an availability window at ``time``."""
        return self.next_available(client, time) == time

    def available_mask(self, time: float) -> np.ndarray:
        """``available(i, time)`` for every client ``i`` at once (a bool array; the same arithmetic)."""
        return windows_open(self.period, self.on_len, self.phase, float(time))

    def next_available(self, client: int, time: float) -> float:
        """The first time ``>= time`` at which ``client`` is available."""
        start, _ = self._window(client, time)
        return max(float(time), start)

    def window_end(self, client: int, time: float) -> float:
        """End of the window ``client`` is in at ``time`` (``inf`` for ``always``); it must be available."""
        start, end = self._window(client, time)
        if start > time:
            raise ValueError(f"client {client} is not available at t={time}")
        return end

    def _window(self, client: int, time: float) -> tuple[float, float]:
        """``(start, end)`` of the window holding ``time``, else of the next one.

        Window ``k`` is ``[phase + k * period, phase + k * period + on_len)``, always computed from
        the integer ``k`` so that a boundary returned here tests exactly the same when fed back.
        """
        self._check_client(client)
        period, on_len, phase = (
            float(self.period[client]),
            float(self.on_len[client]),
            float(self.phase[client]),
        )
        if math.isinf(period):
            return -math.inf, math.inf

        def start(k: int) -> float:
            return phase + k * period

        k = math.floor((time - phase) / period)
        if time < start(k):  # the division rounded up
            k -= 1
        elif time >= start(k + 1):  # ... or down
            k += 1
        if time >= start(k) + on_len:
            k += 1
        return start(k), start(k) + on_len

    def trip(
        self,
        client: int,
        dispatched: float,
        *,
        attempt: int,
        num_examples: int,
        epochs: int,
        bytes_down: int,
        bytes_up: int,
    ) -> Trip:
        """The trip of ``client`` dispatched at ``dispatched`` (its ``attempt``-th dispatch, from 0)."""
        self._check_client(client)
        for key, value in (("attempt", attempt), ("num_examples", num_examples), ("epochs", epochs),
                           ("bytes_down", bytes_down), ("bytes_up", bytes_up)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"ClientTiming.trip: {key} must be an integer >= 0, got {value!r}")
        rng = np.random.default_rng([self.seed, _TRIP_TAG, client, int(attempt)])
        jitter, u_drop, u_where = (
            float(rng.lognormal(0.0, self.config.compute_jitter_sigma)),
            rng.random(),
            rng.random(),
        )
        start = self.next_available(client, dispatched)
        down = self.download_seconds(client, bytes_down)
        comp = self.compute_seconds(client, num_examples, epochs) * jitter
        up = self.upload_seconds(client, bytes_up)
        end = start + down + comp + up
        trip = Trip(client, float(dispatched), start, down, comp, up, end, True, "")
        if u_drop < self.config.dropout_prob:
            return _lost(trip, start + u_where * (end - start), "dropout")
        closes = self.window_end(client, start)
        if self.config.window_policy == "abort" and end > closes:
            return _lost(trip, closes, "window")
        return trip

    def trips(
        self,
        clients: np.ndarray,
        dispatched: float,
        *,
        attempts: np.ndarray,
        num_examples: np.ndarray,
        epochs: int,
        bytes_down: np.ndarray,
        bytes_up: np.ndarray,
    ) -> list[Trip]:
        """The trips of a cohort dispatched together at ``dispatched``: bit for bit ``[self.trip(c,
        dispatched, attempt=a, num_examples=n, epochs=epochs, bytes_down=d, bytes_up=u) for ...]``,
        with the per-trip draws made for the cohort at once and the arithmetic vectorised."""
        named = {"clients": clients, "attempts": attempts, "num_examples": num_examples}
        cols = [
            _nonneg_ints(k, v) for k, v in {**named, "bytes_down": bytes_down, "bytes_up": bytes_up}.items()
        ]
        ids, tries, examples, down_b, up_b = cols
        if len({len(col) for col in cols}) > 1 or (len(ids) and int(ids.max()) >= self.num_clients):
            raise ValueError(f"ClientTiming.trips: equal-length arrays of clients in [0, {self.num_clients})")
        from stamen.simulations.trip_draws import trip_draws  # imports the cohort package (torch)

        c, when = self.config, float(dispatched)
        jitter, u_drop, u_where = trip_draws(self.seed, _TRIP_TAG, ids, tries, c.compute_jitter_sigma)
        always = c.availability == "always"
        start = np.array(
            [when if always else self.next_available(int(i), when) for i in ids], dtype=np.float64
        )
        down = c.latency_s + down_b / self.downlink[ids]
        comp = c.seconds_per_example * examples * epochs / self.speed[ids] * np.array(jitter)
        up = c.latency_s + up_b / self.uplink[ids]
        end = start + down + comp + up
        lost_at = start + np.array(u_where) * (end - start)
        parts = (ids, start, down, comp, up, end)
        trips = [
            Trip(i, when, s, d, k, u, e, True, "")
            for i, s, d, k, u, e in zip(*map(np.ndarray.tolist, parts), strict=True)
        ]
        return [
            self._settle(t, drop, at) for t, drop, at in zip(trips, u_drop, lost_at.tolist(), strict=True)
        ]

    def _settle(self, trip: Trip, u_drop: float, dropped_at: float) -> Trip:
        """``trip`` as it ends: lost to a drop-out (at ``dropped_at``) or to its window closing."""
        if u_drop < self.config.dropout_prob:
            return _lost(trip, dropped_at, "dropout")
        if self.config.window_policy == "abort" and self.config.availability != "always":
            closes = self.window_end(trip.client, trip.start)
            if trip.finish > closes:
                return _lost(trip, closes, "window")
        return trip

    def _check_client(self, client: int) -> None:
        if (
            isinstance(client, bool)
            or not isinstance(client, int | np.integer)
            or not 0 <= client < self.num_clients
        ):
            raise ValueError(f"client must be an integer in [0, {self.num_clients}), got {client!r}")


def _nonneg_ints(name: str, values: np.ndarray) -> np.ndarray:
    """``values`` as a 1-D ``int64`` array of integers >= 0, else a one-line ``ValueError``."""
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and (arr.dtype.kind not in "iu" or int(arr.min()) < 0)):
        raise ValueError(f"ClientTiming.trips: {name} must be a 1-D array of integers >= 0")
    return arr.astype(np.int64, copy=False)


def _lost(trip: Trip, at: float, reason: str) -> Trip:
    return Trip(
        trip.client,
        trip.dispatched,
        trip.start,
        trip.download_s,
        trip.compute_s,
        trip.upload_s,
        at,
        False,
        reason,
    )


def _windows(c: TimingConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-client ``(period, on length, phase)``; ``period = inf`` means always available."""
    if c.availability == "always":
        return np.full(n, math.inf), np.full(n, math.inf), np.zeros(n)
    if c.availability == "onoff":
        on, off = rng.exponential(c.mean_on_s, n), rng.exponential(c.mean_off_s, n)
        return on + off, on, rng.uniform(0.0, 1.0, n) * (on + off)
    on_len = np.full(n, c.diurnal_on_hours * 3600.0)
    return np.full(n, _DAY_S), on_len, rng.uniform(0.0, c.diurnal_spread_hours * 3600.0, n)


def windows_open(period: np.ndarray, on_len: np.ndarray, phase: np.ndarray, time: float) -> np.ndarray:
    """Whether each client is inside a window at ``time``: :meth:`ClientTiming._window`'s steps on
    arrays, operation for operation (``k`` an integer-valued float, exact below 2**53), so every
    entry equals the scalar answer; ``period = inf``: always open."""
    finite = np.isfinite(period)
    p, on, ph = period[finite], on_len[finite], phase[finite]
    k = np.floor((time - ph) / p)
    k = np.where(time < ph + k * p, k - 1, np.where(time >= ph + (k + 1) * p, k + 1, k))
    k = np.where(time >= ph + k * p + on, k + 1, k)
    out = np.ones(len(period), dtype=bool)
    out[finite] = ph + k * p <= time
    return out
