"""Issue 11: physically smaller evaluations, population steps, the vector env, the calibrated reward."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import ffenv
from ffenv.lm.perplexity import perplexity
from ffenv.wrappers import CurriculumWrapper, SearchAccounting

SMALL = {"reward_windows": 4, "calib_samples": 8}


def _foreign_model(tmp_path, kind: str) -> str:
    """A randomly initialised checkpoint with shapes the bundled zoo does not have."""
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        OPTConfig,
        OPTForCausalLM,
    )

    from ffenv.lm.models import BUNDLED_DIR as ZOO_DIR

    torch.manual_seed(0)
    if kind == "llama-gqa3":  # 6 heads in 3 KV groups, head count not a power of two
        model = LlamaForCausalLM(LlamaConfig(vocab_size=4096, hidden_size=96, num_attention_heads=6, num_key_value_heads=3,
                                             intermediate_size=160, num_hidden_layers=2, max_position_embeddings=512))
    elif kind == "mistral-gqa5":  # 10 heads in 5 KV groups
        model = MistralForCausalLM(MistralConfig(vocab_size=4096, hidden_size=120, num_attention_heads=10,
                                                 num_key_value_heads=5, intermediate_size=176, num_hidden_layers=2,
                                                 max_position_embeddings=512, sliding_window=None))
    else:  # OPT with 6 heads and biases
        model = OPTForCausalLM(OPTConfig(vocab_size=4096, hidden_size=96, num_attention_heads=6, ffn_dim=200,
                                         num_hidden_layers=2, max_position_embeddings=512, word_embed_proj_dim=96))
    path = tmp_path / kind
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(str(ZOO_DIR / "tokenizer")).save_pretrained(path)
    return str(path)


def _masked_and_sliced(env: gym.Env, action: np.ndarray) -> tuple[float, float]:
    u = env.unwrapped
    keep = ffenv.project_budget(action, u.target_sparsity, u.sizes, u.config.min_keep, u.config.max_keep)
    s = u.pruner.to_unit_sparsity(keep, (1 - u.target_sparsity) * u.sizes.sum())
    u.pruner.apply(s)
    try:
        masked = perplexity(u.model, u.reward_tokens)
    finally:
        u.pruner.restore()
    u.pruner.slice(s)
    try:
        sliced = perplexity(u.model, u.reward_tokens)
    finally:
        u.pruner.restore()
    return masked, sliced


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-mistral", "tiny-opt", "llama-gqa3", "mistral-gqa5", "opt-6heads"])
def test_sliced_evaluation_equals_masked_and_leaves_the_dense_weights(model, tmp_path):
    name = model if model.startswith("tiny-") else _foreign_model(tmp_path, model)
    for target in (0.3, 0.8):  # 0.8 with min_keep 0 removes every head of some layers
        env = gym.make("FFPrune-Llama-v0", model=name, target_sparsity=target, min_keep=0.0, reward_windows=2,
                       calib_samples=4)
        u = env.unwrapped
        dense = {k: v.clone() for k, v in u.model.state_dict().items()}
        for seed in range(2):
            action = np.random.default_rng(seed).uniform(-1, 1, u.n_units).astype(np.float32)
            masked, sliced = _masked_and_sliced(env, action)
            assert sliced == pytest.approx(masked, rel=1e-5)
            env.reset(seed=0)
            env.step(action)
        assert all(torch.equal(dense[k], v) for k, v in u.model.state_dict().items())


def test_slicing_makes_the_modules_smaller_during_the_step():
    env = gym.make("FFPrune-Llama-v0", target_sparsity=0.5, **SMALL)
    u = env.unwrapped
    dense_params = sum(p.numel() for p in u.model.parameters())
    seen = []
    handle = u.model.base_model.register_forward_pre_hook(
        lambda _m, _a: seen.append(sum(p.numel() for p in u.model.parameters())))
    try:
        env.reset(seed=0)
        env.step(np.zeros(u.n_units, np.float32))
    finally:
        handle.remove()
    removed = dense_params - seen[0]
    layer_params = u.sizes.sum()
    assert removed == pytest.approx(0.5 * layer_params, rel=0.02)  # the pruned model really ran
    assert sum(p.numel() for p in u.model.parameters()) == dense_params


def test_population_steps_equal_single_steps_through_the_search_wrappers():
    def search_env():
        env = CurriculumWrapper(gym.make("FFPrune-Llama-v0", **SMALL), warmup_episodes=8, sparsity_schedule="none")
        return SearchAccounting(env, budget=12)  # cheap episodes at the final target get re-scored

    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (12, 16)).astype(np.float32)
    one = search_env()
    for a in actions:
        one.reset(seed=0)
        one.step(a)
    many = search_env()
    for chunk in (actions[:5], actions[5:9], actions[9:]):
        obs, _ = many.reset_many(len(chunk), seed=0)
        assert obs.shape == (len(chunk), 97)
        many.step_many(chunk)
    def strip(record):  # wall seconds aside; json makes NaN == NaN
        return json.dumps({k: v for k, v in record.items() if k != "seconds"}, sort_keys=True)

    assert [strip(h) for h in many.history] == [strip(h) for h in one.history]
    assert strip(many.best) == strip(one.best)
    assert many.cost["evaluations"] == one.cost["evaluations"] > 12  # re-scorings of cheap episodes counted alike
    with pytest.raises(ffenv.FFPruneError, match="budget"):
        many.reset_many(1)


def test_make_vec_is_a_population_with_same_step_autoreset():
    from gymnasium.vector import AutoresetMode

    vec = gym.make_vec("FFPrune-Llama-v0", num_envs=3, **SMALL)
    assert type(vec).__name__ == "FFPruneVectorEnv" and vec.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    single = gym.make("FFPrune-Llama-v0", **SMALL)
    rng = np.random.default_rng(1)
    vec.reset(seed=0)
    for _ in range(2):  # every step evaluates its actions: no autoreset step in between
        actions = rng.uniform(-1, 1, (3, 16)).astype(np.float32)
        obs, rewards, terminated, truncated, infos = vec.step(actions)
        single.reset(seed=0)
        expected = [single.step(a) for a in actions]
        np.testing.assert_array_equal(rewards, [e[1] for e in expected])
        np.testing.assert_array_equal(infos["final_info"]["layer_sparsity"], np.stack([e[4]["layer_sparsity"] for e in expected]))
        assert terminated.all() and not truncated.any() and obs.shape == (3, 97)
    assert vec.cost["evaluations"] == 6
    obs, _ = vec.reset(options={"target_sparsity": 0.5})
    assert np.all(obs[:, 0] == np.float32(0.5))
    vec.close()


def test_one_vector_env_over_a_search_stops_at_its_budget():
    """The same same-step autoreset over a SearchAccounting: the budget's last step runs only what is left."""
    from ffenv.vector.vector_env import FFPruneVectorEnv

    search = SearchAccounting(gym.make("FFPrune-Llama-v0", **SMALL), budget=5)
    vec = FFPruneVectorEnv(3, env=search)
    vec.reset(seed=0)
    actions = np.random.default_rng(2).uniform(-1, 1, (3, 16)).astype(np.float32)
    vec.step(actions)
    assert vec.episodes_left == 2
    obs, rewards, terminated, truncated, infos = vec.step(actions)
    assert search.episodes == 5 and search.budget_spent and vec.episodes_left == 0
    assert rewards[2] == 0 and rewards[:2].min() > 0 and terminated.all()
    assert infos["final_info"]["beyond_budget"][2] and not infos["final_info"]["_beyond_budget"][:2].any()
    with pytest.raises(ffenv.FFPruneError, match="budget is spent"):
        vec.step(actions)
    with pytest.raises(ffenv.FFPruneError, match="either env"):
        FFPruneVectorEnv(2, env=search, model="tiny-opt")
    vec.close()


def test_calibrated_reward_is_the_ratio_after_calib():
    env = gym.make("FFPrune-Llama-v0", reward="calibrated", target_sparsity=0.5, **SMALL)
    u = env.unwrapped
    action = np.zeros(u.n_units, np.float32)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(action)
    calibrated = u.evaluate(action, split="reward", n_windows=4, calibrate=True)["ppl"]
    plain = u.evaluate(action, split="reward", n_windows=4)["ppl"]
    assert info["ppl"] == pytest.approx(calibrated, rel=1e-9) and calibrated < plain
    assert reward == pytest.approx(info["dense_ppl"] / calibrated)
    with pytest.raises(ffenv.FFPruneError, match="structured"):
        gym.make("FFPrune-Llama-Unstructured-v0", reward="calibrated", **SMALL)


# ----------------------------------------------------------------------------- the one timer and the speed benchmark
class _FakeClock:
    """``time.perf_counter`` that advances only when the timed work says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_median_seconds_discards_the_warm_up_and_takes_the_median(monkeypatch):
    from ffprune.agents.tools import timing

    clock = _FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    durations = iter([5.0, 1.0, 9.0, 2.0])  # warm-up, then three timed calls

    def work():
        clock.now += next(durations)

    assert timing.median_seconds(work, "cpu", repeats=3, warmup=1) == 2.0  # not 4.0 (mean), not 5.0 (warm-up)
    assert next(durations, None) is None
    for kwargs, needle in (({"repeats": 0}, "repeats"), ({"repeats": 2, "warmup": -1}, "warmup")):
        with pytest.raises(ffenv.FFPruneError, match=needle):
            timing.median_seconds(work, "cpu", **kwargs)


def test_the_timer_synchronises_a_cuda_device_before_and_after(monkeypatch):
    from ffprune.agents.tools import timing

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("sync", device)))
    timing.timed(lambda: calls.append("work"), "cuda:0")
    assert calls == [("sync", torch.device("cuda:0")), "work", ("sync", torch.device("cuda:0"))]
    calls.clear()
    timing.timed(lambda: calls.append("work"), torch.device("cpu"))
    assert calls == ["work"]


def test_forward_tokens_per_second_is_tokens_over_the_median_forward(monkeypatch):
    from ffprune.agents.tools import timing
    from ffprune.agents.tools.hf_folder import forward_tokens_per_second

    clock = _FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    durations = iter([10.0, 0.5, 0.25, 4.0])

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids: torch.Tensor, use_cache: bool) -> None:
            assert not use_cache and torch.is_inference_mode_enabled()
            clock.now += next(durations)

    tokens = torch.zeros(4, 8, dtype=torch.long)
    assert forward_tokens_per_second(Model(), tokens, repeats=3) == 32 / 0.5  # one warm-up (10 s) discarded


def test_bench_env_times_steps_against_the_dense_forward():
    from ffprune.agents.tools.speed import bench_env

    result = bench_env("FFPrune-Llama-v0", repeats=1, reward_windows=2, calib_samples=4)
    json.dumps(result)
    assert result["mode"] == "structured" and result["units"] == 16 and result["repeats"] == 1
    assert set(result["steps"]) == {"0.3", "0.5"}  # the env's target and 0.5
    for entry in result["steps"].values():
        assert entry["median_step_s"] > 0
        assert entry["step_over_forward"] == pytest.approx(entry["median_step_s"] / result["median_forward_s"], rel=0.05)
    assert result["median_calib_eval_s"] > 0 and result["median_plain_eval_s"] > 0
    assert result["calib_over_plain"] == pytest.approx(result["median_calib_eval_s"] / result["median_plain_eval_s"],
                                                       rel=0.05)
    for kwargs, needle in (({"env_id": "FFPrune-Nope-v0"}, "not registered"), ({"repeats": 0}, "repeats"),
                           ({"reward_samples": 2}, "reward_windows")):
        with pytest.raises(ffenv.FFPruneError, match=needle) as err:
            bench_env(**{"env_id": "FFPrune-Llama-v0", **kwargs})
        assert "\n" not in str(err.value)
