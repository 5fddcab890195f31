"""A plain Flower 1.41 app of the engine benchmark's model: the anchor of ``bench_engine_throughput``.

What a user would write with Flower alone (the Message API): a ``ServerApp`` running
``flwr.serverapp.strategy.FedAvg`` and a ``ClientApp`` training an MLP 40-64-10 with plain torch
SGD, run with Flower's simulation engine (``flwr.simulation.run_simulation``, Ray backend). It
imports stamen only for the data partitions (:mod:`plain_flower.task`), so both sides train on
identical data; no stamen envelope, codec or round driver is on its path.

    from plain_flower.run import run_plain_flower
    timings = run_plain_flower(PlainSettings(clients=1000, per_round=100, rounds=3))
"""
