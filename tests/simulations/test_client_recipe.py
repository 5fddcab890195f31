"""The Flower engine's ClientApp pickles as its recipe (Ray pickles it once per message)."""

from __future__ import annotations

import pickle

import cloudpickle
from flwr.clientapp import ClientApp

from stamen.client.app import make_client_app
from stamen.simulations.engines.client_recipe import RecipeClientApp
from stamen.simulations.nodes import SimulatedNodes
from stamen.simulations.provider import DataSpec


def _nodes() -> SimulatedNodes:
    return SimulatedNodes(DataSpec(num_clients=7), None, None)


def test_recipe_app_is_the_client_app() -> None:
    """Same handlers and mods as ``make_client_app`` (the engine runs the deployable app's code)."""
    nodes = _nodes()
    recipe, plain = RecipeClientApp(nodes.resolve), make_client_app(nodes.resolve)
    assert isinstance(recipe, ClientApp)
    assert sorted(recipe._registered_funcs) == sorted(plain._registered_funcs)


def test_unpickled_recipe_rebuilds_the_app_around_the_same_nodes() -> None:
    """Round trip: a ClientApp whose ``resolve`` is a copy of the same nodes (same data spec)."""
    app = RecipeClientApp(_nodes().resolve)
    back = pickle.loads(cloudpickle.dumps(app))
    assert type(back) is ClientApp
    assert sorted(back._registered_funcs) == sorted(app._registered_funcs)
    reduce_fn, args = app.__reduce__()
    assert reduce_fn is make_client_app
    assert args[0].__self__.data == DataSpec(num_clients=7)


def test_recipe_pickles_small_where_closures_did_not() -> None:
    """Pinned sizes: the closure-built app pickles to kilobytes (measured 11,201 B for the engine
    benchmark's nodes), the recipe to under 2 KB (941 B)."""
    nodes = _nodes()
    recipe = len(cloudpickle.dumps(RecipeClientApp(nodes.resolve)))
    closures = len(cloudpickle.dumps(make_client_app(nodes.resolve)))
    assert recipe < 2048 < closures
