"""``FFPruneVectorEnv``: ``gym.make_vec("FFPrune-Llama-v0", num_envs=K)``, K allocations per step as one population.

Every registered FFPrune id has this class as its ``vector_entry_point``, so :func:`gymnasium.make_vec`
returns it by default. A step evaluates the K actions with :meth:`ffenv.envs.prune_env.FFPruneEnv.step_many`:
in this process, or on Ray actors when the env has ``workers=N`` (one model replica per actor). It counts
K evaluations in ``cost``. Episodes are single steps and the vector env resets them **within the same
step** (``metadata["autoreset_mode"] = AutoresetMode.SAME_STEP``): the returned observations are those of
the next K episodes, each step's own info is under ``infos["final_info"]`` (and its last observation
under ``infos["final_obs"]``), so no step is wasted on an autoreset. Rewards and infos equal those of K
single-env steps with the same actions. ``reset(options=...)`` options apply to every episode until the
next ``reset``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from ffenv.config import EnvConfig
from ffenv.envs.prune_env import FFPruneEnv
from ffenv.errors import positive_int


class FFPruneVectorEnv(gym.vector.VectorEnv):
    """K FFPrune episodes per step, evaluated as one population (see the module docstring).

    Args:
        num_envs: allocations evaluated per step.
        config: the environment's configuration (default: :class:`~ffenv.config.EnvConfig` defaults).
        **overrides: :class:`~ffenv.config.EnvConfig` fields, e.g. ``model``, ``workers``, ``device``.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, config: EnvConfig | None = None, **overrides: Any) -> None:
        self.num_envs = positive_int("num_envs", num_envs)
        self.env = FFPruneEnv(config, **overrides)
        self.single_observation_space = self.env.observation_space
        self.single_action_space = self.env.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._options: dict[str, Any] | None = None

    @property
    def cost(self) -> dict[str, float]:
        """Evaluations, tokens and seconds spent (the underlying env's counters)."""
        return self.env.cost

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        self._options = options
        obs, infos = self.env.reset_many(self.num_envs, seed=seed, options=options)
        vector_infos: dict[str, Any] = {}
        for i, info in enumerate(infos):
            vector_infos = self._add_info(vector_infos, info, i)
        return obs, vector_infos

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        final_obs, rewards, terminated, truncated, infos = self.env.step_many(np.asarray(actions))
        obs, reset_infos = self.env.reset_many(self.num_envs, options=self._options)  # same-step autoreset
        vector_infos: dict[str, Any] = {}
        for i, (info, reset_info) in enumerate(zip(infos, reset_infos)):
            vector_infos = self._add_info(vector_infos, {"final_obs": final_obs[i], "final_info": info}, i)
            vector_infos = self._add_info(vector_infos, reset_info, i)
        return obs, rewards, terminated, truncated, vector_infos

    def close_extras(self, **kwargs: Any) -> None:
        self.env.close()
