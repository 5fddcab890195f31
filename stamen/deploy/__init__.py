"""Deployment tooling: keys and certificates (``deploy init``), SuperNode registration, the device
daemon's systemd unit and the containers' health check.

Importing this package is cheap (the container health check imports :mod:`stamen.deploy.health`
only); the public functions load their modules on first use:

* :func:`deploy_init` (:mod:`stamen.deploy.init`), :class:`InitOptions`
* :func:`render_device_unit` (:mod:`stamen.deploy.unit`), :class:`UnitConfig`
* :func:`add_deploy_commands`, :func:`add_install_unit_command`, :func:`dispatch` (:mod:`stamen.deploy.cli`)
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "InitOptions",
    "UnitConfig",
    "add_deploy_commands",
    "add_install_unit_command",
    "deploy_init",
    "dispatch",
    "render_device_unit",
]

_HOME = {
    "InitOptions": "init",
    "deploy_init": "init",
    "UnitConfig": "unit",
    "render_device_unit": "unit",
    "add_deploy_commands": "cli",
    "add_install_unit_command": "cli",
    "dispatch": "cli",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'stamen.deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"stamen.deploy.{_HOME[name]}"), name)
