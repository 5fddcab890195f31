"""The server's configuration: the run :class:`~stamen.task.settings.Settings`, read once at the app
boundary, plus what is derived from them before round 1 (the wire specs, calibrated noise).

Sources: a built-in run name or a TOML path, then ``section.key`` overrides. Under ``flwr run`` they
come from ``[tool.flwr.app.config]`` / ``-c``: the key ``scenario`` names the run, ``overrides`` is a
whitespace-separated list of ``section.key=value`` entries (Flower only accepts ``-c`` keys that
pyproject declares, so one string key carries them all), and any other declared key containing a dot
is an override too. The deployed server refuses simulation-only sections (``[attack]``).

Everything the validator cannot honour is refused here, before round 1, with one line naming the
settings (:func:`check_settings`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from stamen.privacy.dp_sgd import calibrate_dp_sgd_noise
from stamen.privacy.local import calibrate_local_noise_multiplier
from stamen.protocols import CodecSpec
from stamen.server.checks import check_settings
from stamen.server.rqm import rqm_codec_params
from stamen.server.sampling import resolve_sampling
from stamen.task.settings import PrivacyConfig, Settings
from stamen.task.settings_load import load_settings
from stamen.task.spec import RoundInstructions, TaskSpec, TrainSpec

# run_config keys that are not run-setting overrides
APP_KEYS = (
    "scenario",
    "overrides",
    "out-dir",
    "timeout-s",
    "eval-data",
    "data-source",
    "metrics-port",
    "metrics-addr",
    "require-signed",
    "signing-key",
    "state-dir",  # checkpoint + resume (server/checkpoint_run.py); unset or "": no checkpoint
)


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs for a run; built by :meth:`from_settings`."""

    settings: Settings
    task: TaskSpec
    train: TrainSpec  # client-side DP filled in
    codec: CodecSpec  # RQM's Δ calibrated
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout-s must be > 0, got {self.timeout_s}")

    @classmethod
    def from_settings(
        cls, s: Settings, timeout_s: float = 600.0, partition_sizes: Sequence[int] | None = None
    ) -> ServerConfig:
        """Derive the server config from the run settings; refuse what cannot run (``ValueError``).

        ``partition_sizes`` (the clients' example counts, known to a simulation) calibrates DP-SGD's
        noise for a target ε; a deployment uses ``privacy.calibration = "fixed"`` instead.
        """
        check_settings(s)
        task = TaskSpec.from_settings(s)
        train = client_privacy(s.privacy, TrainSpec.from_settings(s), s.rounds, partition_sizes)
        codec = CodecSpec.from_pipeline(s.codec.pipeline, rqm_codec_params(s, task))
        return cls(s, task, train, codec, timeout_s)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> ServerConfig:
        """Read Flower's ``context.run_config`` (may be empty: then the ``smoke`` run applies)."""
        name, overrides = run_config_scenario(run_config)
        settings: Settings = load_settings(name, overrides)
        timeout = run_config.get("timeout-s", 600.0)
        try:
            timeout_s = float(timeout)
        except (TypeError, ValueError):
            raise ValueError(f"timeout-s must be a number of seconds, got {timeout!r}") from None
        return cls.from_settings(settings, timeout_s=timeout_s)

    # ---- the numbers the driver and the engines read -------------------------------------------
    @property
    def seed(self) -> int:
        """Run seed."""
        return self.settings.seed

    @property
    def rounds(self) -> int:
        """Number of rounds."""
        return self.settings.rounds

    @property
    def per_round(self) -> int:
        """Clients sampled per round."""
        return self.settings.clients.per_round

    @property
    def sampling(self) -> str:
        """``"fixed"`` or ``"poisson"``: ``clients.sampling`` with ``"auto"`` resolved."""
        s = self.settings
        return resolve_sampling(s.clients.sampling, s.privacy.mode, s.server.mode)

    @property
    def sample_rate(self) -> float:
        """``q = per_round / num_clients``: each client's inclusion probability under Poisson."""
        return self.per_round / self.num_clients

    @property
    def num_clients(self) -> int:
        """Clients in the federation (a deployment waits for this many nodes, at least per_round)."""
        return self.settings.data.num_clients

    @property
    def secret_cohorts(self) -> bool:
        """Whether the cohorts are drawn from OS entropy, not the run seed: under central DP (whose
        accountant assumes the cohort is a secret random draw) unless ``privacy.noise = "seeded"``."""
        p = self.settings.privacy
        return p.mode == "central" and p.noise == "secret"

    @property
    def privacy(self) -> PrivacyConfig:
        """The ``[privacy]`` section."""
        return self.settings.privacy

    def train_for_round(self, server_round: int) -> TrainSpec:
        """The training spec of ``server_round`` (learning-rate decay applied)."""
        decay = self.settings.clients.lr_decay
        if decay == 1.0:
            return self.train
        return replace(self.train, lr=self.train.lr * decay ** (server_round - 1))

    def instructions(self, server_round: int, version: int) -> RoundInstructions:
        """What every client of ``server_round`` receives (training from model ``version``)."""
        return RoundInstructions(
            round=server_round,
            version=version,
            seed=self.seed,
            codec=self.codec.to_string(),
            error_feedback=self.settings.codec.error_feedback,
            task=self.task,
            train=self.train_for_round(server_round),
        )


def run_config_scenario(run_config: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``(scenario name or path, overrides)`` of a Flower run config (see the module docstring)."""
    name = str(run_config.get("scenario", "smoke"))
    overrides = str(run_config.get("overrides", "")).replace(";", " ").split()
    overrides += [f"{k}={_as_override(v)}" for k, v in run_config.items() if k not in APP_KEYS]
    return name, overrides


def client_privacy(
    p: PrivacyConfig, train: TrainSpec, rounds: int, partition_sizes: Sequence[int] | None
) -> TrainSpec:
    """Fill the client-side DP fields (local DP, DP-SGD; ``client_dp`` for RQM too), calibrating the
    noise multiplier from the target ε before round 1 when asked to. Under RQM the codec's
    randomness is the mechanism (``dp_codec``) and the reply must carry nothing else."""
    if p.mode == "rqm":
        return replace(train, dp_codec=True, client_dp=True)
    if p.mode not in ("local", "dp_sgd"):
        return train
    z = p.noise_multiplier
    calibrate = p.calibration == "target_epsilon"
    if p.mode == "local":
        if calibrate:
            z = calibrate_local_noise_multiplier(p.target_epsilon, p.delta, rounds, p.accountant)
        dp = dict(
            dp_noise_multiplier=z, dp_clip=p.clipping_norm, dp_delta=p.delta, dp_accountant=p.accountant
        )
        return replace(train, local_dp=True, client_dp=True, **dp)
    if calibrate:
        if partition_sizes is None:
            raise ValueError(
                "privacy.mode='dp_sgd' with calibration='target_epsilon' needs the clients' data sizes, "
                "which only a simulation knows; a deployment sets privacy.calibration='fixed'"
            )
        z = calibrate_dp_sgd_noise(
            p.target_epsilon, p.delta, partition_sizes, train.batch_size, train.epochs, rounds, p.accountant
        )
    dp = dict(dp_noise_multiplier=z, dp_clip=p.clipping_norm, dp_delta=p.delta, dp_accountant=p.accountant)
    return replace(train, trainer="dp_sgd", client_dp=True, **dp)


def _as_override(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)
