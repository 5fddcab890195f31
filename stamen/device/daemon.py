"""``stamen device run``: the long-lived device process.

It checks the device (config, keys, trust anchor; opening the edge store recovers whatever a crash
or power loss left half-written, and repairs a current version whose files fail their hash check by
serving the newest intact retained one, logged as one warning), then runs ``flower-supernode`` with
TLS, node authentication, the node config the stamen ClientApp reads (data source, edge store,
update key and endorsement) and, when set, ``--trusted-entities`` (only FABs signed by those keys
run; :mod:`stamen.device.trusted`), and supervises it: when the SuperNode exits (the SuperLink was
unreachable past its own retries, a crash), it is started again after an exponential backoff (reset
after a stable run). SIGTERM or SIGINT stop it (SIGTERM to the SuperNode's process group, SIGKILL
after ``stop-timeout-s``) and the daemon exits 0; systemd's ``Restart=on-failure`` covers the
daemon itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stamen.device.config import DaemonConfig, DeviceConfig, Scalar
from stamen.device.trusted import check_trusted_entities

__all__ = ["Supervisor", "backoff_delays", "check_device", "supernode_argv"]

log = logging.getLogger("stamen.device")


def _quote(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if '"' in str(value):
        raise ValueError(f"node-config values may not contain double quotes: {value!r}")
    return f'"{value}"'


def node_config_arg(cfg: DeviceConfig) -> str:
    """The ``--node-config`` string: the stamen ClientApp's keys, then the extra entries."""
    entries: dict[str, Scalar] = {
        "data-source": cfg.data_source,
        "edge-store": cfg.store,
        "signing-key": cfg.signing_key,
        "endorsement": cfg.endorsement,
        **cfg.node_config,
    }
    return " ".join(f"{k}={_quote(v)}" for k, v in entries.items())


def supernode_argv(cfg: DeviceConfig, executable: str) -> list[str]:
    """argv of the SuperNode for ``cfg`` (pure)."""
    argv = [executable, "--superlink", cfg.superlink]
    argv += ["--insecure"] if cfg.insecure else ["--root-certificates", cfg.root_certificates]
    argv += ["--auth-supernode-private-key", cfg.node_key]
    argv += ["--node-config", node_config_arg(cfg), "--port", str(cfg.runtime_port)]
    if cfg.trusted_entities:
        argv += ["--trusted-entities", cfg.trusted_entities]
    return argv


def backoff_delays(d: DaemonConfig) -> Callable[[float], float]:
    """``run_seconds -> seconds to wait before the next start``: doubling from ``backoff-initial-s``
    up to ``backoff-max-s``, back to the start after a run of at least ``stable-s``."""
    state = {"next": d.backoff_initial_s}

    def delay(ran_s: float) -> float:
        if ran_s >= d.stable_s:
            state["next"] = d.backoff_initial_s
        wait = state["next"]
        state["next"] = min(wait * 2, d.backoff_max_s)
        return wait

    return delay


def check_device(cfg: DeviceConfig, *, repair: bool = False) -> dict[str, object]:
    """Fail early (one line) on a missing key or store, or a trusted-entities file the SuperNode would
    refuse (or, empty, ignore); open the store (crash recovery; with
    ``repair``, a corrupt current version is replaced by the newest intact retained one and a
    warning logged); return its status (version, hash, model id, what was repaired)."""
    from stamen.edge import EdgeRuntime  # numpy + onnxruntime only: no torch for this check
    from stamen.protocols import Signer

    for name in ("node_key", "signing_key", "endorsement") + (() if cfg.insecure else ("root_certificates",)):
        if not Path(getattr(cfg, name)).is_file():
            raise ValueError(f"{name.replace('_', '-')} {getattr(cfg, name)} is not a file")
    Signer.from_file(cfg.signing_key)
    if cfg.trusted_entities:
        check_trusted_entities(cfg.trusted_entities)
    store = EdgeRuntime.open(Path(cfg.store), serve=False, repair=repair)  # verified; no session
    if store.repaired is not None:
        log.warning(
            "edge store %s repaired: %s; the server learns the version it holds at the next round",
            cfg.store,
            store.repaired,
        )
    status = store.status()
    keep = ("version", "hash", "model_id", "repaired")
    return {k: status[k] for k in keep}


@dataclass
class Supervisor:
    """Runs ``argv`` until :meth:`stop`, restarting it with backoff; ``max_starts`` bounds the
    number of starts (0: unlimited; tests bound it)."""

    argv: Sequence[str]
    env: dict[str, str]
    daemon: DaemonConfig
    log_path: Path | None = None
    max_starts: int = 0
    precheck: Callable[[], object] | None = None  # before every start; ValueError/OSError: not started

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def stop(self, *_: object) -> None:
        """Ask the loop to end (signal-handler safe)."""
        self._stop.set()

    def run(self) -> int:
        """Supervise until stopped (exit 0) or ``max_starts`` starts have ended (exit 1)."""
        delay = backoff_delays(self.daemon)
        while not self._stop.is_set():
            if self.max_starts and self.starts >= self.max_starts:
                log.error("the SuperNode ended %d time(s); giving up (max starts)", self.starts)
                return 1
            t0 = time.monotonic()
            code = self._run_once()
            if self._stop.is_set():
                break
            wait = delay(time.monotonic() - t0)
            log.warning("the SuperNode exited with %s; restarting in %.0f s", code, wait)
            self._stop.wait(wait)
        log.info("stopped")
        return 0

    def _run_once(self) -> int:
        self.starts += 1
        try:  # what the SuperNode re-reads at every start (its trusted-entities file) is checked again
            if self.precheck is not None:
                self.precheck()
        except (ValueError, OSError) as exc:
            log.error("not starting the SuperNode: %s", exc)
            return 78  # EX_CONFIG: counted as a start, retried after the backoff
        out = open(self.log_path, "ab") if self.log_path is not None else None  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                list(self.argv),
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
            )
            log.info("SuperNode started (pid %d, start %d)", self.proc.pid, self.starts)
            while self.proc.poll() is None and not self._stop.wait(0.5):
                pass
            if self.proc.poll() is None:
                self._terminate(self.proc)
            return int(self.proc.returncode)
        finally:
            if out is not None:
                out.close()

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the SuperNode's process group (its ClientApp processes too), then SIGKILL."""
        for sig, wait in ((signal.SIGTERM, self.daemon.stop_timeout_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def supernode_executable() -> str:
    """``flower-supernode`` beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "flower-supernode"
    found = str(beside) if beside.exists() else shutil.which("flower-supernode")
    if not found:
        raise ValueError("flower-supernode not found: install stamen with the `device` extra")
    return found


def daemon_env(cfg: DeviceConfig) -> dict[str, str]:
    """The SuperNode's environment: its own FLWR_HOME, no telemetry, no runtime installs."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=cfg.flwr_home,
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_daemon(cfg: DeviceConfig, log_path: Path | None = None, max_starts: int = 0) -> int:
    """Check the device (repairing a corrupt store where it can), then supervise its SuperNode
    until SIGTERM/SIGINT (exit 0)."""
    status = check_device(cfg, repair=True)
    log.info(
        "device store at version %s (%s…), model %s",
        status["version"],
        str(status["hash"])[:12],
        status["model_id"],
    )
    if cfg.insecure:
        log.warning("insecure = true: plaintext connection to %s (trial use only)", cfg.superlink)
    if not cfg.trusted_entities:
        log.warning(
            "trusted-entities is not set: the SuperNode runs any app (FAB) the SuperLink sends "
            "(docs/deployment.md, 'Which code a device runs')"
        )
    trusted = cfg.trusted_entities
    sup = Supervisor(
        supernode_argv(cfg, supernode_executable()),
        daemon_env(cfg),
        cfg.daemon,
        log_path,
        max_starts,
        precheck=(lambda: check_trusted_entities(trusted)) if trusted else None,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, sup.stop)
    return sup.run()
