"""Aggregate statistics of the suite (agents/rlstats.py) against definitions computed another way."""

from __future__ import annotations

import numpy as np
import pytest

from ffenv.errors import FFPruneError
from ffprune.agents.experiments.rlstats import (
    iqm,
    performance_profile,
    probability_of_improvement,
    spearman,
    stratified_bootstrap_ci,
)


def test_iqm_is_the_25_percent_trimmed_mean():
    x = np.arange(1.0, 13.0).reshape(3, 4)  # 12 values: drop 3 at each end
    assert iqm(x) == pytest.approx(np.mean(np.arange(4.0, 10.0)))
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    y = rng.normal(size=(5, 9))
    assert iqm(y) == pytest.approx(scipy_stats.trim_mean(y, 0.25, axis=None))


def test_bootstrap_interval_is_seeded_and_brackets_the_point():
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 0.2, size=(5, 9))
    a = stratified_bootstrap_ci(x, iqm, reps=300, seed=3)
    assert a == stratified_bootstrap_ci(x, iqm, reps=300, seed=3)
    assert a != stratified_bootstrap_ci(x, iqm, reps=300, seed=4)
    point, lo, hi = a
    assert lo <= point <= hi and hi - lo < 0.3
    const = np.full((3, 4), 0.7)  # no spread, no interval
    assert stratified_bootstrap_ci(const, iqm, reps=50) == pytest.approx((0.7, 0.7, 0.7))


def test_probability_of_improvement():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert probability_of_improvement(a, a, reps=50)[0] == pytest.approx(0.5)  # ties count one half
    assert probability_of_improvement(a + 10, a, reps=50)[0] == 1.0
    assert probability_of_improvement(a, a + 10, reps=50)[0] == 0.0
    # by hand, per task, then averaged: task 0: X=[1,3] vs Y=[2,2] -> (0+1+0+1)/4; task 1: [2,4] vs [2,5] -> (0.5+0+1+0)/4
    x, y = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[2.0, 2.0], [2.0, 5.0]])
    assert probability_of_improvement(x, y, reps=50)[0] == pytest.approx((0.5 + 0.375) / 2)
    with pytest.raises(FFPruneError, match="same tasks"):
        probability_of_improvement(x, y[:, :1])


def test_performance_profile_is_a_decreasing_share():
    x = np.array([[0.1, 0.5, 0.9]])
    prof, lo, hi = performance_profile(x, np.array([0.0, 0.3, 0.6, 1.0]), reps=50)
    np.testing.assert_allclose(prof, [1.0, 2 / 3, 1 / 3, 0.0])
    assert np.all(lo <= prof + 1e-12) and np.all(prof <= hi + 1e-12)


def test_spearman_matches_pearson_of_ranks_with_ties():
    a = np.array([1.0, 2.0, 2.0, 5.0, 7.0])
    b = np.array([3.0, 1.0, 4.0, 9.0, 8.0])
    ranks_a, ranks_b = np.array([0, 1.5, 1.5, 3, 4]), np.array([1, 0, 2, 4, 3])
    assert spearman(a, b) == pytest.approx(np.corrcoef(ranks_a, ranks_b)[0, 1])
    assert spearman(a, 2 * a + 1) == pytest.approx(1.0)
    assert np.isnan(spearman(a, np.ones(5)))
    scipy_stats = pytest.importorskip("scipy.stats")
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic)


def test_bad_scores_are_refused():
    with pytest.raises(FFPruneError, match="runs, tasks"):
        stratified_bootstrap_ci(np.zeros(3), iqm)
    with pytest.raises(FFPruneError, match="finite"):
        stratified_bootstrap_ci(np.array([[np.nan]]), iqm)
