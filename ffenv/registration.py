"""Gymnasium ids of ffprune's environments (registered on ``import ffenv``).

Every id takes the :class:`ffenv.envs.prune_env.FFPruneEnv` keyword arguments as overrides, so moving to a real
checkpoint on a GPU is one change::

    gym.make("FFPrune-Llama-v0", model="meta-llama/Llama-2-7b-hf", device="cuda")

and ``gym.make_vec(id, num_envs=K)`` gives :class:`ffenv.vector.vector_env.FFPruneVectorEnv` (K allocations per step).

Each single-step id has a multi-step twin, ``FFPrune-<Family>-Sequential[-Unstructured|-Structured50]-v0``
(:class:`ffenv.envs.sequential_env.FFPruneSequentialEnv`: one unit per step, AMC style; ``projection="interval"``
by default, ``projection="deferred"`` as a keyword).

The ids exist in a process once it has imported :mod:`ffenv` (gymnasium has no plugin discovery). A process that
never did — an RLlib env runner, a spawned or forkserver vector-env worker — reaches them through
``gym.make("ffenv:FFPrune-Llama-v0")`` (gymnasium imports the module before the lookup), through
:func:`env_creator` (a picklable creator: unpickling it imports :mod:`ffenv`), or through Ray's
``runtime_env={"worker_process_setup_hook": "ffenv.register_envs"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
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


#: (id suffix, mode, target) of each bundled family's registered tasks: the two defaults and the benchmark suite's
#: half-sparsity structured task
BUNDLED_TASKS = (("", "structured", STRUCTURED_TARGET), ("-Unstructured", "unstructured", UNSTRUCTURED_TARGET),
            ("-Structured50", "structured", 0.5))

REAL_FAMILIES = {"SmolLM2": "smollm2-135m", "Gemma3": "gemma3-270m"}
"""Family of the real-model ids → the named real model (:data:`ffenv.lm.sources.PACKAGED_MODELS`)."""
REAL_TASKS = {"SmolLM2": (("", "structured", 0.2), ("-Unstructured", "unstructured", 0.7)),
                 "Gemma3": (("", "structured", 0.2), ("-Unstructured", "unstructured", 0.7))}
"""(id suffix, mode, target) of each real family. SmolLM2-135M: structured 20 % (the paper's main structured target;
uniform's held-out ppl ≈ 2.2 × dense) and unstructured 70 % (the published heuristics' setting; uniform ≈ 17 × dense,
the same regime as LLaMA-7B's 15 × there): allocation matters at both, and neither collapses. Gemma-3-270M: the same
targets, in the same regimes (uniform's held-out ppl 2.9 × dense structured, 11.4 × unstructured)."""
_WIKITEXT2 = {"corpus": "wikitext2", "seq_len": 256, "reward_windows": 8, "calib_samples": 32, "eval_samples": 32}
REAL_SETTINGS = {"SmolLM2": _WIKITEXT2, "Gemma3": _WIKITEXT2}
"""The real families' evaluation settings: WikiText-2 (reward and calibration on validation, held-out on the first
``eval_samples`` windows of test); reward windows and length chosen by ``ffprune fidelity`` (docs/environment.md)."""


MODE_SUFFIX = {"structured": "", "unstructured": "-Unstructured"}
"""Mode → the suffix of its registered single-step id (``FFPrune-<Family><suffix>-v0``)."""
FAMILY_NAMES: dict[str, tuple[str, str]] = {family.lower(): (family, model)
                                            for family, model in {**FAMILIES, **REAL_FAMILIES}.items()}
"""Every family by the lower-case name task names and ``--families`` use (``llama``, ``opt``, ``smollm2``) → (its
registered ids' family, its model)."""


FAMILY_IDS = {name: fid for name, (fid, _model) in FAMILY_NAMES.items() if fid in FAMILIES}
"""Bundled family name (``llama``, as in task names and ``--families``) → its registered ids' family (``Llama``)."""
FAMILY_MODELS = {name: model for name, (fid, model) in FAMILY_NAMES.items() if fid in FAMILIES}
"""Bundled family name → bundled model (``llama`` → ``tiny-llama``)."""
TASK_TARGETS = {"structured": (STRUCTURED_TARGET, 0.5), "unstructured": (UNSTRUCTURED_TARGET,)}
"""The bundled families' registered targets per mode (the ``core`` suite's tasks: :data:`BUNDLED_TASKS`)."""


def family_id(family: str) -> str:
    """The registered ids' family of a family name (``llama`` → ``Llama``); a one-line error for an unknown one."""
    if family not in FAMILY_IDS:
        raise FFPruneError(f"families must be among {sorted(FAMILY_IDS)}, got {family!r}")
    return FAMILY_IDS[family]


def family_of(family: str) -> tuple[str, str]:
    """(registered ids' family, model) of a family name (``smollm2`` → ``("SmolLM2", "smollm2-135m")``); an unknown
    name is a one-line :class:`FFPruneError` listing them."""
    if family not in FAMILY_NAMES:
        raise FFPruneError(f"families must be among {sorted(FAMILY_NAMES)}, got {family!r}")
    return FAMILY_NAMES[family]


def family_env_id(family: str, mode: str) -> str:
    """The registered single-step id of a family in a mode (``llama``, ``unstructured`` →
    ``FFPrune-Llama-Unstructured-v0``); an unknown family or mode is a one-line :class:`FFPruneError`."""
    fid = family_of(family)[0]
    if mode not in MODE_SUFFIX:
        raise FFPruneError(f"modes must be among {list(MODE_SUFFIX)}, got {mode!r}")
    return f"FFPrune-{fid}{MODE_SUFFIX[mode]}-v0"


def env_ids(sequential: bool = False, real: bool = False) -> list[str]:
    """The single-step ids this package registers on its bundled tiny models (``sequential=True``: their multi-step
    twins; ``real=True``: the ids on real pretrained models, fetched on first use, instead)."""
    kind = "-Sequential" if sequential else ""
    if real:
        return [f"FFPrune-{fam}{kind}{suffix}-v0" for fam, tasks in REAL_TASKS.items()
                for suffix, _mode, _target in tasks]
    return [f"FFPrune-{fam}{kind}{suffix}-v0" for suffix, _mode, _target in BUNDLED_TASKS for fam in FAMILIES]


def all_env_ids() -> list[str]:
    """Every id this package registers: bundled and real, single-step and sequential."""
    return [env_id for real in (False, True) for seq in (False, True) for env_id in env_ids(seq, real)]


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


def _tasks() -> list[tuple[str, str, dict[str, Any]]]:
    """(family, id suffix, gym.make keyword arguments) of every single-step id."""
    tasks = [(family, suffix, {"model": model, "mode": mode, "target_sparsity": target})
             for family, model in FAMILIES.items() for suffix, mode, target in BUNDLED_TASKS]
    tasks += [(family, suffix, {"model": model, "mode": mode, "target_sparsity": target, **REAL_SETTINGS[family]})
              for family, model in REAL_FAMILIES.items() for suffix, mode, target in REAL_TASKS[family]]
    return tasks


def register_envs() -> None:
    """Register the structured (30 % and 50 %) and unstructured (70 %) ids of each bundled family and the
    :data:`REAL_TASKS` of each real family, single-step and sequential (idempotent; nothing is loaded or fetched)."""
    for family, suffix, kwargs in _tasks():
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
        ids = all_env_ids()
        raise FFPruneError(f"env_id {env_id!r} is not registered ({err}); ffprune ids: {', '.join(ids)}") from None
    kwargs = {**spec.kwargs, **(overrides or {})}
    if spec.entry_point == SEQUENTIAL_ENTRY_POINT:  # the sequential env's own keywords are not config fields
        for key, allowed in SEQUENTIAL_KWARGS.items():
            if key in kwargs and kwargs.pop(key) not in allowed:
                raise FFPruneError(f"{key} must be one of {allowed}, got {(overrides or {}).get(key)!r}")
    return EnvConfig.from_kwargs(**kwargs)


class EnvCreator:
    """A picklable maker of one registered ffprune env, for processes that never imported :mod:`ffenv`.

    Build it with :func:`env_creator`. Calling it returns ``gym.make(env_id, **{**kwargs, **env_config})``:

    * with no argument it is a gymnasium / SB3 ``env_fn`` (``AsyncVectorEnv``, ``SubprocVecEnv``, any start method);
    * with one mapping it is an RLlib env creator (``ray.tune.register_env(name, creator)``): RLlib's
      ``env_config`` (an ``EnvContext``, whose ``worker_index`` and friends are not env keywords) overrides
      the keywords given here.

    It pickles by reference to this class, so unpickling it in a worker imports :mod:`ffenv`, which registers
    the ids before ``gym.make`` looks one up. A ``num_envs`` key (what RLlib passes in its
    ``gym_env_vectorize_mode="vector_entry_point"`` mode) is a one-line :class:`~ffenv.errors.FFPruneError`:
    the creator makes one env and leaves vectorising to the caller (RLlib's default ``"sync"`` mode).
    """

    def __init__(self, env_id: str, kwargs: Mapping[str, Any]) -> None:
        self.env_id = env_id
        self.kwargs = dict(kwargs)

    def __call__(self, env_config: Mapping[str, Any] | None = None) -> gym.Env:
        """``gym.make(env_id, **kwargs)`` with ``env_config`` (if given) overriding ``kwargs``."""
        if env_config is not None and not isinstance(env_config, Mapping):
            raise FFPruneError(f"env_config must be a mapping of env keywords (RLlib's env_config), "
                               f"got {type(env_config).__name__}")
        kwargs = {**self.kwargs, **dict(env_config or {})}
        if "num_envs" in kwargs:
            raise FFPruneError(f"num_envs={kwargs['num_envs']!r}: env_creator({self.env_id!r}) makes one env; vectorise it "
                               "with gymnasium/SB3 vector envs or RLlib's gym_env_vectorize_mode='sync' (its default) "
                               "or 'async', not 'vector_entry_point'")
        return gym.make(self.env_id, **kwargs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnvCreator) and (self.env_id, self.kwargs) == (other.env_id, other.kwargs)

    __hash__ = None  # type: ignore[assignment]  (mutable kwargs)

    def __repr__(self) -> str:
        args = "".join(f", {key}={value!r}" for key, value in self.kwargs.items())
        return f"ffenv.env_creator({self.env_id!r}{args})"


def env_creator(env_id: str, **kwargs: Any) -> EnvCreator:
    """A picklable creator of ``gym.make(env_id, **kwargs)`` that works in processes that never imported :mod:`ffenv`.

    ``env_id`` is a registered ffprune id (an ``"ffenv:"`` prefix is accepted and dropped) and ``kwargs`` its
    overrides, both checked here, in the calling process (an unknown id, field or value, or an id whose entry
    point is not ffprune's, is a one-line :class:`~ffenv.errors.FFPruneError` now rather than a failure in a
    remote worker)::

        SubprocVecEnv([ffenv.env_creator("FFPrune-Llama-v0")] * 4)            # SB3, forkserver or spawn
        AsyncVectorEnv([ffenv.env_creator("FFPrune-Llama-v0")] * 4, context="spawn",
                       autoreset_mode=AutoresetMode.SAME_STEP)                  # gymnasium
        register_env("ffprune-llama", ffenv.env_creator("FFPrune-Llama-v0"))   # RLlib: env_config overrides kwargs

    See :class:`EnvCreator` for what a call does.
    """
    env_id = env_id.removeprefix("ffenv:")
    resolve_config(env_id)  # registered? (the error lists the ids)
    entry_point = gym.spec(env_id).entry_point
    if entry_point not in (ENTRY_POINT, SEQUENTIAL_ENTRY_POINT):
        raise FFPruneError(f"env_id {env_id!r} is not an ffprune id (its entry point is {entry_point!r})")
    resolve_config(env_id, kwargs)
    return EnvCreator(env_id, kwargs)
