"""Process-wide settings that make CPU inference faster.

glibc returns every freed block above its mmap threshold (128 KiB, adapting upwards) to the
operating system, so each forward pass of a tile batch maps fresh pages for its 10-20 MB
activations and pays a page fault per 4 KiB on first touch. On the project's 2-core machine
that was 25-45 % of ENAF-FSRCNN's time, and the main source of run-to-run noise. PyTorch's CPU
guides cure it with jemalloc/tcmalloc; :func:`tune_allocator` gets the same effect from glibc
itself: blocks up to 64 MiB stay in the heap and are reused. The CLI calls it at start-up;
library users opt in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters
_MIB = 1 << 20


def tune_allocator(*, keep_mib: int = 64) -> bool:
    """Keep freed blocks up to ``keep_mib`` MiB for reuse (glibc only); True when applied.

    Peak memory is unchanged (the blocks were live at the peak anyway); the heap is trimmed
    back to the OS once more than 4x ``keep_mib`` is free at its top.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs: nothing to tune
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, keep_mib * _MIB)
    ok &= mallopt(_M_TRIM_THRESHOLD, 4 * keep_mib * _MIB)
    ok &= mallopt(_M_TOP_PAD, keep_mib * _MIB)
    return bool(ok)
