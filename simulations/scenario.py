"""Scenario: a simulation's settings, read once from TOML into frozen, self-validating dataclasses.

Top-level keys (``name``, ``description``, ``seed``, ``rounds``) plus one table per section.
Open-ended parameters are kept for their registries to validate: ``[codec.<stage>]`` tables and any
other key of ``[aggregation]`` or ``[attack]``. Everything else is checked here, generically
(dataclass field introspection; a new setting is one new field with its rules): unknown keys fail,
values are type-checked against the annotations and range-checked against the field rules, and
every error is a ``ValueError`` naming the key. ``--set`` overrides use dotted keys of the same
tree (``clients.lr=0.1``, ``model.hidden=128,64``, ``codec.topk.ratio=0.01``, ``aggregation.f=2``)
and are parsed by the annotated type (``true``/``false``, comma-separated tuples); open-ended
parameters as int, float, bool, else str.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (tomli ships with flwr)
    import tomli as tomllib

from stamen.simulations._config import (
    Scalar,
    _build,
    _Config,
    _copy_tree,
    _f,
    _leaf_type,
    _parse_text,
    _to_plain,
)
from stamen.simulations.data import DATASETS
from stamen.simulations.partition import SCHEMES

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
PRIVACY_MODES: tuple[str, ...] = ("off", "central", "local", "dp_sgd", "rqm")
CALIBRATIONS: tuple[str, ...] = ("target_epsilon", "fixed")
_SCENARIO_PACKAGE = __name__.rpartition(".")[0] + ".scenarios"


@dataclass(frozen=True)
class DataConfig(_Config):
    """``[data]``: which data set and how it is split across clients.

    ``alpha`` is the Dirichlet concentration (``partition = "dirichlet"``), ``shards_per_client``
    the shard count (``"shards"``), ``test_fraction`` the held-out share of ``digits``, and
    ``num_samples`` the number of samples ``mnist1d`` generates (train + test, its own 80/20 split).
    """

    SECTION: ClassVar[str] = "data"
    dataset: str = _f("digits", choices=DATASETS)
    partition: str = _f("iid", choices=SCHEMES)
    alpha: float = _f(0.5, gt=0.0)
    num_clients: int = _f(10, ge=1)
    shards_per_client: int = _f(2, ge=1)
    test_fraction: float = _f(0.2, gt=0.0, lt=1.0)
    num_samples: int = _f(5000, ge=10)
    seq_len: int = _f(32, ge=8, le=512)  # text data sets (pydocs): tokens per sample


@dataclass(frozen=True)
class ClientsConfig(_Config):
    """``[clients]``: participation per round and local training (``lr`` is the local step size)."""

    SECTION: ClassVar[str] = "clients"
    per_round: int = _f(10, ge=1)
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


@dataclass(frozen=True)
class ModelConfig(_Config):
    """``[model]``: architecture name and hidden layer widths (``()`` = no hidden layer)."""

    SECTION: ClassVar[str] = "model"
    name: str = _f("mlp", nonempty=True)
    hidden: tuple[int, ...] = _f((64,), ge=1)


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
    """``[aggregation]``: server rule, its parameters (every other key, checked by the aggregator
    registry), server learning rate and update-norm bound (``0.0`` = no bound)."""

    SECTION: ClassVar[str] = "aggregation"
    EXTRAS: ClassVar[str | None] = "params"
    rule: str = _f("fedavg", nonempty=True)
    pre: tuple[str, ...] = ()  # pre-aggregators applied in order before the rule, e.g. ("nnm",)
    params: Mapping[str, Scalar] = _f(factory=dict)
    server_lr: float = _f(1.0, gt=0.0)
    max_update_norm: float = _f(0.0, ge=0.0)


@dataclass(frozen=True)
class AttackConfig(_Config):
    """``[attack]``: the attack actually run, the share of attacking clients in ``[0, 1)``, and its
    parameters (every other key, checked by the attack registry). ``malicious_minority`` redraws a
    round's cohort until fewer than half of it are attackers (FRL's official sampler)."""

    SECTION: ClassVar[str] = "attack"
    EXTRAS: ClassVar[str | None] = "params"
    kind: str = _f("none", nonempty=True)
    fraction: float = _f(0.0, ge=0.0, lt=1.0)
    malicious_minority: bool = True
    params: Mapping[str, Scalar] = _f(factory=dict)

    def _check(self) -> None:
        if self.kind == "none" and self.fraction > 0:
            raise ValueError(f"attack.fraction={self.fraction} needs attack.kind other than 'none'")


@dataclass(frozen=True)
class PrivacyConfig(_Config):
    """``[privacy]``: differential privacy mode, how the noise is calibrated, and its parameters.

    ``calibration = "target_epsilon"`` finds the noise multiplier that spends ``target_epsilon`` at
    ``delta`` over the run; ``"fixed"`` uses ``noise_multiplier`` as given. ``clipping_norm`` is the
    L2 bound ``C`` on each update (central, local) or per-example gradient (dp_sgd).
    """

    SECTION: ClassVar[str] = "privacy"
    mode: str = _f("off", choices=PRIVACY_MODES)
    calibration: str = _f("target_epsilon", choices=CALIBRATIONS)
    target_epsilon: float = _f(8.0, gt=0.0)
    delta: float = _f(1e-5, gt=0.0, lt=1.0)
    noise_multiplier: float = _f(1.0, ge=0.0)
    clipping_norm: float = _f(1.0, gt=0.0)


@dataclass(frozen=True)
class LoRAConfig(_Config):
    """``[lora]``: adapters attached to the model (``adapter = "lora"`` or ``"fedsb"``; see
    :mod:`stamen.client.lora`), their rank, scale ``alpha``, dropout, target layers (name substrings),
    modules trained in full (the head), and Fed-SB's initialization (samples, step size)."""

    SECTION: ClassVar[str] = "lora"
    adapter: str = _f("none", choices=("none", "lora", "fedsb"))
    rank: int = _f(8, ge=1)
    alpha: float = _f(16.0, gt=0.0)
    dropout: float = _f(0.0, ge=0.0, lt=1.0)
    targets: tuple[str, ...] = ("query", "value")
    train_modules: tuple[str, ...] = ("classifier",)
    init_samples: int = _f(170, ge=1)
    init_lr: float = _f(5e-4, gt=0.0)


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


@dataclass(frozen=True)
class Scenario(_Config):
    """A whole simulation: top-level settings plus one config per section.

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
    attack: AttackConfig = field(default_factory=AttackConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)

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

    def to_dict(self) -> dict[str, Any]:
        """The scenario as a JSON/TOML-able tree (tuples as lists, open-ended params inlined)."""
        return typing.cast(dict[str, Any], _to_plain(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scenario:
        """Build from a tree shaped like the TOML (the inverse of :meth:`to_dict`); strict."""
        return typing.cast(Scenario, _build(cls, d, ""))


def apply_overrides(base: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of the scenario tree ``base`` with ``key=value`` overrides applied.

    Parameters
    ----------
    base : Mapping
        A scenario tree (as read from TOML or given by :meth:`Scenario.to_dict`); not modified.
    overrides : Sequence of str
        Items like ``"clients.lr=0.1"``, ``"codec.pipeline=topk,int8"``, ``"rounds=5"``.

    Raises
    ------
    ValueError
        For a malformed item, an unknown key, or a value that does not parse as the key's type.
    """
    out: dict[str, Any] = _copy_tree(base)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like section.key=value")
        path = key.split(".")
        value = _parse_text(text.strip(), _leaf_type(Scenario, path), key)
        node = out
        for depth, seg in enumerate(path[:-1]):
            child = node.setdefault(seg, {})
            if not isinstance(child, dict):
                raise ValueError(f"'{'.'.join(path[: depth + 1])}' is not a table in the scenario")
            node = child
        node[path[-1]] = value
    return out


def load_scenario(name_or_path: str, overrides: Sequence[str] = ()) -> Scenario:
    """Load a built-in scenario by name (``"demo"``) or a ``.toml`` file, then apply overrides.

    A file without a ``name`` key is named after its stem.

    Raises
    ------
    ValueError
        For an unknown built-in name, a missing or malformed file, or an invalid setting.
    """
    text, stem, origin = _read_source(name_or_path)
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{origin}: invalid TOML: {exc}") from exc
    tree.setdefault("name", stem)
    try:
        return Scenario.from_dict(apply_overrides(tree, overrides))
    except ValueError as exc:
        raise ValueError(f"scenario {origin}: {exc}") from exc


def builtin_scenarios() -> list[tuple[str, str]]:
    """``(name, first line of description)`` of every built-in scenario, sorted by name."""
    out = []
    for res in resources.files(_SCENARIO_PACKAGE).iterdir():
        if res.name.endswith(".toml"):
            tree = tomllib.loads(res.read_text(encoding="utf-8"))
            lines = str(tree.get("description", "")).strip().splitlines()
            out.append((res.name.removesuffix(".toml"), lines[0] if lines else ""))
    return sorted(out)


def _read_source(name_or_path: str) -> tuple[str, str, str]:
    """(TOML text, default name, description of the origin for messages)."""
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or "/" in name_or_path or path.is_file():
        if not path.is_file():
            raise ValueError(f"scenario file {name_or_path!r} not found")
        return path.read_text(encoding="utf-8"), path.stem, str(path)
    res = resources.files(_SCENARIO_PACKAGE) / f"{name_or_path}.toml"
    if not res.is_file():
        names = ", ".join(n for n, _ in builtin_scenarios())
        raise ValueError(f"unknown scenario {name_or_path!r}; built-in: {names} (or a .toml path)")
    return res.read_text(encoding="utf-8"), name_or_path, f"'{name_or_path}'"
