"""Run the code blocks of a Markdown page and check what they print.

Convention for ``docs/*.md`` (also stated at the top of ``mkdocs.yml``):

- A fenced block whose info string starts with ``bash`` or ``python`` is runnable; any other
  (``text``, ``toml``, ``console``, none) is shown only.
- ``<!-- norun: REASON -->`` on a line of its own right above the fence (a reason is required)
  skips a runnable block, e.g. one that installs, clones, or starts servers on fixed ports.
- ``<!-- quick: OLD => NEW -->`` right above the fence (repeatable) replaces the text OLD (which
  cannot contain " => ") by NEW before running, to test a long command in a short variant
  (``--set rounds=2``). OLD must occur in the block, so a stale directive fails instead of
  silently testing nothing.
- In a ``bash`` block, a command followed by ``# => TEXT`` must exit 0 and print TEXT (stdout or
  stderr); ``# => exit N: TEXT`` must exit N and print TEXT. Such a command runs in a subshell (a
  ``cd`` in it does not carry over). Every other line runs under ``set -eo pipefail``, so any
  failure fails the block. Lines inside a here-document are left alone.
- A ``python`` block runs as a script with the test's interpreter; its ``assert`` statements are
  its checks.
- All runnable blocks of one page run in order in one fresh directory, each block starting there,
  so a block sees the files an earlier block made. The directory holds a ``.venv`` link to the
  environment running the tests (``source .venv/bin/activate`` works as pasted), and the
  environment has the Makefile's exported variables and that environment's ``bin`` on ``PATH``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

RUNNABLE = ("bash", "python")
_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[^`]*)$")
_NORUN = re.compile(r"^\s*<!--\s*norun:\s*(?P<why>\S.*?)\s*-->\s*$")
_QUICK = re.compile(r"^\s*<!--\s*quick:\s*(?P<old>.+?)\s+=>\s+(?P<new>.+?)\s*-->\s*$")
_EXPECT = re.compile(r"^(?P<cmd>.*\S)\s+# => (?:exit (?P<rc>\d+):\s?)?(?P<text>.*?)\s*$")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)(?P<tag>[A-Za-z_]\w*)\1")


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts (1-based line of the fence), its language, its text
    (dedented to the fence), and the directives right above it."""

    page: str
    line: int
    lang: str
    code: str
    norun: str | None = None
    quick: tuple[tuple[str, str], ...] = ()

    @property
    def runnable(self) -> bool:
        """A ``bash``/``python`` block without ``norun``."""
        return self.lang in RUNNABLE and self.norun is None


def parse_blocks(text: str, page: str = "<page>") -> list[Block]:
    """Every fenced block of ``text`` in order, with its ``norun``/``quick`` directives."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None or not fence.group("info").strip():
            if fence is not None:  # an info-less block: skip to its end
                i = _closing(lines, i, fence.group("indent"))
            i += 1
            continue
        end = _closing(lines, i, fence.group("indent"))
        indent = len(fence.group("indent"))
        code = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
        norun, quick = _directives(lines, i)
        lang = fence.group("info").split()[0]
        blocks.append(Block(page, i + 1, lang, code, norun, quick))
        i = end + 1
    return blocks


def _closing(lines: Sequence[str], start: int, indent: str) -> int:
    for j in range(start + 1, len(lines)):
        if lines[j].strip() == "```" and lines[j].startswith(indent):
            return j
    raise ValueError(f"unclosed code fence at line {start + 1}")


def _directives(lines: Sequence[str], fence: int) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """The ``norun``/``quick`` comments on the lines right above line index ``fence``."""
    norun, quick = None, []
    j = fence - 1
    while j >= 0 and lines[j].strip().startswith("<!--"):
        if (m := _NORUN.match(lines[j])) is not None:
            norun = m.group("why")
        elif (m := _QUICK.match(lines[j])) is not None:
            quick.insert(0, (m.group("old"), m.group("new")))
        else:
            raise ValueError(f"line {j + 1}: unknown directive {lines[j].strip()!r}")
        j -= 1
    return norun, tuple(quick)


def apply_quick(block: Block) -> str:
    """The block's code with its ``quick`` replacements; each OLD must occur in it."""
    code = block.code
    for old, new in block.quick:
        if old not in code:
            raise ValueError(f"{block.page}:{block.line}: quick directive {old!r} matches nothing")
        code = code.replace(old, new)
    return code


def bash_script(code: str) -> str:
    """The bash script for a block: continuation lines joined, ``# =>`` lines turned into checks."""
    out = ["set -eo pipefail"]
    heredoc: str | None = None
    pending = ""
    for line in code.splitlines():
        if heredoc is not None:
            out.append(line)
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        if line.endswith("\\") and "# =>" not in line:
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        m = _HEREDOC.search(line)
        if m is not None:
            heredoc = m.group("tag")
            out.append(line)
            continue
        expect = _EXPECT.match(line)
        out.append(line if expect is None else _checked(expect))
    return "\n".join(out) + "\n"


def _checked(m: re.Match[str]) -> str:
    cmd, rc, text = m.group("cmd"), int(m.group("rc") or 0), m.group("text")
    shown = shlex.quote(cmd)
    parts = [
        f"set +e; __out=$( {{ {cmd} ; }} 2>&1 ); __rc=$?; set -e",
        "printf '%s\\n' \"$__out\"",
        f'if [ "$__rc" != {rc} ]; then echo "docs: exit $__rc (expected {rc}): "{shown} >&2; exit 97; fi',
    ]
    if text:
        parts.append(
            f'if ! grep -qF -- {shlex.quote(text)} <<<"$__out"; then '
            f"echo 'docs: expected '{shlex.quote(repr(text))}' from: '{shown} >&2; exit 98; fi"
        )
    return "; ".join(parts)


def make_env(root: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` plus the Makefile's ``export NAME := VALUE`` lines (``$(CURDIR)`` = root) and
    the running interpreter's ``bin`` first on ``PATH``."""
    env = dict(os.environ)
    for line in (root / "Makefile").read_text().splitlines():
        if (m := re.match(r"^export (\w+) := (.*)$", line)) is not None:
            env[m.group(1)] = m.group(2).replace("$(CURDIR)", str(root))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "120"  # rich tables and argparse: wide enough to print lines whole
    env.update(extra or {})
    return env


def run_blocks(blocks: Sequence[Block], workdir: Path, env: Mapping[str, str], timeout_s: float) -> int:
    """Run the runnable blocks in order in ``workdir``; raise AssertionError on the first failure
    (with its page, line and the end of its output). Returns how many blocks ran."""
    venv = workdir / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.executable).parent.parent)
    ran = 0
    for block in blocks:
        if not block.runnable:
            continue
        code = apply_quick(block)
        argv = ["bash", "-c", bash_script(code)] if block.lang == "bash" else [sys.executable, "-c", code]
        start = time.perf_counter()
        proc = subprocess.run(
            argv, cwd=workdir, env=dict(env), capture_output=True, text=True, timeout=timeout_s, check=False
        )
        took = time.perf_counter() - start
        print(f"{block.page}:{block.line}: {block.lang} block, exit {proc.returncode}, {took:.1f} s")
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-4000:]
            raise AssertionError(
                f"{block.page}:{block.line}: {block.lang} block exited {proc.returncode}\n{tail}"
            )
        ran += 1
    return ran
