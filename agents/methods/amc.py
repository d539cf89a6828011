"""AMC's DDPG (He et al., ECCV 2018) on the sequential env, built on stable-baselines3's DDPG.

AMC prunes one layer per step and learns with DDPG; its paper and code (``mit-han-lab/amc``) configure the
agent as below, and this module keeps those settings on SB3's ``DDPG`` (one critic, no target-policy noise,
no policy delay):

* actor and critic MLPs of 300-300 units; learning rates 1e-4 (actor) and 1e-3 (critic); soft target updates
  ``τ = 0.01``; ``γ = 1``; batch 64;
* warm-up: uniformly random actions for the first ``warmup_fraction`` of the budget (AMC: 100 of 900 episodes,
  1/9, so a budget of 100 warms up for 11 episodes), then one gradient step per env step, taken when an
  episode ends (AMC updates the policy once per stored transition at the episode's end);
* exploration: a **truncated** normal around the actor's action, ``σ = 0.5`` on AMC's ``[0, 1]`` action
  scale (1.0 on the env's ``[-1, 1]``), decaying ×0.95 per episode after the warm-up;
* the episode's final reward is written on **every** transition of the episode (the env pays it only at the
  last unit), and a moving average of the sampled batches' rewards (weight 0.5 for the newest batch) is
  subtracted before the TD target, as AMC's ``update_policy`` does.

Where this departs from AMC's code: the transition stores the action the env **executed**
(``info["executed_action"]``: the interval projection may clip what the agent asked for), so the critic
learns the value of what happened; AMC stores the agent's own action. The states are the env's observation
(:mod:`ffenv.envs.sequential_env`), not AMC's ten layer descriptors; the reward is the env's
``dense_ppl / pruned_ppl``, not ``-error · log(FLOPs)``. Everything else (replay, target networks, Adam,
the 300-300 networks) is SB3's DDPG unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from ffenv.errors import FFPruneError, non_negative_int, unit_interval
from ffenv.wrappers import SearchAccounting

AMC_SETTINGS: dict[str, Any] = {
    "policy_kwargs": {"net_arch": [300, 300]},
    "actor_lr": 1e-4,
    "critic_lr": 1e-3,
    "tau": 0.01,
    "gamma": 1.0,
    "batch_size": 64,
    "train_freq": (1, "episode"),
    "gradient_steps": -1,
    "exploration_sigma": 1.0,  # AMC's 0.5 on its [0, 1] action scale
    "sigma_decay": 0.95,
    "reward_average_weight": 0.5,
}
"""AMC's DDPG settings (see the module docstring), as keyword arguments of :class:`AMCDDPG`."""
WARMUP_FRACTION = 100 / 900
"""AMC's warm-up: 100 random episodes of 900."""


class EpisodeRewardBuffer(ReplayBuffer):
    """A replay buffer that writes an episode's final reward on all its transitions, and samples rewards minus a
    moving average of the sampled batches' mean reward (AMC's baseline).

    Transitions wait in :attr:`pending` until their episode ends; then all are added with the reward of the last one.
    Only a single environment is supported (AMC steps one network at a time).
    """

    def __init__(self, *args: Any, reward_average_weight: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.n_envs != 1:
            raise FFPruneError(f"EpisodeRewardBuffer steps one environment, got n_envs={self.n_envs}")
        self.reward_average_weight = unit_interval("reward_average_weight", reward_average_weight)
        self.pending: list[tuple[Any, ...]] = []
        self.moving_average: float | None = None

    def add(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray, done: np.ndarray,
            infos: list[dict[str, Any]]) -> None:
        executed = infos[0].get("executed_action")
        if executed is not None:  # what the env applied (the interval projection may have clipped the agent's action)
            action = np.asarray(executed, np.float32).reshape(action.shape)
        self.pending.append((obs, next_obs, action, done, infos))
        if bool(np.asarray(done).reshape(-1)[0]):
            final = np.asarray(reward, np.float32)
            for o, n, a, d, i in self.pending:
                super().add(o, n, a, final, d, i)
            self.pending = []

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> ReplayBufferSamples:
        samples = super()._get_samples(batch_inds, env)
        mean = float(samples.rewards.mean())
        if self.moving_average is None:
            self.moving_average = mean
        else:
            self.moving_average += self.reward_average_weight * (mean - self.moving_average)
        return samples._replace(rewards=samples.rewards - self.moving_average)


class AMCDDPG(DDPG):
    """SB3's DDPG with AMC's learning rates, truncated-normal exploration and episode rewards (module docstring).

    Args:
        actor_lr / critic_lr: the two Adam learning rates (SB3's DDPG has one ``learning_rate`` for both).
        exploration_sigma: σ of the truncated normal on the ``[-1, 1]`` action scale at the end of the warm-up.
        sigma_decay: σ's factor per episode after the warm-up.
        reward_average_weight: the moving average's weight of the newest batch mean.
        warmup_episodes: episodes of the warm-up (σ decays from the next one; ``learning_starts`` is the same
            warm-up in env steps).
        *args / **kwargs: SB3 ``DDPG`` arguments (``learning_starts`` is the warm-up in env steps).
    """

    def __init__(self, *args: Any, actor_lr: float = 1e-4, critic_lr: float = 1e-3, exploration_sigma: float = 1.0,
                 sigma_decay: float = 0.95, reward_average_weight: float = 0.5, warmup_episodes: int = 0,
                 **kwargs: Any) -> None:
        for name, value in (("actor_lr", actor_lr), ("critic_lr", critic_lr), ("exploration_sigma", exploration_sigma)):
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise FFPruneError(f"{name} must be a positive number, got {value!r}")
        self.actor_lr, self.critic_lr = float(actor_lr), float(critic_lr)
        self.exploration_sigma = float(exploration_sigma)
        self.sigma_decay = unit_interval("sigma_decay", sigma_decay)
        self.warmup_episodes = non_negative_int("warmup_episodes", warmup_episodes)
        kwargs.setdefault("replay_buffer_class", EpisodeRewardBuffer)
        buffer_kwargs = dict(kwargs.pop("replay_buffer_kwargs", None) or {})
        buffer_kwargs.setdefault("reward_average_weight", reward_average_weight)
        super().__init__(*args, replay_buffer_kwargs=buffer_kwargs, **kwargs)
        self._explore = np.random.default_rng(self.seed)

    @property
    def sigma(self) -> float:
        """The exploration σ now: ``exploration_sigma · sigma_decay^(episodes since the warm-up)``."""
        return self.exploration_sigma * self.sigma_decay ** max(0, self._episode_num - self.warmup_episodes)

    def _update_learning_rate(self, optimizers: list[th.optim.Optimizer] | th.optim.Optimizer) -> None:
        """AMC's fixed learning rates: ``actor_lr`` for the actor's optimizer, ``critic_lr`` for the critic's."""
        self.logger.record("train/actor_lr", self.actor_lr)
        self.logger.record("train/critic_lr", self.critic_lr)
        for group in self.actor.optimizer.param_groups:
            group["lr"] = self.actor_lr
        for group in self.critic.optimizer.param_groups:
            group["lr"] = self.critic_lr

    def _sample_action(self, learning_starts: int, action_noise: Any = None,
                       n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Uniform actions during the warm-up, then the actor's action with truncated-normal noise inside ``[-1, 1]``."""
        if self.num_timesteps < learning_starts:
            action = np.array([self.action_space.sample() for _ in range(n_envs)], np.float32)
        else:
            mean, _ = self.predict(self._last_obs, deterministic=True)
            action = truncated_normal(self._explore, np.asarray(mean, np.float64), self.sigma).astype(np.float32)
        return action, action  # the action space is already [-1, 1]: SB3's scaled and unscaled actions agree


def truncated_normal(rng: np.random.Generator, mean: np.ndarray, sigma: float, low: float = -1.0,
                     high: float = 1.0) -> np.ndarray:
    """Samples of ``N(mean, sigma²)`` conditioned on ``[low, high]`` (rejection; each entry redrawn until inside)."""
    mean = np.clip(mean, low, high)
    out = rng.normal(mean, sigma)
    bad = (out < low) | (out > high)
    while bad.any():
        out[bad] = rng.normal(mean[bad], sigma)
        bad = (out < low) | (out > high)
    return out


def amc_settings(env: SearchAccounting, warmup_fraction: float = WARMUP_FRACTION) -> dict[str, Any]:
    """:class:`AMCDDPG` keyword arguments for a search: AMC's settings, the warm-up scaled to the budget (in env steps)
    and a replay buffer that holds the whole search."""
    if not env.sequential:
        raise FFPruneError("amc-ddpg steps one unit at a time: use a sequential env id (FFPrune-<Family>-Sequential-v0)")
    unit_interval("warmup_fraction", warmup_fraction, open_low=False, open_high=True)
    steps = env.unwrapped.n_units
    warmup_episodes = max(1, int(round(warmup_fraction * env.budget)))
    return {**copy.deepcopy(AMC_SETTINGS), "warmup_episodes": warmup_episodes, "learning_starts": warmup_episodes * steps,
            "buffer_size": max(env.budget * steps, 1000)}
