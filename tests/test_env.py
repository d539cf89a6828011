from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import ffenv
from ffenv.config import EnvConfig
from ffenv.envs.features import UNIT_FEATURES
from ffenv.envs.prune_env import FFPruneEnv
from ffenv.errors import FFPruneError
from ffenv.lm.models import load_model_cached
from ffenv.lm.perplexity import perplexity

FAST = {"reward_windows": 4, "calib_samples": 8}


def make(env_id: str = "FFPrune-Llama-v0", **kw) -> gym.Env:
    env = gym.make(env_id, **{**FAST, **kw})
    env.reset(seed=0)
    return env


@pytest.mark.parametrize("env_id", ffenv.env_ids())
def test_registered_ids_pass_checkers(env_id):
    env = make(env_id)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    u = env.unwrapped
    structured = "Unstructured" not in env_id
    assert u.n_units == (2 if structured else 1) * u.n_blocks
    assert env.observation_space.shape == (1 + u.n_units * len(UNIT_FEATURES),)
    assert u.target_sparsity == (0.7 if not structured else 0.5 if "Structured50" in env_id else 0.3)


def test_all_nine_ids_registered():
    assert set(ffenv.env_ids()) == {
        "FFPrune-Llama-v0", "FFPrune-Mistral-v0", "FFPrune-OPT-v0",
        "FFPrune-Llama-Unstructured-v0", "FFPrune-Mistral-Unstructured-v0", "FFPrune-OPT-Unstructured-v0",
        "FFPrune-Llama-Structured50-v0", "FFPrune-Mistral-Structured50-v0", "FFPrune-OPT-Structured50-v0",
    }
    for env_id in ffenv.env_ids():
        assert env_id in gym.registry


def test_family_names_map_to_registered_ids():
    """The family vocabulary (task names, ``--families``) lives with the registration, bundled and real alike."""
    from ffenv.registration import FAMILY_NAMES, family_env_id

    assert set(FAMILY_NAMES) == {"llama", "mistral", "opt", "smollm2", "gemma3"}
    for name in FAMILY_NAMES:
        for mode in ("structured", "unstructured"):
            assert family_env_id(name, mode) in gym.registry
    assert family_env_id("smollm2", "unstructured") == "FFPrune-SmolLM2-Unstructured-v0"
    with pytest.raises(FFPruneError, match=r"among \['gemma3', 'llama', 'mistral', 'opt', 'smollm2'\], got 'gpt'"):
        family_env_id("gpt", "structured")
    with pytest.raises(FFPruneError, match="modes must be among"):
        family_env_id("llama", "dense")


def test_step_contract_and_info():
    env = make()
    obs, info = env.reset(seed=0)
    assert obs[0] == pytest.approx(0.3)
    obs, reward, terminated, truncated, info = env.step(np.zeros(env.action_space.shape, np.float32))
    assert terminated and not truncated
    for key in ("layer_sparsity", "sparsity", "ppl", "dense_ppl", "cost", "keep_ratio"):
        assert key in info
    assert info["cost"] == {"evaluations": 1, "tokens": 4 * 256}
    assert reward == pytest.approx(info["dense_ppl"] / info["ppl"])
    assert 0 < reward < 1
    assert env.unwrapped.cost["evaluations"] == 1 and env.unwrapped.cost["seconds"] > 0


@pytest.mark.parametrize("env_id", ["FFPrune-Llama-v0", "FFPrune-Mistral-v0", "FFPrune-OPT-v0",
                                    "FFPrune-Llama-Unstructured-v0"])
def test_realized_sparsity_close_to_target(env_id):
    env = make(env_id)
    u = env.unwrapped
    rng = np.random.default_rng(0)
    largest_granule = max(x.granule_params for x in u.units)
    for _ in range(3):
        _, _, _, _, info = env.step(rng.uniform(-1, 1, u.n_units).astype(np.float32))
        # within one unit's share of the total prunable parameters
        assert abs(info["sparsity"] - u.target_sparsity) <= max(largest_granule, 1) / u.sizes.sum() + 1e-3
        assert np.all(info["layer_sparsity"] >= -1e-6) and np.all(info["layer_sparsity"] <= 1 + 1e-6)


def test_same_seed_same_action_same_result():
    a = np.linspace(-1, 1, 16).astype(np.float32)
    r1 = make(seed=3).step(a)
    r2 = FFPruneEnv(**FAST, seed=3).step(a)
    assert r1[1] == r2[1]
    for key in ("layer_sparsity", "keep_ratio"):
        np.testing.assert_array_equal(r1[4][key], r2[4][key])
    assert r1[4]["ppl"] == r2[4]["ppl"]


@pytest.mark.parametrize("mode", ["structured", "unstructured"])
def test_dense_weights_bit_identical_after_50_steps(mode):
    env = make(mode=mode, target_sparsity=0.5, reward_windows=1)
    model = env.unwrapped.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(1)
    for _ in range(50):
        env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-mistral", "tiny-opt"])
def test_masking_equals_physical_removal(model_name):
    """Structured masks compute exactly the function of the physically smaller model (GQA, OPT biases)."""
    env = make(model=model_name)
    u = env.unwrapped
    rng = np.random.default_rng(2)
    pruner = u.pruner
    kept = np.array([max(1, int(rng.integers(1, x.count + 1))) for x in u.units])
    unit_sparsity = 1 - kept / np.array([x.count for x in u.units])
    np.testing.assert_array_equal(pruner.granules_kept(unit_sparsity), kept)
    small = u.pruned_model(sparsities=unit_sparsity)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in u.model.parameters())
    x = u.reward_tokens[:2]
    pruner.apply(unit_sparsity)
    try:
        with torch.inference_mode():
            masked = u.model(input_ids=x).logits
    finally:
        pruner.restore()
    with torch.inference_mode():
        sliced = small(input_ids=x).logits
    torch.testing.assert_close(sliced, masked, rtol=1e-4, atol=1e-4)
    # the removed parameter count is exactly what the env counts
    dense_params = sum(p.numel() for p in u.model.parameters())
    removed = sum((x.count - k) * x.granule_params for x, k in zip(u.units, kept))
    assert dense_params - sum(p.numel() for p in small.parameters()) == removed


def test_gqa_units_are_kv_groups():
    u = make("FFPrune-Mistral-v0").unwrapped
    cfg = u.model.config
    attn = [x for x in u.units if x.kind == "attn"]
    assert all(x.count == cfg.num_key_value_heads for x in attn)
    hd = cfg.hidden_size // cfg.num_attention_heads
    r = cfg.num_attention_heads // cfg.num_key_value_heads
    assert attn[0].granule_params == (2 * r + 2) * hd * cfg.hidden_size


def test_opt_counts_biases():
    u = make("FFPrune-OPT-v0").unwrapped
    cfg = u.model.config
    ffn = [x for x in u.units if x.kind == "ffn"][0]
    assert ffn.granule_params == 2 * cfg.hidden_size + 1  # fc1 row + bias, fc2 column


def test_evaluate_uses_held_out_split_and_does_not_count_as_search_cost():
    env = make()
    u = env.unwrapped
    res = u.evaluate(np.zeros(u.n_units, np.float32), n_windows=4)
    assert res["split"] == "eval" and np.isfinite(res["ppl"]) and res["ppl"] > res["dense_ppl"]
    assert u.cost["evaluations"] == 0
    s = np.full(u.n_units, 0.3)
    res2 = u.evaluate(sparsities=s, n_windows=4)
    assert res2["sparsity"] == pytest.approx(0.3, abs=0.02)
    model, tok = load_model_cached("tiny-llama", "cpu", "auto")
    assert res["dense_ppl"] == pytest.approx(perplexity(model, u.windows("eval", 4)))


def test_uniform_action_is_uniform_allocation():
    u = make().unwrapped
    a = u.action_from_sparsities(np.full(u.n_units, 0.3))
    _, _, _, _, info = u.step(a)
    np.testing.assert_allclose(info["keep_ratio"], 0.7, atol=1e-6)


def test_reset_options_set_one_episode():
    env = make()
    obs, info = env.reset(options={"target_sparsity": 0.5, "reward_windows": 2})
    assert obs[0] == pytest.approx(0.5) and info["reward_windows"] == 2
    _, _, _, _, info = env.step(np.zeros(16, np.float32))
    assert info["cost"]["tokens"] == 2 * 256 and info["sparsity"] == pytest.approx(0.5, abs=0.02)
    obs, info = env.reset()  # the next episode without options: the configured target, all reward windows
    assert obs[0] == pytest.approx(0.3) and info["reward_windows"] == 4
    assert env.unwrapped.config.target_sparsity == 0.3  # the configuration itself never changes
    with pytest.raises(FFPruneError, match="allowed"):
        env.reset(options={"target": 0.5})
    with pytest.raises(FFPruneError, match="reward_windows"):
        env.reset(options={"reward_windows": 5})


def test_score_is_counted_and_leaves_the_episode_alone():
    env = make()
    u = env.unwrapped
    env.reset(options={"target_sparsity": 0.1, "reward_windows": 1})
    before = dict(u.cost)
    reward, info = u.score(np.zeros(16, np.float32), target_sparsity=0.3, reward_windows=4)
    assert u.cost["evaluations"] == before["evaluations"] + 1 and u.cost["tokens"] == before["tokens"] + 4 * 256
    assert info["target_sparsity"] == 0.3 and info["reward_windows"] == 4
    assert u.target_sparsity == pytest.approx(0.1) and u.reward_windows == 1
    env.reset()
    _, step_reward, _, _, _ = env.step(np.zeros(16, np.float32))
    assert step_reward == reward


def test_config_is_one_frozen_value_and_the_cache_can_be_cleared():
    import dataclasses

    env = make()
    u = env.unwrapped
    assert isinstance(u.config, EnvConfig) and u.config.reward_windows == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        u.config.target_sparsity = 0.5
    assert u.config.as_kwargs()["target_sparsity"] == 0.3
    same = FFPruneEnv(EnvConfig(**FAST))
    assert same.model is u.model  # one backend per configuration key
    assert EnvConfig(**FAST, target_sparsity=0.5).backend_key == u.config.backend_key
    with pytest.raises(FFPruneError, match="unknown env argument"):
        FFPruneEnv(reward_sampels=4)
    ffenv.clear_cache()
    fresh = FFPruneEnv(EnvConfig(**FAST))
    assert fresh.model is not u.model
    reward = u.step(np.zeros(16, np.float32))[1]  # an env built before keeps its own backend
    assert reward == fresh.step(np.zeros(16, np.float32))[1]


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (np.zeros(15, np.float32), "shape"),
        (np.zeros((16, 1), np.float32), "shape"),
        (np.zeros(16, np.int64), "float"),
        (np.full(16, np.nan, np.float32), "finite"),
        (np.full(16, np.inf, np.float32), "finite"),
        (np.full(16, 1.5, np.float32), r"\[-1, 1\]"),
    ],
)
def test_bad_actions_rejected_and_env_keeps_working(action, match):
    env = make()
    u = env.unwrapped
    ok = np.zeros(16, np.float32)
    first = u.step(ok)
    cost = dict(u.cost)
    with pytest.raises(ValueError, match=match):
        u.step(action)
    assert u.cost["evaluations"] == cost["evaluations"]
    again = u.step(ok)
    assert again[1] == first[1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_sparsity": 0.0}, "target_sparsity"),
        ({"target_sparsity": 1.2}, "target_sparsity"),
        ({"target_sparsity": 0.95}, "infeasible"),
        ({"min_keep": 0.8, "max_keep": 0.5}, "min_keep"),
        ({"mode": "semi"}, "mode"),
        ({"model": "tiny-gpt"}, "tiny-llama"),
        ({"reward_windows": 0}, "reward_windows"),
        ({"reward_windows": 10_000}, "reward_windows"),
        ({"seq_len": 4096}, "context length"),
        ({"criterion": "random"}, "criterion"),
        ({"corpus": "nope"}, "corpus"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FFPruneEnv(**{**FAST, **kwargs})


def test_infeasible_episode_target_is_rejected():
    env = make()
    with pytest.raises(FFPruneError, match="infeasible"):
        env.reset(options={"target_sparsity": 0.95})
    assert env.unwrapped.target_sparsity == 0.3


def test_population_evaluator_comes_from_the_layer_above():
    """The env knows no Ray: gym.make hands it Ray's evaluator factory; built directly, workers > 0 needs one."""
    from ffenv.vector.factory import ray_evaluator

    made = gym.make("FFPrune-Llama-v0", reward_windows=2, calib_samples=8, workers=2)
    assert made.unwrapped._evaluator_factory is ray_evaluator and made.unwrapped._evaluator is None  # started lazily
    bare = FFPruneEnv(reward_windows=2, calib_samples=8, workers=2)
    with pytest.raises(FFPruneError, match="workers=2 needs a population evaluator.*gym.make"):
        bare.score_many(np.zeros((2, bare.n_units), np.float32))
    assert bare.cost["evaluations"] == 0
    calls = []

    class Recording:  # any Evaluator works
        def score_many(self, actions, targets, windows):
            calls.append(len(actions))
            return [bare.score(a, target_sparsity=t, reward_windows=w) for a, t, w in zip(actions, targets, windows)]

        def close(self):
            calls.append("closed")

    env = FFPruneEnv(reward_windows=2, calib_samples=8, workers=2, evaluator_factory=lambda config: Recording())
    env.score_many(np.zeros((3, env.n_units), np.float32))
    env.close()
    assert calls == [3, "closed"] and env.cost["evaluations"] == 3


def test_unstructured_ranks_and_features_are_read_back_from_the_disk_cache(monkeypatch):
    """The per-row ranks and unit features are computed once per weights × calibration tokens and read back by a
    later process (here: after clear_cache) equal; ranks of another shape are a one-line error."""
    from ffenv.pruning.engines import UnstructuredPruner, unstructured_ranks

    kwargs = {**FAST, "mode": "unstructured", "target_sparsity": 0.7}
    ffenv.clear_cache()
    first = FFPruneEnv(EnvConfig(**kwargs))  # computes them, or reads them if an earlier run did
    ranks = [rank.clone() for entries in first.pruner._linears for _lin, rank, _dense in entries]
    features = first.features.copy()
    ffenv.clear_cache()
    monkeypatch.setattr("ffenv.envs.backend.unstructured_ranks",
                        lambda *a, **k: pytest.fail("ranks were computed again instead of read from the cache"))
    again = FFPruneEnv(EnvConfig(**kwargs))
    for rank, (_lin, cached, _dense) in zip(ranks, (e for entries in again.pruner._linears for e in entries)):
        assert torch.equal(rank, cached)
    np.testing.assert_array_equal(features, again.features)
    computed = unstructured_ranks(again.blocks, again.input_norms)
    assert all(torch.equal(computed[k].flatten(), r.flatten()) for k, r in zip(computed, ranks))
    wrong = {k: v[:, :-1] for k, v in computed.items()}
    with pytest.raises(FFPruneError, match="not this model's ranks"):
        UnstructuredPruner(again.blocks, again.input_norms, ranks=wrong)
    ffenv.clear_cache()
