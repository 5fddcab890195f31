"""Ctrl-C and SIGTERM for the simulation engines: end after the last finished round.

The round drivers end a run on ``KeyboardInterrupt`` and keep the finished rounds
(``FederationResult.stopped == "interrupted"``). In the in-process engine the driver runs on the
main thread, so SIGINT already raises there; :func:`sigterm_as_interrupt` makes SIGTERM do the
same. Under Flower's simulation engine the driver runs on the ServerApp's thread while the main
thread waits on the Ray workers: a signal raised there left the ServerApp thread waiting for replies
(issue #14). :func:`stop_on_signals` instead sets an event, and :class:`StoppableGrid` raises
``KeyboardInterrupt`` on the ServerApp's thread at its next poll (every ``pull_interval`` s, 0.1 s
by default), so the driver returns, Flower's runtime stops its workers and shuts Ray down. A second
signal raises ``KeyboardInterrupt`` on the main thread at once (the user insists); the engine still
keeps the rounds the driver hands over (:mod:`stamen.simulations.engines.flower`).

``ray.init`` installs its own SIGTERM handlers in the driver: ``sys.exit`` in Python and Abseil's
failure handler in C++, which dumps a stack and aborts (exit 134, no results). The Flower engine
therefore starts Ray first and then reinstalls these handlers (the ``rearm`` that
:func:`stop_on_signals` yields). :func:`signals_held` keeps a late signal from cutting the results
write short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _restore(previous: dict[signal.Signals, Any]) -> None:
    """Reinstall ``previous`` (a handler not set from Python, ``None`` to ``signal``, as the default)."""
    for sig, handler in previous.items():
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises ``KeyboardInterrupt`` like SIGINT (main thread only; a no-op
    elsewhere, where Python cannot install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[Callable[[], None]]:
    """Within the block SIGINT and SIGTERM set ``stop``; a second one raises ``KeyboardInterrupt``.

    Yields ``rearm``, which installs these handlers again over any that code in the block installed
    (``ray.init``'s: both in Python and, through ``sigaction``, in C). Main thread only (a no-op
    elsewhere). The handlers from before the block are restored on exit.
    """

    def _handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            _raise_interrupt(signum, frame)
        stop.set()

    def _rearm() -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _handler)

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    _rearm()
    try:
        yield _rearm
    finally:
        _restore(previous)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM are ignored, so a short step that must not be cut in
    the middle (writing a stopped run's results) runs to its end. Main thread only (a no-op
    elsewhere); the previous handlers are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        _restore(previous)


class StoppableGrid:
    """A Flower ``Grid`` whose polls raise ``KeyboardInterrupt`` once ``stop`` is set.

    Every other attribute is the wrapped grid's. ``send_and_receive`` is Flower's loop (push, then
    pull every ``pull_interval`` seconds until every reply came or ``timeout`` passed) with the
    check in each poll.
    """

    def __init__(self, grid: Any, stop: threading.Event, pull_interval: float = 0.1) -> None:
        self._grid, self._stop, self.pull_interval = grid, stop, pull_interval

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def _check(self) -> None:
        if self._stop.is_set():
            raise KeyboardInterrupt("stop requested")

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        """The wrapped grid's replies to ``message_ids``; raises if a stop was requested."""
        self._check()
        return list(self._grid.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> list[Any]:
        """Push ``messages``; the replies that came within ``timeout`` s (None: wait for all)."""
        self._check()
        pending = set(self._grid.push_messages(messages))
        end = time.monotonic() + (timeout if timeout is not None else 0.0)
        replies: list[Any] = []
        while pending and (timeout is None or time.monotonic() < end):
            got = self.pull_messages(pending)
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if pending:
                time.sleep(self.pull_interval)
        return replies
