"""Domain errors: anything a user can cause and fix.

The CLI prints these as one red line and exits with the error's ``exit_code``:
2 for a bad option value (:class:`UsageError`), 1 for everything else. Any
other exception is a bug and keeps its traceback (shown with ``--debug``).
"""


class SrTileError(Exception):
    """Base class of every error a user can act on."""

    exit_code = 1


class ImageReadError(SrTileError):
    """An input file that is missing, empty, corrupt, truncated, too large or not an image."""


class ImageWriteError(SrTileError):
    """An output that cannot be written (exists, unsupported combination, disk error)."""


class ConfigError(SrTileError):
    """Bad settings: a config or weights file that cannot be used, a run that cannot work."""


class UsageError(ConfigError):
    """A command-line option value that can never work (unknown model, --tile 0, -o x.gif)."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C would be, so that a run stops the same way:
    temp files removed, one line, exit code 128 + ``signum``."""

    last: int | None = None  # the last stop signal received by this process

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
