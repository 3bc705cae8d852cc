"""Domain errors: anything a user can cause and fix.

The CLI prints these as one red line and exits 1; everything else is a bug and
keeps its traceback (shown with ``--debug``).
"""


class SrTileError(Exception):
    """Base class of every error a user can act on."""


class ImageReadError(SrTileError):
    """An input file that is missing, empty, corrupt, truncated, too large or not an image."""


class ImageWriteError(SrTileError):
    """An output that cannot be written (exists, unsupported combination, disk error)."""


class ConfigError(SrTileError):
    """Bad options: unknown model, unsupported scale, tile/overlap that cannot work."""
