"""Issue 19: the multi-step (AMC-style) twin of every task: one unit per step, the same reward at the end."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import ffenv
from ffenv.envs.sequential_env import FFPruneSequentialEnv
from ffenv.errors import FFPruneError
from ffenv.pruning.projector import project_budget, raw_to_keep
from ffprune.agents.experiments.bench import cell_path
from ffprune.agents.results import read_result

SMALL = {"reward_windows": 2, "calib_samples": 8}


def _episode(env: gym.Env, actions: np.ndarray, seed: int = 0, options: dict | None = None):
    obs, _ = env.reset(seed=seed, options=options)
    observations, rewards, infos = [obs], [], []
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(np.array([a], np.float32))
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        assert terminated == (len(rewards) == len(actions)) and not truncated
    return np.stack(observations), rewards, infos


def test_every_single_step_id_has_a_registered_twin():
    twins = ffenv.env_ids(sequential=True)
    assert len(twins) == 9 and all(t in gym.registry for t in twins)
    assert {t.replace("-Sequential", "") for t in twins} == set(ffenv.env_ids())
    cfg = ffenv.resolve_config("FFPrune-OPT-Sequential-Structured50-v0", {"projection": "deferred"})
    assert (cfg.model, cfg.mode, cfg.target_sparsity) == ("tiny-opt", "structured", 0.5)
    with pytest.raises(FFPruneError, match="projection must be one of"):
        ffenv.resolve_config("FFPrune-OPT-Sequential-v0", {"projection": "greedy"})
    for single, twin in zip(ffenv.env_ids(), twins):
        assert ffenv.twin_env_id(single) == twin and ffenv.twin_env_id(twin) == single
    with pytest.raises(FFPruneError, match="not registered"):
        ffenv.twin_env_id("FFPrune-Nope-v0")


@pytest.mark.parametrize("env_id", ["FFPrune-Mistral-Sequential-v0", "FFPrune-OPT-Sequential-Unstructured-v0"])
@pytest.mark.parametrize("projection", ["interval", "deferred"])
def test_checkers_pass(env_id, projection):
    env = gym.make(env_id, projection=projection, **SMALL)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    u = env.unwrapped
    assert env.action_space.shape == (1,) and env.observation_space.shape == (len(ffenv.envs.features.UNIT_FEATURES) + 4,)
    assert u.n_units == (1 if "Unstructured" in env_id else 2) * u.single.n_blocks


@pytest.mark.parametrize("projection", ["interval", "deferred"])
def test_final_reward_is_the_single_step_reward_of_the_final_allocation(projection):
    env = gym.make("FFPrune-Llama-Sequential-v0", projection=projection, **SMALL)
    single = gym.make("FFPrune-Llama-v0", **SMALL)
    u = env.unwrapped
    actions = np.random.default_rng(3).uniform(-1, 1, u.n_units).astype(np.float32)
    observations, rewards, infos = _episode(env, actions, options={"target_sparsity": 0.4})
    assert rewards[:-1] == [0.0] * (u.n_units - 1) and rewards[-1] > 0
    assert all(env.observation_space.contains(o) for o in observations)
    final = u.final_allocation()
    single.reset(seed=0, options={"target_sparsity": 0.4})
    _, reward, _, _, info = single.step(final)
    assert rewards[-1] == reward and infos[-1]["ppl"] == info["ppl"]
    np.testing.assert_array_equal(infos[-1]["layer_sparsity"], info["layer_sparsity"])
    np.testing.assert_array_equal(infos[-1]["raw_actions"], actions)
    if projection == "deferred":  # the raw actions through the single-step projector, nothing else
        np.testing.assert_array_equal(final, actions)
        np.testing.assert_array_equal(infos[-1]["executed_actions"], actions)
    # the observation's "previous action" is the executed action of the step before
    np.testing.assert_array_equal(observations[1:, -1], infos[-1]["executed_actions"])
    assert u.cost["evaluations"] == 1 and u.cost["env_steps"] == u.n_units


def test_interval_mode_meets_the_target_exactly_and_clips_each_step_into_its_interval():
    env = gym.make("FFPrune-Llama-Sequential-v0", **SMALL)  # projection="interval" is the ids' default
    u = env.unwrapped
    lo, hi = u.config.min_keep, u.config.max_keep
    actions = np.r_[np.ones(u.n_units // 2), -np.ones(u.n_units - u.n_units // 2)].astype(np.float32)  # greedy first
    env.reset(seed=0)
    for a in actions:
        low, high = u.feasible_interval()
        wanted = float(raw_to_keep(np.array([a]), lo, hi)[0])
        _, _, _, _, info = env.step(np.array([a], np.float32))
        kept = u._keep[u.unit - 1]
        assert low - 1e-12 <= kept <= high + 1e-12 and kept == pytest.approx(np.clip(wanted, low, high))
    keep = u._keep
    assert float(keep @ u.sizes) == pytest.approx((1 - u.target_sparsity) * u.sizes.sum(), rel=1e-12)
    assert np.all(keep >= lo - 1e-12) and np.all(keep <= hi + 1e-12)
    assert not np.allclose(info["executed_actions"], actions)  # the greedy start was clipped later on
    # the projection of the final action is the executed allocation (nothing moved at the end)
    final_keep = project_budget(u.final_allocation(), u.target_sparsity, u.sizes, lo, hi)
    np.testing.assert_allclose(final_keep, keep, atol=1e-6)


def test_same_seed_same_episode():
    actions = np.random.default_rng(7).uniform(-1, 1, 16).astype(np.float32)
    runs = []
    for _ in range(2):
        env = gym.make("FFPrune-Llama-Sequential-v0", projection="deferred", **SMALL)
        obs, rewards, infos = _episode(env, actions, seed=5)
        runs.append((obs, rewards, infos[-1]["ppl"]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1] and runs[0][2] == runs[1][2]


def test_bad_input_is_one_line_and_evaluates_nothing():
    with pytest.raises(FFPruneError, match="projection must be one of"):
        FFPruneSequentialEnv(projection="greedy", **SMALL)
    env = gym.make("FFPrune-Llama-Sequential-v0", **SMALL).unwrapped
    with pytest.raises(FFPruneError, match="call reset"):
        env.step(np.zeros(1, np.float32))  # no episode started yet
    env.reset(seed=0)
    with pytest.raises(FFPruneError, match=r"shape \(1,\)"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(FFPruneError, match=r"\[-1, 1\]"):
        env.step(np.array([1.5], np.float32))
    with pytest.raises(FFPruneError, match=r"\[-1, 1\]"):
        env.step(np.array([np.nan], np.float32))
    with pytest.raises(FFPruneError, match="float"):
        env.step(np.array([1]))
    with pytest.raises(FFPruneError, match="infeasible"):
        env.reset(options={"target_sparsity": 0.95})  # min_keep 0.1 allows at most 0.9
    with pytest.raises(FFPruneError, match="allocation is complete after all"):
        env.final_allocation()
    assert env.unit == 0 and env.cost["evaluations"] == 0
    env.reset(seed=0)
    for _ in range(env.n_units):
        env.step(np.zeros(1, np.float32))
    with pytest.raises(FFPruneError, match="step after the last unit"):
        env.step(np.zeros(1, np.float32))
    assert env.cost["evaluations"] == 1 and env.cost["env_steps"] == env.n_units


def test_search_accounting_counts_sequential_episodes_and_keeps_single_step_allocations():
    from ffenv.wrappers import CurriculumWrapper, SearchAccounting

    env = gym.make("FFPrune-Llama-Sequential-v0", projection="deferred", **SMALL)
    search = SearchAccounting(CurriculumWrapper(env, warmup_episodes=2), budget=3)
    u = env.unwrapped
    rng = np.random.default_rng(0)
    for episode in range(3):
        search.reset(seed=0)
        for _unit in range(u.n_units):
            assert search.episodes == episode  # recorded only when the episode ends
            _, reward, terminated, _, info = search.step(rng.uniform(-1, 1, 1).astype(np.float32))
        assert terminated and search.episodes == episode + 1 and info["search"]["env_steps"] == (episode + 1) * u.n_units
    assert search.budget_spent and search.cost["env_steps"] == 3 * u.n_units
    assert search.history[-1]["action"] == np.asarray(u.final_allocation()).tolist()  # a single-step action
    assert search.best is not None and search.best["reward"] > 0
    # the episode that would exceed the budget is refused at its first step, before anything runs
    search.reset(seed=0)
    with pytest.raises(FFPruneError, match="exceed the search budget"):
        search.step(np.zeros(1, np.float32))
    evaluations = search.cost["evaluations"]
    state = search.state_dict()
    again = SearchAccounting(CurriculumWrapper(gym.make("FFPrune-Llama-Sequential-v0", projection="deferred", **SMALL),
                                               warmup_episodes=2), budget=3)
    again.load_state_dict(state)
    assert again.cost["env_steps"] == 3 * u.n_units and again.cost["evaluations"] == evaluations


def test_sb3_agents_search_the_sequential_env_and_the_result_exports(tmp_path):
    from ffprune.agents.experiments.search import run_search
    from ffprune.agents.results import result_env
    from ffprune.agents.tools.export import export_result

    result = run_search("FFPrune-Llama-Sequential-v0", agent="ppo", budget=4, seed=0, logdir=tmp_path / "tb",
                        out=tmp_path / "ppo.json", env_kwargs=dict(SMALL, projection="deferred"), progress=False)
    assert result["cost"]["episodes"] == 4 and result["cost"]["env_steps"] == 4 * 16
    assert result["env_kwargs"]["projection"] == "deferred" and len(result["best"]["action"]) == 16
    assert result_env(result).unwrapped.projection == "deferred"
    facts = export_result(tmp_path / "ppo.json", tmp_path / "pruned", speed=False)
    assert facts["figures"]["eval_ppl"]["pruned"] == pytest.approx(result["best"]["eval_ppl"])


def test_methods_declare_their_formulation():
    from ffprune.agents.experiments.bench import BenchOverrides, cell_specs
    from ffprune.agents.experiments.search import run_search
    from ffprune.agents.methods import get_method, methods_for

    assert methods_for("structured", "sequential") == ["ppo", "sac", "amc-ddpg"]
    assert "amc-ddpg" not in methods_for("structured") and "fastforward" not in methods_for("structured", "sequential")
    assert get_method("td3").formulations == ("single-step", "sequential")  # any other SB3 algorithm too
    with pytest.raises(FFPruneError, match="'fastforward' searches single-step envs.*FFPrune-Llama-v0"):
        run_search("FFPrune-Llama-Sequential-v0", agent="fastforward", budget=2, logdir=None, env_kwargs=SMALL,
                   progress=False)
    with pytest.raises(FFPruneError, match=r"methods \['evolution'\] do not support sequential"):
        cell_specs("FFPrune-Llama-Sequential-v0", 2, 1, ["ppo", "evolution"], "unused", BenchOverrides(env_kwargs=SMALL))


def test_amc_buffer_pays_the_final_reward_on_every_transition_minus_a_moving_average():
    from ffprune.agents.methods.amc import EpisodeRewardBuffer

    space = gym.spaces.Box(-1, 1, (2,), np.float32)
    buffer = EpisodeRewardBuffer(10, space, gym.spaces.Box(-1, 1, (1,), np.float32), device="cpu",
                                 reward_average_weight=0.5)
    obs = np.zeros((1, 2), np.float32)
    for step, (reward, done) in enumerate([(0.0, False), (0.0, False), (0.8, True)]):
        buffer.add(obs + step, obs + step + 1, np.array([[0.9]], np.float32), np.array([reward]), np.array([done]),
                   [{"executed_action": np.float32(-0.25 * step)}])
        assert buffer.size() == (3 if done else 0)  # nothing is stored before the episode's end
    np.testing.assert_allclose(buffer.rewards[:3, 0], 0.8)
    np.testing.assert_allclose(buffer.actions[:3, 0, 0], [0.0, -0.25, -0.5])  # the executed actions
    first = buffer.sample(3)
    assert buffer.moving_average == pytest.approx(0.8) and float(first.rewards.abs().max()) < 1e-6
    buffer.add(obs, obs, np.array([[0.0]], np.float32), np.array([0.4]), np.array([True]), [{}])
    buffer._get_samples(np.array([3]))  # a batch of mean 0.4: the average moves half way
    assert buffer.moving_average == pytest.approx(0.6)


def test_truncated_normal_stays_inside_and_keeps_its_centre():
    from ffprune.agents.methods.amc import truncated_normal

    rng = np.random.default_rng(0)
    draws = truncated_normal(rng, np.zeros(20000), 1.0)
    assert draws.min() >= -1 and draws.max() <= 1 and abs(draws.mean()) < 0.02
    edge = truncated_normal(rng, np.full(20000, 0.9), 0.5)
    assert edge.max() <= 1 and 0.3 < edge.mean() < 0.9  # mass piles up inside, not clipped onto the bound


def test_amc_ddpg_searches_the_sequential_env_with_amcs_settings(tmp_path):
    from ffprune.agents.experiments.search import run_search

    result = run_search("FFPrune-Llama-Sequential-v0", agent="amc-ddpg", budget=9, seed=0, logdir=None,
                        out=tmp_path / "amc.json", env_kwargs=SMALL, progress=False)
    config = result["agent_config"]
    assert result["cost"]["episodes"] == 9 and result["cost"]["env_steps"] == 9 * 16 and result["curriculum"] is False
    assert (config["actor_lr"], config["critic_lr"], config["tau"], config["gamma"], config["batch_size"]) == (
        1e-4, 1e-3, 0.01, 1.0, 64)
    assert config["warmup_episodes"] == 1 and config["learning_starts"] == 16  # 100/900 of 9 episodes
    with pytest.raises(FFPruneError, match="'amc-ddpg' searches sequential envs.*FFPrune-Llama-Sequential-v0"):
        run_search("FFPrune-Llama-v0", agent="amc-ddpg", budget=2, logdir=None, env_kwargs=SMALL, progress=False)


def test_amc_ddpg_learning_rates_and_exploration_decay():
    from ffprune.agents.methods.amc import AMCDDPG

    env = gym.make("FFPrune-Llama-Sequential-v0", **SMALL)
    model = AMCDDPG("MlpPolicy", env, actor_lr=1e-4, critic_lr=1e-3, warmup_episodes=2, learning_starts=32,
                    policy_kwargs={"net_arch": [300, 300]}, batch_size=8, train_freq=(1, "episode"), gradient_steps=-1,
                    seed=0, device="cpu")
    assert model.sigma == 1.0
    model.learn(total_timesteps=3 * 16)
    assert model.actor.optimizer.param_groups[0]["lr"] == 1e-4 and model.critic.optimizer.param_groups[0]["lr"] == 1e-3
    assert model._episode_num == 3 and model.sigma == pytest.approx(0.95)
    with pytest.raises(FFPruneError, match="actor_lr must be a positive number"):
        AMCDDPG("MlpPolicy", env, actor_lr=0)


@pytest.mark.slow
def test_claim_runs_multi_step_cells_and_compares_them_with_fastforwards_suite_cells(tmp_path, capsys):
    import json
    from pathlib import Path

    from ffprune.agents.cli import main as cli_main

    suite = Path(__file__).resolve().parents[1] / "docs" / "results" / "core"
    argv = ["claim", "--tasks", "llama-s0.5", "--budgets", "2,3", "--seeds", "1", "--out", str(tmp_path / "claim"),
            "--suite-out", str(suite), "--quiet"]
    assert cli_main(argv) == 0
    analysis = json.loads((tmp_path / "claim" / "claim.json").read_text())
    rows = {(r["method"], r["budget"]): r for r in analysis["rows"]}
    assert set(rows) == {("fastforward", 100), ("amc-ddpg", 2), ("amc-ddpg", 3)}
    ff = read_result(cell_path(suite / "llama-s0.5", "fastforward", 0))
    assert rows["fastforward", 100]["eval_ppl"] == ff["best"]["eval_ppl"]  # read, never re-run
    assert rows["amc-ddpg", 3]["env_steps"] == 3 * 16 and rows["amc-ddpg", 3]["evaluations"] >= 3
    amc = read_result(cell_path(tmp_path / "claim" / "llama-s0.5-b3", "amc-ddpg", 0))
    assert rows["amc-ddpg", 3]["late_reward"] == amc["history"][-1]["reward"]  # the last 10 % of 3 episodes: one
    assert rows["amc-ddpg", 3]["evaluations_to_best"] == amc["cost"]["evaluations_to_best"]
    assert (tmp_path / "claim" / "claim.png").stat().st_size > 0 and "amc-ddpg" in capsys.readouterr().out
    assert cli_main([*argv, "--report-only"]) == 0  # the report again from the cells on disk
    assert cli_main(["claim", "--tasks", "llama-u0.9", "--out", str(tmp_path / "x")]) == 2
    from ffprune.agents.experiments.claim import ClaimSpec, claim_specs  # a real suite's task runs on its own twin

    real = claim_specs(ClaimSpec(["smollm2-s0.2"], [100, 1000], 3, ["amc-ddpg"]), tmp_path / "real", progress=False)
    assert {s.env_id for s in real} == {"FFPrune-SmolLM2-Sequential-v0"} and len(real) == 6
