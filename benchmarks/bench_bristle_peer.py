"""Bristle peer mode through both engines vs the pure peer-mode reference.

Runs ``stamen simulate bristle --set aggregation.mode=peer`` (the built-in ``bristle`` scenario:
mnist1d, 10 nodes x 4 label shards, all nodes every round, 40 rounds, seed 0) through the
``inprocess`` and the ``flower`` engine, clean (``attack.kind=none``) and with the scenario's 3
label-flipping nodes (``label_flip``: ``y -> 9 - y``, partitions ``cfg.malicious``). The figure is
the final round's accuracy: mean over the honest nodes of their consolidated layer's accuracy on
the held-out test split (no global model exists in peer mode).

Anchors printed next to it, computed in the same run:

- ``reference``: the pure :func:`stamen.server.bristle.peer.run_peer_mode` on the *same* setup
  (same nodes, attackers, seeds), which the engines must equal (``tests/bristle/test_peer_engine.py``);
- ``bench_frl``: ``benchmarks/bench_frl.py``'s pure peer-mode figure (its own setup: attackers
  7, 8, 9 flipping ``y -> (y - 1) mod 10``), the number BENCHMARKS.md section 6 reports.

Regenerate::

    .venv/bin/python benchmarks/bench_bristle_peer.py           # ~10 min on 2 loaded cores
    .venv/bin/python benchmarks/bench_bristle_peer.py --quick   # 4 rounds, ~2 min

Writes ``benchmarks/results/bristle_peer[_quick].json``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from _provenance import Provenance, out_path, parser

SETUPS = {"clean": ("attack.kind=none", "attack.fraction=0"), "label_flip_3of10": ()}


def _cfg(rounds: int, extra: tuple[str, ...]) -> Any:
    from stamen.server.config import ServerConfig
    from stamen.simulations.scenario import load_scenario

    return ServerConfig.from_scenario(
        load_scenario("bristle", [f"rounds={rounds}", "aggregation.mode=peer", *extra])
    )


def engine_run(engine: str, rounds: int, extra: tuple[str, ...]) -> dict[str, Any]:
    """One ``stamen simulate bristle --set aggregation.mode=peer`` run; accuracy per round."""
    from stamen.simulations.engines import run_engine

    cfg, t0 = _cfg(rounds, extra), time.perf_counter()
    res = run_engine(engine, cfg)
    accs = [r.accuracy for r in res.rounds]
    return {
        "final": accs[-1],
        "per_round": accs,
        "malicious": list(cfg.malicious),
        "bytes_up_total": sum(r.bytes_up for r in res.rounds),
        "bytes_down_total": sum(r.bytes_down for r in res.rounds),
        "wall_s": time.perf_counter() - t0,
    }


def reference_run(rounds: int, extra: tuple[str, ...]) -> dict[str, Any]:
    """The pure ``run_peer_mode`` on the scenario's nodes, attackers and seeds."""
    from stamen.client.core import local_update
    from stamen.server.federation import make_central_evaluator
    from stamen.simulations.bristle_data import validation_slice
    from stamen.simulations.provider import client_data
    from stamen.task.bristle.peer import PeerNode, run_peer_mode
    from stamen.task.models import build_model
    from stamen.task.models.bristle_transfer import FEATURES
    from stamen.task.seeds import client_seed
    from stamen.task.weights import get_weights

    cfg, t0 = _cfg(rounds, extra), time.perf_counter()
    model, evaluate = build_model(cfg.task), make_central_evaluator(cfg)
    nodes = []
    for pid in range(cfg.num_clients):
        classes = tuple(int(c) for c in np.unique(client_data(cfg.task, pid).y))
        nodes.append(
            PeerNode(classes, *validation_slice(cfg.seed, classes, node=pid), honest=pid not in cfg.malicious)
        )

    def train(i: int, rnd: int, layer: np.ndarray) -> np.ndarray:
        spec, seed = cfg.train_for_round(rnd), client_seed(cfg.seed, rnd, i)
        local_update(model, {"head.weight": layer}, client_data(cfg.task, i), spec, seed)
        return get_weights(model)["head.weight"]

    init = np.zeros((10, FEATURES), np.float32)
    _, hist = run_peer_mode(
        nodes, init, rounds, train, cfg.seed, evaluate=lambda i, w: evaluate({"head.weight": w})[1]
    )
    return {"final": hist[-1], "per_round": hist, "wall_s": time.perf_counter() - t0}


def bench_frl_run(rounds: int, attacked: bool) -> dict[str, Any]:
    """``bench_frl.py``'s pure peer-mode run (its own attackers and flip)."""
    import bench_frl  # same directory (sys.path[0] when run as a script)

    return dict(bench_frl.bristle_run("peer", rounds, attacked))


def main() -> None:
    ap = parser(__doc__, quick="4 rounds (about two minutes)", out="bristle_peer.json")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--engines", default="inprocess,flower", help="comma-separated engines to run")
    args = ap.parse_args()
    prov = Provenance.capture()
    rounds = 4 if args.quick else args.rounds
    engines = [e for e in args.engines.split(",") if e]
    out: dict[str, Any] = {"rounds": rounds, "seed": 0, "runs": {}}
    for name, extra in SETUPS.items():
        row: dict[str, Any] = {}
        for engine in engines:
            print(f"[{name}] engine {engine} ...", flush=True)
            row[engine] = engine_run(engine, rounds, extra)
        print(f"[{name}] pure reference ...", flush=True)
        row["reference"] = reference_run(rounds, extra)
        print(f"[{name}] bench_frl.py peer mode ...", flush=True)
        row["bench_frl"] = bench_frl_run(rounds, name != "clean")
        out["runs"][name] = row
    print(
        f"\nBristle peer mode, `bristle` scenario, {rounds} rounds, seed 0: final accuracy "
        "(mean of honest nodes' layers on the held-out split)"
    )
    print(
        "| setting | "
        + " | ".join(engines)
        + " | pure reference (same setup) | bench_frl.py pure peer mode |"
    )
    print("|---|" + "---|" * (len(engines) + 2))
    for name, row in out["runs"].items():
        cells = [f"{row[e]['final']:.4f}" for e in engines] + [
            f"{row['reference']['final']:.4f}",
            f"{row['bench_frl']['final']:.4f}",
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
        same = all(row[e]["per_round"] == row["reference"]["per_round"] for e in engines)
        print(f"  engines equal the reference in every round: {same}")
    prov.write(out_path(args), out)


if __name__ == "__main__":
    main()
