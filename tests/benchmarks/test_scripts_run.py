"""Every ``benchmarks/bench_*.py`` script imports and runs on the current tree (issue #13 §3, #10).

Three checks ((a) and (c) run each script in a fresh interpreter):

(a) ``--help`` exits 0 (catches import errors of the script's top-level imports);
(b) every ``from stamen... import name`` in a script, including the lazy ones inside functions,
    names something that exists (catches API drift in code ``--help`` never reaches);
(c) ``@pytest.mark.slow``: the quick mode (or smallest flags) of the scripts that finish in about a
    minute on a loaded 2-core machine writes a results JSON with ``provenance`` and the script's
    main keys.

Scripts not run by (c), and why (each was run by hand with its quickest flags; see the benchfix
report):

- ``bench_bristle_setting.py``, ``bench_compression.py``, ``bench_privacy.py``,
  ``bench_robustness.py``, ``bench_frl_engine.py``, ``bench_bristle_peer.py``: federated training
  runs, minutes even with ``--quick``;
- ``bench_engine_throughput.py``: starts Flower + Ray (minutes on this machine);
- ``bench_lora.py``, ``bench_trainer_cost.py``, ``bench_edge_personalize_minilm.py``,
  ``bench_edge_personalize_device.py``: MiniLM fine-tuning, minutes;
- ``bench_frl.py``, ``bench_edge_apply.py``, ``bench_edge_personalize.py``, ``bench_gi_cost.py``,
  ``bench_rqm.py``: 2 to 13 minutes in quick mode here;
- ``bench_deploy_images.py``: needs the built Docker images;
- ``bench_edge_device_run.py``: a worker of ``bench_edge_personalize_device.py`` (takes its spec
  file), covered by (a) and (b) only.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("bench_*.py"))

#: scripts whose ``--help`` imports torch/onnxruntime at the top (seconds each on a loaded machine)
HEAVY_HELP = frozenset(
    {
        "bench_cohort_training.py",
        "bench_compression.py",
        "bench_edge_apply.py",
        "bench_edge_cli.py",
        "bench_edge_device_run.py",
        "bench_edge_personalize.py",
        "bench_edge_personalize_device.py",
        "bench_edge_personalize_minilm.py",
        "bench_engine_throughput.py",
        "bench_envelope_path.py",
        "bench_frl.py",
        "bench_gi_cost.py",
        "bench_hierarchy.py",
        "bench_lora.py",
        "bench_privacy.py",
        "bench_round_phases.py",
        "bench_trainer_cost.py",
    }
)

#: (c): script -> (arguments of its quickest run, top-level keys its results JSON must have)
QUICK: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "bench_aggregators.py": (("--quick",), ("cases", "repeats")),
    "bench_codecs.py": (("--size", "100000"), ("codecs", "anchor_zstd3_raw_fp32")),
    "bench_edge_cli.py": (("--repeats", "1"), ("rows", "repeats")),
    "bench_cli_startup.py": (("--repeats", "1"), ("median_s", "repeats")),
    "bench_partition_memory.py": (
        ("--clients", "1000", "--schemes", "iid"),
        ("rows", "lazy_peak_max_over_min"),
    ),
    "bench_cohort_training.py": (
        ("--cohorts", "100", "--repeats", "1", "--loop-clients", "10"),
        ("rows", "max_abs_diff_vs_loop"),
    ),
    "bench_hierarchy.py": (("--quick",), ("equality", "aggregation_time", "attack")),
    "bench_lora_downlink.py": (("--quick",), ("rows", "overrides")),
    "bench_envelope_path.py": (("--quick",), ("per_client_us", "budget_us", "bytes_per_update")),
    "bench_client_states.py": (("--quick",), ("rows", "runs", "codec")),
    "bench_round_phases.py": (("--quick",), ("phase_ms", "round_ms", "budget_ms_5000_per_s")),
}


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``python args...`` from the repository root, Flower/Ray offline (the test-wide environment)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _help_params() -> list[object]:
    slow = pytest.mark.slow
    return [pytest.param(s, marks=slow, id=s) if s in HEAVY_HELP else pytest.param(s, id=s) for s in SCRIPTS]


def test_every_script_is_listed() -> None:
    """The tables above name real scripts, and the glob finds the scripts (a typo fails here)."""
    assert len(SCRIPTS) >= 20
    assert set(HEAVY_HELP) <= set(SCRIPTS)
    assert set(QUICK) <= set(SCRIPTS)


@pytest.mark.parametrize("script", _help_params())
def test_help_exits_zero(script: str) -> None:
    """(a) ``--help`` answers with a usage line and exit 0 in a fresh interpreter."""
    done = _run([str(BENCH / script), "--help"], timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:"), done.stdout[:200]


def stamen_imports(source: str) -> list[tuple[str, str, str]]:
    """Every ``(module, name, alias)`` of ``from stamen... import name as alias`` in ``source`` at any
    depth; ``import stamen.x.y as alias`` gives ``(stamen.x.y, "", alias)``, plain ``import stamen.x.y``
    ``(stamen.x.y, "", "stamen")`` (alias = the name bound)."""
    out: list[tuple[str, str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("stamen"):
            out += [(str(node.module), a.name, a.asname or a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [
                (a.name, "", a.asname or a.name.partition(".")[0])
                for a in node.names
                if a.name.startswith("stamen")
            ]
    return out


def attribute_uses(source: str, bound: set[str]) -> set[tuple[str, str]]:
    """``(name, attr)`` of every ``name.attr`` in ``source`` whose ``name`` is in ``bound``."""
    return {
        (node.value.id, node.attr)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
    }


def _resolve(module: str, name: str) -> object:
    """The object ``from module import name`` binds (``import module`` when ``name`` is empty)."""
    mod = importlib.import_module(module)
    if not name:
        return mod
    if hasattr(mod, name):
        return getattr(mod, name)
    return importlib.import_module(f"{module}.{name}")  # a submodule not imported by the package


def unresolved(source: str) -> list[str]:
    """What ``source`` imports from stamen, or reads off an imported stamen class or module
    (``SimulationPlan.from_scenario``, ``bm.FEATURES``), that does not exist: one line each."""
    imports = stamen_imports(source)
    bad, objects = [], {}
    for module, name, alias in imports:
        try:
            objects[alias] = _resolve(module, name)
        except ImportError as exc:
            bad.append(f"{module}:{name or '*'}: {exc}")
    for alias, attr in sorted(attribute_uses(source, set(objects) - {"stamen"})):  # not `import stamen.x`
        obj = objects[alias]
        if (isinstance(obj, type) or inspect.ismodule(obj)) and not hasattr(obj, attr):
            bad.append(f"{alias}.{attr} does not exist")
    return bad


def test_stamen_imports_finds_lazy_and_top_level() -> None:
    """Hand-made source: a top-level, a nested and an aliased import are found; others are not."""
    src = (
        "import os\nfrom stamen.task import spec\nimport stamen.protocols.keys as k\n"
        "def f():\n    from stamen.simulations.plan import SimulationPlan, x as y\n"
        "    from .local import z\n"
    )
    assert sorted(stamen_imports(src)) == [
        ("stamen.protocols.keys", "", "k"),
        ("stamen.simulations.plan", "SimulationPlan", "SimulationPlan"),
        ("stamen.simulations.plan", "x", "y"),
        ("stamen.task", "spec", "spec"),
    ]


def test_unresolved_names_removed_names_and_attributes() -> None:
    """The drift this suite exists for: a removed class, a removed classmethod of a present class, a
    missing module attribute; present names, submodules and instance attributes pass."""
    src = (
        "from stamen.protocols import keys, Nope\n"
        "from stamen.server.config import ServerConfig\n"
        "import stamen.protocols.keys as k\n"
        "def f(cfg):\n"
        "    ServerConfig.from_settings, ServerConfig.from_scenario, k.NUM_EXAMPLES, k.GONE, cfg.anything\n"
    )
    assert unresolved(src) == [
        "stamen.protocols:Nope: No module named 'stamen.protocols.Nope'",
        "ServerConfig.from_scenario does not exist",
        "k.GONE does not exist",
    ]
    assert unresolved("from stamen.no_such_module import x")[0].startswith("stamen.no_such_module:x: ")


@pytest.mark.slow
def test_every_stamen_import_of_every_script_resolves() -> None:
    """(b) every stamen name any script imports, lazily or not, exists on the current tree."""
    bad = {}
    for script in [
        *SCRIPTS,
        "lora_report.py",
        "robustness_report.py",
        "plot_privacy_compression.py",
        "plot_scale.py",
    ]:
        path = BENCH / script
        if path.exists():
            missing = unresolved(path.read_text())
            if missing:
                bad[script] = missing
    assert not bad, bad


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(QUICK))
def test_quick_run_writes_results(script: str, tmp_path: Path) -> None:
    """(c) the quickest run exits 0 and writes its JSON (provenance + main keys) where ``--out`` says."""
    args, keys = QUICK[script]
    out = tmp_path / "result.json"
    done = _run([str(BENCH / script), *args, "--out", str(out)], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert f"benchmarks/{script}" in data["provenance"]["command"]
    assert isinstance(data["provenance"]["commit"], str) and len(data["provenance"]["commit"]) >= 7
    missing = [k for k in keys if k not in data]
    assert not missing, f"{script}: results lack {missing}; has {sorted(data)}"
