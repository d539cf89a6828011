"""``FFPruneVectorEnv``: K single-step episodes per step, evaluated as one population, reset within the same step.

The one same-step-autoreset implementation of the project, behind three faces:

* ``gym.make_vec("FFPrune-Llama-v0", num_envs=K)`` (every registered id's ``vector_entry_point``): a
  :class:`gymnasium.vector.VectorEnv` over a fresh env (Ray's population evaluator attached, so
  ``workers=N`` scores the K allocations on N actors);
* ``FFPruneVectorEnv(K, env=search)`` over any population env, e.g. a
  :class:`~ffenv.wrappers.SearchAccounting` (budget, cost axes, best allocation) around the curriculum;
* stable-baselines3's ``VecEnv`` (``ffprune.agents.methods.sb3.SB3VecEnv``), a thin adapter of
  :meth:`FFPruneVectorEnv.step_episodes`.

A step scores the K actions with the env's ``step_many`` and starts the next K episodes with its
``reset_many`` (``metadata["autoreset_mode"] = AutoresetMode.SAME_STEP``): the returned observations are
those of the next episodes, each finished episode's info is under ``infos["final_info"]`` (its last
observation under ``infos["final_obs"]``), so no step is wasted on an autoreset. Rewards and infos equal those
of K single-env steps with the same actions. ``reset(options=...)`` options apply to every episode until the
next ``reset``.

Over a :class:`~ffenv.wrappers.SearchAccounting` with fewer than K episodes left in its budget, only those
run: the others return reward 0, ``terminated=True`` and ``{"beyond_budget": True}`` as their info, and their
observation is unchanged; a step with no episode left is refused by the accounting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from ffenv.config import EnvConfig
from ffenv.envs.population import PopulationEnv, inner_population_env
from ffenv.errors import FFPruneError, positive_int
from ffenv.vector.factory import make_env
from ffenv.wrappers.accounting import SearchAccounting


@dataclass
class EpisodeStep:
    """What one same-step-autoreset step gives, per episode (the K rows of every array / list)."""

    obs: np.ndarray
    """``[K, obs_dim]``: the first observations of the next episodes."""
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    final_obs: np.ndarray
    """``[K, obs_dim]``: the last observations of the finished episodes."""
    final_infos: list[dict[str, Any]]
    """The finished episodes' step infos (``{"beyond_budget": True}`` for slots past the budget)."""
    reset_infos: list[dict[str, Any]]
    """The next episodes' reset infos (``{}`` for slots past the budget)."""


class FFPruneVectorEnv(gym.vector.VectorEnv):
    """K FFPrune episodes per step, evaluated as one population (see the module docstring).

    Args:
        num_envs: allocations evaluated per step.
        config: the environment's configuration (default: :class:`~ffenv.config.EnvConfig` defaults).
        env: an existing population env to step instead (an ``FFPruneEnv`` or its wrappers, e.g. a
            :class:`~ffenv.wrappers.SearchAccounting`); then ``config`` and overrides are not accepted.
        **overrides: :class:`~ffenv.config.EnvConfig` fields, e.g. ``model``, ``workers``, ``device``.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, config: EnvConfig | None = None, *, env: gym.Env | None = None,
                 **overrides: Any) -> None:
        self.num_envs = positive_int("num_envs", num_envs)
        if env is not None and (config is not None or overrides):
            raise FFPruneError("give either env (an existing population env) or config / overrides, not both")
        self.env = make_env(config, **overrides) if env is None else env
        self._population: PopulationEnv = self.env if isinstance(self.env, PopulationEnv) else inner_population_env(self.env)
        self._search = _find(self.env, SearchAccounting)
        self.single_observation_space = self.env.observation_space
        self.single_action_space = self.env.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._options: dict[str, Any] | None = None
        self._obs = np.zeros((self.num_envs, *self.single_observation_space.shape), np.float32)

    @property
    def cost(self) -> dict[str, float]:
        """Evaluations, tokens and seconds spent (the env's counters)."""
        return self.env.get_wrapper_attr("cost")

    @property
    def episodes_left(self) -> int:
        """Episodes this vector env may still run per step: ``num_envs``, or fewer when a search's budget ends."""
        if self._search is None:
            return self.num_envs
        return max(0, min(self.num_envs, self._search.budget - self._search.episodes))

    def start_episodes(self, seed: int | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Start the next episodes (as many as :attr:`episodes_left`); all K observations and the reset infos."""
        n = self.episodes_left
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if n > 0:
            obs, started = self._population.reset_many(n, seed=seed, options=self._options)
            self._obs[:n] = obs
            infos[:n] = started
        return self._obs.copy(), infos

    def step_episodes(self, actions: np.ndarray) -> EpisodeStep:
        """Finish the current episodes with ``actions`` (one row each) and start the next ones: one population."""
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, *self.single_action_space.shape):
            raise FFPruneError(f"actions must be shaped ({self.num_envs}, {self.single_action_space.shape[0]}), "
                               f"got {actions.shape}")
        n, k = self.episodes_left, self.num_envs
        if n == 0:
            raise FFPruneError("the search's budget is spent: no episode is left to step")
        final_obs = self._obs.copy()
        last_obs, rewards, terminated, truncated, infos = self._population.step_many(actions[:n])
        final_obs[:n] = last_obs
        rewards = np.concatenate([np.asarray(rewards, np.float64), np.zeros(k - n)])
        terminated = np.concatenate([np.asarray(terminated, bool), np.ones(k - n, bool)])
        truncated = np.concatenate([np.asarray(truncated, bool), np.zeros(k - n, bool)])
        final_infos = list(infos) + [{"beyond_budget": True} for _ in range(k - n)]
        obs, reset_infos = self.start_episodes()
        return EpisodeStep(obs, rewards, terminated, truncated, final_obs, final_infos, reset_infos)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        self._options = options
        obs, infos = self.start_episodes(seed)
        vector_infos: dict[str, Any] = {}
        for i, info in enumerate(infos):
            vector_infos = self._add_info(vector_infos, info, i)
        return obs, vector_infos

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        out = self.step_episodes(actions)
        vector_infos: dict[str, Any] = {}
        for i, (info, reset_info) in enumerate(zip(out.final_infos, out.reset_infos)):
            vector_infos = self._add_info(vector_infos, {"final_obs": out.final_obs[i], "final_info": info}, i)
            vector_infos = self._add_info(vector_infos, reset_info, i)
        return out.obs, out.rewards, out.terminated, out.truncated, vector_infos

    def close_extras(self, **kwargs: Any) -> None:
        self.env.close()


def _find(env: gym.Env, wrapper_type: type) -> Any:
    """The outermost wrapper of ``wrapper_type`` in ``env``'s chain (``None`` if there is none)."""
    while True:
        if isinstance(env, wrapper_type):
            return env
        if not isinstance(env, gym.Wrapper):
            return None
        env = env.env
