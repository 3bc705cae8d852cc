"""Keep decoder chatter off the user's terminal and turn it into warnings of ours.

Pillow warns through :mod:`warnings` (corrupt EXIF...), tifffile logs through
:mod:`logging`, and libtiff (under Pillow) prints straight to file descriptor 2.
Readers run inside :func:`library_messages`, which collects all of it; the
reader then reports it as one warning line for the file, or drops what carries
no information for a user.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator

# Messages addressed to programmers, not to someone upscaling a photo.
_UNINFORMATIVE = (
    "Palette images with Transparency expressed in bytes",
    "is deprecated",
)
_LOGGERS = ("tifffile",)
# What is collected is process-wide (warning filters, logger handlers, fd 2): readers in
# threads (pipelined jobs) collect one at a time, each its own messages.
_ONE_AT_A_TIME = threading.RLock()


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.into.append(record.getMessage())


@contextlib.contextmanager
def library_messages(*, c_stderr: bool = False) -> Iterator[list[str]]:
    """Collect Python warnings and library log records (and with ``c_stderr``, what C
    code writes to fd 2) raised in the block, instead of printing them."""
    with _ONE_AT_A_TIME:
        with _collect(c_stderr) as notes:
            yield notes


@contextlib.contextmanager
def _collect(c_stderr: bool) -> Iterator[list[str]]:
    notes: list[str] = []
    handler = _Collect(notes)
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    saved = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught, (
            _fd2_into(notes) if c_stderr else contextlib.nullcontext()
        ):
            warnings.simplefilter("always")
            yield notes
    finally:
        for logger, propagate in zip(loggers, saved):
            logger.removeHandler(handler)
            logger.propagate = propagate
    notes.extend(str(w.message) for w in caught)


def summary(label: str, notes: list[str], limit: int = 300) -> str | None:
    """One warning line for a file's library messages, or None if none is worth showing."""
    kept: list[str] = []
    for note in notes:
        text = " ".join(note.split())
        if text and text not in kept and not any(s in text for s in _UNINFORMATIVE):
            kept.append(text)
    if not kept:
        return None
    line = f"{label}: decoder reported: " + "; ".join(kept)
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextlib.contextmanager
def _fd2_into(notes: list[str]) -> Iterator[None]:
    """Send fd 2 to a temp file for the block; its lines become notes. Lines with escape
    sequences (a progress display refreshing meanwhile) are not a library's and are dropped."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read(8192).decode("utf-8", "replace")
            notes.extend(line for line in text.splitlines() if "\x1b" not in line)
