"""Under client-side DP a train reply carries the privatized update and nothing else from the data.

Before, a local-DP reply carried the update's norm *before clipping* (``update-norm``), and every
client-side mode (local, DP-SGD, RQM) sent ``train-loss`` and the true ``num-examples``; DP-SGD also
sent ``dp-steps`` (which reveals the data size). None of that is privatized or accounted. These tests
run one client round of each mode, built from the run settings as a server builds it, through both
the in-process path (:func:`stamen.client.node.client_round`) and the deployable ClientApp, and pin
the exact set of reported metrics; a non-private reply keeps every metric it always had.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from stamen.client.app import make_client_app
from stamen.client.node import Node, Received, client_round
from stamen.client.state import ClientState
from stamen.protocols import keys
from stamen.server.config import ServerConfig
from stamen.task.data import ArraySource, TaskData
from stamen.task.models import model_structure
from stamen.task.settings_load import load_settings
from stamen.task.spec import RoundInstructions
from stamen.task.weights import get_weights

MODES = {
    "local": ["privacy.mode=local"],
    "dp_sgd": ["privacy.mode=dp_sgd", "privacy.calibration=fixed"],
    "rqm": ["privacy.mode=rqm", "codec.pipeline=rqm"],
}
# what a private reply may carry: a constant, the accountant's outputs, the bytes sent
ALLOWED = {"local": {"epsilon", "dp-rounds"}, "dp_sgd": {"epsilon"}, "rqm": set[str]()}
N = 37  # the client's (private) number of examples


def _instructions(overrides: list[str]) -> RoundInstructions:
    cfg = ServerConfig.from_settings(load_settings("smoke", ["rounds=1", *overrides]))
    return cfg.instructions(1, 1)


def _node(instr: RoundInstructions) -> Node:
    gen = np.random.default_rng(0)
    task = instr.task
    x = gen.standard_normal((N, task.input_dim)).astype(np.float32)
    y = gen.integers(0, task.num_classes, N).astype(np.int64)
    return Node(ArraySource(TaskData(x, y, task.input_dim, task.num_classes)), "client-0", 0)


def _in_process(instr: RoundInstructions) -> dict[str, Any]:
    weights = get_weights(model_structure(instr.task))
    model = model_structure(instr.task)
    _, metrics = client_round(_node(instr), Received(instr, weights), model, ClientState())
    return dict(metrics)


def _arrays(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, np.float32)) for k, v in weights.items()})


def _flower(instr: RoundInstructions, monkeypatch: pytest.MonkeyPatch, kind: str = "train") -> Message:
    from flwr.supercore.task_identity import TaskIdentity  # a ServerApp process would set these

    for attr in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)
    node = _node(instr)
    app = make_client_app(lambda ctx: node)
    weights = get_weights(model_structure(instr.task))
    content = RecordDict({keys.CONFIG: ConfigRecord(instr.to_config()), keys.ARRAYS: _arrays(weights)})
    msg = Message(content, dst_node_id=1, message_type=kind)
    ctx = Context(run_id=0, node_id=1, node_config={}, state=RecordDict(), run_config={})
    return app(msg, ctx)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_private_reply_carries_no_data_dependent_metric(mode: str) -> None:
    metrics = _in_process(_instructions(MODES[mode]))
    assert set(metrics) == {"num-examples", "bytes-up", *ALLOWED[mode]}
    assert metrics["num-examples"] == 1  # a constant, not the client's N = 37


@pytest.mark.parametrize("mode", sorted(MODES))
def test_private_reply_of_the_client_app_is_the_same(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    out = _flower(_instructions(MODES[mode]), monkeypatch)
    assert not out.has_error(), out.error
    metrics = dict(out.content.metric_records[keys.METRICS])
    assert set(metrics) == {"num-examples", "bytes-up", *ALLOWED[mode]}
    assert metrics["num-examples"] == 1
    assert isinstance(out.content.array_records.get(keys.UPDATE), ArrayRecord)


def test_private_client_refuses_federated_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """An evaluate reply would be a loss and an accuracy measured on the private data, unnoised."""
    with pytest.raises(ValueError, match="client-side DP"):  # Flower sends the server an error reply
        _flower(_instructions(MODES["local"]), monkeypatch, kind="evaluate")


def test_non_private_reply_keeps_every_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression guard (holds before and after the fix): nothing changes without client DP."""
    instr = _instructions([])
    assert not instr.train.private_reply
    metrics = _in_process(instr)
    assert list(metrics) == ["num-examples", "train-loss", "bytes-up"]
    assert metrics["num-examples"] == N and np.isfinite(metrics["train-loss"])
    flower = dict(_flower(instr, monkeypatch).content.metric_records[keys.METRICS])
    assert flower["num-examples"] == N and flower["train-loss"] == pytest.approx(metrics["train-loss"])
    assert flower["bytes-up"] == metrics["bytes-up"]


def test_every_client_side_mode_sets_the_typed_rule() -> None:
    for overrides in MODES.values():
        assert _instructions(overrides).train.private_reply
    assert not _instructions(["privacy.mode=central", "aggregation.rule=mean"]).train.private_reply
