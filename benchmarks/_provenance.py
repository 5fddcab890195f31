"""What every benchmark script shares: its command line, and a results file that says where it came from.

Every file under ``benchmarks/results/`` carries a ``provenance`` record — the git commit the run
started from (and whether tracked files differed from it), the command that reproduces it, when it
ran, how long it took, the software versions and the machine's load — so a figure in BENCHMARKS.md can
be traced to the code and the command that produced it. Provenance is captured when the script
*starts* (the code it imported), not when it writes.

Usage in a script (``benchmarks/`` is ``sys.path[0]`` when a script runs)::

    from _provenance import Provenance, parser

    def main() -> None:
        p = parser(__doc__, quick="one seed, 8 rounds", out="bristle_setting.json")
        p.add_argument("--jobs", type=int, default=1)
        args = p.parse_args()
        prov = Provenance.capture()
        ...
        prov.write(args.out, {"setting": ..., "runs": ...})
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
_NOT_CODE = ":(exclude)benchmarks/results"  # outputs: a finished run's file does not dirty the next run


def _git(*args: str) -> str:
    """Output of a git command in the repository ('' when git or the repository is unavailable)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def command_line(argv: list[str] | None = None) -> str:
    """The command that reproduces this run from the repository root, e.g.
    ``.venv/bin/python benchmarks/bench_rqm.py --quick`` (the interpreter is written as the
    project's virtualenv when it is the one running)."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else Path("?")
    try:
        script_text = str(script.relative_to(ROOT))
    except ValueError:
        script_text = str(script)
    exe = Path(sys.executable)
    python = ".venv/bin/python" if (ROOT / ".venv") in exe.parents else exe.name
    return shlex.join([python, script_text, *argv[1:]])


@dataclass(frozen=True)
class Provenance:
    """Where a result came from (see the module docstring). Build it with :meth:`capture`.

    Attributes
    ----------
    commit : str
        ``git rev-parse HEAD`` when the run started ('' outside a git checkout).
    dirty : bool
        Tracked files (results files under ``benchmarks/results/`` excepted) differed from ``commit``
        when the run started: the figures come from uncommitted code and should be regenerated once
        it is committed.
    command : str
        The command line that reproduces the run, relative to the repository root.
    started : str
        UTC start time, ISO 8601 (seconds).
    software : dict
        Python, numpy and torch versions (torch only if the script imported it).
    machine : dict
        ``platform.machine()``, CPU count and the 1-minute load average at the start.
    """

    commit: str
    dirty: bool
    command: str
    started: str
    software: dict[str, str]
    machine: dict[str, Any]
    _t0: float

    @classmethod
    def capture(cls, argv: list[str] | None = None, *, script: str | None = None) -> Provenance:
        """Record the commit, the command and the environment now (call it at the start of a run).

        ``argv``: the arguments after the script when ``main(argv)`` was called directly (default:
        ``sys.argv``); ``script``: that script's path (``__file__``)."""
        if argv is not None:
            argv = [script or (sys.argv[0] if sys.argv else "?"), *argv]
        software = {"python": platform.python_version()}
        for name in ("numpy", "torch", "flwr"):
            module = sys.modules.get(name)
            if module is not None:
                software[name] = str(getattr(module, "__version__", "?"))
        machine = {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        }
        return cls(
            commit=_git("rev-parse", "HEAD"),
            dirty=bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", _NOT_CODE)),
            command=command_line(argv),
            started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            software=software,
            machine=machine,
            _t0=time.perf_counter(),
        )

    @property
    def wall_s(self) -> float:
        """Seconds since :meth:`capture`."""
        return time.perf_counter() - self._t0

    def record(self) -> dict[str, Any]:
        """The JSON-ready record, with the run's wall time so far."""
        out = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        return {**out, "wall_s": round(self.wall_s, 1)}

    def write(self, path: Path | str, result: dict[str, Any], *, quiet: bool = False) -> Path:
        """Write ``{"provenance": ..., **result}`` as JSON to ``path`` (a bare file name goes to
        ``benchmarks/results/``), atomically; NaN and inf become ``null``. Returns the path."""
        target = Path(path)
        if target.parent == Path("."):
            target = RESULTS / target
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"provenance": self.record(), **_finite(result)}, indent=1, default=_plain)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(target)
        if not quiet:
            print(
                f"wrote {_short(target)} ({self.wall_s:.0f} s, commit {self.commit[:10]}"
                f"{', dirty tree' if self.dirty else ''})"
            )
        return target


def _short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _plain(value: Any) -> Any:
    """JSON fallback: numpy scalars and arrays, paths, sets."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def parser(doc: str | None, *, quick: str | None = None, out: str | None = None) -> argparse.ArgumentParser:
    """The argument parser every script starts from: the docstring's first line as description,
    ``--quick`` (with ``quick`` as its help) and ``--out`` (default ``benchmarks/results/<out>``; with
    ``--quick`` the default name gets a ``_quick`` suffix unless ``--out`` is given)."""
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    if quick is not None:
        p.add_argument("--quick", action="store_true", help=quick)
    if out is not None:
        p.add_argument("--out", type=Path, default=None, help=f"results file (default results/{out})")
        p.set_defaults(_default_out=out)
    return p


def out_path(args: argparse.Namespace) -> Path:
    """The ``--out`` file, or ``results/<name>`` (``<stem>_quick<suffix>`` with ``--quick``)."""
    if getattr(args, "out", None) is not None:
        return Path(args.out)
    name = Path(args._default_out)
    if getattr(args, "quick", False):
        name = name.with_name(f"{name.stem}_quick{name.suffix}")
    return RESULTS / name


def provenance() -> dict[str, Any]:
    """The record of :meth:`Provenance.capture` taken now, as a dict (for scripts that embed it in
    their own result layout instead of calling :meth:`Provenance.write`)."""
    return Provenance.capture().record()
