"""File helpers: atomic writes (a reader sees the old file or the whole new one, never a
partial one), an exclusive lock between processes, and MD5 sums."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; held_lock then holds nothing
    fcntl = None

__all__ = ["LockHeld", "held_lock", "md5sum", "write_file_atomic", "write_json_atomic", "write_text_atomic"]


def write_file_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, flush it to disk, then
    rename it over ``path`` (creating the folder). On any error the temporary file is
    removed and the old file is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to any new file
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_file_atomic` of ``text`` as UTF-8, with no newline translation."""
    return write_file_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`write_text_atomic` of ``obj`` as indented JSON; NaN and infinity are refused
    (``ValueError``) before anything is written, since they are not JSON."""
    return write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


class LockHeld(Exception):
    """Another process holds the lock (:func:`held_lock` with ``wait=False``)."""


@contextmanager
def held_lock(path: str | os.PathLike, on_wait: Callable[[], object] | None = None, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) between processes; while another
    process holds it, wait (calling ``on_wait()`` once first), or with ``wait=False`` raise
    :class:`LockHeld`. The lock dies with its process (``flock``), so a killed holder leaves no
    stale lock, only the file; the file is removed on release, and so is the lock's folder if
    this call made it and nothing else was put in it. Where there is no ``fcntl`` (Windows) nothing is locked."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    made = not path.parent.exists()
    waited = False
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)  # again: the holder we waited for may have removed it
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise LockHeld(f"{path} is held by another process") from None
                if on_wait is not None and not waited:
                    on_wait()
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # the holder we waited for removed the file: a newcomer may lock a new one, so start again
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before the release: whoever locks next opens a new file
        os.close(fd)
        if made:  # a folder made for the lock alone (a run that stopped before writing anything) goes too
            try:
                path.parent.rmdir()
            except OSError:
                pass


def md5sum(path: str | os.PathLike) -> str:
    """The MD5 of a file's bytes, as 32 hex digits."""
    digest = hashlib.md5()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
