"""Population evaluation: many allocations scored in one call, in-process or on workers.

An :class:`Evaluator` scores a batch of actions, each at its own target sparsity and fidelity (reward
windows), and returns what :meth:`ffenv.envs.prune_env.FFPruneEnv.score` returns for each, in order.
:class:`LocalEvaluator` runs them one after another in this process;
:class:`ffenv.vector.ray_workers.RayEvaluator` spreads them over Ray actors (one model replica each), handed
to the env by the layer above (:mod:`ffenv.vector.factory`). Every evaluation is deterministic given its action,
target and fidelity, so the results do not depend on how a batch is split.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker

from ffenv.errors import FFPruneError


class PopulationEnv(abc.ABC):
    """An environment (or wrapper) that runs ``n`` single-step episodes at once.

    ``reset_many(n, seed=None, options=None) -> (obs[n], infos)`` starts them; ``step_many(actions[n])
    -> (obs[n], rewards[n], terminated[n], truncated[n], infos)`` runs them. The results are those of ``n``
    ``reset`` + ``step`` pairs in order; only where the evaluations run may differ.
    """

    @abc.abstractmethod
    def reset_many(self, n: int, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, list[dict]]:
        """Start ``n`` episodes; their observations and reset infos."""

    @abc.abstractmethod
    def step_many(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """Run the episodes of the last :meth:`reset_many`, one action each."""


PASS_THROUGH: tuple[type[gym.Wrapper], ...] = (OrderEnforcing, PassiveEnvChecker)
"""What ``gym.make`` adds around an env; neither changes an episode, so a population step may pass them."""


def inner_population_env(env: Any) -> PopulationEnv:
    """The first :class:`PopulationEnv` inside ``env`` (a wrapper's ``env``), past ``gym.make``'s checkers.

    Any other wrapper in between would be bypassed by a population step, so it is refused.
    """
    inner = env.env
    while not isinstance(inner, PopulationEnv):
        if not isinstance(inner, PASS_THROUGH):
            raise FFPruneError(f"population steps (reset_many / step_many) would bypass {type(inner).__name__}; "
                               "wrap FFPruneEnv only with CurriculumWrapper / SearchAccounting for them")
        inner = inner.env
    return inner


class Evaluator(Protocol):
    """Scores a population of actions (see the module docstring)."""

    def score_many(self, actions: np.ndarray, targets: Sequence[float],
                   windows: Sequence[int]) -> list[tuple[float, dict[str, Any]]]:
        """``[(reward, info), ...]`` for ``actions[i]`` at ``targets[i]`` on ``windows[i]`` reward windows."""
        ...

    def close(self) -> None:
        """Release workers (a no-op in-process)."""
        ...


class LocalEvaluator:
    """Scores one action after another with an environment's own :meth:`~ffenv.envs.prune_env.FFPruneEnv.score`."""

    def __init__(self, env: Any) -> None:
        self.env = env

    def score_many(self, actions: np.ndarray, targets: Sequence[float],
                   windows: Sequence[int]) -> list[tuple[float, dict[str, Any]]]:
        return [self.env.score(a, target_sparsity=t, reward_windows=w) for a, t, w in zip(actions, targets, windows)]

    def close(self) -> None:
        pass
