"""The ``sr-tile`` console script: signals first, then the command line.

Kept apart from :mod:`sr_tile.cli`, whose imports (torch among them) take
seconds: a Ctrl-C or SIGTERM in that time must end the program with one line,
like one during a run, not with a traceback from deep inside an import.
"""

from __future__ import annotations

import os
import signal
import sys

from sr_tile.errors import Interrupted

STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s)


def _raise_interrupted(signum: int, frame: object) -> None:
    Interrupted.last = signum
    raise Interrupted(signum)


def main() -> None:
    for signum in STOP_SIGNALS:  # SIGINT already raises KeyboardInterrupt
        signal.signal(signum, _raise_interrupted)
    try:
        from sr_tile.cli import run

        code = run()
        flushed = _flush_stdout()
    except KeyboardInterrupt as exc:  # before the command line (or after it) took over
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        sys.stderr.write(f"error: interrupted ({signal.Signals(signum).name})\n")
        sys.exit(128 + signum)
    sys.exit(code if flushed else code or 1)


def _flush_stdout() -> bool:
    """Flush stdout now, so that a full disk or closed pipe is one line here rather than
    Python's 'Exception ignored' at exit; after a failure stdout goes nowhere."""
    try:
        sys.stdout.flush()
        return True
    except OSError as exc:
        sys.stderr.write(f"error: cannot write to standard output ({exc.strerror or exc})\n")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return False
