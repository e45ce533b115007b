"""How the C allocator treats the large buffers of a training step (`--cpu_allocator`).

glibc's malloc maps every buffer above a few MiB afresh from the OS and unmaps it when it is freed, so the next
step's buffer of the same size page-faults again, page by page. A MiniLM step allocates its 45 MiB word-embedding
gradient, among others, that way. `reuse` serves such buffers from the heap and keeps what is freed there for the
next allocation. Only where memory comes from changes: the results are the same."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
REUSE_UP_TO = 1 << 30  # bytes: buffers up to this size come from the heap and stay there when freed


def reuse_freed_memory() -> bool:
    """Serve buffers up to `REUSE_UP_TO` from glibc's heap and keep freed heap memory for reuse (not returned to
    the OS). True where it applied (Linux with glibc); elsewhere nothing changes."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # no C library by that name, or one without mallopt (macOS, Windows)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, REUSE_UP_TO)) and bool(mallopt(M_TRIM_THRESHOLD, REUSE_UP_TO))


def system_defaults() -> bool:
    """Leave the C library's settings as they are."""
    return False


# --cpu_allocator -> what sets it up (True where it changed something)
ALLOCATORS: dict[str, Callable[[], bool]] = {"reuse": reuse_freed_memory, "system": system_defaults}
