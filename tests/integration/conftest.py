"""Fixtures for multi-process integration tests (network namespaces: ``netns.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

# --import-mode=importlib puts no test folder on sys.path; the harness is imported as a plain module.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from containers import docker_env
from netns import netns_hosts

__all__ = ["docker_env", "netns_hosts"]
