"""A simulation, planned once from its scenario: the server config (as a deployment would read it),
plus everything only a simulation has — the virtual clients' data, the adversary, Bristle's
validation slice, simulated edge devices — which the engines inject around the same round driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stamen.server.bristle.relay import EVALUATION
from stamen.server.checkpoint_run import RunState
from stamen.server.config import ServerConfig
from stamen.server.driver import RoundDriver, Transport
from stamen.server.driver.driver import EvalFn
from stamen.server.federation import RunExtras, assemble, central_evaluator
from stamen.server.privacy.statement import privacy_statement
from stamen.server.rules import build_rule
from stamen.server.sampling import draw_cohort, minority_feasible, resolve_sampling
from stamen.simulations.adversary import PoolTrainer, build_adversary
from stamen.simulations.attacks import attack_type, malicious_clients
from stamen.simulations.bristle_data import validation_slice
from stamen.simulations.checkpoint_state import client_memory_part
from stamen.simulations.client_sizes import DeclaredSizes
from stamen.simulations.devices import SimulatedDevices
from stamen.simulations.hooks import SimulationHooks, client_timing
from stamen.simulations.nodes import SimulatedNodes
from stamen.simulations.provider import DataSpec, initial_model, partition_sizes, partitions, test_data
from stamen.simulations.scenario import Scenario
from stamen.simulations.timing import ClientTiming
from stamen.task.weights import Weights, get_weights


@dataclass
class SimulationPlan:
    """Everything an engine needs to run a scenario."""

    scenario: Scenario
    cfg: ServerConfig
    data: DataSpec
    malicious: tuple[int, ...]
    initial: Weights
    peer: bool
    _timing: ClientTiming | None = field(default=None, repr=False)
    state_dir: Path | None = None  # checkpoint every round there, resume from it (None: no checkpoint)

    @classmethod
    def from_scenario(cls, s: Scenario, timeout_s: float = 600.0) -> SimulationPlan:
        """Plan ``s``; refuses what cannot run (``ValueError``, one line) before round 1."""
        malicious, data_attack = adversary_of(s)
        data = DataSpec.from_scenario(s, malicious, data_attack)
        cfg = ServerConfig.from_settings(s, timeout_s, partition_sizes=partition_sizes(data))
        check_attack(s, malicious)
        peer = build_rule(s).traits.relay_only
        initial = get_weights(initial_model(cfg.task, data))
        return cls(s, cfg, data, malicious, initial, peer)

    def evaluator(self) -> EvalFn:
        """Centralized evaluation on the held-out test split."""
        return central_evaluator(self.cfg, test_data(self.data))

    def devices(self) -> SimulatedDevices | None:
        """Simulated edge devices for ``clients.runtime = "edge"`` (close them after the run)."""
        if self.cfg.settings.clients.runtime != "edge":
            return None
        return SimulatedDevices(
            self.initial, self.cfg.settings.codec.downlink, self.cfg.task.model_id, self.cfg.seed
        )

    def nodes(self, devices: SimulatedDevices | None) -> SimulatedNodes:
        """The virtual clients."""
        return SimulatedNodes(self.data, self.peer, devices.fleet if devices is not None else None)

    def extras(self, devices: SimulatedDevices | None) -> RunExtras:
        """The simulation's injections into the round driver."""
        s, cfg = self.scenario, self.cfg
        pool = PoolTrainer(cfg.task, self.data, cfg.seed, cfg.train_for_round)
        sizes = partitions(self.data).sizes()  # (K,) int64
        server_data = s.aggregation.rule in ("bristle", "fltrust") and not self.peer
        validation = validation_slice(cfg.seed) if server_data else None
        timing = self.timing()
        hooks = SimulationHooks(build_adversary(s, self.malicious, pool), timing)
        delayed = s.timing.delay_mode == "class" and bool(timing.delayed_clients)
        return RunExtras(
            hooks=hooks,
            declared=DeclaredSizes(sizes),
            malicious=self.malicious,
            validation=validation,
            downlink=devices.downlink if devices is not None else None,
            max_delay=s.timing.delay_rounds if delayed else 0,
            state_dir=self.state_dir,
        )

    def timing(self) -> ClientTiming:
        """The virtual clients' timing model (``[timing]``), built once."""
        if self._timing is None:
            self._timing = client_timing(self.scenario.timing, self.data)
        return self._timing

    def driver(self, transport: Transport, devices: SimulatedDevices | None) -> RoundDriver:
        """The round driver of this simulation over ``transport`` (with a state-dir, the in-process
        clients' memory and clock are checkpointed with the server's state)."""
        driver = assemble(self.cfg, transport, self.initial, self.evaluator(), self.extras(devices))
        if isinstance(driver.resume, RunState) and hasattr(transport, "states"):
            driver.resume.parts["clients"] = client_memory_part(transport)
        return driver

    def cohort(self, rnd: int) -> list[int]:
        """The partition ids the driver samples in round ``rnd`` (the adversary's sampler, or the
        run's fixed-size or Poisson draw). A central-DP run's cohorts are secret unless
        ``privacy.noise = "seeded"`` (``ValueError``: nobody can know them in advance)."""
        if self.cfg.secret_cohorts:
            raise ValueError("central DP draws its cohorts in secret; set privacy.noise=seeded to know them")
        clients = [f"client-{i}" for i in range(self.cfg.num_clients)]
        hooks = self.extras(None).hooks
        chosen = hooks.sample(rnd, clients, self.cfg.per_round) if hooks is not None else None
        if chosen is None:
            cfg = self.cfg
            chosen = draw_cohort(cfg.sampling, cfg.seed, rnd, clients, cfg.per_round, cfg.sample_rate)
        return [int(c.rpartition("-")[2]) for c in chosen]

    def result_extra(self) -> dict[str, Any]:
        """What results.json records besides the rounds."""
        extra: dict[str, Any] = {"evaluation": EVALUATION} if self.peer else {}
        if (statement := privacy_statement(self.cfg)) is not None:
            extra["privacy"] = statement
        return extra


def adversary_of(s: Scenario) -> tuple[tuple[int, ...], bool]:
    """(malicious partition ids, whether the attack poisons data) of the scenario's attack."""
    if s.attack.kind == "none":
        return (), False
    kind = attack_type(s.attack.kind)  # ValueError for an unknown kind
    ids = tuple(malicious_clients(s.data.num_clients, s.attack.fraction, s.seed))
    return ids, kind == "data"


def check_attack(s: Scenario, malicious: tuple[int, ...]) -> None:
    """Refuse attack settings that cannot run, before round 1."""
    if s.attack.kind == "rank_reversal" and s.clients.trainer != "frl":
        raise ValueError(
            "attack.kind='rank_reversal' reverses FRL rankings: it needs clients.trainer='frl', "
            f"got {s.clients.trainer!r}"
        )
    if (
        malicious
        and s.attack.malicious_minority
        and resolve_sampling(s.clients.sampling, s.privacy.mode, s.server.mode) == "poisson"
    ):
        raise ValueError(
            "attack.malicious_minority redraws the cohort until the attackers are a minority, which "
            "clients.sampling='poisson' (each client's own coin) does not allow; set "
            "clients.sampling='fixed' or attack.malicious_minority=false"
        )
    if s.attack.malicious_minority and not minority_feasible(
        s.data.num_clients, s.clients.per_round, len(malicious)
    ):
        raise ValueError(
            f"attack.malicious_minority: no cohort of {s.clients.per_round} clients has fewer "
            f"than half of the {len(malicious)} attackers; lower attack.fraction, "
            "or set attack.malicious_minority=false"
        )
