"""Process-wide CPU settings that make small-batch PyTorch training fast.

``configure_cpu(threads)`` sets PyTorch's thread count and tells glibc's allocator to keep freed
memory instead of handing every large block back to the kernel. With the default thresholds each
episode's activations (megabytes) are ``mmap``-ed and ``munmap``-ed anew, and the page faults cost
more than the convolutions: on 2 cores this doubles evaluation throughput (32 -> 81 episodes/s for
ProtoNet 5-way 1-shot). It only changes where memory comes from, never a result.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds; False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                          _KEEP_BYTES))


def configure_cpu(threads: int | None = None) -> None:
    """Set the thread count (default: every core) and tune the allocator."""
    torch.set_num_threads(max(1, threads or os.cpu_count() or 1))
    tune_allocator()
