"""The typed run settings every node of a federation agrees on, read once from TOML or ``--set``.

Top-level keys (``name``, ``description``, ``seed``, ``rounds``) plus one table per section, checked
generically by :mod:`stamen.task.settings_base` (unknown keys fail, values are type- and
range-checked, every error is a ``ValueError`` naming the key). Open-ended parameters are kept for
their registries to validate: ``[codec.<stage>]`` tables and any other key of ``[aggregation]``.
``--set`` overrides use dotted keys of the same tree (``clients.lr=0.1``, ``model.hidden=128,64``,
``codec.topk.ratio=0.01``, ``aggregation.f=2``).

:class:`Settings` is what a deployed server runs; the simulation's
:class:`~stamen.simulations.scenario.Scenario` adds the simulation-only ``[attack]`` section. The
same section classes travel to clients (:class:`~stamen.task.spec.TaskSpec` holds ``[lora]``,
:class:`~stamen.task.spec.TrainSpec` holds ``[sparse]``): one class per setting, end to end.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from stamen.task.settings_base import (
    Scalar,
    _build,
    _Config,
    _f,
    _to_plain,
)
from stamen.task.settings_hierarchy import HierarchyConfig

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
PRIVACY_MODES: tuple[str, ...] = ("off", "central", "local", "dp_sgd", "rqm")
CALIBRATIONS: tuple[str, ...] = ("target_epsilon", "fixed")
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")  # stamen.privacy.accounting
NOISE_SOURCES: tuple[str, ...] = ("secret", "seeded")  # privacy.noise (stamen.task.seeds.dp_seed)
PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards", "pool")
ADAPTERS: tuple[str, ...] = ("none", "lora", "fedsb")
# (input_dim, num_classes) of the built-in data sets; ``None`` = the sequence length (text)
DATASET_SHAPES: Mapping[str, tuple[int | None, int]] = {
    "digits": (64, 10),
    "mnist1d": (40, 10),
    "pydocs": (None, 10),
}
SCENARIO_PACKAGE = __name__.rpartition(".")[0] + ".scenarios"
TOKEN_MODELS = ("minilm", "minilm-tiny")  # take token ids (a text data set), not feature vectors


def _check_model_fits(model: str, dataset: str) -> None:
    """A text data set (token ids) needs a token model, a feature data set any other model."""
    text = DATASET_SHAPES[dataset][0] is None
    if text != (model in TOKEN_MODELS):
        wants = f"a text model ({', '.join(TOKEN_MODELS)})" if text else "a feature model (not minilm)"
        raise ValueError(f"model.name={model!r} does not fit data.dataset={dataset!r}: it needs {wants}")


def _check_run_name(name: str) -> None:
    """``name`` names the run's output directory (``runs/<name>``): one plain path component."""
    bad = name != name.strip() or name in (".", "..") or any(c in name for c in "/\\")
    if bad or not name.isprintable() or len(name) > 100:
        raise ValueError(f"name must be a plain directory name (no '/', '\\' or '..'), got {name!r}")


@dataclass(frozen=True)
class DataConfig(_Config):
    """``[data]``: which data set and how it is split across clients.

    ``alpha`` is the Dirichlet concentration (``partition = "dirichlet"``), ``shards_per_client``
    the shard count (``"shards"``), ``test_fraction`` the held-out share of ``digits``, and
    ``num_samples`` the number of samples ``mnist1d`` generates (train + test, its own 80/20 split).
    ``partition = "pool"`` lets every client draw ``samples_per_client`` samples (Dirichlet label
    skew with ``alpha``) from the shared training split, for more clients than samples
    (:mod:`stamen.simulations.pool`).
    """

    SECTION: ClassVar[str] = "data"
    dataset: str = _f("digits", choices=tuple(DATASET_SHAPES))
    partition: str = _f("iid", choices=PARTITION_SCHEMES)
    alpha: float = _f(0.5, gt=0.0)
    num_clients: int = _f(10, ge=1)
    shards_per_client: int = _f(2, ge=1)
    test_fraction: float = _f(0.2, gt=0.0, lt=1.0)
    num_samples: int = _f(5000, ge=10)
    seq_len: int = _f(32, ge=8, le=512)  # text data sets (pydocs): tokens per sample
    samples_per_client: int = _f(40, ge=1)  # partition = "pool" only


@dataclass(frozen=True)
class ClientsConfig(_Config):
    """``[clients]``: participation per round and local training (``lr`` is the local step size).

    ``sampling`` picks the cohort: ``"fixed"`` draws ``per_round`` clients without replacement,
    ``"poisson"`` includes each client with probability ``per_round / data.num_clients`` (the
    cohort size varies, may be 0), ``"auto"`` is Poisson for synchronous central DP (what its
    accountant assumes) and fixed otherwise (:mod:`stamen.server.sampling`).
    """

    SECTION: ClassVar[str] = "clients"
    per_round: int = _f(10, ge=1)
    sampling: str = _f("auto", choices=("auto", "fixed", "poisson"))
    local_epochs: int = _f(1, ge=1)
    batch_size: int = _f(32, ge=1)
    lr: float = _f(0.05, gt=0.0)
    lr_decay: float = _f(1.0, gt=0.0, le=1.0)  # round r trains with lr * lr_decay**(r-1) (FRL: 0.999)
    trainer: str = _f("full", nonempty=True)
    optimizer: str = _f("sgd", choices=OPTIMIZERS)
    momentum: float = _f(0.0, ge=0.0, lt=1.0)
    weight_decay: float = _f(0.0, ge=0.0)
    # "memory": the client trains from the weights in the message; "edge": the client's model lives
    # in an edge model store and the server sends signed deltas against the device's version
    runtime: str = _f("memory", choices=("memory", "edge"))
    # "cached": a client keeps the model it trained from and gets only the entries changed since;
    # "full": the whole model every round; "auto": cached for adapter / sparse runs (frozen base)
    downlink: str = _f("auto", choices=("auto", "full", "cached"))

    def _check(self) -> None:
        if self.downlink == "cached" and self.runtime == "edge":
            raise ValueError(
                "clients.downlink='cached' is for runtime 'memory' (edge devices get signed deltas)"
            )


@dataclass(frozen=True)
class ModelConfig(_Config):
    """``[model]``: architecture name and hidden layer widths (``()`` = no hidden layer)."""

    SECTION: ClassVar[str] = "model"
    name: str = _f("mlp", nonempty=True)
    hidden: tuple[int, ...] = _f((64,), ge=1)
    # 0 = the data set's own (see DATASET_SHAPES); set both for a deployment's own data
    input_dim: int = _f(0, ge=0)
    num_classes: int = _f(0, ge=0)


@dataclass(frozen=True)
class CodecConfig(_Config):
    """``[codec]``: update compression pipeline (encoded in order, decoded in reverse).

    ``params`` maps a stage to its ``[codec.<stage>]`` table (``{"topk": {"ratio": 0.01}}``); the
    codec registry validates it.
    """

    SECTION: ClassVar[str] = "codec"
    EXTRAS: ClassVar[str | None] = "params"
    pipeline: tuple[str, ...] = _f(("dense",), nonempty=True)
    downlink: str = _f("dense", nonempty=True)  # codec spec of server->device deltas (runtime = "edge")
    params: Mapping[str, Mapping[str, Scalar]] = _f(factory=dict)
    error_feedback: bool = False

    def _check(self) -> None:
        if any(not stage for stage in self.pipeline):
            raise ValueError(f"codec.pipeline has an empty stage name: {list(self.pipeline)}")


@dataclass(frozen=True)
class AggregationConfig(_Config):
    """``[aggregation]``: server rule, pre-aggregators, its parameters (every other key, checked by the
    aggregator registry), server learning rate, and what the server trusts of a reply: an absolute
    update-norm bound or an adaptive one (``norm_ratio`` x the round's median norm), and a cap on the
    example counts FedAvg weights by."""

    SECTION: ClassVar[str] = "aggregation"
    EXTRAS: ClassVar[str | None] = "params"
    rule: str = _f("fedavg", nonempty=True)
    pre: tuple[str, ...] = ()  # pre-aggregators applied in order before the rule, e.g. ("nnm",)
    params: Mapping[str, Scalar] = _f(factory=dict)
    server_lr: float = _f(1.0, gt=0.0)
    # the server rejects an update whose L2 norm exceeds max_update_norm (> 0), or, when it is 0,
    # norm_ratio times the round's median update norm (0 disables that adaptive bound too; off under
    # central DP, where a row's acceptance may depend only on its own update)
    max_update_norm: float = _f(0.0, ge=0.0)
    norm_ratio: float = _f(25.0, ge=0.0)
    # FedAvg trusts a reported example count only up to max_examples (0: 10 x the round's median;
    # simulations cap each client at its true partition size)
    max_examples: int = _f(0, ge=0)
    hierarchy: HierarchyConfig = field(default_factory=HierarchyConfig)  # two-level aggregation


@dataclass(frozen=True)
class PrivacyConfig(_Config):
    """``[privacy]``: differential privacy mode, how the noise is calibrated, and its parameters.

    ``calibration = "target_epsilon"`` finds the noise multiplier that spends ``target_epsilon`` at
    ``delta`` over the run; ``"fixed"`` uses ``noise_multiplier`` as given. ``clipping_norm`` is the
    L2 bound ``C`` on each update (central, local) or per-example gradient (dp_sgd).

    ``noise`` is where every DP random draw comes from (central noise and its Poisson cohorts, local
    DP noise, RQM's randomized rounding, DP-SGD's batches and noise): ``"secret"`` (default) seeds
    them from OS entropy, never from the run seed; ``"seeded"`` derives them from the run seed, which
    every client receives, so runs replay bit for bit but the guarantee does not hold against anyone
    who knows the seed (a research / reproducibility mode, said so in results.json).
    """

    SECTION: ClassVar[str] = "privacy"
    mode: str = _f("off", choices=PRIVACY_MODES)
    calibration: str = _f("target_epsilon", choices=CALIBRATIONS)
    target_epsilon: float = _f(8.0, gt=0.0)
    delta: float = _f(1e-5, gt=0.0, lt=1.0)
    noise_multiplier: float = _f(1.0, ge=0.0)
    clipping_norm: float = _f(1.0, gt=0.0)
    accountant: str = _f("rdp", choices=ACCOUNTANTS)
    noise: str = _f("secret", choices=NOISE_SOURCES)


@dataclass(frozen=True)
class LoRAConfig(_Config):
    """``[lora]``: adapters attached to the model (``adapter = "lora"`` or ``"fedsb"``; see
    :mod:`stamen.client.lora`), their rank, scale ``alpha``, dropout, target layers (name substrings),
    modules trained in full (the head), and Fed-SB's initialization (samples, step size)."""

    SECTION: ClassVar[str] = "lora"
    adapter: str = _f("none", choices=ADAPTERS)
    rank: int = _f(8, ge=1)
    alpha: float = _f(16.0, gt=0.0)
    dropout: float = _f(0.0, ge=0.0, lt=1.0)
    targets: tuple[str, ...] = ("query", "value")
    train_modules: tuple[str, ...] = ("classifier",)
    init_samples: int = _f(170, ge=1)
    init_lr: float = _f(5e-4, gt=0.0)

    def _check(self) -> None:
        if self.adapter != "none" and not self.targets:
            raise ValueError("lora.targets must name at least one nn.Linear layer suffix")

    @property
    def scale(self) -> float:
        """``α / r``, the factor of the adapter branch."""
        return self.alpha / self.rank


@dataclass(frozen=True)
class SparseConfig(_Config):
    """``[sparse]``: sparse fine-tuning (trainer ``sparse``): trainable density per layer, dense
    warm-up steps, prune/regrow period and fraction, layers skipped and layers trained densely."""

    SECTION: ClassVar[str] = "sparse"
    density: float = _f(0.005, gt=0.0, le=1.0)
    warmup: int = _f(4, ge=1)
    regrow_every: int = _f(10, ge=1)
    regrow_fraction: float = _f(0.2, ge=0.0, lt=1.0)
    skip: tuple[str, ...] = ("embeddings",)
    dense: tuple[str, ...] = ("classifier",)


@dataclass(frozen=True)
class EvalConfig(_Config):
    """``[eval]``: centralized evaluation every ``every`` rounds; share of clients in ``[0, 1]``
    asked for federated evaluation."""

    SECTION: ClassVar[str] = "eval"
    every: int = _f(1, ge=1)
    fraction_clients: float = _f(0.0, ge=0.0, le=1.0)


SERVER_MODES: tuple[str, ...] = ("sync", "fedasync", "fedbuff")
STALE_POLICIES: tuple[str, ...] = ("drop", "downweight", "convert")


@dataclass(frozen=True)
class ServerModeConfig(_Config):
    """``[server]``: synchronous rounds, or asynchronous federation (no round barrier).

    ``fedasync`` (Xie et al., arXiv 1903.03934) mixes every arrival into the model:
    ``w <- (1 - a_t) w + a_t w_client``, ``a_t = alpha * s(tau)``. ``fedbuff`` (Nguyen et al., AISTATS
    2022) buffers ``buffer_size`` updates, each scaled by ``s(tau)`` (FedBuff's default ``1/sqrt(1 +
    tau)``), and steps with the aggregation rule, ``aggregation.server_lr`` and ``server_momentum``.
    ``tau`` = current version - the version the update was computed against. ``staleness`` names the
    weight function (``constant``, ``polynomial``, ``hinge``, ``fedbuff``, ``exponential``); every
    other key of the section is one of its parameters (``server.a = 0.5``). ``compensation`` picks
    how a stale update is corrected before it is used (``direct``, ``weighted``, ``dcasgd`` with
    ``dc_lambda``, ``gi`` with ``gi_samples`` / ``gi_iterations`` / ``gi_lr``; see
    :mod:`stamen.server.staleness`).
    Past ``max_staleness`` (0: no limit) an update is dropped, down-weighted (an extra factor
    ``max_staleness / tau``), or converted (the compensation policy is applied, ``gi`` when
    ``compensation = "direct"``).
    ``concurrency`` clients train at once (0: ``clients.per_round``); an async run produces
    ``rounds`` model versions.
    """

    SECTION: ClassVar[str] = "server"
    EXTRAS: ClassVar[str | None] = "params"
    mode: str = _f("sync", choices=SERVER_MODES)
    concurrency: int = _f(0, ge=0)
    buffer_size: int = _f(10, ge=1)
    alpha: float = _f(0.6, gt=0.0, le=1.0)
    staleness: str = _f("fedbuff", nonempty=True)
    compensation: str = _f("direct", nonempty=True)
    dc_lambda: float = _f(4.0, ge=0.0)
    gi_samples: int = _f(64, ge=1)
    gi_iterations: int = _f(2000, ge=1)
    gi_lr: float = _f(0.1, gt=0.0)
    max_staleness: int = _f(0, ge=0)
    stale_policy: str = _f("drop", choices=STALE_POLICIES)
    server_momentum: float = _f(0.0, ge=0.0, lt=1.0)
    params: Mapping[str, Scalar] = _f(factory=dict)


@dataclass(frozen=True)
class Settings(_Config):
    """A whole run: top-level settings plus one config per section.

    ``seed`` (``0 <= seed < 2**32``) drives every random choice of the run.
    """

    name: str = _f("custom", nonempty=True)
    description: str = ""
    seed: int = _f(0, ge=0, lt=2**32)
    rounds: int = _f(10, ge=1)
    data: DataConfig = field(default_factory=DataConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    server: ServerModeConfig = field(default_factory=ServerModeConfig)

    def _check(self) -> None:
        needs = {"lora": "lora", "fedsb": "fedsb"}.get(self.clients.trainer)
        if needs is not None and self.lora.adapter != needs:
            raise ValueError(f"clients.trainer={self.clients.trainer!r} needs lora.adapter={needs!r}")
        if self.aggregation.rule.startswith("lora_") and self.lora.adapter != "lora":
            raise ValueError(f"aggregation.rule={self.aggregation.rule!r} needs lora.adapter='lora'")
        if self.clients.per_round > self.data.num_clients:
            raise ValueError(
                f"clients.per_round={self.clients.per_round} exceeds data.num_clients={self.data.num_clients}"
            )
        if (self.model.input_dim == 0) != (self.model.num_classes == 0):
            raise ValueError("model.input_dim and model.num_classes are set together (0 = the data set's)")
        if self.model.input_dim == 0:  # the built-in data set's inputs: tokens or features
            _check_model_fits(self.model.name, self.data.dataset)
        _check_run_name(self.name)

    def model_shape(self) -> tuple[int, int]:
        """``(input_dim, num_classes)``: ``[model]``'s if set, else the built-in data set's."""
        if self.model.input_dim:
            return self.model.input_dim, self.model.num_classes
        dim, classes = DATASET_SHAPES[self.data.dataset]
        return (self.data.seq_len if dim is None else dim), classes

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON/TOML-able tree (tuples as lists, open-ended params inlined)."""
        return typing.cast(dict[str, Any], _to_plain(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Any:
        """Build from a tree shaped like the TOML (the inverse of :meth:`to_dict`); strict."""
        return _build(cls, d, "")
