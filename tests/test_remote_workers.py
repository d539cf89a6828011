"""ffprune's ids in processes that never imported ``ffenv``: RLlib env runners, spawned / forkserver vector-env workers.

``import ffenv`` registers the ids in the importing process only (gymnasium has no plugin discovery), so a worker
that only unpickles a ``lambda: gym.make("FFPrune-Llama-v0")`` fails with ``NameNotFound``. The README's three ways
that work anywhere are checked here in such processes:

* :func:`ffenv.env_creator` (pickled by reference: unpickling it imports ffenv) and ``"ffenv:<id>"`` strings, in a
  fresh interpreter that is shown not to know the ids first (fast);
* both as SB3 ``SubprocVecEnv`` env_fns (its default start method, forkserver), rewards equal to this process's
  (slow: each worker loads torch and the model; gymnasium's spawned ``AsyncVectorEnv``: tests/test_standard_vector.py);
* an RLlib PPO for two iterations on one remote env runner, in a private local Ray instance (slow; skipped without
  RLlib: ``pip install -e ".[rllib]"``): the creator through ``register_env`` on the real env, and the issue's plain
  user creator under Ray's ``worker_process_setup_hook="ffenv.register_envs"`` on a surrogate (``surrogate=True``
  and conftest's tiny evaluation set in ``env_config``: the runner's env predicts, it never forwards the model).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
from conftest import SURROGATE_KW

import ffenv
from ffenv import FFPruneError
from ffenv.registration import EnvCreator

ENV_ID = "FFPrune-Llama-v0"
SMALL = {"reward_windows": 2, "calib_samples": 8, "eval_samples": 2, "seq_len": 64}
"""Every env built here: few windows, short sequences (the mechanism is tested, not the numbers)."""


def _actions(n: int, dim: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, dim)).astype(np.float32)


def _rewards(env: gym.Env, actions: np.ndarray) -> list[float]:
    """One episode per action (each a single step), in this process."""
    out = []
    for action in actions:
        env.reset(seed=0)
        out.append(float(env.step(action)[1]))
    return out


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, list[float]]:
    """Two actions and their rewards from one env built in this process (the workers must agree)."""
    env = gym.make(ENV_ID, **SMALL)
    actions = _actions(2, env.action_space.shape[0])
    return actions, _rewards(env, actions)


# ---------------------------------------------------------------------- the creator itself
def test_env_creator_checks_id_and_kwargs_in_the_caller():
    with pytest.raises(FFPruneError, match=r"env_id 'FFPrune-Nope-v0' is not registered.*FFPrune-Llama-v0"):
        ffenv.env_creator("FFPrune-Nope-v0")
    with pytest.raises(FFPruneError, match=r"'CartPole-v1' is not an ffprune id"):
        ffenv.env_creator("CartPole-v1")
    with pytest.raises(FFPruneError, match=r"unknown env argument\(s\) \['reward_window'\]"):
        ffenv.env_creator(ENV_ID, reward_window=2)
    with pytest.raises(FFPruneError, match="reward_windows must be a positive integer, got 0"):
        ffenv.env_creator(ENV_ID, reward_windows=0)
    with pytest.raises(FFPruneError, match="projection must be one of"):
        ffenv.env_creator("FFPrune-Llama-Sequential-v0", projection="eager")
    creator = ffenv.env_creator(ENV_ID, **SMALL)
    with pytest.raises(FFPruneError, match=r"num_envs=2: .*gym_env_vectorize_mode='sync'"):
        creator({"num_envs": 2})  # what RLlib's vector_entry_point mode would pass
    with pytest.raises(FFPruneError, match="env_config must be a mapping"):
        creator(3)  # type: ignore[arg-type]


def test_env_creator_pickles_by_reference_and_reads_like_gym_make():
    creator = ffenv.env_creator(f"ffenv:{ENV_ID}", seed=3)  # the prefix is accepted and dropped
    assert isinstance(creator, EnvCreator) and creator.env_id == ENV_ID
    assert repr(creator) == "ffenv.env_creator('FFPrune-Llama-v0', seed=3)"
    for dumps in (pickle.dumps, cloudpickle.dumps):  # multiprocessing's pickle; SB3's, gymnasium's and Ray's cloudpickle
        payload = dumps(creator)
        assert b"ffenv.registration" in payload and b"EnvCreator" in payload  # a reference, not the code
        assert pickle.loads(payload) == creator
    assert creator != ffenv.env_creator(ENV_ID, seed=4)


def test_env_creator_merges_rllib_env_config_over_its_kwargs():
    class EnvContext(dict):  # RLlib's: the user's env_config, plus worker metadata as attributes
        worker_index, num_workers, remote = 1, 1, False

    creator = ffenv.env_creator(ENV_ID, **SMALL, seed=3)
    env = creator(EnvContext(reward_windows=1, target_sparsity=0.5))
    config = env.unwrapped.config
    assert (config.reward_windows, config.target_sparsity, config.seed, config.seq_len) == (1, 0.5, 3, 64)
    assert env.spec.id == ENV_ID
    assert creator().unwrapped.config.reward_windows == 2  # the creator's own kwargs are left alone
    assert creator.kwargs == {**SMALL, "seed": 3}
    sequential = ffenv.env_creator("FFPrune-Llama-Sequential-v0", projection="deferred", **SMALL)()
    assert sequential.unwrapped.projection == "deferred"


# ---------------------------------------------------------------------- a fresh interpreter (what spawn starts)
CHILD = r"""
import json, sys
import cloudpickle, gymnasium as gym

before = "ffenv" in sys.modules
try:
    gym.make("FFPrune-Llama-v0")  # the failure the README names: the ids exist only where ffenv was imported
    missing = None
except gym.error.NameNotFound as err:
    missing = str(err)
creator, actions, kwargs = cloudpickle.loads(sys.stdin.buffer.read())  # imports ffenv (by reference)
rewards = {}
for name, env in (("creator", creator()), ("prefix", gym.make("ffenv:FFPrune-Llama-v0", **kwargs))):
    rewards[name] = []
    for action in actions:
        env.reset(seed=0)
        rewards[name].append(float(env.step(action)[1]))
print(json.dumps({"ffenv_before": before, "missing": missing, "rewards": rewards}))
"""


def test_fresh_interpreter_without_ffenv_makes_the_env_from_creator_and_prefix(tmp_path, reference):
    actions, want = reference
    payload = cloudpickle.dumps((ffenv.env_creator(ENV_ID, **SMALL), actions, SMALL))
    proc = subprocess.run([sys.executable, "-c", CHILD], input=payload, capture_output=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    got = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert got["ffenv_before"] is False
    assert got["missing"] and "FFPrune-Llama" in got["missing"] and "doesn't exist" in got["missing"]
    assert got["rewards"] == {"creator": want, "prefix": want}


# ---------------------------------------------------------------------- standard vector envs, workers not forked
@pytest.mark.slow
def test_sb3_subproc_vec_env_default_start_method(reference):
    from stable_baselines3.common.vec_env import SubprocVecEnv

    actions, want = reference
    prefix_fn = lambda: gym.make(f"ffenv:{ENV_ID}", **SMALL)  # noqa: E731  (pickled by value, like a user's lambda)
    venv = SubprocVecEnv([ffenv.env_creator(ENV_ID, **SMALL), prefix_fn])  # forkserver (SB3's default on Linux)
    try:
        venv.reset()
        for _ in range(2):
            _, rewards, dones, _ = venv.step(actions)
            np.testing.assert_allclose(rewards, want, rtol=1e-6)
            assert dones.all()
        assert venv.get_attr("spec")[1].id == ENV_ID
    finally:
        venv.close()


# ---------------------------------------------------------------------- RLlib
WAYS = ["creator", "setup-hook-surrogate"]
"""The creator on the real env; the issue's plain user creator under Ray's setup hook, on a surrogate (the
``"ffenv:<id>"`` string is checked in a fresh interpreter and by SB3 above: each RLlib case costs ≈ 30 s)."""


@pytest.mark.slow
@pytest.mark.parametrize("way", WAYS)
def test_rllib_ppo_two_iterations_on_a_remote_env_runner(way, request):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.rllib", reason="RLlib and its dependencies: pip install -e '.[ray]'")
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.tune.registry import register_env

    env_config = SMALL
    surrogate = way.endswith("surrogate")
    if surrogate:  # conftest's tiny evaluation set; fitted here once, the runner loads the fit from the disk cache
        folder = request.getfixturevalue("surrogate_recording")[2]
        env_config = {**SURROGATE_KW, "surrogate": True, "surrogate_data": str(folder)}
        gym.make(ENV_ID, **env_config).close()
    if ray.is_initialized():
        ray.shutdown()
    hook = {"worker_process_setup_hook": "ffenv.register_envs"} if way.startswith("setup-hook") else None
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             object_store_memory=128 * 2**20, runtime_env=hook)
    try:
        def probe() -> tuple[bool, str]:  # nested, so pickled by value: running it imports nothing of ffenv
            try:
                gym.spec(ENV_ID)
                return "ffenv" in sys.modules, "registered"
            except gym.error.NameNotFound as err:
                return "ffenv" in sys.modules, type(err).__name__

        # what a Ray worker knows before anything of ffenv reaches it: the ids only with the hook
        assert ray.get(ray.remote(num_cpus=1)(probe).remote()) == ((True, "registered") if hook else (False, "NameNotFound"))
        if way == "creator":
            register_env("ffprune-llama", ffenv.env_creator(ENV_ID))
            env = "ffprune-llama"
        else:  # the creator of the issue, which dies in the runner without the hook
            register_env("ffprune-llama-hooked", lambda cfg: gym.make(ENV_ID, **cfg))
            env = "ffprune-llama-hooked"
        config = (PPOConfig().environment(env, env_config=env_config)
                  .env_runners(num_env_runners=1, num_cpus_per_env_runner=1, rollout_fragment_length=4)
                  .training(train_batch_size_per_learner=4, minibatch_size=4, num_epochs=1)
                  .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[8]))
                  .debugging(seed=0))
        algo = config.build_algo()
        try:
            runners = algo.env_runner_group.foreach_env_runner(
                lambda r: (os.getpid(), r.env.unwrapped.envs[0].unwrapped.config.reward_windows), local_env_runner=False)
            assert len(runners) == 1 and runners[0][0] != os.getpid() and runners[0][1] == env_config["reward_windows"]
            results = [algo.train()["env_runners"] for _ in range(2)]
            costs = algo.env_runner_group.foreach_env_runner(  # what the runner's env spent: real forwards, predictions
                lambda r: (r.env.unwrapped.envs[0].unwrapped.surrogate is not None,
                           dict(r.env.unwrapped.envs[0].unwrapped.cost)), local_env_runner=False)
        finally:
            algo.stop()
    finally:
        ray.shutdown()
    predicted, cost = costs[0]
    assert predicted == surrogate
    if surrogate:
        assert cost["evaluations"] == 0 and cost["tokens"] == 0 and cost["surrogate_evaluations"] >= 8
    else:
        assert cost["evaluations"] >= 8 and "surrogate_evaluations" not in cost
    assert [r["num_env_steps_sampled_lifetime"] for r in results] == [4, 8]
    assert [r["num_episodes_lifetime"] for r in results] == [4, 8]  # one step per episode
    assert all(math.isfinite(r["episode_return_mean"]) and r["episode_return_mean"] > 0 for r in results)
