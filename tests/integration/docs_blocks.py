"""The ``bash`` blocks of a Markdown guide, and the script that runs them in order.

A block whose first line is ``# docs-test: skip (REASON)`` is not run (the reason is required); one
whose first line is ``# docs-test: background (...)`` runs in the background and is stopped with the
script's process group. Other ``bash`` blocks run as written, in order, in one ``bash -euo
pipefail`` script, so ``export``s carry over from block to block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "blocks", "script"]

_FENCE = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
_MARK = re.compile(r"^# docs-test: (skip|background) \((.+)\)$")


@dataclass(frozen=True)
class Block:
    """One ``bash`` block: its text, how the test treats it, and why (for skip/background)."""

    text: str
    mode: str  # "run" | "skip" | "background"
    reason: str = ""


def blocks(markdown: Path) -> list[Block]:
    """The guide's ``bash`` blocks in order.

    Raises
    ------
    ValueError
        If a block starts with a ``# docs-test:`` line that is not ``skip (...)`` or ``background (...)``.
    """
    out = []
    for match in _FENCE.finditer(markdown.read_text()):
        text = match.group(1)
        first = text.splitlines()[0] if text.strip() else ""
        mark = _MARK.match(first)
        if mark:
            out.append(Block(text.split("\n", 1)[1], mark.group(1), mark.group(2)))
        elif first.startswith("# docs-test"):
            raise ValueError(f"bad docs-test marker: {first!r}")
        else:
            out.append(Block(text, "run"))
    return out


def script(guide: list[Block], preamble: str, logs: Path) -> str:
    """One bash script: ``preamble``, then every run block, background blocks as ``( ... ) &``."""
    parts = [preamble]
    for i, block in enumerate(guide):
        if block.mode == "run":
            parts.append(f"echo '::block {i}'\n{block.text}")
        elif block.mode == "background":
            parts.append(f"echo '::background {i}'\n( {block.text.strip()}\n) > {logs / f'bg{i}.log'} 2>&1 &")
    return "\n".join(parts) + "\necho '::done'\n"
