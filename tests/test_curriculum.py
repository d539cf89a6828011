from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import ffenv  # noqa: F401
from ffenv.wrappers.curriculum import CurriculumWrapper

KW = {"reward_windows": 20, "calib_samples": 8}


@pytest.fixture(scope="module")
def base_env():
    return gym.make("FFPrune-Llama-v0", **KW)


def test_cubic_sparsity_schedule(base_env):
    w = CurriculumWrapper(base_env, warmup_episodes=100, start_sparsity=0.05)
    assert w.target_at(0) == pytest.approx(0.05)
    assert w.target_at(100) == pytest.approx(0.3) and w.target_at(500) == pytest.approx(0.3)
    # keep(t) = keep_f + (keep_i - keep_f)(1 - t)^3 at t = 0.5
    assert 1 - w.target_at(50) == pytest.approx(0.7 + (0.95 - 0.7) * 0.125)
    targets = [w.target_at(e) for e in range(120)]
    assert all(b >= a - 1e-12 for a, b in zip(targets, targets[1:]))


def test_staircase_schedule(base_env):
    w = CurriculumWrapper(base_env, warmup_episodes=100, sparsity_schedule="staircase", stairs=4)
    targets = [round(w.target_at(e), 9) for e in range(100)]
    assert len(set(targets)) == 4
    assert targets[0] == pytest.approx(0.05) and targets[75] == pytest.approx(0.3)
    assert all(b >= a for a, b in zip(targets, targets[1:]))


def test_fidelity_schedule(base_env):
    w = CurriculumWrapper(base_env, warmup_episodes=40, fidelity_start=0.05)
    assert w.stage_at(0)["reward_windows"] == math.ceil(0.05 * 20) == 1
    assert w.stage_at(40)["reward_windows"] == 20 and w.stage_at(40)["final"]
    windows = [w.stage_at(e)["reward_windows"] for e in range(50)]
    assert all(b >= a for a, b in zip(windows, windows[1:]))
    assert w.fidelity_at(20) == pytest.approx(1 - 0.95 * 0.125)


def test_wrapper_shows_stage_and_counts_cheap_episodes(base_env):
    w = CurriculumWrapper(base_env, warmup_episodes=10)
    obs, info = w.reset(seed=0)
    assert obs[0] == pytest.approx(0.05) and info["curriculum"]["episode"] == 0
    _, _, _, _, info = w.step(np.zeros(16, np.float32))
    assert info["cost"]["tokens"] == 1 * 256  # 5 % of 20 windows -> 1 window
    assert info["sparsity"] == pytest.approx(0.05, abs=0.01)
    for _ in range(10):
        w.reset()
        _, _, _, _, info = w.step(np.zeros(16, np.float32))
    assert info["curriculum"]["final"] and info["cost"]["tokens"] == 20 * 256
    assert info["sparsity"] == pytest.approx(0.3, abs=0.01)


def test_curriculum_drives_the_episode_through_reset_options(base_env):
    w = CurriculumWrapper(base_env, warmup_episodes=10)
    w.reset(seed=0)
    u = base_env.unwrapped
    assert u.target_sparsity == pytest.approx(0.05) and u.reward_windows == 1  # this episode's
    assert u.config.target_sparsity == 0.3 and u.config.reward_windows == 20    # the env's configuration is untouched
    w.load_state_dict({"episodes": 10})
    assert w.stage["final"]
    assert w.state_dict() == {"episodes": 10}


def test_wrappers_record_their_arguments_in_the_spec(base_env):
    from ffenv.wrappers import SearchAccounting

    w = SearchAccounting(CurriculumWrapper(base_env, warmup_episodes=7, fidelity_start=0.1), budget=3)
    wrappers = {ws.name: ws.kwargs for ws in w.spec.additional_wrappers}
    assert wrappers["CurriculumWrapper"]["warmup_episodes"] == 7 and wrappers["CurriculumWrapper"]["fidelity_start"] == 0.1
    assert wrappers["SearchAccounting"] == {"budget": 3}
    assert w.get_wrapper_attr("final_target") == 0.3  # the Gymnasium way to reach an inner wrapper's attribute


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"warmup_episodes": 0}, "warmup_episodes"),
        ({"start_sparsity": 0.5}, "start_sparsity"),
        ({"sparsity_schedule": "linear"}, "sparsity_schedule"),
        ({"fidelity_start": 0.0}, "fidelity_start"),
        ({"fidelity_schedule": "step"}, "fidelity_schedule"),
    ],
)
def test_bad_arguments(base_env, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CurriculumWrapper(base_env, **kwargs)


def test_progress_bar_says_warm_up_until_the_final_target_is_measured(capsys):
    """Before any evaluation at the final target there is no best: the bar shows the warm-up's target and ppl, never
    ``nan``; once there is one it shows ``best_ppl``."""
    from ffenv.wrappers.logger import SearchLogger

    logger = SearchLogger(progress=True)
    warm = {"episode": 1, "evaluations": 1, "seconds": 0.5, "target": 0.12, "ppl": 45.25, "reward": 0.9,
            "best_reward": float("nan"), "best_ppl": float("nan")}
    logger.log_episode(warm, {"reward_windows": 2}, budget=3)
    assert set(logger._bar.postfix.split(", ")) == {"evals=1", "warm_up=target 0.12 ppl 45.2", "elapsed=0s"}
    logger.log_episode({**warm, "episode": 2, "target": 0.3, "best_reward": 0.8, "best_ppl": 50.0}, {"reward_windows": 4}, 3)
    assert "best_ppl=50.00" in logger._bar.postfix and "nan" not in logger._bar.postfix
    logger.close()
