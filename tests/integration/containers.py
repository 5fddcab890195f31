"""A container engine and compose for tests: find or start one, or say why not.

``engine()`` returns the environment to talk to a working docker engine: the one ``DOCKER_HOST``
names, else one started with ``deploy/scripts/engine.sh`` (root and Debian's ``dockerd`` needed;
stopped again by :func:`stop_engine`). ``compose_cmd()`` finds ``docker compose`` (v2) or
``docker-compose`` (v1.29, Debian). Both raise :class:`Unavailable` with the reason when there is
none; the tests turn that into a skip, or a failure when ``STAMEN_REQUIRE_CONTAINERS=1`` (CI sets it
on machines where containers must run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "deploy" / "scripts" / "engine.sh"
ROLES = ("superlink", "server", "device")


class Unavailable(RuntimeError):
    """No container engine, compose or image here; the message says why."""


def clean_env() -> dict[str, str]:
    """``os.environ`` without PYTHONPATH/PYTHONHOME: Flower's Ray backend sets PYTHONPATH to this
    venv's sys.path inside the test process, which breaks other Pythons (Debian's docker-compose)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _probe(cmd: list[str], env: dict[str, str], timeout: float = 120) -> str | None:
    """None when ``cmd`` exits 0, else why not (the end of its output)."""
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if run.returncode == 0 else (run.stdout + run.stderr).strip()[-300:]


def _ok(cmd: list[str], env: dict[str, str], timeout: float = 120) -> bool:
    return _probe(cmd, env, timeout) is None


def engine() -> tuple[dict[str, str], bool]:
    """(environment with DOCKER_HOST, whether this call started the daemon)."""
    if shutil.which("docker") is None:
        raise Unavailable("the docker CLI is not installed (apt-get install docker.io)")
    env = clean_env()
    if _ok(["docker", "info"], env):
        return env, False
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        raise Unavailable("no reachable docker engine, and dockerd cannot be started here (root + docker.io)")
    out = subprocess.run(
        ["bash", str(ENGINE), "start"], capture_output=True, text=True, timeout=120, check=False
    )
    if out.returncode != 0:
        raise Unavailable(f"dockerd did not start: {out.stderr.strip()[-500:]}")
    for part in out.stdout.replace(";", "\n").splitlines():
        key, _, value = part.strip().removeprefix("export ").partition("=")
        if key:
            env[key] = value
    return env, env.get("STAMEN_ENGINE_STARTED") == "1"


def stop_engine(env: dict[str, str]) -> None:
    """Stop the daemon :func:`engine` started (by its PID file)."""
    subprocess.run(["bash", str(ENGINE), "stop"], env=env, capture_output=True, timeout=60, check=False)


def compose_cmd(env: dict[str, str]) -> list[str]:
    """argv prefix of a working compose: ``docker compose`` or ``docker-compose``."""
    if _ok(["docker", "compose", "version"], env):
        return ["docker", "compose"]
    if shutil.which("docker-compose") and _ok(["docker-compose", "version"], env):
        return ["docker-compose"]
    raise Unavailable(
        "neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)"
    )


def require_images(env: dict[str, str], tag: str) -> None:
    """Raise :class:`Unavailable` naming the role images that are not built (``make images``)."""
    missing = [
        f"stamen-{r}:{tag}"
        for r in ROLES
        if not _ok(["docker", "image", "inspect", f"stamen-{r}:{tag}"], env)
    ]
    if missing:
        raise Unavailable(f"images not built: {', '.join(missing)} (run `make images BASE=...`)")


@pytest.fixture(scope="session")
def docker_env() -> Iterator[dict[str, str]]:
    """Environment of a working engine with compose and the role images (tag ``STAMEN_TAG``, default
    ``latest``); skips with the reason, or fails under ``STAMEN_REQUIRE_CONTAINERS=1``."""
    started = False
    try:
        env, started = engine()
        compose_cmd(env)
        require_images(env, os.environ.get("STAMEN_TAG", "latest"))
    except Unavailable as exc:
        if started:
            stop_engine(env)
        if os.environ.get("STAMEN_REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"containers are required here: {exc}")
        pytest.skip(str(exc))
    try:
        yield env
    finally:
        if started:
            stop_engine(env)
