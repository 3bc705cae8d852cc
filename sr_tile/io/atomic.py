"""All-or-nothing file output: a hidden temp file, fsync, then an atomic rename.

An upscale can run for minutes and the pixels are produced while the file
is written, so failures (model error, Ctrl-C, full disk) happen mid-file.
Users must never be left with a half-written image that looks valid, nor
with stray temp files: the temp file lives next to the target (same file
system, so the rename is atomic) and is removed on any exception.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from sr_tile.errors import ImageWriteError

TEMP_MARKER = ".sr-tile-"
_MAX_STEM = 180  # keep the temp name under common 255-byte name limits


def temp_path_for(path: Path) -> Path:
    """Hidden sibling ``.NAME.sr-tile-<random>.tmp`` of ``path``."""
    return path.parent / f".{path.name[:_MAX_STEM]}{TEMP_MARKER}{secrets.token_hex(4)}.tmp"


def check_target(path: Path, label: str, overwrite: bool) -> None:
    """Refuse before any work is done when the output cannot or must not be written."""
    if path.is_dir():
        raise ImageWriteError(f"{label}: is a directory")
    if not path.parent.is_dir():
        raise ImageWriteError(f"{label}: directory {str(path.parent)!r} does not exist")
    if not overwrite and os.path.lexists(path):
        raise ImageWriteError(f"{label}: file exists; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_output(path: Path, label: str, overwrite: bool) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` only if the block completes.

    Without ``overwrite`` the file is published with a hard link, which
    fails if the target appeared meanwhile, instead of a rename that would
    silently clobber it.
    """
    tmp = temp_path_for(path)
    try:
        fp = open(tmp, "xb")  # noqa: SIM115 - closed below on every path
    except OSError as exc:
        raise ImageWriteError(
            f"{label}: cannot create a file in {str(path.parent)!r} ({exc.strerror or exc})"
        ) from None
    try:
        yield fp
        fp.flush()
        os.fsync(fp.fileno())
        fp.close()
        _publish(tmp, path, label, overwrite)
    except BaseException:
        _discard(fp, tmp)
        raise
    _fsync_dir(path.parent)


def _publish(tmp: Path, path: Path, label: str, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise ImageWriteError(f"{label}: file exists; pass --overwrite to replace it") from None
    except OSError:
        # File systems without hard links: check-then-rename is the best available.
        if os.path.lexists(path):
            raise ImageWriteError(f"{label}: file exists; pass --overwrite to replace it") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def _discard(fp: BinaryIO, tmp: Path) -> None:
    """Best-effort cleanup that never hides the original exception."""
    with contextlib.suppress(OSError):
        fp.close()
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; not possible on every platform."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
