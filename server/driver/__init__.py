"""The one round driver, shared by every engine and the deployed ServerApp.

``sample -> configure -> transport -> collect + validate -> [simulation hook] -> aggregate (+ central
DP) -> account -> evaluate -> record``. Engines differ only in the :class:`~.types.Transport`: the
in-process engine calls client code directly, Flower's engines go through a ``Grid``
(:mod:`.flower_transport`).
"""

from stamen.server.driver.collect import CollectedUpdates, CollectPolicy, UpdateCollector
from stamen.server.driver.driver import RoundDriver, RoundHooks
from stamen.server.driver.types import Reply, TrainTask, Transport

__all__ = [
    "CollectPolicy",
    "CollectedUpdates",
    "Reply",
    "RoundDriver",
    "RoundHooks",
    "TrainTask",
    "Transport",
    "UpdateCollector",
]
