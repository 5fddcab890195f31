"""``benchmarks/_provenance.py``: every results file records the commit and the command behind it."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


P = _load("_provenance")


def _head() -> str:
    return subprocess.run(
        ["git", "-C", str(BENCH), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_write_records_commit_command_and_strict_json(tmp_path: Path) -> None:
    prov = P.Provenance.capture(["--quick", "--seeds", "0,1"], script=str(BENCH / "bench_rqm.py"))
    assert prov.commit == _head() and isinstance(prov.dirty, bool)
    assert prov.command.endswith("benchmarks/bench_rqm.py --quick --seeds 0,1")
    path = prov.write(
        tmp_path / "r.json", {"x": math.nan, "rows": [np.float32(1.5), np.arange(2)]}, quiet=True
    )
    doc = json.loads(path.read_text())  # strict: NaN became null
    assert doc["x"] is None and doc["rows"] == [1.5, [0, 1]]
    record = doc["provenance"]
    assert record["commit"] == prov.commit and record["command"] == prov.command
    assert record["wall_s"] >= 0 and record["software"]["python"] and record["machine"]["cpus"] >= 1
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_command_line_is_relative_to_the_repository() -> None:
    text = P.command_line([str(BENCH / "bench_codecs.py"), "--size", "2000", "a b"])
    assert text.split()[1:] == ["benchmarks/bench_codecs.py", "--size", "2000", "'a", "b'"]


def test_parser_and_out_path_quick_suffix(tmp_path: Path) -> None:
    p = P.parser("First line.\n\nMore.", quick="fast", out="thing.json")
    assert p.description == "First line."
    assert P.out_path(p.parse_args([])) == P.RESULTS / "thing.json"
    assert P.out_path(p.parse_args(["--quick"])) == P.RESULTS / "thing_quick.json"
    assert P.out_path(p.parse_args(["--quick", "--out", str(tmp_path / "o.json")])) == tmp_path / "o.json"
    with pytest.raises(SystemExit):
        p.parse_args(["--nope"])


# scripts owned elsewhere that have not adopted the helper yet (delete a name once it has)
NOT_YET = {
    "bench_edge_apply.py",
    "bench_edge_personalize.py",
    "bench_edge_personalize_minilm.py",
    "bench_cohort_training.py",
    "bench_partition_memory.py",
    "bench_gi_cost.py",
    "bench_edge_device_run.py",  # a child process of bench_edge_personalize_device.py: writes no results file
}


def test_every_result_writing_script_uses_the_helper() -> None:
    scripts = sorted(p for p in BENCH.glob("bench_*.py") if p.name not in NOT_YET)
    assert len(scripts) >= 12
    for script in scripts:
        text = script.read_text()
        assert "_provenance" in text, f"{script.name} writes results without _provenance"
        assert not re.search(r"write_text\(\s*json\.dumps", text), f"{script.name} writes JSON itself"
