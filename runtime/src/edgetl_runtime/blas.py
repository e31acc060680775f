"""Run numpy's small matrix products on one BLAS thread while the backbone owns the cores.

Preprocessing is a few small products per image (resize and crop as matrices). OpenBLAS splits
them over every core and its threads then spin against onnxruntime's: on 2 cores, features ran at
0.42x a bare onnxruntime session; on one BLAS thread, 0.85x (``benchmarks/bench_throughput.py``).
``threadpoolctl`` (the well-kept library for this) sets the limit; without it nothing changes.
The limit is process-wide while any thread preprocesses: numpy products elsewhere in the process
(a head fit in another thread) run on one BLAS thread meanwhile, which for the runtime's small
matrices costs nothing measurable.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()
_depth = 0
_active: Any = None


@functools.cache
def _controller() -> Any:
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl.ThreadpoolController()


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread inside the block. Re-entrant across threads: the first caller in sets
    the limit, the last one out restores what was there (the limit is process-wide)."""
    global _depth, _active  # noqa: PLW0603 - one process-wide limit, shared by every thread
    controller = _controller()
    if controller is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _active = controller.limit(limits=1, user_api="blas")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _active is not None:
                _active.restore_original_limits()
                _active = None
