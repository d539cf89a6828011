"""stable-baselines3 agents (PPO, SAC, or any SB3 algorithm for Box actions) on the same search.

With one-step episodes, discounting and bootstrapping play no part, so the settings that matter are
those that make the agent *learn within a few hundred episodes*:

* PPO: ``n_steps=16`` episodes per rollout, one minibatch of 16, 10 epochs (the paper's FastForward settings;
  the FastForward agent now defaults to 8 episodes per update, lr 1e-3, std 0.5 for budgets near 100);
* SAC: ``learning_starts=32``, a replay buffer as large as the budget, one gradient step per episode;
* TD3, DDPG: the same, plus Gaussian action noise of σ 0.1 on the ``[-1, 1]`` action scale (``action_noise_std``, the
  RL Baselines3 Zoo's default for them). SB3's own default is no noise at all: a deterministic actor that explores only
  in its 32 random warm-up episodes (on the surrogate study's 10,000 episodes it ended below the uniform allocation);
* others (A2C...): SB3 defaults with ``n_steps`` / ``learning_starts`` scaled the same way.

``action_noise_std`` (an ffprune setting, for any algorithm with SB3's ``action_noise``) is the σ of
``NormalActionNoise`` on every action coordinate; ``0`` turns the noise off.

The run stops after exactly the search's budget of episodes (:class:`StopAtBudget`), checkpoints the
model (and SAC's replay buffer) with the search state at rollout ends (spaced so that rewriting them takes at most
a tenth of the run: :class:`ffenv.io.CheckpointPacer`; at the end always), and resumes from there.
With a ``logdir`` the algorithm's own learning statistics (``train/*``: losses, approx KL, entropy...)
go to TensorBoard beside the search's scalars.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import stable_baselines3 as sb3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from ffenv.errors import FFPruneError, positive_int
from ffenv.io import CheckpointPacer, atomic_torch_save, atomic_write, load_checkpoint, pack, unpack
from ffenv.vector.vector_env import FFPruneVectorEnv
from ffenv.wrappers import SearchAccounting

DEFAULTS: dict[str, dict[str, Any]] = {
    "PPO": {"n_steps": 16, "batch_size": 16, "n_epochs": 10, "learning_rate": 3e-4, "ent_coef": 0.01,
            "gamma": 0.99, "gae_lambda": 1.0},
    "A2C": {"n_steps": 16, "learning_rate": 3e-4},
    "SAC": {"learning_starts": 32, "batch_size": 64, "train_freq": 1, "gradient_steps": 1, "learning_rate": 3e-4},
    "TD3": {"learning_starts": 32, "batch_size": 64, "train_freq": 1, "gradient_steps": 1, "action_noise_std": 0.1},
    "DDPG": {"learning_starts": 32, "batch_size": 64, "train_freq": 1, "gradient_steps": 1, "action_noise_std": 0.1},
}
NOISE_SETTING = "action_noise_std"
"""The setting that gives an algorithm with SB3's ``action_noise`` Gaussian exploration noise of this σ (module
docstring)."""


def action_noise(std: Any, shape: tuple[int, ...]) -> NormalActionNoise | None:
    """``NormalActionNoise`` of σ ``std`` on every coordinate of an action of ``shape`` (``None`` for ``0``); a σ that
    is not a finite number ``>= 0`` is a one-line :class:`FFPruneError`."""
    try:
        sigma = float(std)
    except (TypeError, ValueError):
        sigma = float("nan")
    if isinstance(std, bool) or not np.isfinite(sigma) or sigma < 0:
        raise FFPruneError(f"{NOISE_SETTING} must be a finite number >= 0 (0: no action noise), got {std!r}")
    if sigma == 0:
        return None
    return NormalActionNoise(mean=np.zeros(shape, np.float64), sigma=np.full(shape, sigma, np.float64))


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    """The SB3 class for ``name`` (case-insensitive); :class:`FFPruneError` if unknown or not for Box actions."""
    cls = getattr(sb3, name.upper(), None)
    if cls is None or not isinstance(cls, type):
        known = [n for n in dir(sb3) if n.isupper() and isinstance(getattr(sb3, n), type)]
        raise FFPruneError(f"agent {name!r} is neither a registered search method nor a stable-baselines3 algorithm "
                           f"{known}")
    if gym.spaces.Box not in getattr(cls, "_supported_action_spaces", (gym.spaces.Box,)):
        raise FFPruneError(f"{name} does not support Box action spaces")
    return cls


class SB3VecEnv(VecEnv):
    """stable-baselines3's ``VecEnv`` face of :class:`ffenv.vector.vector_env.FFPruneVectorEnv`: ``n_envs`` episodes
    per SB3 step, run as one population of the search.

    Every SB3 step is one :meth:`~ffenv.vector.vector_env.FFPruneVectorEnv.step_episodes` over the
    :class:`~ffenv.wrappers.SearchAccounting` (in-process or on Ray workers), so the budget, the cost axes and the
    best allocation are accounted exactly as for the other methods, and the same-step autoreset is the vector
    env's (``info["terminal_observation"]`` holds the finished episode's observation). When fewer than ``n_envs``
    episodes are left in the budget, only those run; the others return reward 0 with ``info["beyond_budget"] =
    True``, and SB3 stops right after that step, before learning from it.
    """

    def __init__(self, env: SearchAccounting, n_envs: int) -> None:
        positive_int("n_envs", n_envs)
        if n_envs > env.budget - env.episodes:
            raise FFPruneError(f"n_envs={n_envs} exceeds the {env.budget - env.episodes} episodes left in the budget")
        self.search = env  # before VecEnv's constructor, which reads render_mode through get_attr
        self.vector = FFPruneVectorEnv(n_envs, env=env)
        super().__init__(n_envs, env.observation_space, env.action_space)
        self._actions = np.zeros((n_envs, *env.action_space.shape), np.float32)

    def reset(self) -> np.ndarray:
        obs, _ = self.vector.start_episodes(self._seeds[0])
        self._reset_seeds()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.clip(np.asarray(actions, np.float32), self.action_space.low, self.action_space.high)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        out = self.vector.step_episodes(self._actions)
        for i, info in enumerate(out.final_infos):
            info["terminal_observation"] = out.final_obs[i]
            info["TimeLimit.truncated"] = False
        return out.obs, out.rewards.astype(np.float32), out.terminated, out.final_infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [self.search.get_wrapper_attr(attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        raise FFPruneError(f"SB3VecEnv has one environment for all its episodes; cannot set {attr_name!r} per env")

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any) -> list[Any]:
        method = self.search.get_wrapper_attr(method_name)
        return [method(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: Any = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]


class StopAtBudget(BaseCallback):
    """Stops learning once the search's budget is spent; calls ``save`` at rollout ends (at most every 16 episodes
    for off-policy algorithms, whose rollouts are single steps), when ``pacer`` says it is due (default: a
    :class:`~ffenv.io.CheckpointPacer` keeping checkpoints under a tenth of the run)."""

    def __init__(self, env: SearchAccounting, save: Callable[[], None], every: int = 16,
                 pacer: CheckpointPacer | None = None) -> None:
        super().__init__()
        self.env, self.save, self.every = env, save, every
        self.pacer = pacer or CheckpointPacer()
        self.last_saved = env.episodes

    def _on_step(self) -> bool:
        return not self.env.budget_spent

    def _on_rollout_end(self) -> None:
        if self.env.episodes - self.last_saved >= self.every or not isinstance(self.model, OffPolicyAlgorithm):
            if self.pacer.maybe(self.save):
                self.last_saved = self.env.episodes


def replay_buffer_file(checkpoint: str | Path) -> Path:
    """Where :func:`run_sb3` keeps an off-policy algorithm's replay buffer beside its ``checkpoint``: resume-only
    state, like the checkpoint (the model itself, ``<checkpoint>.sb3.zip``, is what the run produced)."""
    return Path(checkpoint).with_suffix(".buffer.pkl")


def run_sb3(
    env: SearchAccounting,
    algo: str | type[BaseAlgorithm] = "ppo",
    seed: int = 0,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    logdir: str | Path | None = None,
    n_envs: int = 1,
    **overrides: Any,
) -> dict[str, Any]:
    """Train an SB3 algorithm until the search's budget is spent. Returns the model and its settings.

    ``n_envs > 1`` runs it on a :class:`SB3VecEnv`: ``n_envs`` episodes per SB3 step, evaluated as one
    population (in-process or on the env's Ray workers), with the same budget accounting.
    """
    cls = algorithm_class(algo) if isinstance(algo, str) else algo
    venv: gym.Env | VecEnv = env if positive_int("n_envs", n_envs) == 1 else SB3VecEnv(env, n_envs)
    name = cls.__name__
    kwargs: dict[str, Any] = dict(DEFAULTS.get(name, {}))
    steps_per_episode = env.unwrapped.n_units if env.sequential else 1  # SB3 counts env steps; the budget, episodes
    if "learning_starts" in kwargs:
        kwargs["buffer_size"] = max(env.budget * steps_per_episode, 1000)
    kwargs.update(overrides)
    noise_std = kwargs.pop(NOISE_SETTING, None)
    if noise_std is not None:
        if "action_noise" in overrides:
            raise FFPruneError(f"give {name} action_noise or {NOISE_SETTING}, not both")
        if "action_noise" not in inspect.signature(cls.__init__).parameters:
            raise FFPruneError(f"{NOISE_SETTING} is for algorithms with action noise (TD3, DDPG, SAC); {name} has none")
        kwargs["action_noise"] = action_noise(noise_std, venv.action_space.shape)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    model_file = ckpt.with_suffix(".sb3.zip") if ckpt is not None else None
    buffer_file = replay_buffer_file(ckpt) if ckpt is not None else None

    resumed = bool(resume and ckpt is not None and ckpt.exists() and model_file.exists())
    if resumed:
        env.load_state_dict(unpack(load_checkpoint(ckpt)["search"]))
        model = cls.load(model_file, env=venv, seed=seed)
        if isinstance(model, OffPolicyAlgorithm) and buffer_file.exists():
            model.load_replay_buffer(buffer_file)
    else:
        model = cls("MlpPolicy", venv, seed=seed, verbose=0, device="cpu", **kwargs)
    if logdir is not None:
        model.set_logger(configure(str(logdir), ["tensorboard"]))

    def save() -> None:
        if ckpt is None:
            return
        atomic_write(model_file, model.save, keep_suffix=True)
        if isinstance(model, OffPolicyAlgorithm):
            atomic_write(buffer_file, model.save_replay_buffer, keep_suffix=True)
        atomic_torch_save({"search": pack(env.state_dict()), "algo": name}, ckpt)

    remaining = env.budget - env.episodes
    if remaining > 0:
        model.learn(total_timesteps=remaining * steps_per_episode, callback=StopAtBudget(env, save),
                    reset_num_timesteps=not resumed, progress_bar=False)
    save()
    config = {k: _plain(v) for k, v in kwargs.items() if not (k == "action_noise" and noise_std is not None)}
    if noise_std is not None:
        config[NOISE_SETTING] = float(noise_std)
    return {"model": model, "config": {"algorithm": name, "n_envs": n_envs, **config}}


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(np.asarray(v).tolist())
