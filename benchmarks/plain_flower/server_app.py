"""The plain ServerApp: Flower's own ``FedAvg`` (Message API) over the run's grid.

``run_simulation`` gives an empty run config, so the settings come by closure (the usual pattern
for a ServerApp started from a Python script). ``evaluate_fn`` runs after every round; it stamps the
round's end (``time.perf_counter``) and evaluates the model on the test split after the last round.
"""

from __future__ import annotations

import random
import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from plain_flower.task import PlainSettings, make_model, test_accuracy


def train_config(s: PlainSettings) -> ConfigRecord:
    """What every sampled client receives with the model (FedAvg adds ``server-round``)."""
    return ConfigRecord(
        {
            "lr": s.lr,
            "local-epochs": s.local_epochs,
            "batch-size": s.batch_size,
            "hidden": s.hidden,
            "alpha": s.alpha,
            "seed": s.seed,
        }
    )


def make_server_app(s: PlainSettings, out: dict[str, Any]) -> ServerApp:
    """A ServerApp running ``s.rounds`` FedAvg rounds of ``s.per_round`` of ``s.clients`` nodes.

    It fills ``out``: ``round_end_s`` (``perf_counter`` after round 0 = start, 1, ..., ``rounds``)
    and ``accuracy`` (test accuracy of the final model, in [0, 1]).
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        random.seed(s.seed)  # FedAvg samples nodes with random.sample
        torch.manual_seed(s.seed)
        model = make_model(s.hidden)
        out["round_end_s"] = []

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            out["round_end_s"].append(time.perf_counter())
            if server_round < s.rounds:
                return None
            model.load_state_dict(arrays.to_torch_state_dict())
            out["accuracy"] = test_accuracy(model, s.clients, s.alpha, s.seed)
            return MetricRecord({"accuracy": out["accuracy"]})

        strategy = FedAvg(
            fraction_train=s.per_round / s.clients,
            fraction_evaluate=0.0,
            min_train_nodes=s.per_round,
            min_available_nodes=s.clients,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=s.rounds,
            train_config=train_config(s),
            evaluate_fn=evaluate,
        )

    return app
