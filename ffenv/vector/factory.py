"""How ``gym.make`` builds an FFPrune environment: the env plus, when ``workers > 0``, Ray's population evaluator.

:func:`make_env` is every registered id's ``entry_point``. The environment (:mod:`ffenv.envs`) never imports
Ray; this layer, above it, hands it :func:`ray_evaluator`, which the env calls at its first population.
"""

from __future__ import annotations

from typing import Any

from ffenv.config import EnvConfig
from ffenv.envs.prune_env import FFPruneEnv
from ffenv.vector.ray_workers import RayEvaluator


def ray_evaluator(config: EnvConfig) -> RayEvaluator:
    """The population evaluator of a configuration with ``workers > 0``: ``workers`` Ray actors at ``ray_address``."""
    return RayEvaluator(config, config.workers, config.ray_address)


def make_env(config: EnvConfig | None = None, **overrides: Any) -> FFPruneEnv:
    """``FFPruneEnv(config, **overrides)`` whose population steps run on Ray actors when ``workers > 0``."""
    return FFPruneEnv(config, evaluator_factory=ray_evaluator, **overrides)
