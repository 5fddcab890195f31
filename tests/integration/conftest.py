"""Fixtures for multi-process integration tests (network namespaces: ``netns.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

# --import-mode=importlib puts no test folder on sys.path; the harness is imported as a plain module.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from netns import netns_hosts  # noqa: E402

__all__ = ["netns_hosts"]
