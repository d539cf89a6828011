from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ffenv import project_budget
from ffenv.pruning.engines import Unit, round_to_units
from ffenv.pruning.projector import keep_to_raw, raw_to_keep

finite = st.floats(-5, 5, allow_nan=False, allow_infinity=False)


@st.composite
def problems(draw):
    n = draw(st.integers(1, 40))
    raw = draw(arrays(np.float64, n, elements=finite))
    sizes = draw(arrays(np.float64, n, elements=st.floats(1, 1e6)))
    lo = draw(st.floats(0.0, 0.6))
    hi = draw(st.floats(lo, 1.0))
    keep = draw(st.floats(lo, hi))
    target = 1.0 - keep
    assume(0.0 < target < 1.0)
    return raw, sizes, target, lo, hi


@settings(max_examples=300, deadline=None)
@given(problems())
def test_budget_met_exactly_and_bounds_hold(p):
    raw, sizes, target, lo, hi = p
    keep = project_budget(raw, target, sizes, lo, hi)
    assert keep.shape == raw.shape
    assert np.all(keep >= lo - 1e-12) and np.all(keep <= hi + 1e-12)
    assert abs(keep @ sizes - (1 - target) * sizes.sum()) <= 1e-9 * sizes.sum()


@settings(max_examples=200, deadline=None)
@given(problems(), st.integers(0, 39), st.floats(0.0, 3.0))
def test_monotone_in_raw(p, idx, bump):
    raw, sizes, target, lo, hi = p
    i = idx % len(raw)
    before = project_budget(raw, target, sizes, lo, hi)
    raised = raw.copy()
    raised[i] += bump
    after = project_budget(raised, target, sizes, lo, hi)
    assert after[i] >= before[i] - 1e-9
    others = np.arange(len(raw)) != i
    assert np.all(after[others] <= before[others] + 1e-9)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_deterministic(p):
    raw, sizes, target, lo, hi = p
    np.testing.assert_array_equal(project_budget(raw, target, sizes, lo, hi), project_budget(raw, target, sizes, lo, hi))


@given(st.floats(-3, 3), st.floats(0.05, 0.9))
def test_constant_action_is_uniform(c, target):
    sizes = np.array([10.0, 300.0, 7.0, 1000.0])
    keep = project_budget(np.full(4, c), target, sizes, 0.0, 1.0)
    np.testing.assert_allclose(keep, 1 - target, atol=1e-12)


def test_raw_keep_roundtrip():
    k = np.array([0.1, 0.5, 1.0])
    np.testing.assert_allclose(raw_to_keep(keep_to_raw(k, 0.1, 1.0), 0.1, 1.0), k)
    np.testing.assert_allclose(keep_to_raw(k, 0.1, 1.0), [-1.0, -1 / 9, 1.0])


def test_projection_of_feasible_keep_is_identity():
    sizes = np.array([100.0, 200.0, 300.0])
    keep = np.array([0.4, 0.9, 0.6])
    target = 1 - (keep @ sizes) / sizes.sum()
    np.testing.assert_allclose(project_budget(keep_to_raw(keep, 0.1, 1.0), target, sizes, 0.1, 1.0), keep)


@pytest.mark.parametrize(
    ("target", "lo", "hi", "match"),
    [
        (0.0, 0.1, 1.0, "open interval"),
        (1.0, 0.1, 1.0, "open interval"),
        (-0.2, 0.1, 1.0, "open interval"),
        (0.95, 0.1, 1.0, "infeasible"),
        (0.05, 0.0, 0.9, "infeasible"),
        (0.5, 0.8, 0.3, "must not exceed"),
        (float("nan"), 0.1, 1.0, "finite"),
    ],
)
def test_bad_budgets(target, lo, hi, match):
    with pytest.raises(ValueError, match=match):
        project_budget(np.zeros(3), target, np.ones(3), lo, hi)


def test_bad_raw():
    with pytest.raises(ValueError, match="finite"):
        project_budget(np.array([0.0, np.nan]), 0.3, np.ones(2))
    with pytest.raises(ValueError, match="shape"):
        project_budget(np.zeros(3), 0.3, np.ones(2))
    with pytest.raises(ValueError, match="positive"):
        project_budget(np.zeros(2), 0.3, np.array([1.0, 0.0]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 64), st.integers(1, 5000)), min_size=2, max_size=30),
       st.data())
def test_rounding_within_half_a_granule(spec, data):
    units = [Unit(i, "ffn", c, g) for i, (c, g) in enumerate(spec)]
    sizes = np.array([u.size for u in units], float)
    target = data.draw(st.floats(0.05, 0.9))
    raw = np.array(data.draw(st.lists(finite, min_size=len(units), max_size=len(units))))
    keep = project_budget(raw, target, sizes, 0.0, 1.0)
    kept = round_to_units(keep, units, (1 - target) * sizes.sum())
    assert np.all(kept >= 0) and np.all(kept <= [u.count for u in units])
    gran = np.array([u.granule_params for u in units], float)
    assert abs(kept @ gran - (1 - target) * sizes.sum()) <= gran.max() / 2 + 1e-6
    # no unit moves by more than one granule from its exact share
    assert np.all(np.abs(kept - keep * [u.count for u in units]) <= 1 + 1e-9)
