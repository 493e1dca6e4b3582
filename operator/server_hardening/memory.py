"""Keeping the operator's RSS near what is live, not at the high-water mark of a mass converge.

Measured at 1,000 resources (``bench/run.py`` with a probe of the allocators' own statistics,
after a restart): 48 MiB allocated by CPython's own allocator (in 80 MiB of its arenas), 17 MiB
in use in glibc's heaps, and an RSS of 171-193 MiB. glibc held the rest: each of the process's
19 threads had a heap of its own, and eleven of them held about 4.4 MiB each with a few KiB in
use. :func:`tune_allocator` stops that (111-114 MiB after a restart, same bench), and
:func:`return_freed_memory` hands back what a converge freed inside the heaps. :func:`upkeep`
runs the latter once a minute in a thread of its own.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: What the C allocator keeps of freed memory at the top of a heap before it hands it back,
#: and the size from which a block gets its own mapping (returned to the kernel when freed):
#: glibc's own starting values, held fixed.
ALLOCATOR_THRESHOLD = 128 * 1024
#: C-allocator arenas: the main one and one shared by the other threads.
ALLOCATOR_ARENAS = 2
#: How often freed memory is handed back to the kernel.
TRIM_EVERY_SECONDS = 60.0


def _glibc(name: str) -> Any:
    """A function of the C library the process already runs on, or None without it (musl and
    macOS have neither ``mallopt`` nor ``malloc_trim``)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def tune_allocator() -> bool:
    """Keep the C allocator from holding freed memory: fixed thresholds and two arenas.

    glibc raises its trim and mmap thresholds whenever a block with a mapping of its own is
    freed (a page of a listing, a 2 MB ``/metrics`` answer), up to 32 MiB, so a thread's arena
    keeps that much of freed memory at its top, and ``malloc_trim`` does not give back the top
    of a thread's arena. Setting the thresholds stops that adjustment; two arenas leave few tops
    to hold anything (the threads run Python, one at a time, so they barely contend for one).
    To be called before any thread starts. Without glibc there is nothing to tune: False.
    """
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(
        mallopt(parameter, value) == 1
        for parameter, value in (
            (M_TRIM_THRESHOLD, ALLOCATOR_THRESHOLD),
            (M_MMAP_THRESHOLD, ALLOCATOR_THRESHOLD),
            (M_ARENA_MAX, ALLOCATOR_ARENAS),
        )
    )


def return_freed_memory() -> bool:
    """Hand the memory freed since the last call back to the kernel: glibc's ``malloc_trim``.

    CPython frees into the C allocator, which gives memory back on its own only from the top of
    its heaps. A converge of 1,000 resources at once (3,000 creates, their watch events and
    reconciles) left the holes below the top in place: an idle RSS of about 500 MiB with about
    200 MiB live. ``malloc_trim`` also releases the free pages inside the heaps. Without glibc
    (musl, macOS) there is nothing to call: returns False.
    """
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def upkeep(stop: threading.Event) -> None:
    """Until ``stop``: hand freed memory back to the kernel once a minute."""
    while not stop.wait(TRIM_EVERY_SECONDS):
        if not return_freed_memory():
            return
