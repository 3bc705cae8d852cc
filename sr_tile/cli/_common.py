"""What every command shares: consoles, error handling, progress.

Results go to stdout; progress, warnings and errors to stderr. A domain error
(:class:`SrTileError`) is one red line and its exit code (2 for a bad option,
1 otherwise); anything else is a bug: one line too, with the traceback only
under ``--debug``. Every line is passed through :func:`printable` first: file
names and decoder messages are untrusted text and may hold terminal escapes.
"""

from __future__ import annotations

import functools
import logging
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sr_tile.errors import Interrupted, SrTileError


class _Stdout:
    """sys.stdout, with a write failure (full disk, closed pipe) turned into an error of
    ours instead of an "internal error"."""

    def write(self, text: str) -> int:
        try:
            return sys.stdout.write(text)
        except OSError as exc:
            raise SrTileError(f"cannot write to standard output ({exc.strerror or exc})") from None

    def flush(self) -> None:
        try:
            sys.stdout.flush()
        except OSError as exc:
            raise SrTileError(f"cannot write to standard output ({exc.strerror or exc})") from None

    def isatty(self) -> bool:
        return sys.stdout.isatty()

    def fileno(self) -> int:
        return sys.stdout.fileno()


out = Console(file=_Stdout(), highlight=False)  # type: ignore[arg-type]
err = Console(stderr=True, highlight=False)
for _console in (out, err):
    if not _console.is_terminal:  # logs and pipes: wide enough for report tables
        _console.width = max(_console.width, 120)


class State:
    debug = False
    interrupt_reported = False  # a command has printed its "interrupted" line


F = TypeVar("F", bound=Callable[..., Any])


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with control characters (terminal escapes, newlines, bidi overrides) shown
    as ``\\x1b``-style escapes: safe to print, and always one line."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def error_line(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(printable(message))}", soft_wrap=True)


def warning_line(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(printable(message))}", soft_wrap=True)


class _WarningLines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        warning_line(record.getMessage())


def route_library_output() -> None:
    """Python warnings and library log records that reach no reader's collection (see
    ``sr_tile.io.quiet``) become our one-line warnings, not raw 'file.py:12: UserWarning'
    pairs of lines."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        warning_line(str(message))

    warnings.showwarning = show
    logging.lastResort = _WarningLines(logging.WARNING)


def interrupted_code(exc: BaseException) -> int:
    """128 + the signal that stopped the run (SIGINT: 130, SIGTERM: 143, SIGHUP: 129)."""
    return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)


def interrupted_message(exc: BaseException) -> str:
    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    return f"interrupted ({name}); no partial output was left behind"


def handle_errors(command: F) -> F:
    """Turn domain errors into one red line + exit 1, bugs into one line + exit 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except SrTileError as exc:
            if State.debug:
                err.print_exception()
            error_line(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, and SIGTERM/SIGHUP (see sr_tile._entry)
            error_line(interrupted_message(exc))
            State.interrupt_reported = True
            raise typer.Exit(interrupted_code(exc)) from None
        except Exception as exc:  # a bug: say so, briefly, unless debugging
            if State.debug:
                err.print_exception()
            error_line(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


class LazyProgress:
    """A rich progress display that appears only once a job has run for a second.

    Short jobs print nothing; long ones show the current file, patches done of
    the total, elapsed time and ETA on stderr.
    """

    DELAY_S = 1.0

    def __init__(self, total_files: int) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("patches"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        self.total_files = total_files
        self.started_at = time.monotonic()
        self.shown = False
        self.task = self.progress.add_task("", total=None)

    def _maybe_show(self) -> None:
        if not self.shown and time.monotonic() - self.started_at > self.DELAY_S:
            self.progress.start()
            self.shown = True

    def start_file(self, index: int, name: str) -> Callable[[int], None]:
        """Begin file ``index`` (1-based); returns the ``on_start(total)`` hook."""
        self.progress.reset(self.task, total=None,
                            description=f"[{index}/{self.total_files}] {escape(printable(name))}")

        def on_start(total: int) -> None:
            self.progress.update(self.task, total=total, completed=0)
            self._maybe_show()

        return on_start

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)
        self._maybe_show()

    def stop(self) -> None:
        if self.shown:
            self.progress.stop()


@contextmanager
def progress_for(total_files: int) -> Iterator[LazyProgress]:
    bar = LazyProgress(total_files)
    try:
        yield bar
    finally:
        bar.stop()
