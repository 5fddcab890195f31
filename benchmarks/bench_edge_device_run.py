"""One device-level memory measurement of a MiniLM personalization run, in a fresh process.

Spawned by ``bench_edge_personalize_device.py`` (one process per configuration, so no run inherits
another's heap) with a JSON spec: the weights files, the local data, the resolved plan, how frozen
weights are held (``copy``/``mmap``/``fp16``/``int8``, :mod:`stamen.edge.device_model`), the step
size. ``mode = "plan"`` instead resolves a ``budget=`` plan (the planner's own probe) and measures
that.

What is measured (Linux ``/proc``), all in bytes:

- ``baseline``: after the interpreter, torch, numpy, stamen and the data are loaded and one
  training step of a tiny model with the same operators has run, before any weight exists:
  ``VmRSS``, ``RssAnon``, ``RssFile``. Then the RSS high-water mark is reset
  (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0).
- ``hwm``: ``VmHWM`` after the run, the kernel's exact RSS peak since the reset: anonymous *and*
  file-backed pages (mapped weights the run touched count while mapped).
- ``peak_anon``: the largest ``RssAnon`` seen by a thread sampling ``/proc/self/statm`` every
  millisecond (``resident - shared`` pages) plus samples at the end of the build and of the run —
  a sampled lower bound of the anonymous peak (the kernel keeps no anonymous high-water mark).
- ``step_ms``, ``training_bytes`` (saved activations + gradients + optimizer state of one step,
  as ``stamen.edge.personalization`` counts them), and the trained tensors (written to ``out``).

    python benchmarks/bench_edge_device_run.py SPEC.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import gc
import json
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from stamen.edge.device_model import SafetensorsFile, device_model
from stamen.edge.modbudget import module_plan_for_budget
from stamen.edge.modplans import ModulePlan
from stamen.edge.personalization import PersonalizeConfig, probe_batch, train_plan
from stamen.task.models.minilm import MINILM, TINY, TextClassifier

PAGE = os.sysconf("SC_PAGE_SIZE")
CLASSES = 10


def status() -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile`` of this process in bytes."""
    text = Path("/proc/self/status").read_text()
    keys = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    return {k: 1024 * int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) for k in keys}  # type: ignore[union-attr]


def reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Sampler(threading.Thread):
    """Largest anonymous RSS (``resident - shared`` of ``/proc/self/statm``), every ``period`` s."""

    def __init__(self, period: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.period, self.peak_anon, self._done = period, 0, threading.Event()

    def sample(self) -> None:
        _, resident, shared, *_ = (int(v) for v in Path("/proc/self/statm").read_text().split())
        self.peak_anon = max(self.peak_anon, (resident - shared) * PAGE)

    def run(self) -> None:
        while not self._done.wait(self.period):
            self.sample()

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.sample()


def _plan(obj: dict) -> ModulePlan:
    chans = tuple((w, tuple(c)) for w, c in obj["channels"])
    return ModulePlan(obj["text"], tuple(obj["params"]), chans, bool(obj["full"]))


WORD = "bert.embeddings.word_embeddings.weight"


def _build(spec: dict, sources: list[SafetensorsFile], trained: set[str], x: np.ndarray) -> torch.nn.Module:
    """The device model; outside ``copy`` only the embedding rows of the local tokens are kept."""
    rows = {WORD: np.unique(x)} if spec["frozen"] != "copy" else None
    return device_model(lambda: TextClassifier(MINILM, CLASSES), sources, trained, spec["frozen"], rows)


def warm_up() -> None:
    """One training step of a tiny model with the same operators, so that torch's lazily
    created state (thread pools, kernels' scratch) belongs to the baseline, not to a run."""
    tiny = TextClassifier(TINY, CLASSES).eval()
    ids = torch.randint(1, 1000, (4, 64), generator=torch.Generator().manual_seed(0))
    torch.nn.functional.cross_entropy(tiny(ids), torch.zeros(4, dtype=torch.long)).backward()


def _train(
    spec: dict, sources: list[SafetensorsFile], x: np.ndarray, y: np.ndarray, sampler: Sampler
) -> dict:
    plan = _plan(spec["plan"])
    trained = set(plan.params) | {w for w, _ in plan.channels}
    cfg = PersonalizeConfig(epochs=spec["epochs"], batch_size=spec["batch"], lr=spec["lr"], seed=spec["seed"])
    model = _build(spec, sources, trained, x)
    sampler.sample()
    after_build = status()
    stats, losses = train_plan(model, x, y, plan, cfg)
    sampler.sample()
    out = {n: p.detach().numpy() for n, p in model.named_parameters() if n in trained}
    return {
        "after_build": after_build,
        "step_ms": stats.step_ms,
        "training_bytes": stats.total_bytes,
        "losses": losses,
        "_overlay": out,
    }


def _resolve(
    spec: dict, sources: list[SafetensorsFile], x: np.ndarray, y: np.ndarray, sampler: Sampler
) -> dict:
    cfg = PersonalizeConfig(
        epochs=1, batch_size=spec["batch"], lr=0.01, seed=spec["seed"], probe=spec["probe"]
    )
    model = _build({**spec, "frozen": "copy"}, sources, set(), x)  # the planner needs every weight
    xp, yp = probe_batch(x, y, cfg)
    plan = module_plan_for_budget(model, xp, yp, int(spec["budget"]), cfg.batch_size, 0)
    sampler.sample()
    return {"plan_params": len(plan.params), "plan_channels": len(plan.channels)}


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    with np.load(spec["data"]) as f:
        x, y = np.array(f["x"]), np.array(f["y"])
    sources = [SafetensorsFile(Path(p)) for p in spec["weights"]]
    warm_up()
    gc.collect()
    base = status()
    exact = reset_hwm()
    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    run = _train if spec["mode"] == "train" else _resolve
    result = run(spec, sources, x, y, sampler)
    sampler.stop()
    end = status()
    overlay = result.pop("_overlay", None)
    if overlay is not None:
        save_file({k: np.ascontiguousarray(v) for k, v in overlay.items()}, spec["out_weights"])
    result |= {
        "baseline": base,
        "end": end,
        "hwm": end["VmHWM"],
        "hwm_exact": exact,
        "peak_anon": max(sampler.peak_anon, end["RssAnon"]),
        "seconds": time.perf_counter() - t0,
    }
    Path(spec["out"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
