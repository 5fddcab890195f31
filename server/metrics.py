"""Operator metrics of the stamen server, served to Prometheus (``prometheus-client``).

The round driver reports plain numbers; this module owns the metric objects::

    metrics = ServerMetrics()
    start_metrics_server(9464, metrics=metrics)          # GET http://127.0.0.1:9464/metrics
    metrics.record_update(staleness=0)                  # an accepted update (staleness in rounds)
    metrics.record_rejection("signature")               # a rejected one, by reason
    metrics.record_round(round_=3, bytes_up=12_345, bytes_down=67_890, epsilon=1.25)

Exposed series (counters end in ``_total`` in the exposition):

====================================  =========  ==========================================
name                                  type       meaning
====================================  =========  ==========================================
``stamen_rounds_total``               counter    completed rounds
``stamen_round``                      gauge      number of the last completed round
``stamen_updates_accepted_total``     counter    updates that reached the aggregator
``stamen_updates_rejected_total``     counter    rejected updates, label ``reason``
``stamen_bytes_up_total``             counter    bytes received from clients (measured)
``stamen_bytes_down_total``           counter    bytes sent to clients (measured)
``stamen_dp_epsilon``                 gauge      ε spent so far (the accountant's value)
``stamen_update_staleness_rounds``    histogram  staleness of accepted updates, in rounds
====================================  =========  ==========================================

``reason`` takes values from :data:`REJECTION_REASONS` only, so a hostile client cannot grow the
label set (each label value is a new time series on the Prometheus server).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from stamen.protocols import errors

__all__ = [
    "REJECTION_REASONS",
    "STALENESS_BUCKETS",
    "ServerMetrics",
    "rejection_reason",
    "start_metrics_server",
]

REJECTION_REASONS = (
    "malformed",  # MalformedUpdate: the envelope does not parse
    "signature",  # SignatureError: unsigned, unknown key or bad signature
    "sender",  # signed by a key other than the authenticated node's
    "base_model",  # BaseModelMismatch: computed against another model
    "codec",  # CodecError: the payload does not decode
    "validation",  # ValidationError: shape, dtype, non-finite, norm
    "duplicate",  # a second update from one node in one round
    "replay",  # an update already accepted before
    "version",  # claims a model version the server did not send that node
    "stale",  # older than the staleness window
    "reply_error",  # the client replied with an error
    "timeout",  # no reply before the server's timeout
    "other",
)
STALENESS_BUCKETS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
_BY_ERROR = {
    errors.MalformedUpdate: "malformed",
    errors.SignatureError: "signature",
    errors.BaseModelMismatch: "base_model",
    errors.CodecError: "codec",
    errors.ValidationError: "validation",
}


def rejection_reason(exc: BaseException) -> str:
    """The ``reason`` label for a stamen error (``other`` for anything else)."""
    for cls in type(exc).__mro__:
        if cls in _BY_ERROR:
            return _BY_ERROR[cls]
    return "other"


def _check_count(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class ServerMetrics:
    """The server's metric objects in their own registry (so several servers or tests never clash).

    Parameters
    ----------
    registry : CollectorRegistry, optional
        Where the metrics live; a fresh registry by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.rounds = Counter("stamen_rounds", "Completed rounds", registry=reg)
        self.round = Gauge("stamen_round", "Number of the last completed round", registry=reg)
        self.accepted = Counter("stamen_updates_accepted", "Updates aggregated", registry=reg)
        self.rejected = Counter(
            "stamen_updates_rejected", "Updates rejected, by reason", ["reason"], registry=reg
        )
        self.bytes_up = Counter("stamen_bytes_up", "Bytes received from clients", registry=reg)
        self.bytes_down = Counter("stamen_bytes_down", "Bytes sent to clients", registry=reg)
        self.epsilon = Gauge("stamen_dp_epsilon", "Differential-privacy epsilon spent", registry=reg)
        self.staleness = Histogram(
            "stamen_update_staleness_rounds",
            "Staleness of accepted updates (rounds)",
            buckets=STALENESS_BUCKETS,
            registry=reg,
        )
        for reason in REJECTION_REASONS:  # export zeros, so rate() works from the first rejection
            self.rejected.labels(reason=reason)
        self._lock = threading.Lock()

    def record_update(self, staleness: float = 0.0) -> None:
        """Count one accepted update that was ``staleness`` rounds old (>= 0)."""
        s = _check_count("staleness", staleness)
        with self._lock:
            self.accepted.inc()
            self.staleness.observe(s)

    def record_rejection(self, reason: str) -> None:
        """Count one rejected update; ``reason`` must be one of :data:`REJECTION_REASONS`."""
        if reason not in REJECTION_REASONS:
            raise ValueError(
                f"unknown rejection reason {reason!r}; use one of {', '.join(REJECTION_REASONS)}"
            )
        self.rejected.labels(reason=reason).inc()

    def record_round(
        self,
        round_: int,
        bytes_up: int = 0,
        bytes_down: int = 0,
        epsilon: float | None = None,
        staleness: Iterable[float] = (),
    ) -> None:
        """Record a completed round.

        Parameters
        ----------
        round_ : int
            The round's number (>= 0); becomes ``stamen_round``.
        bytes_up, bytes_down : int
            Bytes received and sent in this round (added to the totals).
        epsilon : float, optional
            ε spent so far (cumulative, as the accountant reports it); ``None`` leaves it unchanged.
        staleness : iterable of float
            Staleness of this round's accepted updates; each is counted as an accepted update.
            Leave empty if :meth:`record_update` already counted them.
        """
        if round_ < 0:
            raise ValueError(f"round must be >= 0, got {round_}")
        up, down = _check_count("bytes_up", bytes_up), _check_count("bytes_down", bytes_down)
        eps = None if epsilon is None else _check_count("epsilon", epsilon)
        for s in staleness:
            self.record_update(s)
        with self._lock:
            self.rounds.inc()
            self.round.set(round_)
            self.bytes_up.inc(up)
            self.bytes_down.inc(down)
            if eps is not None:
                self.epsilon.set(eps)


def start_metrics_server(
    port: int, addr: str = "127.0.0.1", metrics: ServerMetrics | None = None
) -> tuple[Any, ServerMetrics]:
    """Serve ``metrics`` (a fresh :class:`ServerMetrics` if none) at ``http://addr:port/metrics``.

    Parameters
    ----------
    port : int
        TCP port, 0..65535 (0 picks a free one: read it from ``server.server_port``).
    addr : str
        Listen address; the default keeps the endpoint on loopback. Use ``0.0.0.0`` in a container
        and publish the port to the monitoring network only.

    Returns
    -------
    (server, metrics)
        The WSGI server (stop it with ``server.shutdown()``) and the metrics it serves.
    """
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port must be 0..65535, got {port}")
    m = metrics or ServerMetrics()
    server, _thread = start_http_server(port, addr=addr, registry=m.registry)
    return server, m
