"""Server side of RQM (``privacy.mode = "rqm"``): calibrate Δ before round 1, account every round.

RQM is a client mechanism (the ``rqm`` codec stage randomizes each coordinate); the server accounts it
exactly (:mod:`stamen.privacy.rqm_rdp`), composed over the model's coordinates and the messages each
client released (no amplification by client sampling: the server sees every client's message). Δ is
calibrated for ``rounds`` messages per client; a synchronous round asks a client at most once (a round
run again after a crash skips a client at that count), and the asynchronous driver dispatches no
client more often than that (``max_trips``). What is
charged bounds what was released: every task sent counts as one message, read or not, and every
further reply carrying an update counts on top (``RoundStats.seen``, ``AsyncDriver._settle``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stamen.privacy.rqm_rdp import RqmAccountant, RqmParams, calibrate_delta
from stamen.protocols import CodecSpec
from stamen.task.models import model_structure
from stamen.task.settings import Settings
from stamen.task.spec import TaskSpec


def model_dims(task: TaskSpec) -> int:
    """Number of model coordinates (every tensor of the ``state_dict``)."""
    return sum(int(t.numel()) for t in model_structure(task).state_dict().values())


def rqm_codec_params(s: Settings, task: TaskSpec) -> Any:
    """The codec params; with ``privacy.mode = "rqm"`` and a target ε, RQM's extension Δ is
    calibrated so that a client taking part in every round stays within the target."""
    p = s.privacy
    if p.mode != "rqm" or p.calibration != "target_epsilon":
        return s.codec.params
    stage = dict(CodecSpec.from_pipeline(["rqm"], s.codec.params).stages[0].params)
    rqm = RqmParams.from_stage(stage)
    delta = calibrate_delta(
        p.target_epsilon,
        c=rqm.c,
        m=rqm.m,
        q=rqm.q,
        coordinates=model_dims(task),
        rounds=s.rounds,
        target_delta=p.delta,
    )
    params = {k: dict(v) for k, v in s.codec.params.items()}
    params.setdefault("rqm", {})["delta"] = delta
    return params


class RqmRoundAccountant:
    """``senders of a round -> worst client's cumulative ε`` (at ``target_delta``); its
    ``participations`` (messages per client) are the whole of its state (checkpointed)."""

    def __init__(self, accountant: RqmAccountant, target_delta: float) -> None:
        self.accountant, self.target_delta = accountant, target_delta

    def __call__(self, senders: Sequence[str]) -> float:
        """Charge one message per entry of ``senders`` (duplicates count); the worst client's ε after."""
        self.accountant.step(list(senders))
        return float(self.accountant.epsilon(self.target_delta))

    @property
    def participations(self) -> dict[str, int]:
        """Messages each client has released."""
        return {str(k): int(v) for k, v in self.accountant.participations.items()}

    def set_participations(self, counts: Mapping[str, int]) -> None:
        """Replace the participation counts (a resumed run)."""
        self.accountant.participations.clear()
        self.accountant.participations.update({str(k): int(v) for k, v in counts.items()})


def rqm_accountant(codec: CodecSpec, task: TaskSpec, target_delta: float) -> RqmRoundAccountant:
    """``senders of a round -> worst client's cumulative ε`` (at ``target_delta``)."""
    accountant = RqmAccountant(RqmParams.from_stage(dict(codec.stages[0].params)), model_dims(task))
    return RqmRoundAccountant(accountant, target_delta)
