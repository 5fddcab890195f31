"""Every virtual client's declared partition size, as a mapping that stores one integer per client.

The round driver caps each reply's example count at the client's declared size
(:class:`~stamen.server.driver.collect.UpdateCollector`); a ``dict`` of ``"client-<pid>"`` strings
costs about 110 bytes per client (11 MB at 100,000 clients), this view 8 (the sizes array).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

PREFIX = "client-"
"""Sender name of virtual client ``pid``: ``PREFIX + str(pid)``."""


class DeclaredSizes(Mapping[str, int]):
    """``{"client-<pid>": sizes[pid]}`` for ``0 <= pid < len(sizes)``, computed on lookup.

    Parameters
    ----------
    sizes : array_like of int
        Samples of each client, by partition id, shape ``(K,)``, values ``>= 0``.
    """

    def __init__(self, sizes: np.ndarray) -> None:
        self._sizes = np.asarray(sizes, dtype=np.int64)

    def __getitem__(self, client: str) -> int:
        pid = _pid(client, len(self._sizes))
        if pid is None:
            raise KeyError(client)
        return int(self._sizes[pid])

    def __iter__(self) -> Iterator[str]:
        return (f"{PREFIX}{pid}" for pid in range(len(self._sizes)))

    def __len__(self) -> int:
        return len(self._sizes)


def _pid(client: object, num_clients: int) -> int | None:
    """The partition id named by ``client`` (``"client-<pid>"``, canonical digits), or None."""
    if not isinstance(client, str) or not client.startswith(PREFIX):
        return None
    digits = client[len(PREFIX) :]
    if not digits.isdigit() or (len(digits) > 1 and digits[0] == "0"):  # "client-07" is no client
        return None
    pid = int(digits)
    return pid if pid < num_clients else None
