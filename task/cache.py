"""Where stamen keeps generated files (data sets, pre-trained extractors)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Directory for generated data: ``$STAMEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/stamen``,
    else ``~/.cache/stamen`` (read at call time, not created here)."""
    explicit = os.environ.get("STAMEN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "stamen"
