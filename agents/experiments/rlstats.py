"""Aggregate statistics that survive few seeds, as RL benchmark suites report them (Agarwal et al., 2021).

Scores come as ``{method: array [runs, tasks]}`` (runs = seeds). Everything here is plain NumPy with an
explicit ``numpy.random.Generator``: same seed, same intervals. (rliable, the reference library, does not
import with pandas 3: its ``arch`` dependency fails at import time.)

* :func:`iqm` — interquartile mean over all runs × tasks (the mean of the middle 50 %, as
  ``scipy.stats.trim_mean(x, 0.25)``);
* :func:`stratified_bootstrap_ci` — percentile confidence interval of any aggregate, resampling runs with
  replacement independently within each task;
* :func:`performance_profile` — share of runs × tasks whose score exceeds each threshold τ, with CIs;
* :func:`probability_of_improvement` — ``P(X > Y)`` averaged over tasks (Mann–Whitney U / mn, ties count ½);
* :func:`spearman` — rank correlation (average ranks for ties);
* :func:`kendall_tau_b` — Kendall's τ-b (pairs concordant minus discordant, corrected for ties, as
  ``scipy.stats.kendalltau``'s default).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ffenv.errors import FFPruneError


def _check(scores: np.ndarray) -> np.ndarray:
    x = np.asarray(scores, np.float64)
    if x.ndim != 2 or x.size == 0:
        raise FFPruneError(f"scores must be a non-empty [runs, tasks] array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise FFPruneError("scores must be finite")
    return x


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean of all entries: drop the lowest and highest ``int(0.25 n)``, average the rest."""
    x = np.sort(np.asarray(scores, np.float64).ravel())
    cut = int(0.25 * len(x))
    return float(x[cut: len(x) - cut].mean())


def _resample(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    runs, tasks = scores.shape
    idx = rng.integers(0, runs, size=(runs, tasks))  # independently per task (stratified by task)
    return np.take_along_axis(scores, idx, axis=0)


def stratified_bootstrap_ci(scores: np.ndarray, aggregate: Callable[[np.ndarray], float], reps: int = 2000,
                            confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(point, low, high)``: the aggregate and its percentile bootstrap interval over runs within tasks."""
    x = _check(scores)
    rng = np.random.default_rng(seed)
    boots = np.array([aggregate(_resample(x, rng)) for _ in range(reps)])
    alpha = (1 - confidence) / 2
    return float(aggregate(x)), float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))


def performance_profile(scores: np.ndarray, taus: np.ndarray, reps: int = 2000, confidence: float = 0.95,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Share of runs × tasks with a score above each ``tau`` (``[len(taus)]``), and its bootstrap interval."""
    x = _check(scores)
    taus = np.asarray(taus, np.float64)

    def profile(s: np.ndarray) -> np.ndarray:
        return (s.ravel()[None, :] > taus[:, None]).mean(axis=1)

    rng = np.random.default_rng(seed)
    boots = np.stack([profile(_resample(x, rng)) for _ in range(reps)])
    alpha = (1 - confidence) / 2
    return profile(x), np.quantile(boots, alpha, axis=0), np.quantile(boots, 1 - alpha, axis=0)


def _poi(x: np.ndarray, y: np.ndarray) -> float:
    per_task = []
    for t in range(x.shape[1]):
        a, b = x[:, t][:, None], y[:, t][None, :]
        per_task.append(float(((a > b) + 0.5 * (a == b)).mean()))
    return float(np.mean(per_task))


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int = 2000, confidence: float = 0.95,
                               seed: int = 0) -> tuple[float, float, float]:
    """``P(X > Y)`` for method X's and Y's ``[runs, tasks]`` scores, averaged over tasks, with a stratified
    bootstrap interval (runs of both resampled within each task)."""
    x, y = _check(x), _check(y)
    if x.shape[1] != y.shape[1]:
        raise FFPruneError(f"x and y must cover the same tasks, got {x.shape[1]} and {y.shape[1]}")
    rng = np.random.default_rng(seed)
    boots = np.array([_poi(_resample(x, rng), _resample(y, rng)) for _ in range(reps)])
    alpha = (1 - confidence) / 2
    return _poi(x, y), float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    for value in np.unique(v):  # ties share their average rank
        tie = v == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equally long vectors (``nan`` if one is constant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise FFPruneError(f"a and b must be equally long vectors of >= 2 values, got {a.shape} and {b.shape}")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall_tau_b(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's τ-b of two equally long vectors: ``(C - D) / sqrt((n0 - n1) (n0 - n2))`` with ``C`` / ``D`` the
    concordant / discordant pairs, ``n0 = n (n - 1) / 2`` and ``n1`` / ``n2`` the pairs tied in ``a`` / ``b`` (a pair
    tied in both counts in neither ``C`` nor ``D``); ``nan`` if one vector is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise FFPruneError(f"a and b must be equally long vectors of >= 2 values, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise FFPruneError("a and b must be finite")
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n0 = len(i)
    n1, n2 = int(np.sum(da == 0)), int(np.sum(db == 0))
    if n1 == n0 or n2 == n0:
        return float("nan")
    return float(np.sum(da * db) / np.sqrt((n0 - n1) * (n0 - n2)))
