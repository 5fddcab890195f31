"""Durable, symlink-safe file operations: write a shadow copy, fsync, atomic rename.

A store stays consistent under a crash (power loss, SIGKILL) at any instruction because every
change becomes visible through exactly one ``os.replace`` of a fully written and fsynced file or
directory, followed by an fsync of its parent directory (POSIX ``rename(2)`` is atomic; the
directory fsync makes the new entry durable).

Nothing here follows a symbolic link out of the store: files are created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (a planted link makes the open fail instead of redirecting the
write), garbage is removed with ``unlink`` when it is a link (the link goes, its target stays) and
with :func:`shutil.rmtree` otherwise (which does not descend into links), and every ``OSError`` of
a write names the file it was writing (:func:`naming`), so a full disk reads
``No space left on device: <path>`` rather than ``...: None``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "atomic_write",
    "create_new",
    "fsync_dir",
    "fsync_tree",
    "naming",
    "publish_dir",
    "remove_tree",
    "write_new",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@contextlib.contextmanager
def naming(path: Path | str) -> Iterator[None]:
    """Re-raise an ``OSError`` without a file name (``write``, ``pwrite``, ``fsync`` give none) as
    the same error class and errno naming ``path``; errors that name a file pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames, deletions) durable."""
    with naming(path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def create_new(path: Path, mode: int = 0o644) -> int:
    """Open a new file for writing; fails (``FileExistsError``) if anything, a link included, is
    at ``path``, so a planted symlink can never redirect the write."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, mode)


def write_new(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to the new file ``path`` (see :func:`create_new`; not fsynced)."""
    fd = create_new(path)
    with naming(path), os.fdopen(fd, "wb") as fh:
        fh.write(data)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` atomically with the bytes ``write(fh)`` produces.

    The content goes to ``path.tmp-<pid>`` first (a stale one, or a link planted there, is
    unlinked first), is fsynced, then renamed over ``path`` (``rename`` replaces a link at
    ``path`` itself, never its target); a crash leaves either the old or the new file, never a
    mix (a stray ``.tmp-`` file at most).
    """
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = create_new(tmp)
    try:
        with naming(tmp), os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        with naming(path):
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_tree(path: Path) -> None:
    """fsync every regular file directly in directory ``path`` (links are skipped, not followed),
    then the directory itself."""
    for child in path.iterdir():
        if stat.S_ISREG(child.lstat().st_mode):
            with naming(child):
                fd = os.open(child, os.O_RDONLY | _NOFOLLOW)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    fsync_dir(path)


def publish_dir(shadow: Path, final: Path) -> None:
    """Durably move a fully written directory ``shadow`` to ``final`` (which must not exist)."""
    fsync_tree(shadow)
    with naming(final):
        os.replace(shadow, final)
    fsync_dir(final.parent)


def remove_tree(path: Path) -> None:
    """Delete whatever is at ``path``, if anything: a symlink or file is unlinked (a link's
    target is never touched), a directory removed with :func:`shutil.rmtree` (which unlinks the
    links inside it without following them).

    Raises
    ------
    OSError
        Naming the path, if it exists and cannot be removed.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
