from __future__ import annotations

import numpy as np
import pytest
import torch

from ffprune.baselines.allocators import (
    alphapruning_max_eps,
    alphapruning_sparsities,
    atp_betas,
    atp_max_beta,
    atp_sparsities,
    dlp_sparsities,
    flap_sparsities,
    hill_alpha,
    owl_sparsities,
    uniform_sparsities,
)
from ffprune.baselines.heuristics import within_keep_bounds


def test_owl_hand_computed_equal_sizes():
    s = owl_sparsities(np.array([0.0, 0.5, 1.0]), 0.5, lam=0.08)
    np.testing.assert_allclose(s, [0.58, 0.50, 0.42])


def test_owl_hand_computed_weighted():
    sizes = np.array([1.0, 1.0, 2.0])
    s = owl_sparsities(np.array([0.0, 0.5, 1.0]), 0.5, sizes, lam=0.08)
    np.testing.assert_allclose(s, [0.60, 0.52, 0.44])
    assert s @ sizes / sizes.sum() == pytest.approx(0.5)
    # more outliers -> pruned less; spread is exactly 2 lambda
    assert s.max() - s.min() == pytest.approx(0.16)


def test_owl_constant_ratios_is_uniform_and_bounds():
    np.testing.assert_allclose(owl_sparsities(np.full(4, 0.2), 0.3), 0.3)
    with pytest.raises(ValueError, match="lam"):
        owl_sparsities(np.array([0.0, 1.0]), 0.97, lam=0.08)
    with pytest.raises(ValueError, match="target"):
        owl_sparsities(np.array([0.0, 1.0]), 1.0)


def test_alphapruning_hand_computed():
    np.testing.assert_allclose(alphapruning_sparsities(np.array([2.0, 3.0, 4.0]), 0.5, eps=0.3), [0.35, 0.5, 0.65])
    sizes = np.array([2.0, 1.0, 1.0])
    s = alphapruning_sparsities(np.array([2.0, 3.0, 4.0]), 0.5, sizes, eps=0.3)
    np.testing.assert_allclose(s, np.array([0.35, 0.5, 0.65]) * 0.5 / 0.4625)
    assert s @ sizes / sizes.sum() == pytest.approx(0.5)
    assert s[0] < s[1] < s[2]  # heavier tail (smaller alpha) pruned less


def test_alphapruning_bounds():
    with pytest.raises(ValueError, match="eps"):
        alphapruning_sparsities(np.array([2.0, 3.0]), 0.9, eps=0.3)
    with pytest.raises(ValueError, match="eps"):
        alphapruning_sparsities(np.array([2.0, 3.0]), 0.5, eps=1.5)


def test_alphapruning_max_eps_is_where_a_sparsity_reaches_one():
    alphas, sizes = np.array([2.0, 2.2, 2.1, 4.5]), np.array([5.0, 5.0, 5.0, 1.0])
    bound = alphapruning_max_eps(alphas, 0.7, sizes)
    assert 0 < bound < 0.3  # the authors' eps does not fit here
    assert alphapruning_sparsities(alphas, 0.7, sizes, eps=bound * (1 - 1e-9)).max() <= 1.0
    assert alphapruning_sparsities(alphas, 0.7, sizes, eps=bound * (1 - 1e-6)).max() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match=f"largest that fits is {bound:.4g}"):
        alphapruning_sparsities(alphas, 0.7, sizes, eps=bound * 1.001)
    assert alphapruning_max_eps(np.array([4.0, 2.0]), 0.5, np.array([100.0, 1.0])) == float("inf")  # m > (1+t)/2


def test_alphapruning_allocation_fits_eps_and_says_so():
    import gymnasium as gym

    from ffprune.baselines.heuristics import alphapruning_allocation

    env = gym.make("FFPrune-Mistral-Unstructured-v0", reward_windows=2, calib_samples=8)
    env.reset(seed=0)
    u = env.unwrapped
    s, info = alphapruning_allocation(env)
    assert info["eps_requested"] == 0.3 and 0 < info["eps"] < 0.3  # tiny-mistral at 0.7 needs a smaller eps
    assert s.max() <= 1.0 and s @ u.sizes / u.sizes.sum() == pytest.approx(0.7)
    with pytest.raises(ValueError, match="too large for target=0.7"):
        alphapruning_allocation(env, fit_eps=False)
    env.close()


def test_hill_alpha_recovers_a_power_law():
    n, alpha = 400, 3.0
    eig = (n / torch.arange(1, n + 1, dtype=torch.float64)) ** (1.0 / (alpha - 1.0))
    w = torch.diag(eig.sqrt())
    assert hill_alpha(w) == pytest.approx(alpha, rel=0.1)


def test_uniform():
    np.testing.assert_allclose(uniform_sparsities(0.3, 5), 0.3)


def test_flap_hand_computed():
    # attn: 2 groups of 10 params, scores [1, 3] -> z = [-1, 1]; ffn: 4 neurons of 1 param,
    # scores [1, 2, 3, 4] -> z = [-1.34, -0.45, 0.45, 1.34]. Target 25 % of 24 params = 6 removed.
    scores = [np.array([1.0, 3.0]), np.array([4.0, 1.0, 3.0, 2.0])]
    kinds, gran = ["attn", "ffn"], np.array([10, 1])
    # ascending z: ffn(1), attn(1) (1 + 10 would overshoot 6 by more than it undershoots: skipped),
    # ffn(2), ffn(3), attn(3) skipped, ffn(4) -> all 4 neurons removed, 4 params
    np.testing.assert_allclose(flap_sparsities(scores, kinds, gran, 0.25), [0.0, 1.0])
    # min_keep 0.1 keeps ceil(0.4) = 1 neuron: the highest-z one survives
    np.testing.assert_allclose(flap_sparsities(scores, kinds, gran, 0.25, min_keep=0.1), [0.0, 0.75])
    # target 50 % = 12: ffn(1) -> 1, attn(1) -> 11, then one more neuron -> 12 exactly
    np.testing.assert_allclose(flap_sparsities(scores, kinds, gran, 0.5), [0.5, 0.5])


def test_flap_standardises_per_kind_and_rejects_bad_input():
    # same shape of scores at a 1000x scale: standardisation makes the kinds comparable
    s = flap_sparsities([np.array([1.0, 2.0, 3.0]), np.array([1000.0, 2000.0, 3000.0])], ["attn", "ffn"],
                        np.array([1, 1]), 1 / 3)
    np.testing.assert_allclose(s, [1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="target"):
        flap_sparsities([np.ones(2)], ["attn"], np.array([1]), 1.0)
    with pytest.raises(ValueError, match="one entry per unit"):
        flap_sparsities([np.ones(2)], ["attn", "ffn"], np.array([1]), 0.5)
    with pytest.raises(ValueError, match="finite"):
        flap_sparsities([np.array([np.nan, 1.0])], ["attn"], np.array([1]), 0.5)


def test_flap_on_the_env_meets_the_budget():
    import gymnasium as gym

    from ffprune.baselines.heuristics import flap_allocation

    env = gym.make("FFPrune-OPT-v0", reward_windows=2, calib_samples=8)
    u = env.unwrapped
    s = flap_allocation(env)
    assert s @ u.sizes / u.sizes.sum() == pytest.approx(u.target_sparsity, abs=max(u.sizes / u.sizes.sum()))
    assert np.all(1 - s >= u.config.min_keep - 1e-9) and s.std() > 0
    env.reset(seed=0)
    _, _, _, _, info = env.step(u.action_from_sparsities(s))
    assert info["sparsity"] == pytest.approx(u.target_sparsity, abs=0.01)
    with pytest.raises(ValueError, match="structured"):
        flap_allocation(gym.make("FFPrune-Llama-Unstructured-v0", reward_windows=2, calib_samples=8))


@pytest.mark.parametrize("method", ["uniform", "owl", "alphapruning", "dlp"])
def test_allocations_go_through_the_env_unchanged(method):
    import gymnasium as gym

    from ffprune.agents.methods.registry import METHODS
    from ffprune.baselines import heuristics

    env = gym.make("FFPrune-Llama-Unstructured-v0", reward_windows=2, calib_samples=8)
    env.reset(seed=0)
    u = env.unwrapped
    assert METHODS[method].heuristic
    s = getattr(heuristics, f"{method}_allocation")(env)
    if method == "alphapruning":
        s, info = s
        assert info == {"eps": 0.3, "eps_requested": 0.3}  # fits at 0.7 on tiny-llama: used as asked
    assert s @ u.sizes / u.sizes.sum() == pytest.approx(u.target_sparsity)
    runnable = within_keep_bounds(env, s)
    assert runnable @ u.sizes / u.sizes.sum() == pytest.approx(u.target_sparsity)
    assert np.all(1 - runnable >= u.config.min_keep - 1e-9) and np.all(1 - runnable <= u.config.max_keep + 1e-9)
    if np.all(1 - s >= u.config.min_keep):
        np.testing.assert_array_equal(runnable, s)  # within the bounds: untouched
    _, _, _, _, info = env.step(u.action_from_sparsities(runnable))
    np.testing.assert_allclose(info["keep_ratio"], 1 - runnable, atol=1e-6)
    if method != "uniform":
        assert s.std() > 0


def test_owl_threshold_m_recomputes_the_outlier_ratios_from_the_env_statistics():
    """OWL's ``M`` at its default reads the observation's outlier ratios; another ``M`` computes them from the env's
    calibration norms (the same numbers at ``M`` = 5, up to the observation's float32); a bad ``M`` is one line."""
    import gymnasium as gym

    from ffenv.errors import FFPruneError
    from ffenv.pruning.importance import block_outlier_ratio
    from ffprune.baselines import heuristics

    env = gym.make("FFPrune-Llama-Unstructured-v0", reward_windows=2, calib_samples=8)
    env.reset(seed=0)
    u = env.unwrapped
    default = heuristics.owl_allocation(env)
    ratios = np.array([block_outlier_ratio(b, u.input_norms, heuristics.OWL_M) for b in u.blocks])
    expected = heuristics._per_unit(env, owl_sparsities(ratios, u.target_sparsity, heuristics._block_sizes(env)))
    np.testing.assert_allclose(default, expected, atol=1e-6)
    m3 = heuristics.owl_allocation(env, m=3.0)
    assert m3 @ u.sizes / u.sizes.sum() == pytest.approx(u.target_sparsity) and not np.allclose(m3, default)
    wide = heuristics.owl_allocation(env, lam=0.2)
    assert np.ptp(wide) > np.ptp(default)  # λ widens the spread
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(FFPruneError, match="^m must be"):
            heuristics.owl_allocation(env, m=bad)


def test_allocation_outside_the_keep_bounds_is_clipped_and_rebalanced():
    import gymnasium as gym

    env = gym.make("FFPrune-Llama-Unstructured-v0", reward_windows=2, calib_samples=8)  # target 0.7, min_keep 0.1
    u = env.unwrapped
    s = alphapruning_sparsities(np.linspace(2.0, 4.0, u.n_units), u.target_sparsity, u.sizes, eps=0.3)
    assert s.max() > 0.9  # AlphaPruning's own range at 70 % exceeds what min_keep allows
    with pytest.raises(ValueError, match="keep bounds"):
        u.action_from_sparsities(s)
    r = within_keep_bounds(env, s)
    assert r.max() == pytest.approx(0.9) and r @ u.sizes / u.sizes.sum() == pytest.approx(0.7)
    assert np.all(np.diff(r) >= -1e-12)  # the order of the allocation is kept
    assert np.all(r[s < 0.9] >= s[s < 0.9])  # the excess is spread over the other units


@pytest.mark.parametrize("method", ["random", "evolution", "uniform-split", "flap", "owl", "dlp", "atp"])
def test_search_baselines_share_the_search_pipeline(tmp_path, method):
    from ffprune.agents.experiments.search import run_search

    r = run_search("FFPrune-Mistral-v0", agent=method, budget=6, seed=0, logdir=tmp_path, out=tmp_path / "r.json",
                   env_kwargs={"reward_windows": 2, "calib_samples": 8, "eval_samples": 4}, progress=False)
    assert r["curriculum"] is False
    assert r["best"]["sparsity"] == pytest.approx(0.3, abs=0.02)
    if method == "uniform-split":
        # tiny-mistral has 2 KV groups: h = 2, 1, 0 -> only feasible splits are evaluated
        sweep = r["agent_stats"]["sweep"]
        assert 1 <= len(sweep) <= 3 and r["cost"]["evaluations"] == len(sweep)
        assert r["best"]["reward"] == pytest.approx(max(x["reward"] for x in sweep))
    elif method == "atp":  # a budget of 6 < the 8 default trials: a coarser grid of 6, then it stops
        assert r["agent_stats"]["trials_used"] == 6 and r["cost"]["evaluations"] == 6 and r["cost"]["episodes"] == 6
    elif method in ("flap", "owl", "dlp"):  # heuristics: no search, one evaluation
        assert r["budget"] == 1 and r["cost"]["evaluations"] == 1 and r["cost"]["evaluations_to_best"] == 1
    else:
        assert r["cost"]["episodes"] == 6


# ----------------------------------------------------------------------------- DLP
def test_dlp_hand_computed():
    # U = [1, 3, 2]: I = 1 - U/6 = [5/6, 1/2, 2/3]; min-max -> [1, 0, 0.5]; x 2 alpha (0.2) -> r = [0.2, 0, 0.1]
    # equal sizes: r_bar = 0.1, keep = 0.5 + r - 0.1 = [0.6, 0.4, 0.5]
    np.testing.assert_allclose(dlp_sparsities(np.array([1.0, 3.0, 2.0]), 0.5, alpha=0.1), [0.4, 0.6, 0.5])
    # sizes [2, 1, 1]: r_bar = (0.4 + 0 + 0.1) / 4 = 0.125 -> keep = [0.575, 0.375, 0.475]
    sizes = np.array([2.0, 1.0, 1.0])
    s = dlp_sparsities(np.array([1.0, 3.0, 2.0]), 0.5, sizes, alpha=0.1)
    np.testing.assert_allclose(s, [0.425, 0.625, 0.525])
    assert s @ sizes / sizes.sum() == pytest.approx(0.5)  # the parameter-weighted target, exactly
    assert s.max() - s.min() == pytest.approx(0.2)  # a spread of 2 alpha; the largest median is pruned most
    np.testing.assert_allclose(dlp_sparsities(np.full(3, 2.0), 0.3), 0.3)  # equal medians: uniform
    np.testing.assert_allclose(dlp_sparsities(np.array([1.0, 3.0, 2.0]), 0.5, alpha=0.0), 0.5)


def test_dlp_bad_input():
    with pytest.raises(ValueError, match="alpha=0.1 is too large for target=0.95"):
        dlp_sparsities(np.array([1.0, 3.0, 2.0]), 0.95, alpha=0.1)
    with pytest.raises(ValueError, match="alpha must be"):
        dlp_sparsities(np.array([1.0, 3.0]), 0.5, alpha=-0.1)
    with pytest.raises(ValueError, match="unimportance must be >= 0"):
        dlp_sparsities(np.array([1.0, -3.0]), 0.5)
    with pytest.raises(ValueError, match="unimportance must be >= 0"):
        dlp_sparsities(np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="target"):
        dlp_sparsities(np.array([1.0, 3.0]), 1.0)


@pytest.mark.parametrize("env_id", ["FFPrune-Llama-v0", "FFPrune-Llama-Unstructured-v0"])
def test_dlp_on_the_env_follows_the_block_medians(env_id):
    import gymnasium as gym

    from ffprune.baselines.heuristics import dlp_allocation, dlp_unimportance

    env = gym.make(env_id, reward_windows=2, calib_samples=8)
    u = env.unwrapped
    medians = dlp_unimportance(env)
    assert medians.shape == (u.n_blocks,) and np.all(medians > 0)
    s = dlp_allocation(env)
    blocks = np.array([unit.block for unit in u.units])
    per_block = np.array([s[blocks == b][0] for b in range(u.n_blocks)])
    for b in range(u.n_blocks):
        np.testing.assert_array_equal(s[blocks == b], per_block[b])  # a block's units share its sparsity
    assert np.all(np.diff(per_block[np.argsort(medians)]) > 0)  # a larger median score -> more pruning
    assert per_block.max() - per_block.min() == pytest.approx(0.3)  # 2 alpha
    assert s @ u.sizes / u.sizes.sum() == pytest.approx(u.target_sparsity)
    env.reset(seed=0)
    _, _, _, _, info = env.step(u.action_from_sparsities(within_keep_bounds(env, s)))
    np.testing.assert_allclose(info["keep_ratio"], 1 - s, atol=1e-6)  # within the bounds: the projector keeps it
    env.close()


# ----------------------------------------------------------------------------- ATP
def test_atp_hand_computed():
    # the paper's Eq. 10 with L = 4, S = 0.5, beta = 0.1: S - 1.5 beta + beta (i - 1)
    np.testing.assert_allclose(atp_sparsities(0.5, np.ones(4), 0.1), [0.35, 0.45, 0.55, 0.65])
    # sizes [1, 1, 1, 3]: the centre is the size-weighted mean index (0 + 1 + 2 + 9) / 6 = 2
    sizes = np.array([1.0, 1.0, 1.0, 3.0])
    s = atp_sparsities(0.5, sizes, 0.1)
    np.testing.assert_allclose(s, [0.3, 0.4, 0.5, 0.6])
    assert s @ sizes / sizes.sum() == pytest.approx(0.5) and np.allclose(np.diff(s), 0.1)
    np.testing.assert_allclose(atp_sparsities(0.3, np.ones(5), 0.0), 0.3)  # beta 0: uniform


def test_atp_beta_range_and_grid():
    # the paper's examples (Sec. 3.4): 32 layers at 70 % -> 0 < beta <= 0.019; 80 layers (70B) -> 0.0075
    assert atp_max_beta(0.7, np.ones(32)) == pytest.approx(2 * 0.3 / 31)
    assert atp_max_beta(0.7, np.ones(80)) == pytest.approx(2 * 0.3 / 79)
    assert atp_max_beta(0.2, np.ones(11)) == pytest.approx(2 * 0.2 / 10)  # the low side binds below 50 %
    # keep bounds [0.1, 1] at 70 % over 8 blocks: the last block may reach 0.9 -> beta <= 0.2 / 3.5
    bound = atp_max_beta(0.7, np.ones(8), min_keep=0.1, max_keep=1.0)
    assert bound == pytest.approx(0.2 / 3.5)
    assert atp_sparsities(0.7, np.ones(8), bound).max() == pytest.approx(0.9)
    with pytest.raises(ValueError, match="largest that fits is 0.0857143"):  # 0.3 / 3.5 on [0, 1]
        atp_sparsities(0.7, np.ones(8), 0.1)
    with pytest.raises(ValueError, match="beta must be"):
        atp_sparsities(0.7, np.ones(8), -0.01)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        atp_sparsities(0.7, np.ones(1), 0.01)
    with pytest.raises(ValueError, match="min_keep and max_keep"):
        atp_max_beta(0.7, np.ones(8), min_keep=0.5, max_keep=0.4)
    np.testing.assert_allclose(atp_betas(0.06, 3), [0.02, 0.04, 0.06])
    with pytest.raises(ValueError, match="trials must be a positive integer"):
        atp_betas(0.06, 0)
    with pytest.raises(ValueError, match="beta_max"):
        atp_betas(0.0, 3)


@pytest.mark.parametrize("env_id", ["FFPrune-Llama-v0", "FFPrune-Llama-Unstructured-v0"])
def test_atp_on_the_env_meets_the_budget_within_the_bounds(env_id):
    import gymnasium as gym

    from ffprune.baselines.heuristics import atp_allocation, atp_beta_range

    env = gym.make(env_id, reward_windows=2, calib_samples=8)
    u = env.unwrapped
    lo, hi = u.config.min_keep, u.config.max_keep
    beta_max = atp_beta_range(env)
    assert beta_max > 0
    s = atp_allocation(env, beta_max)
    keep = 1 - s
    assert s @ u.sizes / u.sizes.sum() == pytest.approx(u.target_sparsity)
    assert np.all(keep >= lo - 1e-9) and np.all(keep <= hi + 1e-9)
    assert keep.min() == pytest.approx(lo) or keep.max() == pytest.approx(hi)  # the largest beta touches a bound
    blocks = np.array([unit.block for unit in u.units])
    per_block = np.array([s[blocks == b][0] for b in range(u.n_blocks)])
    np.testing.assert_allclose(np.diff(per_block), beta_max)  # one common difference along depth
    env.reset(seed=0)
    _, _, _, _, info = env.step(u.action_from_sparsities(s))
    np.testing.assert_allclose(info["keep_ratio"], keep, atol=1e-6)  # the projector leaves it as it is
    assert info["sparsity"] == pytest.approx(u.target_sparsity, abs=0.01)
    with pytest.raises(ValueError, match=r"beta must be in \[0, "):
        atp_allocation(env, beta_max * 1.01)
    env.close()


@pytest.mark.parametrize("env_id", ["FFPrune-Llama-v0", "FFPrune-Llama-Unstructured-v0"])
def test_atp_search_counts_its_trials_and_keeps_the_best(tmp_path, env_id):
    import gymnasium as gym

    from ffprune.agents.experiments.search import run_search
    from ffprune.agents.methods.registry import METHODS
    from ffprune.baselines.heuristics import atp_allocation, atp_beta_range

    assert METHODS["atp"].kind == "search" and not METHODS["atp"].heuristic
    kwargs = {"reward_windows": 2, "calib_samples": 8, "eval_samples": 2}
    r = run_search(env_id, agent="atp", budget=50, seed=0, logdir=None, env_kwargs=kwargs, progress=False)
    stats = r["agent_stats"]
    assert stats["trials_used"] == 8 and len(stats["trials"]) == 8  # it stops after its trials, budget left or not
    assert r["cost"]["evaluations"] == 8 and r["cost"]["episodes"] == 8
    betas = [t["beta"] for t in stats["trials"]]
    np.testing.assert_allclose(betas, stats["beta_max"] * np.arange(1, 9) / 8)
    rewards = [t["reward"] for t in stats["trials"]]
    assert len(set(rewards)) > 1  # the trials differ: the choice matters
    best = int(np.argmax(rewards))
    assert stats["best_beta"] == betas[best] and r["best"]["reward"] == pytest.approx(rewards[best])
    assert r["cost"]["evaluations_to_best"] == best + 1
    env = gym.make(env_id, **kwargs)
    assert stats["beta_max"] == pytest.approx(atp_beta_range(env))
    expected = env.unwrapped.action_from_sparsities(atp_allocation(env, stats["best_beta"]))
    np.testing.assert_allclose(r["best"]["action"], expected, atol=1e-6)  # the best trial's allocation is kept
    env.close()
    # a budget below the trials: a coarser grid over the same range, all of it counted
    r = run_search(env_id, agent="atp", budget=3, seed=0, logdir=None, env_kwargs=kwargs, progress=False)
    assert r["agent_stats"]["trials_used"] == 3 and r["cost"]["evaluations"] == 3
    np.testing.assert_allclose([t["beta"] for t in r["agent_stats"]["trials"]], stats["beta_max"] * np.array([1, 2, 3]) / 3)
    with pytest.raises(ValueError, match="trials must be a positive integer"):
        run_search(env_id, agent="atp", budget=3, seed=0, logdir=None, env_kwargs=kwargs, progress=False,
                   agent_kwargs={"trials": 0})


def test_atp_refuses_a_target_on_a_keep_bound():
    import gymnasium as gym

    from ffenv.wrappers import SearchAccounting
    from ffprune.baselines.search import atp_search

    env = SearchAccounting(gym.make("FFPrune-Llama-Unstructured-v0", reward_windows=2, calib_samples=8,
                                    target_sparsity=0.9), budget=4)  # min_keep 0.1: every block at 0.9
    with pytest.raises(ValueError, match="only beta = 0"):
        atp_search(env)
    assert env.episodes == 0 and env.cost["evaluations"] == 0  # refused before any evaluation
    env.close()
