"""What the server sends every client each round: the model to build and how to train it.

Both are frozen, self-validating sections of the one typed config tree
(:mod:`stamen.task.settings_base`): built from the run :class:`~stamen.task.settings.Settings` by the
server, flattened into the round's ``ConfigRecord`` under the wire keys ``task.*`` and ``train.*``
(:func:`~stamen.task.settings_base.to_flat`), and rebuilt strictly by the client
(:func:`~stamen.task.settings_base.from_flat`; unknown keys fail). They carry no data-set partition,
no attack, no path and no key: a client's data comes from its own data source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from stamen.protocols import keys
from stamen.task.settings import (
    ACCOUNTANTS,
    NOISE_SOURCES,
    OPTIMIZERS,
    LoRAConfig,
    Settings,
    SparseConfig,
)
from stamen.task.settings_base import _Config, _f, from_flat, to_flat

S = TypeVar("S", bound="WireSpec")


class WireSpec(_Config):
    """A spec that travels flat in the round's ``ConfigRecord`` under its ``SECTION`` prefix."""

    def to_config(self) -> dict[str, Any]:
        """Flat ``<section>.*`` entries (``"train.sparse.density"``) for the round's ConfigRecord."""
        return to_flat(self, self.SECTION)

    @classmethod
    def from_config(cls: type[S], record: Any) -> S:
        """Inverse of :meth:`to_config` (``ValueError`` naming a missing, unknown or bad key)."""
        spec: S = from_flat(cls, record, cls.SECTION)
        return spec


@dataclass(frozen=True)
class TaskSpec(WireSpec):
    """The model every client builds: architecture, its shape, init seed and adapters."""

    SECTION: ClassVar[str] = "task"
    model: str = _f("mlp", nonempty=True)
    input_dim: int = _f(64, ge=1)
    num_classes: int = _f(10, ge=1)
    hidden: tuple[int, ...] = _f((64,), ge=1)
    seed: int = _f(0, ge=0, lt=2**32)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    @classmethod
    def from_settings(cls, s: Settings) -> TaskSpec:
        """The task of run ``s`` (shape from ``[model]`` or the built-in data set's)."""
        dim, classes = s.model_shape()
        return cls(s.model.name, dim, classes, s.model.hidden, s.seed, s.lora)

    @property
    def model_id(self) -> str:
        """The model id server and devices agree on (recorded in signed deltas): name + seed."""
        return f"{self.model}-{self.seed}"


@dataclass(frozen=True)
class TrainSpec(WireSpec):
    """Local training of one round: trainer, hyper-parameters, sparse knobs, client-side DP."""

    SECTION: ClassVar[str] = "train"
    trainer: str = _f("full", nonempty=True)
    epochs: int = _f(1, ge=1)
    batch_size: int = _f(32, ge=1)
    lr: float = _f(0.05, gt=0.0)
    optimizer: str = _f("sgd", choices=OPTIMIZERS)
    momentum: float = _f(0.0, ge=0.0, lt=1.0)
    weight_decay: float = _f(0.0, ge=0.0)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    # differential privacy on the client (privacy.mode = "local" or "dp_sgd")
    local_dp: bool = False
    client_dp: bool = False  # a client-side DP mode (local, dp_sgd, rqm): see ``private_reply``
    dp_noise_multiplier: float = _f(1.0, ge=0.0)
    dp_clip: float = _f(1.0, gt=0.0)
    dp_delta: float = _f(1e-5, gt=0.0, lt=1.0)
    dp_accountant: str = _f("rdp", choices=ACCOUNTANTS)
    # where the client's DP draws come from (privacy.noise; stamen.task.seeds.dp_seed), and whether
    # the codec's randomness is a DP mechanism (privacy.mode = "rqm")
    dp_noise: str = _f("secret", choices=NOISE_SOURCES)
    dp_codec: bool = False

    @classmethod
    def from_settings(cls, s: Settings) -> TrainSpec:
        """Local-training settings of run ``s`` (client DP is filled in by the server config)."""
        c = s.clients
        return cls(
            c.trainer,
            c.local_epochs,
            c.batch_size,
            c.lr,
            c.optimizer,
            c.momentum,
            c.weight_decay,
            s.sparse,
            dp_noise=s.privacy.noise,
        )

    @property
    def private_reply(self) -> bool:
        """Whether the client runs a client-side DP mechanism (``privacy.mode`` ``local``, ``dp_sgd``
        or ``rqm``; or the ``dp_sgd`` trainer, or local DP, whoever asked for them). Its reply then
        carries the privatized update and nothing else computed from its data: a constant
        ``num-examples`` of 1 (the server weights such updates uniformly), the accountant's ε and round
        count (functions of the configuration and of the rounds the client took part in), and the
        bytes sent. Client and server read this same rule from the round's instructions."""
        return self.client_dp or self.local_dp or self.trainer == "dp_sgd"


@dataclass(frozen=True)
class RoundInstructions:
    """Everything a client needs for one round, identical for every client of the round.

    ``version`` is the model version the client trains from (the round in synchronous mode); the
    client names it in its envelope, and the server refuses an update naming another one.
    """

    round: int
    version: int
    seed: int
    codec: str
    error_feedback: bool
    task: TaskSpec
    train: TrainSpec

    def to_config(self) -> dict[str, Any]:
        """The round's ``ConfigRecord`` content (wire keys from :mod:`stamen.protocols.keys`)."""
        return {
            keys.SERVER_ROUND: self.round,
            keys.MODEL_VERSION: self.version,
            keys.SEED: self.seed,
            keys.CODEC_SPEC: self.codec,
            keys.ERROR_FEEDBACK: self.error_feedback,
            **self.task.to_config(),
            **self.train.to_config(),
        }

    @classmethod
    def from_config(cls, record: Any) -> RoundInstructions:
        """Inverse of :meth:`to_config`; ``ValueError`` names a missing or mistyped key."""
        return cls(
            round=_typed(record, keys.SERVER_ROUND, int),
            version=_typed(record, keys.MODEL_VERSION, int),
            seed=_typed(record, keys.SEED, int),
            codec=_typed(record, keys.CODEC_SPEC, str),
            error_feedback=_typed(record, keys.ERROR_FEEDBACK, bool),
            task=TaskSpec.from_config(record),
            train=TrainSpec.from_config(record),
        )


def _typed(record: Any, key: str, kind: type) -> Any:
    if key not in record:
        raise ValueError(f"round config has no {key!r}")
    value = record[key]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ValueError(f"round config {key!r}: expected {kind.__name__}, got {value!r}")
    return value
