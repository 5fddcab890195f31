"""benchmarks/plot_scale.py reads bench_scale_memory's rows into (clients -> RSS, s per round)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("plot_scale", ROOT / "benchmarks" / "plot_scale.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path: Path, rounds: int, rows: dict[str, tuple[float, float, float]]) -> Path:
    body = {str(k): {"peak_rss_mib": r, "wall_s": w, "plan_s": p} for k, (r, w, p) in rows.items()}
    path.write_text(json.dumps({"rounds": rounds, "rows": body}))
    return path


def test_points_per_round_after_the_plan_and_the_later_file_wins(tmp_path: Path) -> None:
    big = _write(tmp_path / "a.json", 2, {"1000": (500.0, 30.0, 10.0), "1000000": (575.0, 20.0, 12.0)})
    main = _write(tmp_path / "b.json", 2, {"1000": (443.0, 14.0, 7.0), "10000": (454.0, 15.0, 8.0)})
    pts = _module().points([big, main])
    assert list(pts) == [1000, 10000, 1000000]  # sorted by clients
    assert pts[1000] == pytest.approx({"rss": 443.0, "round_s": 3.5})  # (14 - 7) / 2, from b.json
    assert pts[1000000] == pytest.approx({"rss": 575.0, "round_s": 4.0})


def test_plot_writes_a_png(tmp_path: Path) -> None:
    mod = _module()
    out = tmp_path / "scale.png"
    mod.plot({1000: {"rss": 440.0, "round_s": 3.6}, 100000: {"rss": 441.0, "round_s": 3.5}}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
