"""Gymnasium ids of ffprune's environments (registered on ``import ffenv``).

Every id takes the :class:`ffenv.envs.prune_env.FFPruneEnv` keyword arguments as overrides, so moving to a real
checkpoint on a GPU is one change::

    gym.make("FFPrune-Llama-v0", model="meta-llama/Llama-2-7b-hf", device="cuda")

and ``gym.make_vec(id, num_envs=K)`` gives :class:`ffenv.vector.FFPruneVectorEnv` (K allocations per step).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from ffenv.config import EnvConfig
from ffenv.errors import FFPruneError

ENTRY_POINT = "ffenv.vector.factory:make_env"
VECTOR_ENTRY_POINT = "ffenv.vector.vector_env:FFPruneVectorEnv"
FAMILIES = {"Llama": "tiny-llama", "Mistral": "tiny-mistral", "OPT": "tiny-opt"}
STRUCTURED_TARGET = 0.3
UNSTRUCTURED_TARGET = 0.7


#: (id suffix, mode, target): the two defaults and the benchmark suite's half-sparsity structured task
VARIANTS = (("", "structured", STRUCTURED_TARGET), ("-Unstructured", "unstructured", UNSTRUCTURED_TARGET),
            ("-Structured50", "structured", 0.5))


def env_ids() -> list[str]:
    """All ids this package registers."""
    return [f"FFPrune-{fam}{suffix}-v0" for suffix, _mode, _target in VARIANTS for fam in FAMILIES]


def register_envs() -> None:
    """Register the structured (30 % and 50 %) and unstructured (70 %) ids of each bundled family (idempotent)."""
    for family, model in FAMILIES.items():
        for suffix, mode, target in VARIANTS:
            env_id = f"FFPrune-{family}{suffix}-v0"
            if env_id in gym.registry:
                continue
            gym.register(id=env_id, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT,
                         kwargs={"model": model, "mode": mode, "target_sparsity": target})


def resolve_config(env_id: str, overrides: dict[str, Any] | None = None) -> EnvConfig:
    """The :class:`~ffenv.config.EnvConfig` ``gym.make(env_id, **overrides)`` builds, without building it.

    The one place where a registered id's keyword arguments and a caller's overrides merge (searches,
    benches, the suite and export all ask here). An unknown id or field is an :class:`FFPruneError`.
    """
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as err:
        raise FFPruneError(f"env_id {env_id!r} is not registered ({err}); ffprune ids: {', '.join(env_ids())}") from None
    return EnvConfig.from_kwargs(**{**spec.kwargs, **(overrides or {})})
