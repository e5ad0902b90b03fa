"""Handing freed memory back to the operating system (glibc's `malloc_trim`)."""

from __future__ import annotations

import ctypes
import ctypes.util

_LIBC_NAME = ctypes.util.find_library("c")
_LIBC = ctypes.CDLL(_LIBC_NAME) if _LIBC_NAME else None


def release_freed_memory() -> None:
    """Hand the free pages of glibc's heaps back to the OS; a no-op without glibc.

    glibc keeps freed buffers in the heap of the thread that allocated them (its mmap threshold
    grows with each large free), so a process would otherwise stay at its peak: the service calls
    this after decoding a large image and when a tower has been idle."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
