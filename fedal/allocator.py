"""The C allocator of a process that trains and scores with torch on the CPU.

glibc's ``malloc`` serves a block above its mmap threshold (128 KiB at first, raised
only when such a block is freed) with a fresh ``mmap`` and hands it back with
``munmap``, and it trims freed heap above 128 KiB back to the system. A training step's
activations and gradients are blocks of a few hundred KiB to a few MiB, allocated and
freed at every step, so every step maps, faults in and unmaps new pages: on a 2-core box
about a fifth of a client round's CPU time was the kernel's, handling page faults.

:func:`reuse_freed_memory` raises the mmap threshold to 32 MiB (the largest glibc takes
on 64-bit systems) and the trim threshold to 256 MiB, so freed blocks stay in the heap
and serve the next step. Results do not change (the allocator decides where tensors
live, not what they hold); a process keeps up to 256 MiB of freed heap. Called where a
process starts computing: the ClientApp's import (every worker) and the ``fedal``
command (the server's evaluation, central training, the benches). Elsewhere than
glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 256 * 2**20


def reuse_freed_memory() -> bool:
    """Keep this process's freed blocks for reuse (see the module docstring); False
    where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
