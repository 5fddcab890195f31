"""docs/deployment.md, run as written: every ``bash`` block that is not marked skip runs, in order.

It needs what the container test needs (engine, compose, images) and skips or fails the same way.
Shims, set before the guide's first line and nowhere in the guide: ``docker compose`` maps to
Debian's ``docker-compose`` where the v2 plugin is missing. ``HOME`` is a
temp folder (the guide keeps keys in ``$HOME/stamen-keys``), the SuperLink port is a free one, and
the compose project has its own name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from containers import ROOT, compose_cmd
from docs_blocks import blocks, script

pytestmark = [pytest.mark.integration, pytest.mark.slow]
GUIDE = ROOT / "docs" / "deployment.md"
SHIMS = """
if ! docker compose version >/dev/null 2>&1; then
  docker() { if [ "${1:-}" = compose ]; then shift; docker-compose "$@"; else command docker "$@"; fi; }
  export -f docker
fi
"""


def test_guide_markers_are_well_formed() -> None:
    guide = blocks(GUIDE)
    assert sum(b.mode == "run" for b in guide) >= 10
    assert all(b.reason for b in guide if b.mode != "run")
    assert {b.mode for b in guide} == {"run", "skip", "background"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(docker_env: dict[str, str], home: Path) -> dict[str, str]:
    env = {**docker_env, "HOME": str(home), "STAMEN_SUPERLINK_PORT": str(_free_port())}
    env["COMPOSE_PROJECT_NAME"] = f"stamendocs{os.getpid()}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_every_command_in_the_guide(docker_env: dict[str, str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = _env(docker_env, home)
    text = script(blocks(GUIDE), "set -euo pipefail\n" + SHIMS, tmp_path)
    (tmp_path / "guide.sh").write_text(text)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(tmp_path / "guide.sh")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=1200)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the background device
        cmd = [*compose_cmd(env), "-f", str(ROOT / "deploy" / "compose.yml"), "down", "-v", "--timeout", "20"]
        subprocess.run(cmd, env=env, capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0 and out.rstrip().endswith("::done"), out[-6000:]
    # the run's aggregated train metrics: every device's update accepted in both rounds
    assert out.count("'rejected': 0") >= 2 and "'accepted': 3" in out, out[-6000:]
    print(f"deployment guide wall time: {time.monotonic() - t0:.1f} s")
