"""``CurriculumWrapper``: FastForward Pruning's two curricula ("progressive scheduling").

Both are scheduled by the number of episodes so far, ``t = min(episodes / warmup_episodes, 1)``:

* **sparsity**: the target starts easy and rises to the final target. ``"cubic"`` (the paper's):
  ``keep(t) = keep_f + (keep_i - keep_f) · (1 - t)³`` on the keep ratio ``keep = 1 - sparsity``;
  ``"staircase"``: the same curve held constant over ``stairs`` equal steps of ``t`` (the last stair
  is the final target); ``"none"``: always the final target.
* **fidelity**: the share of the reward windows used rises cubically,
  ``f(t) = f_f - (f_f - f_i) · (1 - t)³`` from ``fidelity_start`` (≈ 5 %) to 100 %; ``"none"``: always 100 %.
  A cheap low-fidelity episode forwards fewer tokens, and the env's cost counters show it.

The stage of the next episode is fixed at ``reset``; the observation's first entry is its target and
``info["curriculum"]`` describes it. :meth:`CurriculumWrapper.full_fidelity_step` scores an action at
the final target on all reward windows (an agent's best-so-far check) without advancing the schedule.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

SCHEDULES = ("cubic", "staircase", "none")


class CurriculumWrapper(gym.Wrapper):
    """Sparsity and fidelity curricula over the first ``warmup_episodes`` episodes.

    Args:
        env: an ``FFPrune-*`` environment (possibly wrapped); its current target is the final target.
        warmup_episodes: episodes until the final target and full fidelity are reached.
        start_sparsity: the easy target of the first episode (``< final target``).
        sparsity_schedule: ``"cubic"``, ``"staircase"`` or ``"none"``.
        stairs: number of stairs of the staircase schedule.
        fidelity_start: share of the reward windows used at first, in ``(0, 1]``.
        fidelity_schedule: ``"cubic"`` or ``"none"``.
    """

    def __init__(
        self,
        env: gym.Env,
        warmup_episodes: int = 1000,
        start_sparsity: float = 0.05,
        sparsity_schedule: str = "cubic",
        stairs: int = 4,
        fidelity_start: float = 0.05,
        fidelity_schedule: str = "cubic",
    ) -> None:
        super().__init__(env)
        base = env.unwrapped
        if not hasattr(base, "set_target_sparsity") or not hasattr(base, "set_reward_windows"):
            raise ValueError("CurriculumWrapper needs an FFPrune environment (set_target_sparsity / set_reward_windows)")
        if isinstance(warmup_episodes, bool) or not isinstance(warmup_episodes, int) or warmup_episodes < 1:
            raise ValueError(f"warmup_episodes must be an integer >= 1, got {warmup_episodes!r}")
        if sparsity_schedule not in SCHEDULES:
            raise ValueError(f"sparsity_schedule must be one of {SCHEDULES}, got {sparsity_schedule!r}")
        if fidelity_schedule not in ("cubic", "none"):
            raise ValueError(f"fidelity_schedule must be 'cubic' or 'none', got {fidelity_schedule!r}")
        if not isinstance(stairs, int) or stairs < 1:
            raise ValueError(f"stairs must be an integer >= 1, got {stairs!r}")
        self.final_target = float(base.target_sparsity)
        if sparsity_schedule != "none":
            if not 0.0 < start_sparsity <= self.final_target:
                raise ValueError(f"start_sparsity must be in (0, {self.final_target}] (the final target), "
                                 f"got {start_sparsity}")
            base.set_target_sparsity(start_sparsity)  # validates it against the keep bounds
            base.set_target_sparsity(self.final_target)
        if not 0.0 < fidelity_start <= 1.0:
            raise ValueError(f"fidelity_start must be in (0, 1], got {fidelity_start}")
        self.warmup_episodes = warmup_episodes
        self.start_sparsity = float(start_sparsity)
        self.sparsity_schedule = sparsity_schedule
        self.stairs = stairs
        self.fidelity_start = float(fidelity_start)
        self.fidelity_schedule = fidelity_schedule
        self.full_windows = int(base.reward_windows)
        self.episodes = 0
        self.stage: dict[str, Any] = self.stage_at(0)

    # ------------------------------------------------------------------ schedules
    def progress(self, episode: int) -> float:
        """``t`` in ``[0, 1]`` for an episode index."""
        return min(episode / self.warmup_episodes, 1.0)

    def target_at(self, episode: int) -> float:
        """Target sparsity of an episode."""
        t = self.progress(episode)
        if self.sparsity_schedule == "none" or t >= 1.0:
            return self.final_target
        if self.sparsity_schedule == "staircase":
            t = math.floor(t * self.stairs) / (self.stairs - 1) if self.stairs > 1 else 1.0
            t = min(t, 1.0)
        keep_i, keep_f = 1.0 - self.start_sparsity, 1.0 - self.final_target
        return 1.0 - (keep_f + (keep_i - keep_f) * (1.0 - t) ** 3)

    def fidelity_at(self, episode: int) -> float:
        """Share of the reward windows used in an episode."""
        t = self.progress(episode)
        if self.fidelity_schedule == "none" or t >= 1.0:
            return 1.0
        return 1.0 - (1.0 - self.fidelity_start) * (1.0 - t) ** 3

    def stage_at(self, episode: int) -> dict[str, Any]:
        """Everything the schedule fixes for one episode."""
        fidelity = self.fidelity_at(episode)
        windows = min(self.full_windows, max(1, math.ceil(fidelity * self.full_windows - 1e-9)))
        return {"episode": episode, "progress": self.progress(episode), "target_sparsity": self.target_at(episode),
                "fidelity": fidelity, "reward_windows": windows,
                "final": self.target_at(episode) == self.final_target and windows == self.full_windows}

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        self.stage = self.stage_at(self.episodes)
        base = self.env.unwrapped
        base.set_target_sparsity(self.stage["target_sparsity"])
        base.set_reward_windows(self.stage["reward_windows"])
        obs, info = self.env.reset(seed=seed, options=options)
        info["curriculum"] = dict(self.stage)
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["curriculum"] = dict(self.stage)
        self.episodes += 1
        return obs, reward, terminated, truncated, info

    def full_fidelity_step(self, action: np.ndarray) -> tuple[float, dict[str, Any]]:
        """Reward and info of ``action`` at the final target on all reward windows (counted as cost).

        Does not advance the schedule; the current stage is put back afterwards.
        """
        base = self.env.unwrapped
        base.set_target_sparsity(self.final_target)
        base.set_reward_windows(self.full_windows)
        try:
            _, reward, _, _, info = base.step(action)
        finally:
            base.set_target_sparsity(self.stage["target_sparsity"])
            base.set_reward_windows(self.stage["reward_windows"])
        return reward, info

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume the schedule."""
        return {"episodes": self.episodes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.episodes = int(state["episodes"])
        self.stage = self.stage_at(self.episodes)
