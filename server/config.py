"""Server configuration, read once at the app boundary into a frozen dataclass.

Sources, in order: the scenario (built-in name or TOML path), then ``section.key`` overrides. Under
``flwr run`` they come from ``[tool.flwr.app.config]`` / ``-c``: the key ``scenario`` names the
scenario, ``overrides`` is a whitespace-separated list of ``section.key=value`` entries (Flower only
accepts ``-c`` keys that pyproject declares, so one string key carries them all), and any other
declared key containing a dot is an override too. Under ``run_simulation`` the run config is empty and
the ``smoke`` defaults apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from stamen.client.task import TaskSpec, TrainSpec
from stamen.protocols import CodecSpec

# run_config keys that are not scenario overrides
APP_KEYS = ("scenario", "overrides", "out-dir", "timeout-s")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs for a run; built by :meth:`from_scenario`."""

    scenario: Mapping[str, Any]  # the full scenario as a JSON-able dict (written to results.json)
    name: str
    seed: int
    rounds: int
    per_round: int
    num_clients: int
    task: TaskSpec
    train: TrainSpec
    codec: CodecSpec
    rule: str
    rule_params: Mapping[str, Any]
    pre: tuple[str, ...]
    server_lr: float
    max_update_norm: float
    eval_every: int
    eval_fraction: float
    attack_kind: str = "none"
    attack_params: Mapping[str, Any] = field(default_factory=dict)
    malicious: tuple[int, ...] = ()  # partition ids that attack (simulation only)
    malicious_minority: bool = True  # redraw cohorts until the malicious are < half (FRL's sampler)
    error_feedback: bool = False
    lr_decay: float = 1.0  # round r trains with train.lr * lr_decay**(r - 1)
    runtime: str = "memory"  # or "edge": devices hold the model in an edge store (signed delta downlink)
    downlink: str = "dense"
    privacy: Mapping[str, Any] = field(default_factory=lambda: {"mode": "off"})  # the [privacy] section
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not 1 <= self.per_round <= self.num_clients:
            raise ValueError(f"per_round must be in [1, {self.num_clients}], got {self.per_round}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout-s must be > 0, got {self.timeout_s}")
        from stamen.server.sampling import minority_feasible

        if self.malicious_minority and not minority_feasible(
            self.num_clients, self.per_round, len(self.malicious)
        ):
            raise ValueError(
                f"attack.malicious_minority: no cohort of {self.per_round} clients has fewer "
                f"than half of the {len(self.malicious)} attackers; lower attack.fraction, "
                "or set attack.malicious_minority=false"
            )

    @classmethod
    def from_scenario(cls, scenario: Any, timeout_s: float = 600.0) -> ServerConfig:
        """Derive the server config from a :class:`stamen.simulations.scenario.Scenario`."""
        s = scenario
        _refuse_unimplemented(s)
        malicious, data_attack = _adversary(s)
        task = _task_spec(s, malicious, data_attack)
        train = _client_privacy(s, task, _train_spec(s))
        codec = CodecSpec.from_pipeline(s.codec.pipeline, _rqm_params(s, task))
        cfg = cls(
            scenario=s.to_dict(),
            name=s.name,
            seed=s.seed,
            rounds=s.rounds,
            per_round=s.clients.per_round,
            num_clients=s.data.num_clients,
            task=task,
            train=train,
            codec=codec,
            rule=s.aggregation.rule,
            rule_params=dict(s.aggregation.params),
            pre=tuple(s.aggregation.pre),
            attack_kind=s.attack.kind,
            attack_params=dict(s.attack.params),
            malicious=malicious,
            malicious_minority=s.attack.malicious_minority,
            error_feedback=s.codec.error_feedback,
            privacy=s.to_dict()["privacy"],
            runtime=s.clients.runtime,
            lr_decay=s.clients.lr_decay,
            downlink=CodecSpec.parse(s.codec.downlink).to_string(),
            server_lr=s.aggregation.server_lr,
            max_update_norm=s.aggregation.max_update_norm,
            eval_every=s.eval.every,
            eval_fraction=s.eval.fraction_clients,
            timeout_s=timeout_s,
        )
        if s.privacy.mode == "central":  # refuse a rule without declared sensitivity before round 1
            _check_central_sensitivity(cfg, s.privacy.clipping_norm)
        return cfg

    def cohort(self, server_round: int) -> list[int]:
        """The partition ids sampled for ``server_round`` (same on both engines)."""
        from stamen.server.sampling import sample_clients

        bad = self.malicious if self.malicious_minority else ()
        return sample_clients(self.seed, server_round, self.num_clients, self.per_round, bad)

    def train_for_round(self, server_round: int) -> TrainSpec:
        """The training spec of ``server_round`` (learning-rate decay applied)."""
        if self.lr_decay == 1.0:
            return self.train
        return replace(self.train, lr=self.train.lr * self.lr_decay ** (server_round - 1))

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ServerConfig:
        """Read Flower's ``context.run_config`` (may be empty: then the ``smoke`` defaults apply)."""
        from stamen.simulations.scenario import load_scenario

        name = str(run_config.get("scenario", "smoke"))
        overrides = str(run_config.get("overrides", "")).replace(";", " ").split()
        overrides += [f"{k}={_as_override(v)}" for k, v in run_config.items() if k not in APP_KEYS]
        scenario = load_scenario(name, overrides)
        return cls.from_scenario(scenario, timeout_s=float(run_config.get("timeout-s", 600.0)))


def _task_spec(s: Any, malicious: tuple[int, ...], data_attack: bool) -> TaskSpec:
    """What every client needs to rebuild the task: data, partition, model, adapters, data attack."""
    task = TaskSpec(
        dataset=s.data.dataset,
        num_samples=s.data.num_samples,
        test_fraction=s.data.test_fraction,
        partition=s.data.partition,
        alpha=s.data.alpha,
        shards_per_client=s.data.shards_per_client,
        num_clients=s.data.num_clients,
        seed=s.seed,
        model=s.model.name,
        hidden=tuple(s.model.hidden),
        seq_len=s.data.seq_len,
        adapter=s.lora.adapter,
        lora_rank=s.lora.rank,
        lora_alpha=s.lora.alpha,
        lora_dropout=s.lora.dropout,
        lora_targets=tuple(s.lora.targets),
        lora_train_modules=tuple(s.lora.train_modules),
        fedsb_init_samples=s.lora.init_samples,
        fedsb_init_lr=s.lora.init_lr,
    )
    if data_attack:
        task = replace(
            task,
            data_attack=s.attack.kind,
            malicious=malicious,
            data_attack_params=tuple(sorted(s.attack.params.items())),
        )
    return task


def _train_spec(s: Any) -> TrainSpec:
    """Local-training settings of the scenario (privacy added by :func:`_client_privacy`)."""
    return TrainSpec(
        trainer=s.clients.trainer,
        epochs=s.clients.local_epochs,
        batch_size=s.clients.batch_size,
        lr=s.clients.lr,
        optimizer=s.clients.optimizer,
        momentum=s.clients.momentum,
        weight_decay=s.clients.weight_decay,
        sparse_density=s.sparse.density,
        sparse_warmup=s.sparse.warmup,
        sparse_regrow_every=s.sparse.regrow_every,
        sparse_regrow_fraction=s.sparse.regrow_fraction,
        sparse_skip=tuple(s.sparse.skip),
        sparse_dense=tuple(s.sparse.dense),
    )


def _check_central_sensitivity(cfg: ServerConfig, clipping_norm: float) -> None:
    """Central DP: refuse a rule whose sensitivity is not declared, before round 1."""
    from stamen.server.federation import make_aggregator
    from stamen.server.privacy.central import declared_sensitivity

    declared_sensitivity(make_aggregator(cfg), cfg.per_round, clipping_norm, cfg.rule)


def _refuse_unimplemented(s: Any) -> None:
    """Fail loudly on settings the engines do not run yet, instead of silently ignoring them."""
    if s.privacy.mode == "rqm" and (not s.codec.pipeline or s.codec.pipeline[0] != "rqm"):
        raise ValueError(
            "privacy.mode='rqm' needs codec.pipeline to start with 'rqm' (earlier stages "
            "would send un-privatized data, e.g. topk indices)"
        )
    # DP-SGD trains exactly the parameters left trainable: all (full) or the adapters (lora, fedsb)
    if s.privacy.mode == "dp_sgd" and s.clients.trainer not in ("full", "dp_sgd", "lora", "fedsb"):
        raise ValueError(
            "privacy.mode='dp_sgd' works with clients.trainer 'full', 'lora' or 'fedsb', got "
            f"{s.clients.trainer!r}"
        )


def _rqm_params(s: Any, task: TaskSpec) -> Any:
    """Codec params; with ``privacy.mode = "rqm"`` and a target ε, RQM's extension Δ is calibrated
    so that a client taking part in every round stays within the target (exact RDP accountant)."""
    p = s.privacy
    if p.mode != "rqm" or p.calibration != "target_epsilon":
        return s.codec.params
    from stamen.client.task import build_model
    from stamen.server.privacy.rqm_rdp import RqmParams, calibrate_delta

    stage = dict(CodecSpec.from_pipeline(["rqm"], s.codec.params).stages[0].params)
    rqm = RqmParams.from_stage(stage)
    dims = sum(int(t.numel()) for t in build_model(task).state_dict().values())
    delta = calibrate_delta(
        p.target_epsilon, c=rqm.c, m=rqm.m, q=rqm.q, coordinates=dims, rounds=s.rounds, target_delta=p.delta
    )
    params = {k: dict(v) for k, v in s.codec.params.items()}
    params.setdefault("rqm", {})["delta"] = delta
    return params


def _client_privacy(s: Any, task: TaskSpec, train: TrainSpec) -> TrainSpec:
    """Fill the client-side DP fields of the training spec (local DP, DP-SGD), calibrating the noise
    multiplier from the target epsilon before round 1 when asked to."""
    p = s.privacy
    if p.mode not in ("local", "dp_sgd"):
        return train
    z = p.noise_multiplier
    if p.mode == "local":
        if p.calibration == "target_epsilon":
            from stamen.client.privacy import calibrate_local_noise_multiplier

            z = calibrate_local_noise_multiplier(p.target_epsilon, p.delta, s.rounds)
        return replace(train, local_dp=True, dp_noise_multiplier=z, dp_clip=p.clipping_norm, dp_delta=p.delta)
    if p.calibration == "target_epsilon":
        from stamen.client.task import partition_sizes
        from stamen.client.trainers.dp_sgd import calibrate_dp_sgd_noise

        z = calibrate_dp_sgd_noise(
            p.target_epsilon, p.delta, partition_sizes(task), train.batch_size, train.epochs, s.rounds
        )
    return replace(train, trainer="dp_sgd", dp_noise_multiplier=z, dp_clip=p.clipping_norm, dp_delta=p.delta)


def _adversary(s: Any) -> tuple[tuple[int, ...], bool]:
    """(malicious partition ids, whether the attack poisons data) for the scenario's attack."""
    if s.attack.kind == "none":
        return (), False
    from stamen.simulations.attacks import attack_type, malicious_clients

    kind = attack_type(s.attack.kind)  # ValueError for an unknown kind
    ids = tuple(malicious_clients(s.data.num_clients, s.attack.fraction, s.seed))
    return ids, kind == "data"


def _as_override(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
