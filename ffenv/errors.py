"""The project's exceptions, by kind, and the small argument checks every layer shares.

* :class:`FFPruneError` (a :class:`ValueError`): **bad input** — a parameter out of range, a missing or
  corrupt file, an unknown name. Nothing was computed; fix the input and run again.
* :class:`WorkerLostError` (a :class:`RuntimeError`): a population worker or a bench task died (killed,
  out of memory, its node lost) and its retry was lost too. The input was fine; what finished is kept and
  the same command with ``--resume`` (searches) or run again (benches) continues.
* :class:`SearchInterrupted` (a :class:`RuntimeError`): a search stopped by Ctrl-C; it names the checkpoint
  to resume from.

The ``ffprune`` command line prints each as one line (exit code 2 for bad input, 1 for a lost worker, 130
for an interruption); any other exception is a bug and shows its traceback.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class FFPruneError(ValueError):
    """Bad input to ffprune: a parameter out of range, a missing or corrupt file, an unknown name."""


class FFPruneRuntimeError(RuntimeError):
    """A run that failed for a reason other than its input (the base of the two below)."""


class WorkerLostError(FFPruneRuntimeError):
    """A Ray worker (population actor or bench task) died and the retry of its work was lost too; resume."""


class SearchInterrupted(FFPruneRuntimeError):
    """A search stopped by Ctrl-C after ``episodes`` episodes; ``checkpoint`` (if any) resumes it."""

    def __init__(self, episodes: int, checkpoint: str | None = None) -> None:
        self.episodes, self.checkpoint = episodes, checkpoint
        where = f"; resume with the same command and --resume (checkpoint {checkpoint})" if checkpoint else ""
        super().__init__(f"interrupted after {episodes} episodes{where}")


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
