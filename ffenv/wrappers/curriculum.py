"""``CurriculumWrapper``: FastForward Pruning's two curricula ("progressive scheduling").

Both are scheduled by the number of episodes so far, ``t = min(episodes / warmup_episodes, 1)``:

* **sparsity**: the target starts easy and rises to the final target. ``"cubic"`` (the paper's):
  ``keep(t) = keep_f + (keep_i - keep_f) · (1 - t)³`` on the keep ratio ``keep = 1 - sparsity``;
  ``"staircase"``: the same curve held constant over ``stairs`` equal steps of ``t`` (the last stair
  is the final target); ``"none"``: always the final target.
* **fidelity**: the share of the reward windows used rises cubically,
  ``f(t) = f_f - (f_f - f_i) · (1 - t)³`` from ``fidelity_start`` (≈ 5 %) to 100 %; ``"none"``: always 100 %.
  A cheap low-fidelity episode forwards fewer tokens, and the env's cost counters show it.

**Training across targets** (``train_targets``, a target-conditioned policy): each episode's *final* target is
drawn from the given set instead of being the env's configured one (every target once per block of
``len(train_targets)`` episodes, in a seeded order), and both ramps go towards it as above. The
draw is a pure function of ``(target_seed, episode index)`` (:meth:`CurriculumWrapper.final_target_at`), so a
population, a resumed search and a re-run draw the same targets. The drawn target is the stage's
``final_target``.

The stage of the next episode is fixed at ``reset``, which passes it down as the episode's
``options={"target_sparsity", "reward_windows"}`` (the environment itself is never reconfigured); the
observation's first entry is its target and ``info["curriculum"]`` describes it. Its schedule position
is checkpointable (:meth:`CurriculumWrapper.state_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from ffenv.envs.population import PopulationEnv, inner_population_env
from ffenv.envs.sequential_env import single_step_env
from ffenv.errors import FFPruneError, non_negative_int, positive_int, unit_interval
from ffenv.pruning.projector import check_budget
from ffenv.wrappers.common import Resumable

SCHEDULES = ("cubic", "staircase", "none")


class CurriculumWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs, Resumable, PopulationEnv):
    """Sparsity and fidelity curricula over the first ``warmup_episodes`` episodes.

    Args:
        env: an ``FFPrune-*`` environment (possibly wrapped); its configured target is the final target.
        warmup_episodes: episodes until the final target and full fidelity are reached.
        start_sparsity: the easy target of the first episode (``<=`` every final target).
        sparsity_schedule: ``"cubic"``, ``"staircase"`` or ``"none"``.
        stairs: number of stairs of the staircase schedule.
        fidelity_start: share of the reward windows used at first, in ``(0, 1]``.
        fidelity_schedule: ``"cubic"`` or ``"none"``.
        train_targets: ``None`` (every episode ramps to the env's configured target), or the distinct training
            targets each episode's final target is drawn from (each once per block of that many episodes), each
            feasible for the env's ``min_keep`` / ``max_keep``; kept sorted.
        target_seed: seed of the draws (an integer ``>= 0``; only with ``train_targets``).
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
        train_targets: Sequence[float] | None = None,
        target_seed: int = 0,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, warmup_episodes=warmup_episodes, start_sparsity=start_sparsity, sparsity_schedule=sparsity_schedule,
            stairs=stairs, fidelity_start=fidelity_start, fidelity_schedule=fidelity_schedule,
            train_targets=train_targets, target_seed=target_seed)
        gym.Wrapper.__init__(self, env)
        base = single_step_env(env)  # single-step or sequential: the same knobs (an error for any other env)
        positive_int("warmup_episodes", warmup_episodes)
        if sparsity_schedule not in SCHEDULES:
            raise FFPruneError(f"sparsity_schedule must be one of {SCHEDULES}, got {sparsity_schedule!r}")
        if fidelity_schedule not in ("cubic", "none"):
            raise FFPruneError(f"fidelity_schedule must be 'cubic' or 'none', got {fidelity_schedule!r}")
        positive_int("stairs", stairs)
        self.final_target = base.config.target_sparsity
        """The env's configured target (every episode's final target without ``train_targets``)."""
        self.train_targets = check_train_targets(train_targets, base.config.min_keep, base.config.max_keep)
        """The sorted training targets each episode's final target is drawn from (``None``: the configured one)."""
        self.target_seed = non_negative_int("target_seed", target_seed)
        lowest = self.final_target if self.train_targets is None else self.train_targets[0]
        if sparsity_schedule != "none":
            if not 0.0 < start_sparsity <= lowest:
                what = "the final target" if self.train_targets is None else "the lowest of train_targets"
                raise FFPruneError(f"start_sparsity must be in (0, {lowest}] ({what}), got {start_sparsity}")
            check_budget(start_sparsity, base.config.min_keep, base.config.max_keep)
        unit_interval("fidelity_start", fidelity_start)
        self.warmup_episodes = warmup_episodes
        self.start_sparsity = float(start_sparsity)
        self.sparsity_schedule = sparsity_schedule
        self.stairs = stairs
        self.fidelity_start = float(fidelity_start)
        self.fidelity_schedule = fidelity_schedule
        self.full_windows = base.config.reward_windows
        self.episodes = 0
        self.stage: dict[str, Any] = self.stage_at(0)
        self._population: list[dict[str, Any]] = []  # the stages of the episodes of the last reset_many

    # ------------------------------------------------------------------ schedules
    def progress(self, episode: int) -> float:
        """``t`` in ``[0, 1]`` for an episode index."""
        return min(episode / self.warmup_episodes, 1.0)

    def final_target_at(self, episode: int) -> float:
        """The final target an episode ramps towards: the configured one, or with ``train_targets`` the one drawn for
        this episode: each block of ``len(train_targets)`` consecutive episodes visits every target once, in an order
        drawn from ``(target_seed, block)`` (stratified: every target is trained on as often, and each appears within
        any ``2·len(train_targets) - 1`` consecutive episodes; a pure function of ``(target_seed, episode)``)."""
        if self.train_targets is None:
            return self.final_target
        n = len(self.train_targets)
        block, position = divmod(int(episode), n)
        order = np.random.default_rng([self.target_seed, block]).permutation(n)
        return self.train_targets[int(order[position])]

    def target_at(self, episode: int) -> float:
        """Target sparsity of an episode."""
        t = self.progress(episode)
        final = self.final_target_at(episode)
        if self.sparsity_schedule == "none" or t >= 1.0:
            return final
        if self.sparsity_schedule == "staircase":
            t = math.floor(t * self.stairs) / (self.stairs - 1) if self.stairs > 1 else 1.0
            if t >= 1.0:  # the last stair is the final target itself (1 - (1 - σ) is not σ in floating point)
                return final
        keep_i, keep_f = 1.0 - self.start_sparsity, 1.0 - final
        return 1.0 - (keep_f + (keep_i - keep_f) * (1.0 - t) ** 3)

    def fidelity_at(self, episode: int) -> float:
        """Share of the reward windows used in an episode."""
        t = self.progress(episode)
        if self.fidelity_schedule == "none" or t >= 1.0:
            return 1.0
        return 1.0 - (1.0 - self.fidelity_start) * (1.0 - t) ** 3

    def stage_at(self, episode: int) -> dict[str, Any]:
        """Everything the schedule fixes for one episode (``final_target``: the target it ramps towards; ``final``:
        whether it runs at that target on all reward windows)."""
        fidelity = self.fidelity_at(episode)
        windows = min(self.full_windows, max(1, math.ceil(fidelity * self.full_windows - 1e-9)))
        target, final = self.target_at(episode), self.final_target_at(episode)
        return {"episode": episode, "progress": self.progress(episode), "target_sparsity": target,
                "final_target": final, "fidelity": fidelity, "reward_windows": windows,
                "final": target == final and windows == self.full_windows}

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Fix the next episode's stage and pass it down as reset options (a caller's own options win)."""
        self.stage = self.stage_at(self.episodes)
        stage_options = {"target_sparsity": self.stage["target_sparsity"], "reward_windows": self.stage["reward_windows"]}
        obs, info = self.env.reset(seed=seed, options={**stage_options, **(options or {})})
        info["curriculum"] = dict(self.stage)
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["curriculum"] = dict(self.stage)
        if terminated or truncated:  # every step of the single-step env; the last unit of a sequential episode
            self.episodes += 1
        return obs, reward, terminated, truncated, info

    def reset_many(self, n: int, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, list[dict]]:
        """The next ``n`` episodes' stages, passed down as per-episode reset options."""
        if options is not None:
            raise FFPruneError("the curriculum sets each episode's options itself; reset_many takes none")
        self._population = [self.stage_at(self.episodes + i) for i in range(n)]
        self.stage = self._population[0]
        per_episode = [{"target_sparsity": st["target_sparsity"], "reward_windows": st["reward_windows"]}
                       for st in self._population]
        obs, infos = inner_population_env(self).reset_many(n, seed=seed, options=per_episode)
        for info, st in zip(infos, self._population):
            info["curriculum"] = dict(st)
        return obs, infos

    def step_many(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        obs, rewards, terminated, truncated, infos = inner_population_env(self).step_many(actions)
        for info, st in zip(infos, self._population):
            info["curriculum"] = dict(st)
        self.episodes += len(infos)
        self.stage = self.stage_at(self.episodes)
        return obs, rewards, terminated, truncated, infos

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume the schedule (with ``train_targets``: also the set and its seed, which a
        resume must not change)."""
        if self.train_targets is None:
            return {"episodes": self.episodes}
        return {"episodes": self.episodes, "train_targets": list(self.train_targets), "target_seed": self.target_seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("train_targets")
        mine = None if self.train_targets is None else list(self.train_targets)
        if saved != mine or (saved is not None and state.get("target_seed") != self.target_seed):
            raise FFPruneError(f"the checkpoint was written with train_targets={saved} (target_seed "
                               f"{state.get('target_seed')}), this search has {mine} (target_seed {self.target_seed}); "
                               "resume with the same settings or start again without resume")
        self.episodes = int(state["episodes"])
        self.stage = self.stage_at(self.episodes)


def check_train_targets(targets: Sequence[float] | None, min_keep: float, max_keep: float) -> tuple[float, ...] | None:
    """``targets`` as a sorted tuple of floats (``None`` stays ``None``), each a number in ``(0, 1)`` feasible for the
    keep bounds, all distinct; else a one-line :class:`FFPruneError` naming ``train_targets`` and the allowed range."""
    if targets is None:
        return None
    if isinstance(targets, np.ndarray) and targets.ndim == 1:
        targets = targets.tolist()
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence) or len(targets) == 0:
        raise FFPruneError(f"train_targets must be a non-empty sequence of target sparsities, got {targets!r}")
    low, high = max(0.0, 1.0 - max_keep), min(1.0, 1.0 - min_keep)
    out = []
    for t in targets:
        ok = isinstance(t, (int, float, np.integer, np.floating)) and not isinstance(t, bool) and np.isfinite(t)
        if not (ok and 0.0 < t < 1.0 and low - 1e-12 <= t <= high + 1e-12):
            raise FFPruneError(f"train_targets must each lie in (0, 1) and in [{low:.6g}, {high:.6g}] (feasible for "
                               f"min_keep={min_keep}, max_keep={max_keep}), got {t!r}")
        out.append(float(t))
    if len(set(out)) != len(out):
        raise FFPruneError(f"train_targets must be distinct, got {list(targets)}")
    return tuple(sorted(out))
