"""The ``stamen`` command line.

stamen simulate SCENARIO [--engine inprocess|flower] [--set section.key=value ...] [--out DIR]
                [--state-dir DIR]
stamen scenarios

Imports are lazy: parsing the command line, loading and checking the scenario and checking ``--out``
import neither torch nor flwr, so ``--help`` and every error in the arguments answer in well under a
second; the engine (and torch) is imported only once the run is known to be valid.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from stamen._version import __version__

_EXTRA_AT = "_stamen_unrecognized_in"  # the (sub)command whose arguments held the unrecognized ones


class OneLineParser(argparse.ArgumentParser):
    """A command-line mistake is one line, ``stamen: error: ...`` and which ``--help`` to read
    (argparse printed the whole usage block first); the exit code stays 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"stamen: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[Any, list[str]]:
        ns, extra = super().parse_known_args(args, namespace)
        if extra and not hasattr(ns, _EXTRA_AT):  # the innermost subcommand returns first
            setattr(ns, _EXTRA_AT, self.prog)
        return ns, extra

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extra = self.parse_known_args(args, namespace)
        prog = vars(ns).pop(_EXTRA_AT, self.prog)
        if extra:
            self.exit(2, f"stamen: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)\n")
        return ns


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="stamen", description="Federated and edge model updates on Flower.")
    p.add_argument("--version", action="version", version=f"stamen {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run a scenario end to end on one machine")
    sim.add_argument("scenario", help="built-in scenario name (see `stamen scenarios`) or a TOML path")
    sim.add_argument("--engine", choices=("inprocess", "flower"), default="inprocess")
    sim.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario key, e.g. --set clients.lr=0.1 (repeatable)",
    )
    sim.add_argument(
        "--out",
        type=_out_path,
        default=None,
        help="output directory (default runs/<name>[-<engine>][-<hash of the --set overrides>])",
    )
    sim.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="checkpoint every round there and resume from it when started again (inprocess engine)",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("scenarios", help="list the built-in scenarios")
    chk = sub.add_parser("check-app", help="check a `flwr run` configuration before the run starts")
    chk.add_argument("app_dir", nargs="?", default=".", help="the Flower app directory (default .)")
    chk.add_argument("-c", "--run-config", action="append", default=[], help="as `flwr run -c` (repeatable)")
    _add_plugin_commands(sub)
    return p


def _out_path(text: str) -> Path:
    """``--out``: a blank value is refused (``Path("")`` would silently be the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a directory (use --out . for the current one)")
    return Path(text)


def _add_plugin_commands(sub: Any) -> None:
    """Commands defined in their own modules (``stamen.cli_edge``: keys, delta, edge; ``deploy``;
    ``device``)."""
    from stamen import cli_edge  # a broken import must fail loudly, never drop the commands
    from stamen.deploy.cli import add_deploy_commands
    from stamen.device.cli import add_device_commands

    cli_edge.add_commands(sub)
    add_deploy_commands(sub)
    add_device_commands(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stamen`` console script; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "scenarios":
            return _scenarios()
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "check-app":
            from stamen.check_app import check_app

            print(check_app(args.app_dir, args.run_config))
            return 0
        if args.command in ("deploy", "device"):
            return _deploy_or_device(args)
        from stamen import cli_edge

        return cli_edge.dispatch(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"stamen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stamen: interrupted", file=sys.stderr)
        return 130


def _deploy_or_device(args: argparse.Namespace) -> int:
    if args.command == "deploy":
        from stamen.deploy.cli import dispatch

        return dispatch(args)
    from stamen.device.cli import dispatch as device_dispatch

    return device_dispatch(args)


def _scenarios() -> int:
    from stamen.simulations.scenario import builtin_scenarios

    for name, description in builtin_scenarios():
        print(f"{name:<16} {description}")
    return 0


def _checked_args(args: argparse.Namespace) -> tuple[Any, Path]:
    """The scenario and the output directory; everything that can be wrong with the arguments is
    found here, before torch is imported."""
    from stamen.simulations.results import check_out_dir
    from stamen.simulations.scenario import load_scenario

    scenario = load_scenario(args.scenario, args.overrides)
    _check_registry_names(scenario)
    out = args.out or default_out_dir(scenario.name, args.overrides, args.engine)
    check_out_dir(out)
    if args.state_dir is not None:  # a checkpoint is written there after every round
        if args.engine != "inprocess":
            raise ValueError(f"--state-dir works with --engine inprocess, not {args.engine!r}")
        check_out_dir(args.state_dir, what="state-dir")
    return scenario, out


def _engine_refusals(engine: str, plan: Any) -> None:
    """The in-process engine's ``[engine]`` refusals (``batching = "on"`` for a run that cannot be
    batched, ``device = "cuda"`` without a GPU, ``threads`` with workers), raised before the run
    starts; resolved as the engine resolves them, only when such a setting is there."""
    e = plan.scenario.engine
    if engine != "inprocess" or (e.batching != "on" and e.device != "cuda" and e.threads == 1):
        return
    from stamen.simulations.engines.inprocess import engine_path
    from stamen.task.models import model_structure

    engine_path(plan, model_structure(plan.cfg.task))


def _say_if_replacing(out: Path, args: argparse.Namespace) -> None:
    """Once the run is known to start (the plan accepted it): it replaces ``out``'s results."""
    if (out / "results.json").exists() and args.state_dir is None:
        print(f"stamen: {out} holds an earlier run's results; this run replaces them", file=sys.stderr)


def _simulate(args: argparse.Namespace) -> int:
    scenario, out = _checked_args(args)
    from stamen.progress import Progress
    from stamen.simulations.engines import run_engine
    from stamen.simulations.plan import SimulationPlan

    plan_start = time.perf_counter()  # total_wall_s counts from here: the plan, every round, no imports
    plan = SimulationPlan.from_scenario(scenario)  # refuses what cannot run, before round 1
    plan_s = time.perf_counter() - plan_start  # data set, partitions, initial model
    if args.state_dir is not None:
        plan.state_dir = args.state_dir
    _engine_refusals(args.engine, plan)
    _say_if_replacing(out, args)
    os.environ.setdefault("FLWR_HOME", str(Path.cwd() / ".flwr-home"))
    unit = _unit(scenario)
    # the in-process engine forks its worker processes before the first call (sync rounds only:
    # an asynchronous run trains in one process and reports nothing before its first version)
    lazy = args.engine == "inprocess" and scenario.server.mode == "sync"
    with Progress(plan.cfg.rounds, plan.cfg.per_round, not args.quiet, unit, lazy) as prog:
        kwargs: dict[str, Any] = {"client_progress": prog.client} if args.engine == "inprocess" else {}
        result = run_engine(args.engine, plan, prog.round, **kwargs)
    extra = {
        "overrides": list(args.overrides),
        "total_wall_s": time.perf_counter() - plan_start,
        **result.extra,
    }
    extra["startup_s"] = {"plan": plan_s, "first_round_done": prog.first_round_s}
    return _report(args, scenario, out, result, extra)


def _report(args: argparse.Namespace, scenario: Any, out: Path, result: Any, extra: dict[str, Any]) -> int:
    """Write the run's files (a late signal cannot cut the write), print its summary; the exit code."""
    from stamen.simulations.engines.interrupt import signals_held
    from stamen.simulations.results import write_results

    unit = _unit(scenario)
    if "resumed_from" in result.extra:
        what = "holds a finished run" if result.extra.get("already_finished") else "resumed"
        print(
            f"stamen: state-dir {args.state_dir} {what} (after {unit} {result.extra['resumed_from']})",
            file=sys.stderr,
        )
    if result.stopped == "interrupted" and not result.rounds:  # keep whatever `out` holds
        print(f"stamen: interrupted before a {unit} finished; nothing written", file=sys.stderr)
        return 130
    if result.stopped:
        extra["stopped"] = result.stopped
    title = run_title(scenario.name, args.overrides)
    with signals_held():  # a late Ctrl-C or SIGTERM (the run already ended) must not cut the write
        paths = write_results(
            out, scenario.to_dict(), result.rounds, engine=args.engine, extra=extra, title=title
        )
    _print_summary(f"{title} ({args.engine})", result.rounds, paths, _peak_rss_mib(extra))
    if "privacy" in extra:  # what the reported ε assumes (sampling, accountant)
        from stamen.server.privacy.statement import describe

        print(describe(extra["privacy"]))
    return 130 if result.stopped == "interrupted" else 0  # the files are written; a script can tell


def _check_registry_names(scenario: Any) -> None:
    """Look up the codec stages, aggregation rule and attack in their registries (numpy only), so
    a misspelt name fails before the engine and torch are imported."""
    from stamen.protocols import CodecSpec
    from stamen.server.aggregators import build_aggregator
    from stamen.simulations.attacks import attack_type, create_data_attack, create_update_attack

    CodecSpec.from_pipeline(scenario.codec.pipeline, scenario.codec.params)
    CodecSpec.parse(scenario.codec.downlink)
    build_aggregator(
        scenario.aggregation.rule, scenario.aggregation.pre, scenario.aggregation.params, seed=scenario.seed
    )
    if scenario.attack.kind != "none":  # build it: its parameters are checked even with 0 attackers
        create = create_update_attack if attack_type(scenario.attack.kind) == "update" else create_data_attack
        create(scenario.attack.kind, **dict(scenario.attack.params))


def default_out_dir(
    name: str, overrides: Sequence[str], engine: str = "inprocess", root: Path = Path("runs")
) -> Path:
    """Where a run writes without ``--out``: ``root/name``, then ``-<engine>`` for any engine but
    the default ``inprocess``, then, with overrides, ``-XXXXXX``: the first 6 hex digits of the
    SHA-256 of the overrides parsed into a sorted tree (so ``clients.lr=0.10`` and
    ``clients.lr=0.1``, or the same ``--set`` items in another order, share a directory, and
    different ones do not). ``runs/demo`` is ``make demo``'s."""
    stem = name if engine == "inprocess" else f"{name}-{engine}"
    if not overrides:
        return root / stem
    from stamen.simulations.scenario import apply_overrides  # [attack] is a scenario key

    canonical = json.dumps(apply_overrides({}, overrides), sort_keys=True, default=list)
    return root / f"{stem}-{hashlib.sha256(canonical.encode()).hexdigest()[:6]}"


def run_title(name: str, overrides: Sequence[str]) -> str:
    """``name`` followed by the ``--set`` overrides, as the plot and the summary table show it."""
    return " ".join([name, *overrides])


def _unit(scenario: Any) -> str:
    """What the run counts: rounds, or model versions (``server.mode`` fedasync, fedbuff)."""
    return "round" if scenario.server.mode == "sync" else "version"


def _peak_rss_mib(extra: dict[str, Any]) -> tuple[str, float]:
    """(column title, MiB): the engine process's peak RSS (results.json ``engine_path.peak_rss_mib``),
    or, for an engine that does not record it (its clients run elsewhere), this process's own."""
    recorded = extra.get("engine_path", {}).get("peak_rss_mib")
    if recorded is not None:
        return "peak RSS", float(recorded)
    import resource

    return "peak RSS (this process)", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB


def _print_summary(
    title: str, rounds: Sequence[Any], paths: dict[str, Path], peak_rss: tuple[str, float]
) -> None:
    """The end-of-run table; every figure but the peak RSS (results.json ``engine_path``) is the
    one results.json records under ``final``."""
    from rich.console import Console
    from rich.table import Table

    from stamen.simulations.results import summarize

    final = summarize(rounds)["final"]
    table = Table(title=f"stamen simulate {title}")
    cols = ["final accuracy", "bytes up", "bytes down", "rejected", "wall time"]
    row = [
        "n/a" if final["accuracy"] is None else f"{final['accuracy']:.4f}",
        _human(final["bytes_up_total"]),
        _human(final["bytes_down_total"]),
        str(sum(r.rejected for r in rounds)),
        f"{final['wall_s']:.1f} s",
    ]
    if final.get("sim_time_s") is not None:  # the run kept a simulated clock (timing model)
        cols.append("sim time")
        row.append(f"{final['sim_time_s']:.1f} s")
    cols.append(peak_rss[0])
    row.append(f"{peak_rss[1]:,.0f} MiB")
    for col in cols:
        table.add_column(col, justify="right")
    table.add_row(*row)
    console = Console()
    console.print(table)
    console.print("results: " + ", ".join(str(p) for p in paths.values()))


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{n} B"


if __name__ == "__main__":
    raise SystemExit(main())
