"""stamen: a federated and edge model-update platform built on Flower.

The top-level folders of the repository import as ``stamen.protocols``, ``stamen.server``,
``stamen.client``, ``stamen.edge`` and ``stamen.simulations`` (setuptools ``package-dir``).
"""

from stamen._version import __version__

__all__ = ["__version__"]
