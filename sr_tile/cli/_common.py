"""What every command shares: consoles, error handling, progress, JSON output.

Results go to stdout; progress, warnings and errors to stderr. A domain error
(:class:`SrTileError`) is one red line and exit code 1; anything else is a bug:
one line too, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
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

from sr_tile.errors import SrTileError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
for _console in (out, err):
    if not _console.is_terminal:  # logs and pipes: wide enough for report tables
        _console.width = max(_console.width, 120)


class State:
    debug = False


F = TypeVar("F", bound=Callable[..., Any])


def error_line(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def warning_line(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


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
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            error_line("interrupted; no partial output was left behind")
            raise typer.Exit(130) from None
        except Exception as exc:  # a bug: say so, briefly, unless debugging
            if State.debug:
                err.print_exception()
            error_line(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug)")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def write_json(path: str | Path, data: Any) -> None:
    """Write a report atomically (temp file + rename), like images."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        self.progress.reset(self.task, total=None, description=f"[{index}/{self.total_files}] {name}")

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
