"""Server checkpoints (``--state-dir``): size and write time per round, against the round itself.

For each scenario the in-process engine runs it twice, interleaved: once with a state-dir (a
checkpoint written after every round: :mod:`stamen.server.checkpoint_run`) and once without. The
figures are the median checkpoint write time (encode + temp file + fsync + rename + directory
fsync) and size, next to their anchor measured in the same run: the median round wall time of the
run without checkpoints, and the total wall-time ratio of the two runs.

A second table measures what the content-addressed parts (:mod:`stamen.server.checkpoint_store`)
save on an asynchronous run with a model history: a 1.08M-parameter digits MLP (64-1000-1000-10),
``fedasync`` + ``dcasgd`` and ``fedbuff``, concurrency 6, 30 versions, a checkpoint after every
reply. Anchor, same run: the same run with every array kept inline (``PART_MIN_BYTES`` above any
array: one file holding the whole history rewritten after every reply, the format before parts).

Regenerate::

    .venv/bin/python benchmarks/bench_checkpoint.py --repeats 5  # smoke, demo (10 rounds), smoke fedbuff
    .venv/bin/python benchmarks/bench_checkpoint.py --quick        # smoke only

Prints a markdown table and writes ``benchmarks/results/checkpoint.json``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _provenance import Provenance, out_path, parser

from stamen.server import checkpoint_store
from stamen.server.checkpoint_run import RunState
from stamen.simulations.engines.inprocess import run_inprocess
from stamen.simulations.plan import SimulationPlan
from stamen.simulations.scenario import load_scenario

SCENARIOS = {
    "smoke": [],
    "demo": ["rounds=10"],
    # asynchronous: a checkpoint after every handled reply (the open buffer survives), 2 per version
    "smoke ": ["rounds=6", "server.mode=fedbuff", "server.buffer_size=2", "server.concurrency=4"],
}


def run(
    name: str, overrides: list[str], state_dir: Path | None
) -> tuple[float, list[float], RunState | None]:
    """Total wall seconds, per-round wall seconds and the run's state (None without a state-dir)."""
    plan = SimulationPlan.from_scenario(load_scenario(name.strip(), overrides))
    plan.state_dir = state_dir
    seen: list[RunState] = []
    init = RunState.__init__

    def remember(self: RunState, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        seen.append(self)

    RunState.__init__ = remember  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        result = run_inprocess(plan)
        wall = time.perf_counter() - t0
    finally:
        RunState.__init__ = init  # type: ignore[method-assign]
    return wall, [r.wall_s for r in result.rounds], seen[0] if seen else None


def measure(name: str, overrides: list[str], repeats: int) -> dict[str, Any]:
    """Interleaved runs with and without checkpoints; medians."""
    walls: dict[str, list[float]] = {"with": [], "without": []}
    rounds, writes, sizes = [], [], []
    for _ in range(repeats):
        total, per_round, _ = run(name, overrides, None)
        walls["without"].append(total)
        rounds += per_round
        with tempfile.TemporaryDirectory(prefix="ckpt_bench_") as tmp:
            total, _, state = run(name, overrides, Path(tmp) / "state")
        walls["with"].append(total)
        assert state is not None
        writes += [s for s, _ in state.writes]
        sizes += [b for _, b in state.writes]
    return {
        "scenario": " ".join([name.strip(), *overrides]),
        "checkpoints": len(writes),
        "write_ms_median": 1e3 * statistics.median(writes),
        "size_bytes_median": int(statistics.median(sizes)),
        "round_ms_median": 1e3 * statistics.median(rounds),
        "write_over_round": statistics.median(writes) / statistics.median(rounds),
        "total_s_without": statistics.median(walls["without"]),
        "total_s_with": statistics.median(walls["with"]),
        "total_ratio": statistics.median(walls["with"]) / statistics.median(walls["without"]),
    }


HISTORY = ["data.num_clients=12", "clients.per_round=6", "model.hidden=1000,1000", "rounds=30"]
HISTORY_MODES = {
    "fedasync + dcasgd": ["server.mode=fedasync", "server.compensation=dcasgd", "server.concurrency=6"],
    "fedbuff": ["server.mode=fedbuff", "server.buffer_size=2", "server.concurrency=6"],
}


def written(overrides: list[str], inline: bool) -> tuple[int, float, int]:
    """Bytes and seconds of every checkpoint of one run (parts, or every array inline), and its
    number of checkpoints."""
    saved = checkpoint_store.PART_MIN_BYTES
    checkpoint_store.PART_MIN_BYTES = 2**62 if inline else saved
    try:
        with tempfile.TemporaryDirectory(prefix="ckpt_hist_") as tmp:
            _, _, state = run("smoke", overrides, Path(tmp) / "state")
    finally:
        checkpoint_store.PART_MIN_BYTES = saved
    assert state is not None
    return sum(b for _, b in state.writes), sum(s for s, _ in state.writes), len(state.writes)


def history(repeats: int) -> list[dict[str, Any]]:
    """Parts against everything inline, interleaved; medians of ``repeats`` pairs."""
    rows = []
    for label, mode in HISTORY_MODES.items():
        runs: dict[str, list[tuple[int, float, int]]] = {"parts": [], "inline": []}
        for _ in range(repeats):
            for kind in runs:
                runs[kind].append(written([*HISTORY, *mode], kind == "inline"))
        med = {
            k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
            for k, v in runs.items()
        }
        rows.append(
            {
                "scenario": label,
                "overrides": [*HISTORY, *mode],
                "checkpoints": runs["parts"][0][2],
                "parts_bytes": med["parts"][0],
                "parts_s": med["parts"][1],
                "inline_bytes": med["inline"][0],
                "inline_s": med["inline"][1],
            }
        )
    return rows


def print_history(rows: list[dict[str, Any]]) -> None:
    """The second table: bytes and seconds written, parts against the inline anchor."""
    print(
        "\n| async run, 1.08M params, 30 versions | checkpoints | parts: written | inline (anchor) | ratio |"
    )
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['scenario']} | {r['checkpoints']} "
            f"| {r['parts_bytes'] / 1e6:,.1f} MB in {r['parts_s']:.2f} s "
            f"| {r['inline_bytes'] / 1e6:,.1f} MB in {r['inline_s']:.2f} s "
            f"| {r['inline_bytes'] / r['parts_bytes']:.1f}× bytes, {r['inline_s'] / r['parts_s']:.1f}× time |"
        )


def main() -> None:
    """Measure, print the table, write the results JSON."""
    p = parser(__doc__, quick="smoke only", out="checkpoint.json")
    p.add_argument("--repeats", type=int, default=3, help="interleaved run pairs per scenario (default 3)")
    args = p.parse_args()
    prov = Provenance.capture()
    todo = {"smoke": SCENARIOS["smoke"]} if args.quick else SCENARIOS
    rows = [measure(name, ov, args.repeats) for name, ov in todo.items()]
    print(
        "| scenario | checkpoint size | write (median) | round or version (median, anchor) | write / round "
        "| total with / without |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['scenario']} | {r['size_bytes_median'] / 1024:.1f} KiB | {r['write_ms_median']:.1f} ms "
            f"| {r['round_ms_median']:.0f} ms | {r['write_over_round']:.3f} | {r['total_ratio']:.3f} |"
        )
    hist = [] if args.quick else history(min(args.repeats, 3))
    if hist:
        print_history(hist)
    prov.write(
        out_path(args), {"repeats": args.repeats, "rows": rows, "history": hist, "machine": "2 CPU cores"}
    )


if __name__ == "__main__":
    main()
