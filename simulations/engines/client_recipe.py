"""stamen's ClientApp as it travels to Flower's Ray actors: by its recipe, not by its closures.

Flower's Ray backend sends the ClientApp with every message (``actor.run.remote(app_fn, message,
...)``, ``flwr/server/superlink/fleet/vce/backend/raybackend.py``, Flower 1.41), so Ray pickles it
once per message on the driver's thread. :func:`stamen.client.app.make_client_app` returns handlers
and mods that are closures, which cloudpickle serializes by value: about 11 KB and 23 ms per message
measured on the loaded 2-core machine, against 0.06 ms for a plain app whose handlers are module
functions — about 2.3 s of every 100-client round, spent in series. :class:`RecipeClientApp`
pickles as ``(make_client_app, (resolve,))`` instead, so an actor rebuilds the same app from the
same ``resolve`` (each message already got a fresh unpickled copy before, so nothing is lost).
"""

from __future__ import annotations

from typing import Any

from flwr.clientapp import ClientApp

from stamen.client.app import Resolve, make_client_app


class RecipeClientApp(ClientApp):
    """``make_client_app(resolve)``, pickled as that call.

    Parameters
    ----------
    resolve : callable
        ``resolve(context) -> Node`` (picklable: e.g. a bound method of
        :class:`~stamen.simulations.nodes.SimulatedNodes`).
    """

    def __init__(self, resolve: Resolve) -> None:
        self.__dict__.update(make_client_app(resolve).__dict__)
        self._stamen_resolve = resolve

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (make_client_app, (self._stamen_resolve,))
