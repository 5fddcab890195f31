"""What a ServerApp on a deployed grid adds: identity-bound signed uplinks and signed edge downlinks.

- ``require-signed`` (run config; default ``true`` on a deployed grid, ignored in Flower's simulation
  runtime): every update must be an envelope signed by the key its authenticated SuperNode endorsed
  (:mod:`stamen.server.driver.identity`). ``false`` is for trials without SuperNode authentication
  and is logged as a warning.
- ``signing-key`` (run config): the server's long-lived Ed25519 key (``server/update-signing.pem`` from
  ``stamen deploy init``), required when ``clients.runtime = "edge"``: each device then receives a
  delta signed with it against the version it holds, and trusts only the public half it was
  provisioned with. An encrypted key is opened with the passphrase in ``STAMEN_KEY_PASSPHRASE``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from stamen.protocols import Signer
from stamen.server.config import ServerConfig
from stamen.server.driver.types import Weights
from stamen.server.edge_downlink import DEVICE_RETAINS, DeviceDownlink, EdgeDownlink
from stamen.server.federation import RunExtras

log = logging.getLogger("stamen.server")
PASSPHRASE_ENV = "STAMEN_KEY_PASSPHRASE"


def flag(run_config: Mapping[str, Any], key: str, default: bool) -> bool:
    """A boolean run-config value (``true``/``false``, also as a string); ``ValueError`` otherwise."""
    value = run_config.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"run config {key!r} must be true or false, got {value!r}")


def require_signed(run_config: Mapping[str, Any], deployed: bool) -> bool:
    """Whether every update must be signed by its node's endorsed key (see the module docs)."""
    if not deployed:
        return False
    required = flag(run_config, "require-signed", True)
    if not required:
        log.warning("require-signed=false: updates are NOT bound to node identities (trial use only)")
    return required


def edge_downlink(cfg: ServerConfig, run_config: Mapping[str, Any], initial: Weights) -> EdgeDownlink | None:
    """The signed delta downlink of ``clients.runtime = "edge"``, or None for full-weight downlinks."""
    if cfg.settings.clients.runtime != "edge":
        return None
    path = str(run_config.get("signing-key", ""))
    if not path:
        raise ValueError(
            "clients.runtime='edge' needs the server's update-signing key: run config signing-key=PATH"
        )
    passphrase = os.environ.get(PASSPHRASE_ENV)
    signer = Signer.from_file(path, passphrase.encode() if passphrase else None)
    codec = cfg.settings.codec.downlink
    tracker = DeviceDownlink(initial, signer, codec, cfg.task.model_id, earlier=DEVICE_RETAINS)
    log.info("edge downlink: deltas signed with key %s", signer.key_id)
    return EdgeDownlink(tracker, cfg.seed)


def deployment_extras(
    cfg: ServerConfig, run_config: Mapping[str, Any], initial: Weights, deployed: bool
) -> RunExtras:
    """The run extras of a ServerApp: signature binding on deployed grids, the edge downlink."""
    return RunExtras(
        downlink=edge_downlink(cfg, run_config, initial),
        require_signed=require_signed(run_config, deployed),
    )
