"""FRL and Bristle: bytes of FRL rankings against FedAvg's float32 update, and small accuracy runs.

1. **Bytes** (anchor: FedAvg's dense float32 update of the same trainable tensors, same run). For
   the paper's MNIST LeNet layer sizes (1,625,632 edges) and our digits supermask MLP, one FRL
   update (a ranking per score tensor + frozen weights) is packed with ``frl_rank`` and with
   ``dense``, and a FedAvg update (Gaussian float32 delta of the same weight tensors) with
   ``dense``; bytes are ``len()`` of the packed envelopes; encode/decode times are medians.
2. **FRL accuracy** on the proposed ``frl`` scenario (digits, 50 clients, Dirichlet 1.0, 25 per
   round, 2 epochs, batch 8, lr 0.4 * 0.999^round, momentum 0.9, wd 1e-4): clean and with 20 %
   rank-reversal attackers (ids 0..9, as the code's ``round_users < n_attackers``), the attackers
   pooling the benign rankings of all 10 malicious partitions as the code does; anchor: FedAvg
   of a plain MLP of the same shape (lr 0.01, the code's baseline lr) in the same run.
3. **Bristle accuracy** on the proposed ``bristle`` setting (mnist1d, 10 nodes, 4 label shards
   each, 3 nodes flip all labels ``y -> (y - 1) mod 10`` as ``label_flip_all`` in the code): peer
   mode and server mode, against FedAvg of the same transfer model (the floor).

This script drives the same pure client/server functions the engines use (``local_update``,
``encode_delta``, ``aggregate_replies``, ``run_peer_mode``) in its own loop; the engine path (both
engines, 3 seeds) is measured by ``benchmarks/bench_frl_engine.py`` and Bristle's peer mode through
the engines by ``benchmarks/bench_bristle_peer.py``. Regenerate::

    .venv/bin/python benchmarks/bench_frl.py            # ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_frl.py --quick    # ~1 min

Writes ``benchmarks/results/frl.json`` (``frl_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from _provenance import Provenance, out_path, parser

import stamen.task.models.bristle_transfer as bm
from stamen.client.core import encode_delta, local_update
from stamen.protocols import CodecPipeline, CodecSpec, keys, model_hash, tensor_table
from stamen.server.aggregators import create
from stamen.server.aggregators.bristle import BristleRule
from stamen.server.driver.offline import aggregate_replies
from stamen.server.driver.types import Reply
from stamen.server.sampling import sample_clients
from stamen.simulations.attacks.rank_reversal import reversed_combined_ranking
from stamen.simulations.provider import client_data
from stamen.simulations.provider import test_data as held_out
from stamen.task.bristle.integrator import predictions
from stamen.task.bristle.peer import PeerNode, run_peer_mode
from stamen.task.data import TaskData
from stamen.task.models import build_model, create_model
from stamen.task.seeds import client_seed
from stamen.task.spec import TaskSpec, TrainSpec
from stamen.task.weights import evaluate_model, get_weights, set_weights

LENET = {"c1": (32, 1, 3, 3), "c2": (64, 32, 3, 3), "f1": (128, 12544, 1, 1), "f2": (10, 128, 1, 1)}


def median_s(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def frl_update(shapes: Mapping[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Frozen weights (zeros) and a random ranking per score tensor, in state-dict order."""
    out = {}
    for name, shape in shapes.items():
        out[f"{name}.weight"] = np.zeros(shape, np.float32)
        out[f"{name}.scores"] = rng.permutation(int(np.prod(shape))).astype(np.float32).reshape(shape)
    return out


def bytes_row(label: str, shapes: Mapping[str, tuple[int, ...]], repeats: int) -> dict[str, Any]:
    """Envelope bytes and codec times of one model layout."""
    rng = np.random.default_rng(0)
    frl = frl_update(shapes, rng)
    fedavg = {f"{n}.weight": rng.normal(0, 0.01, s).astype(np.float32) for n, s in shapes.items()}
    ffrl, ffed = tensor_table(frl), tensor_table(fedavg)
    kw: dict[str, Any] = dict(base_hash="0" * 64, version=1, sender="client-0", seed=0)
    size = {
        name: len(encode_delta(d, codec, **kw))
        for name, d, codec in (
            ("frl_rank", frl, "frl_rank"),
            ("frl_dense", frl, "dense"),
            ("fedavg_dense", fedavg, "dense"),
        )
    }
    pipe, dense = CodecPipeline(CodecSpec.parse("frl_rank")), CodecPipeline(CodecSpec.parse("dense"))
    payload, dpayload = pipe.encode(frl, rng), dense.encode(fedavg, rng)
    edges = sum(int(np.prod(s)) for s in shapes.values())
    return {
        "model": label,
        "edges": edges,
        "bytes": size,
        "ideal_bits": sum(n * (n - 1).bit_length() for n in (int(np.prod(s)) for s in shapes.values())),
        "ratio_frl_rank_vs_fedavg": size["frl_rank"] / size["fedavg_dense"],
        "encode_s": {
            "frl_rank": median_s(lambda: pipe.encode(frl, rng), repeats),
            "fedavg_dense": median_s(lambda: dense.encode(fedavg, rng), repeats),
        },
        "decode_s": {
            "frl_rank": median_s(lambda: pipe.decode(payload, ffrl), repeats),
            "fedavg_dense": median_s(lambda: dense.decode(dpayload, ffed), repeats),
        },
    }


def mlp_shapes() -> dict[str, tuple[int, ...]]:
    """Weight shapes of the digits supermask MLP 64-128-128-10."""
    model = create_model("supermask_mlp", 64, 10, (128, 128), seed=0)
    state = model.state_dict()
    return {k.removesuffix(".weight"): tuple(v.shape) for k, v in state.items() if k.endswith("weight")}


# ---- FRL accuracy --------------------------------------------------------------------------------
FRL_TASK = TaskSpec(
    dataset="digits",
    partition="dirichlet",
    alpha=1.0,
    num_clients=50,
    model="supermask_mlp",
    hidden=(128, 128),
    seed=0,
)
FRL_SPEC = TrainSpec(trainer="frl", epochs=2, batch_size=8, lr=0.4, momentum=0.9, weight_decay=1e-4)


def frl_run(rounds: int, seed: int, n_bad: int, fedavg: bool = False) -> dict[str, Any]:
    """One FRL (or FedAvg-MLP) federation; returns final/best accuracy and mean bytes up."""
    task = dataclasses.replace(FRL_TASK, seed=seed, model="mlp" if fedavg else "supermask_mlp")
    spec = dataclasses.replace(FRL_SPEC, trainer="full", lr=0.01) if fedavg else FRL_SPEC
    model, test = build_model(task), held_out(task)
    weights, rule = get_weights(model), create("fedavg" if fedavg else "frl")
    accs, ups, t0 = [], [], time.perf_counter()
    for rnd in range(1, rounds + 1):
        sp = dataclasses.replace(spec, lr=spec.lr * 0.999 ** (rnd - 1))  # the code's lrdc per round
        pids = sample_clients(seed, rnd, task.num_clients, 25)
        h = model_hash(weights)
        replies = []
        forged = (
            _reversed_pool(model, weights, task, sp, seed, rnd, n_bad)
            if n_bad and any(p < n_bad for p in pids)
            else None
        )
        for pid in pids:
            s, local = client_seed(seed, rnd, pid), client_data(task, pid)
            if forged is not None and pid < n_bad:  # malicious: submit the reversed pooled ranking
                delta, num = forged, len(local.y)
            else:
                res = local_update(model, weights, local, sp, s)
                delta, num = res.delta, res.num_examples
            data = encode_delta(
                delta,
                "dense" if fedavg else "frl_rank",
                base_hash=h,
                version=rnd,
                sender=f"client-{pid}",
                seed=s,
            )
            replies.append(_reply(f"client-{pid}", data, num))
        new, stats = aggregate_replies(weights, replies, rule, 1.0, version=rnd)
        weights = new or weights
        ups.append(stats.bytes_up)
        set_weights(model, weights)
        accs.append(evaluate_model(model, test.x, test.y)[1])
    return {
        "final": accs[-1],
        "best": max(accs),
        "bytes_up_per_round": float(np.mean(ups)),
        "wall_s": time.perf_counter() - t0,
    }


def _reversed_pool(
    model: torch.nn.Module,
    weights: dict[str, np.ndarray],
    task: TaskSpec,
    spec: TrainSpec,
    seed: int,
    rnd: int,
    n_bad: int,
) -> dict[str, np.ndarray]:
    """The code's attacker: train min(n_bad, 25) malicious partitions benignly, reverse the pool."""
    pool = np.random.default_rng([seed, rnd, 0xBAD]).choice(n_bad, min(n_bad, 25), replace=False)
    deltas = [
        local_update(model, weights, client_data(task, int(p)), spec, client_seed(seed, rnd, int(p))).delta
        for p in pool
    ]
    out = {}
    for k, v in deltas[0].items():
        out[k] = np.zeros_like(v)
        if k.endswith("scores"):
            pooled = np.stack([d[k].reshape(-1) for d in deltas])
            out[k] = reversed_combined_ranking(pooled).astype(np.float32).reshape(v.shape)
    return out


# ---- Bristle accuracy ----------------------------------------------------------------------------
BR_TASK = TaskSpec(
    dataset="mnist1d",
    num_samples=5000,
    partition="shards",
    shards_per_client=4,
    num_clients=10,
    model="bristle_transfer",
    seed=0,
)
BR_SPEC = TrainSpec(trainer="bristle", epochs=1, batch_size=5, lr=1e-3, optimizer="adam", weight_decay=5e-3)
BAD = (7, 8, 9)  # the code makes the last nodes the attackers


def _reply(client: str, data: bytes, examples: int) -> Reply:
    """A client's envelope as the round driver receives it."""
    return Reply(client, envelope=data, metrics={keys.NUM_EXAMPLES: examples}, nbytes=len(data))


def _node_data(pid: int, attacked: bool) -> TaskData:
    d = client_data(BR_TASK, pid)
    return TaskData(d.x, (d.y - 1) % 10, d.num_classes, d.input_dim) if attacked and pid in BAD else d


def _slices(attacked: bool) -> list[PeerNode]:
    """Per node: 10 samples of each of its classes (``validation_slice``, an independent draw)."""
    nodes = []
    for pid in range(10):
        classes = tuple(int(c) for c in np.unique(client_data(BR_TASK, pid).y))
        feats, labels = bm.validation_slice(BR_TASK.seed, classes, node=pid)
        nodes.append(PeerNode(classes, feats, labels, honest=not (attacked and pid in BAD)))
    return nodes


def bristle_run(mode: str, rounds: int, attacked: bool) -> dict[str, Any]:
    """``peer``, ``server`` or ``fedavg`` on the Bristle setting; test accuracy per round.

    Peer mode reports the mean over the honest nodes' own layers; the others the global layer.
    """
    model, test, t0 = build_model(BR_TASK), held_out(BR_TASK), time.perf_counter()
    test_feats = bm.extract_features(test.x)
    nodes = _slices(attacked)

    def acc(layer: np.ndarray) -> float:
        return float(np.mean(predictions(layer, test_feats) == test.y))

    if mode == "peer":

        def train(i: int, rnd: int, layer: np.ndarray) -> np.ndarray:
            start = {"head.weight": layer}
            local_update(model, start, _node_data(i, attacked), BR_SPEC, client_seed(0, rnd, i))
            return get_weights(model)["head.weight"]

        _, hist = run_peer_mode(
            nodes,
            np.zeros((10, bm.FEATURES), np.float32),
            rounds,
            train,
            seed=0,
            evaluate=lambda i, w: acc(w),
        )
        return {"final": hist[-1], "best": max(hist), "wall_s": time.perf_counter() - t0}
    rule: Any = create("fedavg")
    if mode == "server":
        rule = BristleRule(seed=0)
        rule.set_validation(*bm.validation_slice(BR_TASK.seed))
    spec = BR_SPEC if mode == "server" else dataclasses.replace(BR_SPEC, trainer="full")
    weights, hist = get_weights(model), []
    for rnd in range(1, rounds + 1):
        h = model_hash(weights)
        replies = []
        for pid in range(10):
            res = local_update(model, weights, _node_data(pid, attacked), spec, client_seed(0, rnd, pid))
            data = encode_delta(
                res.delta, "dense", base_hash=h, version=rnd, sender=f"client-{pid}", seed=rnd
            )
            replies.append(_reply(f"client-{pid}", data, res.num_examples))
        weights = aggregate_replies(weights, replies, rule, 1.0, version=rnd)[0] or weights
        hist.append(acc(weights["head.weight"]))
    return {"final": hist[-1], "best": max(hist), "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = parser(__doc__, quick="few rounds, one seed (about a minute)", out="frl.json")
    ap.add_argument("--frl-rounds", type=int, default=100)
    ap.add_argument("--bristle-rounds", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    prov = Provenance.capture()
    torch.set_num_threads(1)
    frl_rounds, br_rounds = (8, 4) if args.quick else (args.frl_rounds, args.bristle_rounds)
    out: dict[str, Any] = {
        "quick": args.quick,
        "bytes": [
            bytes_row("LeNet (paper, MNIST)", LENET, 1 if args.quick else args.repeats),
            bytes_row("supermask MLP 64-128-128-10 (digits)", mlp_shapes(), args.repeats),
        ],
    }
    print("| model | edges | FRL frl_rank B | FRL dense B | FedAvg fp32 B | ratio frl_rank/FedAvg |")
    print("|---|---|---|---|---|---|")
    for r in out["bytes"]:
        b = r["bytes"]
        print(
            f"| {r['model']} | {r['edges']:,} | {b['frl_rank']:,} | {b['frl_dense']:,} | "
            f"{b['fedavg_dense']:,} | {r['ratio_frl_rank_vs_fedavg']:.3f} |"
        )
    out["frl_accuracy"] = {
        "rounds": frl_rounds,
        "seed": 0,
        "runs": {
            "frl_clean": frl_run(frl_rounds, 0, 0),
            "frl_rank_reversal_20pct": frl_run(frl_rounds, 0, 10),
            "fedavg_mlp_clean": frl_run(frl_rounds, 0, 0, fedavg=True),
        },
    }
    print(f"\nFRL on digits, {frl_rounds} rounds, seed 0 (final / best accuracy):")
    for k, v in out["frl_accuracy"]["runs"].items():
        print(f"  {k:28s} {v['final']:.4f} / {v['best']:.4f}  bytes up/round {v['bytes_up_per_round']:,.0f}")
    out["bristle_accuracy"] = {
        "rounds": br_rounds,
        "runs": {
            f"{mode}_{'label_flip_3of10' if att else 'clean'}": bristle_run(mode, br_rounds, att)
            for mode in ("peer", "server", "fedavg")
            for att in (False, True)
        },
    }
    print(f"\nBristle setting (mnist1d, 10 nodes, 4 shards each), {br_rounds} rounds (final / best):")
    for k, v in out["bristle_accuracy"]["runs"].items():
        print(f"  {k:28s} {v['final']:.4f} / {v['best']:.4f}")
    prov.write(out_path(args), out)


if __name__ == "__main__":
    main()
