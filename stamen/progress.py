"""``stamen simulate``'s progress: a rich bar over rounds (or model versions), with a client bar
inside long rounds; one line per finished round where the output is not a terminal."""

from __future__ import annotations

import time
from typing import Any


class Progress:
    """Rich progress bar over rounds (or model versions: ``unit``), with a client bar inside long
    rounds. With ``lazy`` it appears at the first progress call: the in-process engine forks its
    worker processes before any, and a fork is only safe with no other thread alive (in a terminal
    the bar redraws itself from a thread)."""

    def __init__(
        self, rounds: int, per_round: int, enabled: bool, unit: str = "round", lazy: bool = False
    ) -> None:
        self.enabled, self.rounds, self.per_round, self.unit = enabled, rounds, per_round, unit
        self.lazy = lazy
        self._p: Any = None
        self._clients_task: Any = None
        self._round_start = self._run_start = time.perf_counter()
        self.first_round_s: float | None = None  # seconds from the engine's start to round 1's end

    def __enter__(self) -> Progress:
        if self.enabled and not self.lazy:
            self._bar()
        return self

    def _bar(self) -> Any:
        """The rich progress bar, started at the first call."""
        if self._p is None:
            from rich import get_console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                transient=False,
                disable=not get_console().is_terminal,  # a log file gets the per-round lines only
            )
            self._p.start()
            self._rounds_task = self._p.add_task(f"{self.unit}s", total=self.rounds, info="")
        return self._p

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()

    def round(self, rec: Any) -> None:
        now = time.perf_counter()
        if self.first_round_s is None:
            self.first_round_s = now - self._run_start
        self._round_start = now  # the next round's clients/s counts from here
        if self.enabled:
            self._bar()
            acc = "" if rec.accuracy != rec.accuracy else f"acc {rec.accuracy:.3f}"
            self._p.update(self._rounds_task, advance=1, info=acc)
            if not self._p.console.is_terminal:  # a log file gets one line per finished round
                self._p.console.print(f"{self.unit} {rec.round}/{self.rounds} finished {acc}".rstrip())

    def client(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        self._bar()  # (lazy: from round 1's start on)
        if total < 50:  # only long rounds get a client bar
            return
        if self._clients_task is None:
            self._clients_task = self._bar().add_task("clients", total=total, info="")
        # clients/s since the round began (its training included, also when a cohort trains at once)
        rate = done / max(time.perf_counter() - self._round_start, 1e-9)
        self._p.update(self._clients_task, completed=done, total=total, info=f"{rate:,.0f} clients/s")
