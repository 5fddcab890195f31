"""The device's one config file (``device.toml``), written by ``stamen device init``.

Example::

    [device]
    superlink = "fl.example.org:9092"
    root-certificates = "/var/lib/stamen/trust/ca.crt"   # "" with insecure = true
    node-key = "/var/lib/stamen/keys/node.key"
    signing-key = "/var/lib/stamen/keys/device-signing.pem"
    endorsement = "/var/lib/stamen/keys/device-signing.endorsement"
    store = "/var/lib/stamen/store"
    data-source = "/var/lib/stamen/data/train.npz"
    flwr-home = "/var/lib/stamen/flwr"
    runtime-port = 9094
    insecure = false
    trusted-entities = ""     # YAML of keys whose FAB signatures are trusted; "" = run any FAB (warned)

    [node-config]          # extra node-config entries for the ClientApp (optional)
    partition-id = 0

    [daemon]
    backoff-initial-s = 2.0
    backoff-max-s = 30.0
    stable-s = 60.0
    stop-timeout-s = 30.0
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (tomli ships with flwr)
    import tomli as tomllib

__all__ = ["DaemonConfig", "DeviceConfig", "load_device_config", "render_device_config"]

Scalar = str | int | float | bool


@dataclass(frozen=True)
class DaemonConfig:
    """Supervision of the SuperNode: restart backoff and stop timeout (seconds, all > 0)."""

    backoff_initial_s: float = 2.0
    backoff_max_s: float = 30.0  # a SuperLink refuses a node for up to 60 s after it vanished
    stable_s: float = 60.0  # a run this long resets the backoff
    stop_timeout_s: float = 30.0  # SIGTERM -> wait this long -> SIGKILL

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or not 0 < value <= 86_400:
                raise ValueError(
                    f"[daemon] {f.name.replace('_', '-')} must be in (0, 86400] s, got {value!r}"
                )
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("[daemon] backoff-max-s must be >= backoff-initial-s")


@dataclass(frozen=True)
class DeviceConfig:
    """Where everything of one device is, and how its SuperNode connects."""

    superlink: str
    node_key: str
    signing_key: str
    endorsement: str
    store: str
    data_source: str
    flwr_home: str
    root_certificates: str = ""
    runtime_port: int = 9094
    insecure: bool = False
    trusted_entities: str = ""  # flower-supernode --trusted-entities; "" runs any FAB the SuperLink sends
    node_config: dict[str, Scalar] = field(default_factory=dict)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)

    def __post_init__(self) -> None:
        _check_types(self)
        host, _, port = self.superlink.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"superlink must be HOST:PORT, got {self.superlink!r}")
        if not self.insecure and not self.root_certificates:
            raise ValueError("root-certificates is required unless insecure = true")
        if not 0 < self.runtime_port < 65536:
            raise ValueError(f"runtime-port must be 1..65535, got {self.runtime_port}")
        for key in self.node_config:
            if key in RESERVED_NODE_CONFIG:
                raise ValueError(f"[node-config] may not set {key!r}: it comes from [device]")
        for key in ("superlink", *_PATHS):  # flower-supernode's argv: a leading '-' reads as a flag
            value = getattr(self, key.replace("-", "_"))
            if value.startswith("-"):
                fix = "" if key == "superlink" else f"; write it as ./{value} or an absolute path"
                raise ValueError(f"{key} {value!r} starts with '-' (flower-supernode reads a flag){fix}")


_NOT_STR = {"runtime_port": (int, "an integer"), "insecure": (bool, "true or false")}


def _check_types(cfg: DeviceConfig) -> None:
    """``ValueError`` (one line) for a ``[device]`` value of the wrong TOML type: a quoted
    ``insecure = "false"`` would otherwise be truthy (plaintext), a number a path."""
    for f in fields(cfg):
        if f.name in ("node_config", "daemon"):
            continue
        want, what = _NOT_STR.get(f.name, (str, "a string"))
        value = getattr(cfg, f.name)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ValueError(f"{f.name.replace('_', '-')} must be {what}, got {value!r}")


RESERVED_NODE_CONFIG = ("data-source", "edge-store", "signing-key", "endorsement")
_PATHS = (
    "node-key",
    "signing-key",
    "endorsement",
    "store",
    "flwr-home",
    "root-certificates",
    "trusted-entities",
)


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"[{name}] must be a table")
    return value


def load_device_config(path: Path) -> DeviceConfig:
    """Read and check ``path``; ``ValueError`` (one line) for a missing file or a bad value."""
    if not path.is_file():
        raise ValueError(f"device config {path} does not exist (make it with `stamen device init`)")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    dev, extra, daemon = _section(doc, "device"), _section(doc, "node-config"), _section(doc, "daemon")
    known = {f.name.replace("_", "-") for f in fields(DeviceConfig)} - {"node-config", "daemon"}
    unknown = sorted(set(dev) - known) + sorted(f"daemon.{k}" for k in set(daemon) - _DAEMON_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}")
    try:
        return DeviceConfig(
            **{k.replace("-", "_"): v for k, v in dev.items()},
            node_config=dict(extra),
            daemon=DaemonConfig(**{k.replace("-", "_"): v for k, v in daemon.items()}),
        )
    except TypeError as exc:
        raise ValueError(f"{path}: {exc}") from None


_DAEMON_KEYS = {f.name.replace("_", "-") for f in fields(DaemonConfig)}


def _toml_value(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_device_config(cfg: DeviceConfig) -> str:
    """The TOML text of ``cfg`` (what :func:`load_device_config` reads back)."""
    lines = ["# stamen device config, written by `stamen device init` (docs/deployment.md)", "[device]"]
    for f in fields(DeviceConfig):
        if f.name not in ("node_config", "daemon"):
            lines.append(f"{f.name.replace('_', '-')} = {_toml_value(getattr(cfg, f.name))}")
    lines += ["", "[node-config]"] + [f"{k} = {_toml_value(v)}" for k, v in cfg.node_config.items()]
    lines += ["", "[daemon]"]
    lines += [f"{f.name.replace('_', '-')} = {getattr(cfg.daemon, f.name)!r}" for f in fields(DaemonConfig)]
    return "\n".join(lines) + "\n"
