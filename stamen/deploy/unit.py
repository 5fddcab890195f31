"""``stamen device install-unit``: the systemd unit that keeps a device daemon running.

Why each line is there:

* ``After=time-sync.target network-online.target`` (and ``Wants=``): Flower's node authentication
  signs a timestamp that the SuperLink accepts only within -5 s .. +305 s of its own clock
  (``flwr.common.constant.TIMESTAMP_TOLERANCE``), so the daemon must not start on an unsynchronised
  clock; and it needs the network up to reach the SuperLink.
* ``Restart=on-failure`` with ``RestartSec``: a crash or power loss resumes (the daemon's store is
  crash-safe); a clean SIGTERM stop (exit 0) is not restarted.
* ``User=``: a dedicated unprivileged account; ``StateDirectory=`` gives it ``/var/lib/<name>``.
* ``NoNewPrivileges``, ``ProtectSystem=strict``, ``ProtectHome``, ``PrivateTmp``: the daemon only
  writes its state directory.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = ["UnitConfig", "render_device_unit"]

_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # useradd's portable user names


@dataclass(frozen=True)
class UnitConfig:
    """Inputs of :func:`render_device_unit`.

    Attributes
    ----------
    config : str
        Absolute path of the device config file (``stamen device init`` writes it).
    exec_path : str
        Absolute path of the ``stamen`` executable (default ``/opt/stamen/venv/bin/stamen``).
    user : str
        The dedicated account the daemon runs as (default ``stamen``; create it with
        ``useradd --system --home-dir /var/lib/stamen --shell /usr/sbin/nologin stamen``).
    state_dir : str
        Name under ``/var/lib`` for ``StateDirectory=`` (default ``stamen``).
    restart_s : int
        Seconds between a failure and the restart, 1..3600 (default 10).
    stop_timeout_s : int
        Seconds systemd waits after SIGTERM before SIGKILL, 1..3600 (default 60).
    """

    config: str = "/etc/stamen/device.toml"
    exec_path: str = "/opt/stamen/venv/bin/stamen"
    user: str = "stamen"
    state_dir: str = "stamen"
    restart_s: int = 10
    stop_timeout_s: int = 60

    def __post_init__(self) -> None:
        for name in ("config", "exec_path"):
            value = getattr(self, name)
            if not PurePosixPath(value).is_absolute() or any(c in value for c in "\n\"'\\$%"):
                raise ValueError(f"{name} must be an absolute path without quotes, $, % or \\, got {value!r}")
        if not _NAME.match(self.user) or self.user == "root":
            raise ValueError(f"user must be a non-root system user name, got {self.user!r}")
        if not _NAME.match(self.state_dir):
            raise ValueError(f"state_dir must be a plain directory name, got {self.state_dir!r}")
        for name in ("restart_s", "stop_timeout_s"):
            if not 1 <= getattr(self, name) <= 3600:
                raise ValueError(f"{name} must be 1..3600 seconds, got {getattr(self, name)}")


def render_device_unit(cfg: UnitConfig | None = None) -> str:
    """The text of ``stamen-device.service`` for ``cfg`` (pure; nothing is written or installed)."""
    c = cfg or UnitConfig()
    exec_start = shlex.join([c.exec_path, "device", "run", "--config", c.config])
    return f"""\
# stamen-device.service, rendered by `stamen device install-unit` (see docs/deployment.md)
[Unit]
Description=stamen device daemon (Flower SuperNode running the stamen ClientApp)
Wants=network-online.target time-sync.target
After=network-online.target time-sync.target

[Service]
Type=exec
User={c.user}
Group={c.user}
ExecStart={exec_start}
Restart=on-failure
RestartSec={c.restart_s}
KillSignal=SIGTERM
TimeoutStopSec={c.stop_timeout_s}
StateDirectory={c.state_dir}
StateDirectoryMode=0700
WorkingDirectory=/var/lib/{c.state_dir}
Environment=FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
Environment=FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_HOME=/var/lib/{c.state_dir}/flwr
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths=/var/lib/{c.state_dir}

[Install]
WantedBy=multi-user.target
"""
