"""``flower`` engine: the round driver over a real Flower ``Grid`` and the real ClientApp, through
Flower's simulation engine (``flwr.simulation.run_simulation``, Ray backend), one virtual SuperNode
per client.

The ServerApp is built here around the same :meth:`~stamen.simulations.plan.SimulationPlan.driver`
the in-process engine runs, with a :class:`~stamen.server.driver.flower_transport.GridTransport`
(``run_simulation`` gives an empty run config, so the plan travels by closure); the ClientApp is
:func:`stamen.client.app.make_client_app` around the simulation's nodes, which hand each virtual
SuperNode its partition.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

from stamen.server.history import FederationResult, ProgressFn
from stamen.simulations.engines.interrupt import StoppableGrid, stop_on_signals
from stamen.simulations.engines.node_partitions import NodePartitions, recording_partitions
from stamen.simulations.plan import SimulationPlan

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "0",
}
RESULT_GRACE_S = 5.0  # after a second Ctrl-C, how long the driver may take to hand over its rounds

log = logging.getLogger(__name__)


@dataclass
class _Outcome:
    """What the ServerApp's thread hands back: the run's result, and ``done`` once it returned."""

    result: FederationResult | None = None
    done: threading.Event = field(default_factory=threading.Event)


def flower_environment(home: str | None = None) -> None:
    """Keep Flower and Ray off the network and confine their state to a project-local FLWR_HOME."""
    for key, value in FLOWER_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("FLWR_HOME", home or os.path.join(os.getcwd(), ".flwr-home"))


def _server_app(
    plan: SimulationPlan,
    devices: Any,
    progress: ProgressFn | None,
    stop: threading.Event,
    out: _Outcome,
    partitions: NodePartitions,
) -> Any:
    """The simulation's ServerApp: the plan's round driver (sync or async) over the run's Grid,
    stoppable through ``stop``; it leaves the run's result in ``out``. Nodes are named from
    ``partitions`` (recorded as Flower registers them), by a query only when that fails."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from stamen.server.driver.flower_async import GridAsyncTransport
    from stamen.server.driver.flower_transport import GridTransport
    from stamen.server.federation import assemble_async

    cfg = plan.cfg
    server_app = ServerApp()

    @server_app.main()
    def _main(flower_grid: Grid, context: Context) -> None:
        try:
            _drive(StoppableGrid(flower_grid, stop))
        finally:
            out.done.set()

    def _drive(grid: Any) -> None:
        transport = GridTransport(
            grid, cfg.num_clients, cfg.per_round, cfg.timeout_s, query_names=True, names=partitions.names
        )
        if cfg.settings.server.mode == "sync":
            out.result = plan.driver(transport, devices).run(plan.initial, progress)
            return
        pushpull = GridAsyncTransport(transport, ttl_s=cfg.timeout_s)
        driver = assemble_async(cfg, pushpull, plan.initial, plan.evaluator(), plan.extras(devices))
        result = driver.run(plan.initial, progress)
        result.extra["arrivals"] = pushpull.arrivals
        out.result = result

    return server_app


def run_flower(
    plan: SimulationPlan, progress: ProgressFn | None = None, num_cpus: int = 2, ray_address: str = ""
) -> FederationResult:
    """Run the planned federation through ``run_simulation`` and return the server's records.

    ``ray_address`` attaches to a running Ray cluster (``ray start --head`` on one machine, ``ray
    start --address=...`` on the others; docs/scale.md); without it a private local Ray instance
    with ``num_cpus`` CPUs is started (``address="local"``: never a cluster someone else started).

    Ctrl-C or SIGTERM end the run after the last finished round (``stopped="interrupted"``): the
    driver stops at its next poll, Flower's runtime stops and Ray is shut down
    (:mod:`stamen.simulations.engines.interrupt`). Ray is started before ``run_simulation`` (which
    then uses it) so that these handlers can be put back over those ``ray.init`` installs.
    """
    flower_environment()
    from stamen.simulations.engines.client_recipe import RecipeClientApp

    cfg, devices = plan.cfg, plan.devices()
    nodes = plan.nodes(devices)
    out = _Outcome()
    stop = threading.Event()
    partitions = NodePartitions(wait_s=cfg.timeout_s)
    server_app = _server_app(plan, devices, progress, stop, out, partitions)
    backend: Any = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": ray_init_args(num_cpus, ray_address),
    }
    try:
        with warnings.catch_warnings(), stop_on_signals(stop) as rearm, recording_partitions(partitions):
            warnings.simplefilter("ignore")
            _quiet_flower()
            _start_ray(backend)
            rearm()  # over ray.init's SIGTERM handlers (sys.exit; Abseil's, which aborts)
            client_app = RecipeClientApp(nodes.resolve)  # pickled per message: by recipe
            _simulate(server_app, client_app, cfg.num_clients, backend, out)
    finally:
        _shutdown_ray()
        if devices is not None:
            devices.close()
    if out.result is None:
        raise RuntimeError("the Flower simulation ended without a result (see the Flower log above)")
    out.result.extra.update(plan.result_extra())
    return out.result


def _start_ray(backend: dict[str, Any]) -> None:
    """Start (or attach to) Ray as Flower's Ray backend does; ``run_simulation`` then finds it
    running and uses it."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    RayBackend(backend)  # only ray.init and checks: its actors come with run_simulation's own


def _simulate(server_app: Any, client_app: Any, num_supernodes: int, backend: Any, out: _Outcome) -> None:
    """Flower's ``run_simulation``. A second Ctrl-C or SIGTERM raises here at once (Flower then
    stops its workers and Ray); the finished rounds are still kept when the driver, already told
    to stop, hands them over within :data:`RESULT_GRACE_S` (a third signal does not wait)."""
    from flwr.simulation import run_simulation

    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_supernodes,
            backend_config=backend,
        )
    except KeyboardInterrupt:
        if not out.done.wait(RESULT_GRACE_S) or out.result is None:
            raise
        log.warning("interrupted again: Ray stopped, the finished rounds (or versions) are kept")


def _shutdown_ray() -> None:
    """Shut down the Ray instance the run started, if Flower's runtime left it running (its own
    ``terminate`` does so on a normal end; an exception on the main thread may skip it)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _quiet_flower() -> None:
    logging.getLogger("flwr").setLevel(logging.WARNING)
    from stamen._quiet import quiet_flower_simulation  # drops only run_simulation's deprecation notice

    quiet_flower_simulation()


def ray_init_args(num_cpus: int, address: str = "") -> dict[str, Any]:
    """``ray.init`` arguments: a cluster's address (Ray refuses resource counts when attaching), or
    a private local instance of ``num_cpus`` CPUs."""
    quiet = {"logging_level": "ERROR", "log_to_driver": False}
    if address:
        return {"address": address, **quiet}
    return {"address": "local", "num_cpus": num_cpus, "include_dashboard": False, **quiet}
