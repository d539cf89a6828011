"""``SearchAccounting``: the budget, the cost axes and the best allocation of one search.

Wrap any environment a search method steps (outermost, around :class:`~ffenv.wrappers.CurriculumWrapper`
when there is one) and every method — FastForward, stable-baselines3, a baseline or your own optimiser —
is measured the same way. For every episode it

* counts the episode against the ``budget`` (a step after the budget is spent is refused);
* reads the search cost off the environment: evaluations, tokens forwarded, wall seconds;
* keeps the best allocation **at the final target on all reward windows** (the environment's configured
  ``target_sparsity`` and ``reward_windows``): an episode of a cheaper curriculum stage that looks at
  least as good as the best is re-scored there with :meth:`ffenv.envs.prune_env.FFPruneEnv.score` (counted as cost);
* with a curriculum that trains across targets (:class:`~ffenv.wrappers.CurriculumWrapper`'s ``train_targets``):
  keeps, the same way, a best allocation **per training target** (:attr:`SearchAccounting.best_by_target`, keyed
  by :func:`target_key`) — an episode is compared only with the episodes of its own target, at full fidelity. The
  headline :attr:`SearchAccounting.best` stays the one at the env's configured target (one of the training
  targets, or no episode ever reaches it); without ``train_targets`` ``best_by_target`` holds ``best`` alone and
  nothing else changes;
* appends a record to :attr:`SearchAccounting.history`, adds it to ``info["search"]`` and hands it to an
  optional :class:`~ffenv.wrappers.logger.SearchLogger` (TensorBoard, progress bar).

Over a surrogate env (``surrogate=True``, :mod:`ffenv.surrogate`) the budget counts episodes exactly as over a real
one (each is one surrogate evaluation), re-scorings at the final target are surrogate evaluations too, and
:attr:`SearchAccounting.cost`, the history records and the best allocations carry a ``surrogate_evaluations`` axis
beside ``evaluations`` and ``tokens`` (which stay 0: no model forward ran); :attr:`~SearchAccounting.evaluations_to_best`
counts surrogate evaluations there.

Over a sequential env (:class:`~ffenv.envs.sequential_env.FFPruneSequentialEnv`) an episode is the steps from
the first unit to the last: the budget is checked when one starts, it is recorded when it ends, its
``action`` is the single-step allocation that was scored
(:meth:`~ffenv.envs.sequential_env.FFPruneSequentialEnv.final_allocation`,
so results of both formulations compare and export alike), and :attr:`SearchAccounting.cost` has an
``env_steps`` axis.

:meth:`SearchAccounting.state_dict` holds all of it plus the state of every
:class:`~ffenv.wrappers.common.Resumable` wrapper inside, and the weights fingerprint: a search resumed on
other weights is refused.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np

from ffenv.envs.measurement import REAL_AXES, describe_measurement
from ffenv.envs.population import PopulationEnv, inner_population_env
from ffenv.envs.sequential_env import FFPruneSequentialEnv, single_step_env
from ffenv.errors import FFPruneError, positive_int
from ffenv.wrappers.common import Resumable, load_resumable_states, resumable_states, wrapper_chain
from ffenv.wrappers.curriculum import CurriculumWrapper
from ffenv.wrappers.logger import SearchLogger


def target_key(target: float) -> str:
    """The key of a target in :attr:`SearchAccounting.best_by_target` and in result files (``0.35`` -> ``"0.35"``)."""
    return repr(float(target))


class SearchAccounting(gym.Wrapper, gym.utils.RecordConstructorArgs, Resumable, PopulationEnv):
    """Budget, cost axes, best allocation and history of one search (see the module docstring).

    Args:
        env: an ``FFPrune-*`` environment, possibly wrapped (e.g. by the curriculum).
        budget: episodes the search may run.
        logger: receives every episode's record (``None``: no TensorBoard, no bar); closed with the env.
    """

    def __init__(self, env: gym.Env, budget: int, logger: SearchLogger | None = None) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, budget=budget)
        gym.Wrapper.__init__(self, env)
        self.single = single_step_env(env)  # the env itself, or a sequential env's (an error for any other env)
        """The single-step env that scores allocations (re-scoring at the final target goes through it)."""
        base = env.unwrapped
        self.sequential = isinstance(base, FFPruneSequentialEnv)
        """Whether episodes are sequential (one unit per step) rather than single steps."""
        self.budget = positive_int("budget", budget)
        self.logger = logger
        self.final_target = self.single.config.target_sparsity
        self.full_windows = self.single.config.reward_windows
        self.weights_fingerprint = self.single.weights_fingerprint
        measurement = self.single.measurement
        self._axis = measurement.axes[0]  # the axis an episode's score adds to
        self._measured_axes = [a for a in measurement.axes if a not in REAL_AXES]  # e.g. surrogate_evaluations
        self._extra_axes = (["env_steps"] if self.sequential else []) + self._measured_axes  # beyond evaluations, tokens
        self.measured_on = measurement.identity
        """The env's measurement (:attr:`~ffenv.envs.measurement.Measurement.identity`; ``None``: the real model),
        recorded in checkpoints."""
        if logger is not None:  # its TensorBoard axes: this measurement's, wall time, env steps when sequential
            logger.axes = (*measurement.axes, "wall_ms", *(["env_steps"] if self.sequential else []))
        curricula = [w for w in wrapper_chain(env) if isinstance(w, CurriculumWrapper)]
        self.train_targets: tuple[float, ...] | None = curricula[0].train_targets if curricula else None
        """The training targets of the curriculum inside (``None``: one target, the configured one)."""
        self._tracked = {self.final_target, *(self.train_targets or ())}  # targets with a best of their own
        self.episodes = 0
        self.best: dict[str, Any] | None = None
        """The best allocation at the configured target on all reward windows (``None`` before any)."""
        self.best_by_target: dict[str, dict[str, Any]] = {}
        """The best allocation at each training target (and the configured one) on all reward windows, keyed by
        :func:`target_key`; ``best`` is the configured target's entry."""
        self.history: list[dict[str, Any]] = []
        self._wall_offset = 0.0  # seconds spent before a resume
        self._cost_offset = {"evaluations": 0, "tokens": 0, "env_steps": 0, "surrogate_evaluations": 0}
        self._cost_at_start = dict(base.cost)
        self._unbooked = {self._axis: 0, "tokens": 0}  # population episodes evaluated but not recorded yet
        self._t0 = time.perf_counter()

    # ------------------------------------------------------------------ the cost axes
    @property
    def wall_seconds(self) -> float:
        """Wall seconds of the search so far (across resumes)."""
        return self._wall_offset + time.perf_counter() - self._t0

    @property
    def cost(self) -> dict[str, float]:
        """Search cost so far: episodes, evaluations (re-scorings included), tokens, wall seconds (and env steps when
        sequential, surrogate evaluations in surrogate mode)."""
        base = self.env.unwrapped.cost

        def spent(axis: str) -> int:
            return self._cost_offset[axis] + base[axis] - self._cost_at_start[axis] - self._unbooked.get(axis, 0)

        cost = {"episodes": self.episodes, "evaluations": spent("evaluations"), "tokens": spent("tokens"),
                "seconds": round(self.wall_seconds, 3)}
        cost.update({axis: spent(axis) for axis in self._extra_axes})
        return cost

    @property
    def budget_spent(self) -> bool:
        """True once ``budget`` episodes have run."""
        return self.episodes >= self.budget

    @property
    def evaluations_to_best(self) -> int | None:
        """Evaluations spent when the best allocation was found (surrogate evaluations in surrogate mode; ``None``
        before any)."""
        return None if self.best is None else int(self.best[self._axis])

    # ------------------------------------------------------------------ gymnasium API
    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        base = self.env.unwrapped
        if not (self.sequential and base.episode_started):  # this step starts an episode
            self._check_budget(1)
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.sequential and terminated:
            self._record(base.final_allocation(), reward, info)
        elif not self.sequential:
            self._record(action, reward, info)
        return obs, reward, terminated, truncated, info

    def reset_many(self, n: int, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, list[dict]]:
        """Start ``n`` episodes (a population); at most the budget left."""
        self._check_budget(n)
        return inner_population_env(self).reset_many(n, seed=seed, options=options)

    def step_many(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Run a population of episodes; each is recorded exactly as if it had been a single :meth:`step`."""
        self._check_budget(len(actions))
        obs, rewards, terminated, truncated, infos = inner_population_env(self).step_many(actions)
        tokens = [int(info["cost"]["tokens"]) for info in infos]
        try:  # the population ran before any re-scoring: each episode is booked as if the steps had run one by one
            for i, info in enumerate(infos):
                self._unbooked = {self._axis: len(infos) - i - 1, "tokens": sum(tokens[i + 1:])}
                self._record(actions[i], float(rewards[i]), info)
        finally:
            self._unbooked = {self._axis: 0, "tokens": 0}
        return obs, rewards, terminated, truncated, infos

    def _check_budget(self, n: int) -> None:
        if self.episodes + n > self.budget:
            raise FFPruneError(f"{n} more episode(s) would exceed the search budget of {self.budget} episodes "
                               f"({self.episodes} spent)")

    def _record(self, action: np.ndarray, reward: float, info: dict[str, Any]) -> None:
        self.episodes += 1
        target = info["target_sparsity"]
        at_target = target in self._tracked  # the configured target, or one of the curriculum's training targets
        best = self.best_by_target.get(target_key(target)) if at_target else None
        full_reward, full_info = (reward, info) if at_target and info["reward_windows"] == self.full_windows else (None, None)
        if full_reward is None and at_target and (best is None or reward >= best["reward"]):
            full_reward, full_info = self.single.score(action, target_sparsity=target, reward_windows=self.full_windows)
        cost = self.cost
        if full_reward is not None and (best is None or full_reward > best["reward"]):
            self.best_by_target[target_key(target)] = {
                "reward": float(full_reward), "ppl": float(full_info["ppl"]),
                "action": np.asarray(action, np.float32).tolist(),
                "layer_sparsity": np.asarray(full_info["layer_sparsity"]).tolist(),
                "keep_ratio": np.asarray(full_info["keep_ratio"]).tolist(),
                "sparsity": float(full_info["sparsity"]), "episode": self.episodes,
                "evaluations": cost["evaluations"], "tokens": cost["tokens"], "seconds": cost["seconds"],
                **{axis: cost[axis] for axis in self._measured_axes}}
            self.best = self.best_by_target.get(target_key(self.final_target))
        point = {"episode": self.episodes, "reward": float(reward), "ppl": float(info["ppl"]),
                 "target": float(info["target_sparsity"]), "windows": int(info["reward_windows"]),
                 "action": np.asarray(action, np.float32).tolist(), "evaluations": cost["evaluations"],
                 "tokens": cost["tokens"], "seconds": cost["seconds"],
                 **{axis: cost[axis] for axis in self._extra_axes},
                 "best_reward": self.best["reward"] if self.best else float("nan"),
                 "best_ppl": self.best["ppl"] if self.best else float("nan")}
        self.history.append(point)
        info["search"] = dict(point)
        if self.logger is not None:
            self.logger.log_episode(point, info, self.budget)

    def close(self) -> None:
        """Close the logger (flushes TensorBoard), then the environment."""
        if self.logger is not None:
            self.logger.close()
        super().close()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        cost = self.cost
        return {"episodes": self.episodes, "wall_seconds": self.wall_seconds, "evaluations": cost["evaluations"],
                "tokens": cost["tokens"], "env_steps": cost.get("env_steps", 0),
                **({"surrogate": self.measured_on} if self.measured_on else {}),
                **{axis: cost[axis] for axis in self._measured_axes},
                "best": self.best,
                "best_by_target": self.best_by_target, "history": self.history,
                "weights_fingerprint": self.weights_fingerprint,
                "wrappers": resumable_states(self.env)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "wrappers" not in state:
            raise FFPruneError("the checkpoint was written by an older ffprune; start the search again without resume")
        written_for = state.get("weights_fingerprint", state.get("weights"))  # "weights": checkpoints before the rename
        if written_for != self.weights_fingerprint:
            raise FFPruneError(f"the checkpoint was written for other model weights ({written_for}, now "
                               f"{self.weights_fingerprint}): the model changed since; start the search again without resume")
        if state.get("surrogate") != self.measured_on:
            raise FFPruneError(f"the checkpoint was written on {describe_measurement(state.get('surrogate'))}, this "
                               f"search runs on {describe_measurement(self.measured_on)}: start it again without resume")
        self.episodes = int(state["episodes"])
        self._wall_offset = float(state["wall_seconds"])
        self._t0 = time.perf_counter()
        self._cost_at_start = dict(self.env.unwrapped.cost)
        self._cost_offset = {axis: int(state.get(axis, 0)) for axis in self._cost_offset}
        self.best = state["best"]
        self.best_by_target = dict(state.get("best_by_target") or  # checkpoints before training across targets: best
                                   ({target_key(self.final_target): self.best} if self.best is not None else {}))
        self.history = list(state["history"])
        load_resumable_states(self.env, state["wrappers"])
