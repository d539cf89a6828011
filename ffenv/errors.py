"""The project's exception for bad input, and the small argument checks every layer shares.

:class:`FFPruneError` is a :class:`ValueError`: code that catches ``ValueError`` keeps working. The
``ffprune`` command line prints it as one line (the message names the parameter, the value, the
allowed range and the fix); any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class FFPruneError(ValueError):
    """Bad input to ffprune: a parameter out of range, a missing or corrupt file, an unknown name."""


def positive_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` if it is a positive integer (``bool`` is not), else :class:`FFPruneError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise FFPruneError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` if it is an integer ``>= 0`` (``bool`` is not), else :class:`FFPruneError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise FFPruneError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def unit_interval(name: str, value: Any, *, open_low: bool = True, open_high: bool = False) -> float:
    """``value`` as a ``float`` if it is a finite number in ``(0, 1]`` (bounds as given), else :class:`FFPruneError`."""
    ok_type = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    v = float(value) if ok_type else float("nan")
    low_ok = v > 0.0 if open_low else v >= 0.0
    high_ok = v < 1.0 if open_high else v <= 1.0
    if not (ok_type and np.isfinite(v) and low_ok and high_ok):
        interval = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
        raise FFPruneError(f"{name} must be a number in {interval}, got {value!r}")
    return v
