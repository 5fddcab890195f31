"""Durable file operations: write a shadow copy, fsync, atomic rename.

A store stays consistent under a crash (power loss, SIGKILL) at any instruction because every
change becomes visible through exactly one ``os.replace`` of a fully written and fsynced file or
directory, followed by an fsync of its parent directory (POSIX ``rename(2)`` is atomic; the
directory fsync makes the new entry durable).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "fsync_dir", "fsync_tree", "publish_dir", "remove_tree"]


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames, deletions) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` atomically with the bytes ``write(fh)`` produces.

    The content goes to ``path.tmp-<pid>`` first, is fsynced, then renamed over ``path``; a
    crash leaves either the old or the new file, never a mix (a stray ``.tmp-`` file at most).
    """
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_tree(path: Path) -> None:
    """fsync every regular file directly in directory ``path``, then the directory itself."""
    for child in path.iterdir():
        if child.is_file():
            fd = os.open(child, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(path)


def publish_dir(shadow: Path, final: Path) -> None:
    """Durably move a fully written directory ``shadow`` to ``final`` (which must not exist)."""
    fsync_tree(shadow)
    os.replace(shadow, final)
    fsync_dir(final.parent)


def remove_tree(path: Path) -> None:
    """Delete a directory tree if present (used for stale shadows and pruned versions)."""
    shutil.rmtree(path, ignore_errors=True)
