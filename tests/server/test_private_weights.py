"""Under client-side DP the server weights every privatized update the same.

A client's example count is private data (under DP-SGD's add/remove-one-example adjacency it alone
tells neighbouring data sets apart), so a private client reports a constant and the server ignores
whatever ``num-examples`` a reply of such a round carries: FedAvg becomes the plain mean. Before,
the server weighted by the reported count (and refused a reply without one).
"""

from __future__ import annotations

import numpy as np
import pytest

from stamen.protocols import CodecSpec, encode_update, keys, model_hash
from stamen.server.aggregators import create
from stamen.server.driver.collect import CollectPolicy, UpdateCollector
from stamen.server.driver.driver import AggregateMode
from stamen.server.driver.types import Reply, TrainTask
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

BASE = {"w": np.zeros(4, np.float32)}
HASH = model_hash(BASE)
PRIVATE: dict[str, dict[str, object]] = {  # TrainSpec fields as each mode's server sets them
    "rqm": {"client_dp": True},
    "local": {"local_dp": True, "client_dp": True},
    "dp_sgd": {"trainer": "dp_sgd", "client_dp": True},
}


def _reply(client: str, v: float, metrics: dict[str, object]) -> Reply:
    data = encode_update(
        {"w": np.full(4, v, np.float32)},
        CodecSpec.from_pipeline(["dense"]),
        base_hash=HASH,
        version=1,
        sender=client,
        rng=np.random.default_rng(0),
    )
    return Reply(client, envelope=data, metrics=metrics, nbytes=len(data))


@pytest.mark.parametrize("mode", sorted(PRIVATE))
def test_client_dp_updates_are_averaged_uniformly(mode: str) -> None:
    instr = RoundInstructions(1, 1, 0, "dense", False, TaskSpec(), TrainSpec(**PRIVATE[mode]))  # type: ignore[arg-type]
    clients = ["a", "b", "c"]
    c = UpdateCollector(BASE, [TrainTask(x, instr, BASE, None, HASH) for x in clients], CollectPolicy())
    assert c.add(_reply("a", 1.0, {keys.NUM_EXAMPLES: 1}))
    assert c.add(_reply("b", 2.0, {keys.NUM_EXAMPLES: 1000}))  # ignored: a count is private data
    assert c.add(_reply("c", 6.0, {}))  # none reported: nothing is needed
    done = c.finish()
    np.testing.assert_array_equal(done.weights, [1.0, 1.0, 1.0])
    new = AggregateMode(create("fedavg"), 1.0).close(1, done)
    assert new is not None
    np.testing.assert_allclose(new["w"], np.full(4, 3.0))  # (1 + 2 + 6) / 3


def test_fedavg_weight_is_the_reported_count_without_client_dp() -> None:
    from stamen.server.driver.reply import fedavg_weight

    assert fedavg_weight({keys.NUM_EXAMPLES: 37}, private=False) == 37.0
    assert fedavg_weight({keys.NUM_EXAMPLES: 37}, private=True) == 1.0
    assert not TrainSpec().private_reply and TrainSpec(trainer="dp_sgd").private_reply
