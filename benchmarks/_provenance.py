"""What a results JSON records about how it was made: commit, command, machine, load."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def provenance() -> dict[str, Any]:
    """Git commit (with ``-dirty`` when the tree has changes), the command line, CPU count, the
    1-minute load average when the run started, Python and torch versions."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    dirty = "-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    import torch

    return {
        "commit": git("rev-parse", "HEAD") + dirty,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpus": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
