"""The one wall-clock timer of the tools: CUDA-synchronised when the work runs on a GPU.

A CUDA kernel returns before it has run, so a time read on the host measures the launch, not the work.
:func:`timed` synchronises the device before starting the clock and again before reading it; on a CPU
device it is a plain :func:`time.perf_counter` difference. :func:`median_seconds` repeats :func:`timed`
after discarded warm-up calls and returns the median (robust to a busy machine's outliers).

>>> import torch
>>> median_seconds(lambda: torch.ones(8).sum(), "cpu", repeats=3) >= 0.0
True
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from ffenv.errors import non_negative_int, positive_int


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for the queued work of ``device`` (a no-op unless it is a CUDA device)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed(fn: Callable[[], object], device: torch.device | str) -> float:
    """Wall seconds of one call ``fn()``, the device synchronised before the clock starts and before it stops."""
    sync = synchronizer(device)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], device: torch.device | str, repeats: int, warmup: int = 1) -> float:
    """Median of ``repeats`` :func:`timed` calls of ``fn``, after ``warmup`` calls whose times are discarded.

    Raises:
        FFPruneError: ``repeats`` not a positive integer or ``warmup`` a negative one.
    """
    repeats = positive_int("repeats", repeats)
    warmup = non_negative_int("warmup", warmup)
    for _ in range(warmup):
        timed(fn, device)
    return statistics.median(timed(fn, device) for _ in range(repeats))
