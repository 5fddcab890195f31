"""Tasks sent per client, with the largest count kept as the counts change.

Local DP's worst-client ε bound (:mod:`stamen.server.privacy.client_bound`) needs the most tasks
sent to one client after every synchronous round and every asynchronous version; a max over every
client asked costs ~1.1 ms at 100,000 (ad hoc). :class:`TaskCounts` is a ``Counter`` that keeps it
through every write (``c[k] += 1``, ``update``, ``subtract``, deletes, a copy or an unpickle):
raised at once, recounted lazily after a write lowers or removes the largest count.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class TaskCounts(Counter[str]):
    """A ``Counter`` of tasks per client whose :meth:`most` is the largest count (0 when empty)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._most, self._stale = 0, True  # set first: Counter.__init__ writes through __setitem__
        super().__init__(*args, **kwargs)
        self._stale = True  # a dict argument is copied by dict.update, past __setitem__

    def __setitem__(self, key: str, value: int) -> None:
        old = self.get(key, 0)
        super().__setitem__(key, value)
        if value >= self._most:
            self._most = value
        elif old >= self._most:
            self._stale = True

    def update(self, iterable: Any = None, /, **kwds: int) -> None:
        """``Counter.update``; into an empty counter it copies by ``dict.update``, past ``__setitem__``."""
        empty = not self
        super().update(iterable, **kwds)
        if empty:
            self._stale = True

    def __delitem__(self, key: object) -> None:
        super().__delitem__(key)
        self._stale = True

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (dict(self),)

    def most(self) -> int:
        """The largest count (0 when empty or none is positive)."""
        if self._stale:
            self._most, self._stale = max((n for n in self.values() if n > 0), default=0), False
        return self._most


def _stale_after(name: str) -> None:
    """Dict methods that write past ``__setitem__`` mark the kept figure stale."""
    base = getattr(dict, name)

    def method(self: TaskCounts, *args: Any, **kwargs: Any) -> Any:
        out = base(self, *args, **kwargs)
        self._stale = True
        return out

    method.__name__ = name
    setattr(TaskCounts, name, method)


for _name in ("clear", "pop", "popitem", "setdefault"):
    _stale_after(_name)
