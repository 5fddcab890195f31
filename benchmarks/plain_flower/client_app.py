"""The plain ClientApp: load the global model, train on this node's partition, send it back."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from plain_flower.task import load_partition, make_model, train

app = ClientApp()


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    """FedAvg's client step (McMahan et al., 2017, Algorithm 1, ClientUpdate)."""
    config = msg.content["config"]
    model = make_model(int(config["hidden"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = load_partition(
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
        float(config["alpha"]),
        int(config["seed"]),
    )
    loss = train(model, data, int(config["local-epochs"]), int(config["batch-size"]), float(config["lr"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(data)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)
