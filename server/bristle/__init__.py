"""Bristle's peer mode on the server: the relay between nodes (no aggregation).

The per-node algorithm (prioritizer, integrator) lives in :mod:`stamen.task.bristle`; the server-mode
rule in :mod:`stamen.server.aggregators.bristle`.
"""
