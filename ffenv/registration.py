"""Gymnasium ids of ffprune's environments (registered on ``import ffenv``).

Every id takes the :class:`ffenv.envs.prune_env.FFPruneEnv` keyword arguments as overrides, so moving to a real
checkpoint on a GPU is one change::

    gym.make("FFPrune-Llama-v0", model="meta-llama/Llama-2-7b-hf", device="cuda")

and ``gym.make_vec(id, num_envs=K)`` gives :class:`ffenv.vector.vector_env.FFPruneVectorEnv` (K allocations per step).

Each single-step id has a multi-step twin, ``FFPrune-<Family>-Sequential[-Unstructured|-Structured50]-v0``
(:class:`ffenv.envs.sequential_env.FFPruneSequentialEnv`: one unit per step, AMC style; ``projection="interval"``
by default, ``projection="deferred"`` as a keyword).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from ffenv.config import EnvConfig
from ffenv.envs.sequential_env import PROJECTIONS
from ffenv.errors import FFPruneError

ENTRY_POINT = "ffenv.vector.factory:make_env"
SEQUENTIAL_ENTRY_POINT = "ffenv.envs.sequential_env:FFPruneSequentialEnv"
SEQUENTIAL_KWARGS = {"projection": PROJECTIONS}
"""Keyword arguments of the sequential ids that are not :class:`~ffenv.config.EnvConfig` fields, with their values."""
VECTOR_ENTRY_POINT = "ffenv.vector.vector_env:FFPruneVectorEnv"
FAMILIES = {"Llama": "tiny-llama", "Mistral": "tiny-mistral", "OPT": "tiny-opt"}
STRUCTURED_TARGET = 0.3
UNSTRUCTURED_TARGET = 0.7


#: (id suffix, mode, target): the two defaults and the benchmark suite's half-sparsity structured task
VARIANTS = (("", "structured", STRUCTURED_TARGET), ("-Unstructured", "unstructured", UNSTRUCTURED_TARGET),
            ("-Structured50", "structured", 0.5))


def env_ids(sequential: bool = False) -> list[str]:
    """The single-step ids this package registers (``sequential=True``: their multi-step twins)."""
    kind = "-Sequential" if sequential else ""
    return [f"FFPrune-{fam}{kind}{suffix}-v0" for suffix, _mode, _target in VARIANTS for fam in FAMILIES]


def formulation_of(env_id: str) -> str:
    """``"sequential"`` for the multi-step ids, ``"single-step"`` for every other (an unknown id: one-line error)."""
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as err:
        raise FFPruneError(f"env_id {env_id!r} is not registered ({err})") from None
    return "sequential" if spec.entry_point == SEQUENTIAL_ENTRY_POINT else "single-step"


def twin_env_id(env_id: str) -> str:
    """The other formulation's id of a registered task (``FFPrune-Llama-v0`` <-> ``FFPrune-Llama-Sequential-v0``;
    an unknown id or one without a twin: one-line error)."""
    formulation_of(env_id)  # registered?
    if "-Sequential" in env_id:
        twin = env_id.replace("-Sequential", "", 1)
    else:
        family, _, rest = env_id.removeprefix("FFPrune-").partition("-")
        twin = f"FFPrune-{family}-Sequential-{rest}"
    if twin not in gym.registry:
        raise FFPruneError(f"env_id {env_id!r} has no registered twin (looked for {twin!r})")
    return twin


def register_envs() -> None:
    """Register the structured (30 % and 50 %) and unstructured (70 %) ids of each bundled family, single-step and
    sequential (idempotent)."""
    for family, model in FAMILIES.items():
        for suffix, mode, target in VARIANTS:
            kwargs = {"model": model, "mode": mode, "target_sparsity": target}
            env_id = f"FFPrune-{family}{suffix}-v0"
            if env_id not in gym.registry:
                gym.register(id=env_id, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT, kwargs=kwargs)
            twin = f"FFPrune-{family}-Sequential{suffix}-v0"
            if twin not in gym.registry:
                gym.register(id=twin, entry_point=SEQUENTIAL_ENTRY_POINT, kwargs={**kwargs, "projection": "interval"})


def resolve_config(env_id: str, overrides: dict[str, Any] | None = None) -> EnvConfig:
    """The :class:`~ffenv.config.EnvConfig` ``gym.make(env_id, **overrides)`` builds, without building it.

    The one place where a registered id's keyword arguments and a caller's overrides merge (searches,
    benches, the suite and export all ask here). An unknown id or field is an :class:`FFPruneError`.
    """
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as err:
        ids = env_ids() + env_ids(sequential=True)
        raise FFPruneError(f"env_id {env_id!r} is not registered ({err}); ffprune ids: {', '.join(ids)}") from None
    kwargs = {**spec.kwargs, **(overrides or {})}
    if spec.entry_point == SEQUENTIAL_ENTRY_POINT:  # the sequential env's own keywords are not config fields
        for key, allowed in SEQUENTIAL_KWARGS.items():
            if key in kwargs and kwargs.pop(key) not in allowed:
                raise FFPruneError(f"{key} must be one of {allowed}, got {(overrides or {}).get(key)!r}")
    return EnvConfig.from_kwargs(**kwargs)
