"""All-or-nothing file output: a hidden temp file, fsync, then an atomic rename.

An upscale can run for minutes and the pixels are produced while the file
is written, so failures (model error, Ctrl-C, SIGTERM, full disk) happen
mid-file. Users must never be left with a half-written image that looks
valid, nor with stray temp files: the temp file lives next to the target
(same file system, so the rename is atomic) and is removed on any exception.
A process killed outright (SIGKILL, power loss) cannot clean up; its temp
file is removed the next time the same output is written. This module is the
one way sr-tile writes a file: images, reports, weights, checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sr_tile.errors import ImageWriteError

TEMP_MARKER = ".sr-tile-"
_MAX_STEM = 180  # keep the temp name under common 255-byte name limits
# Temp files older than this process and not owned by a live process are stale.
PROCESS_START = time.time()
_NON_REGULAR = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def file_kind(mode: int) -> str | None:
    """'a FIFO', 'a directory'... for anything but a regular file (None for a regular file)."""
    return None if stat.S_ISREG(mode) else _NON_REGULAR.get(stat.S_IFMT(mode), "not a regular file")


def not_regular(label: str, mode: int) -> str | None:
    """The refusal for a target that is not a regular file (None for a regular file): the
    one rule the planner, the pre-write check and the publish step all apply."""
    kind = file_kind(mode)
    return f"{label}: is {kind}; sr-tile only writes regular files" if kind else None


def temp_path_for(path: Path) -> Path:
    """Hidden sibling ``.NAME.sr-tile-<pid>-<random>.tmp`` of ``path``."""
    name = f".{path.name[:_MAX_STEM]}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}.tmp"
    return path.parent / name


def check_target(path: Path, label: str, overwrite: bool) -> None:
    """Refuse before any work is done when the output cannot or must not be written.

    Only regular files are ever replaced, whatever ``overwrite`` says: a device,
    FIFO or socket at the target (``-o /dev/null``) is not ours to turn into a file.
    """
    try:
        info = path.stat() if os.path.lexists(path) else None
    except FileNotFoundError:  # a dangling symlink: replacing the link is fine
        info = None
    except OSError as exc:
        raise ImageWriteError(f"{label}: cannot use this path ({exc.strerror or exc})") from None
    problem = not_regular(label, info.st_mode) if info is not None else None
    if problem:
        raise ImageWriteError(problem)
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
    remove_stale_temps(path)
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


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes | str, *,
                       overwrite: bool = True, label: str | None = None) -> Path:
    """Write a file held in memory (a report, weights, a plot) atomically, creating its
    folder; ``str`` is written as UTF-8. Failures raise ImageWriteError naming the file."""
    path = Path(path)
    label = label or str(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, label, overwrite) as fp:
            fp.write(payload)
    except OSError as exc:
        raise ImageWriteError(f"{label}: cannot write ({exc.strerror or exc})") from None
    return path


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, overwrite: bool = True) -> Path:
    """``data`` as indented JSON (anything JSON cannot hold as its ``str``), atomically."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    return write_bytes_atomic(path, text, overwrite=overwrite)


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove temp files of ``path`` left by runs that were killed (older than this
    process, and not owned by a live process). Returns what was removed."""
    pattern = re.compile(
        re.escape(f".{path.name[:_MAX_STEM]}{TEMP_MARKER}") + r"(?:(\d+)-)?[0-9a-f]+\.tmp")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or info.st_mtime >= PROCESS_START:
                continue
            if match.group(1) is not None and _alive(int(match.group(1))):
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own earlier temp: never in use once its write has ended
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or unknowable): leave it
    return True


def _publish(tmp: Path, path: Path, label: str, overwrite: bool) -> None:
    if overwrite:
        with contextlib.suppress(OSError):  # checked again: the target may have changed
            problem = not_regular(label, os.stat(path).st_mode)
            if problem:
                raise ImageWriteError(problem)
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
