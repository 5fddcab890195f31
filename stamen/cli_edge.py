"""``stamen keys|delta|edge`` commands (the edge runtime's command line).

    stamen keys generate --out DIR
    stamen delta create --base OLD --target NEW --codec SPEC --key PRIVATE -o update.stamen [--version N]
    stamen edge init --onnx MODEL.onnx | --torch STATE.safetensors --model DIR --trust PUBLIC
    stamen edge apply --model DIR update.stamen
    stamen edge rollback --model DIR
    stamen edge status --model DIR
    stamen edge repair --model DIR
    stamen edge personalize --model DIR --data FILE.npz --plan bias|last_k=2|channels=0.25|budget=2MB|full
    stamen edge predict --model DIR --input FILE.npz [--all]

Every failure raises ``ValueError``/``FileNotFoundError`` with a one-line reason, which
``stamen.cli.main`` prints as ``stamen: error: ...`` with exit code 2; a refused command leaves the
store unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "dispatch", "prediction_summary"]


def add_commands(sub: Any) -> None:
    """Add the ``keys``, ``delta`` and ``edge`` command groups to ``stamen``'s subparsers."""
    _add_keys_and_delta(sub)
    _add_edge(sub)


def _add_keys_and_delta(sub: Any) -> None:
    keys = sub.add_parser("keys", help="Ed25519 signing keys").add_subparsers(dest="action", required=True)
    gen = keys.add_parser("generate", help="write DIR/private.pem (0600) and DIR/public.pem")
    gen.add_argument("--out", type=Path, required=True, metavar="DIR")

    delta = sub.add_parser("delta", help="signed delta updates").add_subparsers(dest="action", required=True)
    cr = delta.add_parser("create", help="sign NEW - OLD as an update envelope")
    cr.add_argument("--base", type=Path, required=True, metavar="OLD", help=".onnx or .safetensors")
    cr.add_argument("--target", type=Path, required=True, metavar="NEW", help=".onnx or .safetensors")
    cr.add_argument(
        "--codec", default="dense", metavar="SPEC", help="e.g. dense, int8, topk(ratio=0.01), lowrank"
    )
    cr.add_argument("--key", type=Path, required=True, metavar="PRIVATE", help="PEM Ed25519 private key")
    cr.add_argument("-o", "--out", type=Path, required=True, metavar="FILE")
    cr.add_argument("--version", type=int, default=None, help="version after applying (default: Unix time)")
    cr.add_argument("--model-id", default=None, help="bind the update to this model id")
    cr.add_argument("--seed", type=int, default=0, help="seed of stochastic codec stages")


def _add_edge(sub: Any) -> None:
    edge = sub.add_parser("edge", help="on-device model store").add_subparsers(dest="action", required=True)
    init = edge.add_parser("init", help="create a model store from an ONNX or safetensors model")
    src = init.add_mutually_exclusive_group(required=True)
    src.add_argument("--onnx", type=Path, metavar="MODEL.onnx")
    src.add_argument("--torch", type=Path, metavar="STATE.safetensors")
    init.add_argument("--trust", type=Path, required=True, metavar="PUBLIC", help="PEM Ed25519 public key")
    init.add_argument("--model-id", default=None)
    init.add_argument("--arch", default=None, help="architecture JSON if the file carries none")
    for name, helptext in [
        ("apply", "apply a signed update"),
        ("rollback", "serve the previous version"),
        ("status", "print the store state as JSON"),
        ("repair", "if the current version is corrupt, serve the newest intact retained one"),
        ("personalize", "sparse-backprop fine-tuning into the personal overlay"),
        ("predict", "run the served model on an .npz input"),
    ]:
        cmd = edge.add_parser(name, help=helptext)
        cmd.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads (default 1)")
        if name == "apply":
            cmd.add_argument("update", type=Path, metavar="UPDATE")
        _model_arg(cmd)
    _model_arg(init)
    pers = edge.choices["personalize"]
    pers.add_argument("--data", type=Path, required=True, metavar="FILE.npz", help="x (n, ...) and y (n,)")
    pers.add_argument("--plan", required=True, help="full | bias | last_k=K | channels=R | budget=SIZE")
    pers.add_argument("--epochs", type=int, default=5)
    pers.add_argument("--lr", type=float, default=0.05)
    pers.add_argument("--batch-size", type=int, default=32)
    pers.add_argument("--seed", type=int, default=0)
    pred = edge.choices["predict"]
    pred.add_argument("--input", type=Path, required=True, metavar="FILE.npz", help="x (n, ...), y optional")
    pred.add_argument("--all", action="store_true", help="print every prediction (default: a summary)")


def _model_arg(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--model", type=Path, required=True, metavar="DIR", help="model store directory")


def dispatch(args: argparse.Namespace) -> int:
    """Run a ``keys``/``delta``/``edge`` command; returns the exit code (errors raise)."""
    handlers = {
        ("keys", "generate"): _keys_generate,
        ("delta", "create"): _delta_create,
        ("edge", "init"): _edge_init,
        ("edge", "apply"): _edge_apply,
        ("edge", "rollback"): _edge_rollback,
        ("edge", "status"): _edge_status,
        ("edge", "repair"): _edge_repair,
        ("edge", "personalize"): _edge_personalize,
        ("edge", "predict"): _edge_predict,
    }
    handler = handlers.get((str(args.command), str(getattr(args, "action", ""))))
    if handler is None:
        raise ValueError(f"unknown command {args.command!r}")
    try:
        return handler(args)
    except BrokenPipeError:  # output piped into e.g. `head`: not an error of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except FileNotFoundError:
        raise
    except OSError as exc:  # permissions, a file where a directory should be, a full disk, ...
        raise ValueError(_os_error(exc)) from None


def _os_error(exc: OSError) -> str:
    """One line: the reason and the file it concerns (the store is unchanged: every write goes to
    a shadow or temp file first)."""
    where = f": {exc.filename}" if exc.filename is not None else ""
    return f"{exc.strerror or exc}{where}"


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=1)
    sys.stdout.write("\n")


def _keys_generate(args: argparse.Namespace) -> int:
    from stamen.protocols import Signer

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / "private.pem", out / "public.pem"
    if private.exists():
        raise ValueError(f"{private} already exists; refusing to overwrite a private key")
    signer = Signer.generate()
    signer.save(private, public)
    _print_json({"key_id": signer.key_id, "private": str(private), "public": str(public)})
    return 0


def _delta_create(args: argparse.Namespace) -> int:
    from stamen.edge.delta import create_delta, load_weights
    from stamen.protocols import Signer, model_hash

    signer = Signer.from_file(args.key) if args.key.is_file() else None
    if signer is None:
        raise FileNotFoundError(f"private key {args.key} does not exist")
    base, target = load_weights(args.base), load_weights(args.target)
    version = args.version if args.version is not None else int(time.time())
    data = create_delta(
        base, target, args.codec, signer, version=version, model_id=args.model_id, seed=args.seed
    )
    args.out.write_bytes(data)
    _print_json(
        {
            "out": str(args.out),
            "bytes": len(data),
            "codec": args.codec,
            "version": version,
            "base_hash": model_hash(base),
            "key_id": signer.key_id,
        }
    )
    return 0


def _edge_init(args: argparse.Namespace) -> int:
    from stamen.edge.runtime import EdgeRuntime
    from stamen.edge.store import create_store

    source = args.onnx if args.onnx is not None else args.torch
    create_store(args.model, source, args.trust, model_id=args.model_id, arch=args.arch)
    _print_json(EdgeRuntime.open(args.model).status())
    return 0


def _open(args: argparse.Namespace, *, serve: bool = True, repair: bool = False) -> Any:
    """Open the store; torch is imported (and its threads pinned) only for a torch store or
    ``personalize``, so the ONNX path (apply, predict, status) runs without torch installed."""
    _precheck_store(args)
    from stamen.edge.manifest import load_manifest
    from stamen.edge.runtime import EdgeRuntime

    if args.action == "personalize" or load_manifest(args.model).backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    return EdgeRuntime.open(args.model, threads=args.threads, serve=serve, repair=repair)


def _precheck_store(args: argparse.Namespace) -> None:
    """Mistakes found before anything heavy is imported (an error in ~0.1 s)."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not (args.model / "manifest.json").is_file():
        raise FileNotFoundError(f"{args.model} is not an edge model store (no manifest.json)")


def _load_input(args: argparse.Namespace, path: Path, *, labelled: bool) -> tuple[Any, Any]:
    """Read ``path`` and check it against the store's architecture spec, if it has one, before
    the store is opened (numpy only; the graph's own input is checked again when it runs)."""
    import json

    from stamen.edge.archspec import parse_arch
    from stamen.edge.inputs import InputSpec, load_npz

    _precheck_store(args)
    try:
        arch = json.loads((args.model / "manifest.json").read_text("utf-8")).get("arch")
        spec = parse_arch(arch) if arch else None
    except (OSError, ValueError, AttributeError):  # a bad manifest is reported when the store opens
        spec = None
    x, y = load_npz(path, spec.classes if spec is not None else None)
    if labelled and len(y) != len(x):
        raise ValueError(f"{path}: personalization needs labels: a 'y' array of {len(x)} integers")
    if spec is not None:
        InputSpec(spec.input_shape, flat_ok=True).check(x, str(path))
    return x, y


def _edge_apply(args: argparse.Namespace) -> int:
    from stamen.protocols import StamenError

    if not args.update.is_file():
        raise FileNotFoundError(f"update file {args.update} does not exist")
    rt = _open(args, serve=False)  # apply builds the new version's session itself
    start = time.perf_counter()
    try:
        version = rt.apply(args.update.read_bytes())
    except StamenError as exc:
        raise ValueError(f"update refused ({type(exc).__name__}): {exc}; the model is unchanged") from None
    _print_json(
        {
            "version": version.version,
            "hash": version.hash,
            "prev_hash": version.prev_hash,
            "seconds": round(time.perf_counter() - start, 4),
        }
    )
    return 0


def _edge_rollback(args: argparse.Namespace) -> int:
    version = _open(args, serve=False).rollback()
    _print_json({"version": version.version, "hash": version.hash})
    return 0


def _edge_status(args: argparse.Namespace) -> int:
    _print_json(_open(args, serve=False).status())
    return 0


def _edge_repair(args: argparse.Namespace) -> int:
    """Heal a store whose current version fails its hash check; a sound store is left as it is."""
    rt = _open(args, serve=False, repair=True)
    version = rt.version()
    fixed = None if rt.repaired is None else rt.repaired.to_json()
    _print_json({"repaired": fixed, "version": version.version, "hash": version.hash})
    return 0


def _edge_personalize(args: argparse.Namespace) -> int:
    data = _load_input(args, args.data, labelled=True)  # before torch is imported (~1-2 s)
    from stamen.edge.personalization import PersonalizeConfig, personalize

    config = PersonalizeConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    rt = _open(args)
    result = personalize(rt, data, args.plan, config, source=str(args.data))
    _print_json(
        {
            "plan": result.plan.text,
            "overlay_tensors": sorted(result.overlay),
            "training_memory_bytes": result.stats.total_bytes,
            "saved_activation_bytes": result.stats.saved_bytes,
            "step_ms": round(result.stats.step_ms, 3),
            "epoch_losses": [round(v, 5) for v in result.losses],
            "version": rt.version().version,
        }
    )
    return 0


def _edge_predict(args: argparse.Namespace) -> int:
    x, y = _load_input(args, args.input, labelled=False)
    rt = _open(args)
    logits = rt.predict(x, source=str(args.input))
    pred = logits.argmax(axis=1)
    _print_json(prediction_summary(rt.version().version, pred, y, logits.shape[1], every=args.all))
    return 0


def prediction_summary(
    version: int, pred: Any, y: Any, classes: int, *, every: bool = False, first: int = 10
) -> dict[str, Any]:
    """What ``edge predict`` prints: count, the first ``first`` predictions and a histogram of the
    predicted classes (every prediction with ``every``), and the accuracy when labels are given."""
    import numpy as np

    out: dict[str, Any] = {"version": version, "count": len(pred)}
    if every:
        out["predictions"] = pred.tolist()
    else:
        out["first"] = pred[:first].tolist()
    out["class_counts"] = np.bincount(pred, minlength=classes).tolist()
    if y.size:
        out["accuracy"] = float((pred == y).mean())
    return out
