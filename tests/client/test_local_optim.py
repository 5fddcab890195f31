"""The local trainers' SGD and Adam compute what ``torch.optim`` does, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from stamen.client.trainers.optim import LocalAdam, LocalSGD, local_optimizer
from stamen.task.spec import TrainSpec

SPECS = [
    TrainSpec(lr=0.1),
    TrainSpec(lr=0.05, momentum=0.9, weight_decay=1e-3),
    TrainSpec(lr=0.01, optimizer="adam"),
    TrainSpec(lr=0.01, optimizer="adam", weight_decay=1e-2),
]


def _torch_optimizer(params: list[nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def _train(make, spec: TrainSpec, steps: int = 12) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """A small MLP trained ``steps`` steps; on odd steps the first layer's bias gets no gradient
    (it is detached), which both optimizers must skip without counting a step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(steps, 5, 6), torch.randint(0, 3, (steps, 5))
    opt = make(list(model.parameters()), spec)
    first = model[0]
    for t in range(steps):
        opt.zero_grad(set_to_none=True)
        bias = first.bias if t % 2 == 0 else first.bias.detach()
        hidden = nn.functional.linear(x[t], first.weight, bias).relu()
        nn.functional.cross_entropy(model[2](hidden), y[t]).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("spec", SPECS, ids=["sgd", "sgd-momentum-wd", "adam", "adam-wd"])
def test_local_optimizer_steps_as_torch_optim(spec: TrainSpec) -> None:
    ours, theirs = _train(local_optimizer, spec), _train(_torch_optimizer, spec)
    start = _train(local_optimizer, spec, steps=0)
    for a, b, s in zip(ours, theirs, start, strict=True):
        assert not torch.equal(b, s)  # every parameter moved
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_local_optimizer_picks_by_name() -> None:
    p = [nn.Parameter(torch.zeros(2))]
    assert isinstance(local_optimizer(p, TrainSpec(optimizer="adam")), LocalAdam)
    assert isinstance(local_optimizer(p, TrainSpec()), LocalSGD)


def test_local_training_does_not_import_torch_dynamo() -> None:
    """The full, LoRA and sparse trainers never load torch's compiler stack (~1 s a process)."""
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from torch import nn
        from stamen.client.trainers.full import run_epochs
        from stamen.task.data import TaskData
        from stamen.task.spec import TrainSpec

        rng = np.random.default_rng(0)
        data = TaskData(rng.normal(size=(20, 4)).astype(np.float32), rng.integers(0, 2, 20), 2, 4)
        for opt in ("sgd", "adam"):
            run_epochs(nn.Linear(4, 2), data, TrainSpec(optimizer=opt, batch_size=8), seed=0)
        print("torch._dynamo" in sys.modules)
        """
    )
    run = [sys.executable, "-c", code]
    out = subprocess.run(run, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
