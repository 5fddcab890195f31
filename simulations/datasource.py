"""Data-source entry points for running the deployable apps on simulated data (``flwr run . local``,
or SuperNodes on loopback started with ``--node-config 'partition-id=N'``).

``pyproject.toml`` names them as the run's defaults (``data-source``, ``eval-data``); a real device
overrides ``data-source`` in its own node config, a real server ``eval-data`` (or sets it to ``""``).
The run config's ``scenario`` and ``overrides`` say which data set and partitioning to materialize.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stamen.protocols import keys
from stamen.server.config import run_config_scenario
from stamen.simulations.nodes import PartitionSource
from stamen.simulations.plan import adversary_of
from stamen.simulations.provider import DataSpec, test_data
from stamen.simulations.scenario import load_scenario
from stamen.task.data import ArraySource


def _spec(run_config: Mapping[str, Any]) -> DataSpec:
    name, overrides = run_config_scenario(run_config)
    s = load_scenario(name, overrides)
    malicious, data_attack = adversary_of(s)
    return DataSpec.from_scenario(s, malicious, data_attack)


def partition(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> PartitionSource:
    """The node's partition (``partition-id`` in its node config) of the run's scenario."""
    if keys.NODE_PARTITION_ID not in node_config:
        raise ValueError("a simulated data source needs 'partition-id' in the node config")
    return PartitionSource(_spec(run_config), int(node_config[keys.NODE_PARTITION_ID]))


def held_out(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> ArraySource:
    """The scenario's held-out test split (the server's centralized evaluation)."""
    del node_config
    return ArraySource(test_data(_spec(run_config)))
