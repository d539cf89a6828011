"""The registry of search methods: one entry per name, read by ``run_search``, ``ffprune bench`` and the CLI.

A :class:`SearchMethod` says how to run a method on a search environment (a
:class:`~ffenv.wrappers.SearchAccounting`, curriculum inside when the method uses one), which env
modes it supports, and whether it is a one-evaluation heuristic. Adding a method is one
:func:`register` call plus its function::

    def my_search(env, seed, run, **params):          # env: SearchAccounting; run: RunContext
        rng = np.random.default_rng(seed)
        while not env.budget_spent:
            env.reset(seed=seed)
            env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        return {}

    register(SearchMethod("my-search", my_search, kind="search", description="uniform random actions"))

Any stable-baselines3 algorithm for Box actions that is not registered by name (A2C, TD3, ...) is
found by :func:`get_method` too.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ffenv.config import MODES
from ffenv.errors import FFPruneError
from ffenv.io import beside
from ffenv.wrappers import SearchAccounting
from ffprune.agents.methods.amc import AMCDDPG, WARMUP_FRACTION, amc_settings
from ffprune.agents.methods.fastforward import FastForwardConfig, run_fastforward, save_policy
from ffprune.agents.methods.sb3 import NOISE_SETTING, algorithm_class, run_sb3
from ffprune.baselines.heuristics import (
    alphapruning_allocation,
    dlp_allocation,
    flap_allocation,
    owl_allocation,
    uniform_allocation,
)
from ffprune.baselines.search import (
    atp_search,
    cmaes_search,
    evolution,
    heuristic,
    random_search,
    tpe_search,
    uniform_split,
)

log = logging.getLogger(__name__)

KINDS = ("rl", "search", "heuristic")
FORMULATIONS = ("single-step", "sequential")
"""One action for the whole allocation (``FFPrune-*-v0``), or one unit per step (``FFPrune-*-Sequential-*-v0``)."""


@dataclass(frozen=True)
class RunContext:
    """What ``run_search`` gives every method besides the env, the seed and the method's own parameters."""

    checkpoint: Path | None = None
    """File the method may checkpoint to after each update (``None``: no checkpoints)."""
    resume: bool = False
    """Continue from ``checkpoint`` if it exists."""
    warm_start: Path | None = None
    """A policy file to start from (only methods with ``warm_start=True``)."""
    out: Path | None = None
    """The result file; artefacts (e.g. the final policy) go beside it."""
    logdir: Path | None = None
    """The run's TensorBoard folder, for a method's own learning statistics."""
    log: Callable[[dict[str, float]], None] | None = None
    """Receives learning statistics after each update (TensorBoard ``learning/*``)."""
    meta: dict[str, Any] | None = None
    """Provenance stored with saved artefacts (env id, target, seed)."""


@dataclass(frozen=True)
class SearchMethod:
    """One search method of the benchmark."""

    name: str
    """What ``--agent`` / ``--methods`` call it (lower case)."""
    run: Callable[..., dict[str, Any]]
    """``run(env, seed, run_context, **params) -> extra result fields`` (``agent_config``, ``agent_stats``...)."""
    kind: str
    """``"rl"`` (learns under the curriculum), ``"search"`` (a baseline search with the same budget) or
    ``"heuristic"`` (no search: one evaluation)."""
    modes: tuple[str, ...] = MODES
    """Env modes it supports."""
    formulations: tuple[str, ...] = ("single-step",)
    """The env formulations it can search (:data:`FORMULATIONS`): the SB3 agents step either; FastForward, the
    population searches and the heuristics need the whole allocation in one action."""
    warm_start: bool = False
    """Whether it can start from a policy file."""
    uses_curriculum: bool | None = None
    """Whether it runs under the curriculum; ``None``: as its kind says (RL agents do, baselines do not)."""
    description: str = ""
    """One line for ``--help`` and the docs."""
    deterministic: bool | None = None
    """Whether every seed gives the same result (a fixed sweep: ATP, uniform-split); ``None``: as its kind says
    (heuristics are). A benchmark runs a deterministic method once, as seed 0, whatever the seeds asked for."""
    requires: tuple[str, ...] = ()
    """Optional packages it imports (``cma``, ``optuna``: the extras of the same name). A method whose packages are
    not installed is left out of the defaults (:func:`methods_for`) and stops with an install hint when asked for."""

    settings: Callable[[dict[str, Any]], None] | None = None
    """The method's settings schema: called with the keyword arguments a run would get, it raises a one-line
    :class:`FFPruneError` for a setting the method does not have or a value out of its range (``None``: the method
    checks its settings when its first cell runs). :meth:`check_settings` calls it; tunes and suite variants validate
    through it before any search."""

    def check_settings(self, kwargs: dict[str, Any], where: str = "") -> None:
        """Refuse (one line, prefixed with ``where``) settings the method does not have, before any search."""
        if self.settings is None:
            return
        try:
            self.settings(dict(kwargs))
        except (FFPruneError, TypeError, ValueError) as err:  # a range, or a value of the wrong type ("x" > 0)
            raise FFPruneError(f"{where}{err}") from None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FFPruneError(f"kind must be one of {KINDS}, got {self.kind!r}")
        unknown = [f for f in self.formulations if f not in FORMULATIONS]
        if unknown or not self.formulations:
            raise FFPruneError(f"formulations must be a non-empty subset of {FORMULATIONS}, got {self.formulations!r}")

    @property
    def installed(self) -> bool:
        """Whether the packages it :attr:`requires` can be imported."""
        return all(importlib.util.find_spec(package) is not None for package in self.requires)

    @property
    def heuristic(self) -> bool:
        """One evaluation, no search (its budget is 1 whatever the others get)."""
        return self.kind == "heuristic"

    @property
    def seeded(self) -> bool:
        """Whether its seeds give different results (a benchmark runs its seeds ``0..K-1``; otherwise seed 0 once)."""
        return not (self.heuristic if self.deterministic is None else self.deterministic)

    @property
    def curriculum(self) -> bool:
        """Whether it runs under the curriculum (RL agents, unless they say otherwise); baselines are defined at the
        final target."""
        return self.kind == "rl" if self.uses_curriculum is None else self.uses_curriculum


METHODS: dict[str, SearchMethod] = {}


def register(method: SearchMethod) -> SearchMethod:
    """Add a method to :data:`METHODS` (a name can be registered once); a heuristic without a settings schema gets its
    allocation's keywords as one."""
    if method.name in METHODS:
        raise FFPruneError(f"search method {method.name!r} is already registered")
    names = getattr(method.run, "settings", None)
    if method.settings is None and names is not None:
        method = dataclasses.replace(method, settings=_named_settings(method.name, names))
    METHODS[method.name] = method
    return method


def get_method(name: str) -> SearchMethod:
    """The registered method ``name`` (case-insensitive), or any other stable-baselines3 algorithm for Box actions."""
    key = name.lower()
    if key in METHODS:
        return METHODS[key]
    try:
        cls = algorithm_class(key)
    except FFPruneError as err:
        raise FFPruneError(f"agent must be one of {list(METHODS)} or a stable-baselines3 algorithm; {err}") from None
    return SearchMethod(key, _sb3(cls.__name__), kind="rl", formulations=FORMULATIONS,
                        description=f"stable-baselines3 {cls.__name__}", settings=sb3_settings(cls.__name__))


def methods_for(mode: str, formulation: str = "single-step") -> list[str]:
    """Every registered method that supports ``mode`` and ``formulation`` and whose optional packages are installed,
    in registration order (``ffprune bench``'s and the suite's default; a method left out for a missing package is
    logged once)."""
    names = []
    for m in METHODS.values():
        if mode in m.modes and formulation in m.formulations:
            if m.installed:
                names.append(m.name)
            elif m.name not in _warned_missing:
                _warned_missing.add(m.name)
                log.warning("%s left out: it needs %s (pip install 'ffprune[%s]')", m.name, ", ".join(m.requires),
                            ",".join(m.requires))
    return names


_warned_missing: set[str] = set()


# ---------------------------------------------------------------------------- adapters to the run signature
def _fastforward(env: SearchAccounting, seed: int, run: RunContext, **params: Any) -> dict[str, Any]:
    cfg = FastForwardConfig(**params)
    result = run_fastforward(env, seed=seed, config=cfg, warm_start=run.warm_start, checkpoint=run.checkpoint,
                             resume=run.resume, log=run.log)
    extra: dict[str, Any] = {}
    if run.out is not None:
        policy_file = beside(run.out, ".policy.pt")
        save_policy(result["policy"], policy_file, run.meta)
        extra["policy_file"] = str(policy_file)
    return {**extra, "agent_config": result["config"], "agent_stats": result["stats"]}


def _sb3(algo: str) -> Callable[..., dict[str, Any]]:
    def run_algo(env: SearchAccounting, seed: int, run: RunContext, **params: Any) -> dict[str, Any]:
        result = run_sb3(env, algo, seed=seed, checkpoint=run.checkpoint, resume=run.resume, logdir=run.logdir, **params)
        return {"agent_config": result["config"]}

    return run_algo


def _amc_ddpg(env: SearchAccounting, seed: int, run: RunContext, warmup_fraction: float = WARMUP_FRACTION,
              **params: Any) -> dict[str, Any]:
    settings = {**amc_settings(env, warmup_fraction), **params}
    result = run_sb3(env, AMCDDPG, seed=seed, checkpoint=run.checkpoint, resume=run.resume, logdir=run.logdir, **settings)
    return {"agent_config": {**result["config"], "warmup_fraction": warmup_fraction}}


def _baseline(search: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def run_baseline(env: SearchAccounting, seed: int, run: RunContext, **params: Any) -> dict[str, Any]:
        return {"agent_stats": search(env, seed, **params)}

    return run_baseline


# ---------------------------------------------------------------------------- settings schemas
def _fastforward_settings(kwargs: dict[str, Any]) -> None:
    """FastForward's settings: :class:`~ffprune.agents.methods.fastforward.FastForwardConfig`'s fields, ranges checked."""
    known = [f for f in FastForwardConfig.__dataclass_fields__ if f != "extra"]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise FFPruneError(f"{unknown} are not fastforward settings; settings: {known}")
    FastForwardConfig(**kwargs)


SB3_FIXED = {"self", "policy", "env", "args", "kwargs", "seed", "device", "verbose", "_init_setup_model"}
"""An SB3 algorithm's constructor parameters that ``run_sb3`` sets itself."""


def sb3_settings(algo: str) -> Callable[[dict[str, Any]], None]:
    """An SB3 algorithm's settings schema: its constructor's parameters (less :data:`SB3_FIXED`), ``n_envs``, and
    ``action_noise_std`` where it has ``action_noise``."""
    def check(kwargs: dict[str, Any]) -> None:
        cls = algorithm_class(algo)
        params = set(inspect.signature(cls.__init__).parameters)
        known = sorted(params - SB3_FIXED | {"n_envs"} | ({NOISE_SETTING} if "action_noise" in params else set()))
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise FFPruneError(f"{unknown} are not {cls.__name__} settings; settings: {known}")

    return check


def _named_settings(method: str, names: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def check(kwargs: dict[str, Any]) -> None:
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise FFPruneError(f"{unknown} are not {method} settings; settings: {list(names)}")

    return check


def _heuristic(allocate: Callable[..., Any]) -> Callable[..., dict[str, Any]]:
    def run_heuristic(env: SearchAccounting, seed: int, run: RunContext, **params: Any) -> dict[str, Any]:
        return {"agent_stats": heuristic(env, allocate, seed, **params)}

    run_heuristic.settings = tuple(inspect.signature(allocate).parameters)[1:]  # type: ignore[attr-defined]
    return run_heuristic


# ---------------------------------------------------------------------------- the benchmark's methods
register(SearchMethod("fastforward", _fastforward, "rl", warm_start=True, settings=_fastforward_settings,
                      description="FastForward: single-step PPO on the whole allocation (agents/fastforward.py)"))
register(SearchMethod("ppo", _sb3("PPO"), "rl", formulations=FORMULATIONS, description="stable-baselines3 PPO",
                      settings=sb3_settings("PPO")))
register(SearchMethod("sac", _sb3("SAC"), "rl", formulations=FORMULATIONS, description="stable-baselines3 SAC",
                      settings=sb3_settings("SAC")))
register(SearchMethod("amc-ddpg", _amc_ddpg, "rl", formulations=("sequential",), uses_curriculum=False,
                      description="AMC's DDPG, one unit per step (He et al.; SB3 DDPG, agents/methods/amc.py)"))
register(SearchMethod("random", _baseline(random_search), "search", description="uniform random actions"))
register(SearchMethod("evolution", _baseline(evolution), "search",
                      description="(1+lambda) evolution from the uniform allocation (EvoPress-style)"))
register(SearchMethod("uniform-split", _baseline(uniform_split), "search", modes=("structured",), deterministic=True,
                      description="uniform keep ratio, attention/FFN split swept over heads kept"))
register(SearchMethod("uniform", _heuristic(uniform_allocation), "heuristic", description="same sparsity everywhere"))
register(SearchMethod("owl", _heuristic(owl_allocation), "heuristic", description="OWL outlier-weighted (Yin et al.)"))
register(SearchMethod("alphapruning", _heuristic(alphapruning_allocation), "heuristic",
                      description="AlphaPruning heavy-tail alpha (Lu et al.)"))
register(SearchMethod("flap", _heuristic(flap_allocation), "heuristic", modes=("structured",),
                      description="FLAP fluctuation, global ranking (An et al.)"))
register(SearchMethod("dlp", _heuristic(dlp_allocation), "heuristic",
                      description="DLP median weight-activation score per block (Chen et al.)"))
register(SearchMethod("atp", _baseline(atp_search), "search", deterministic=True,
                      description="ATP sparsity rising with depth, common difference from a few trials (Huang et al.)"))
register(SearchMethod("cmaes", _baseline(cmaes_search), "search", requires=("cma",),
                      description="CMA-ES from the uniform allocation (Hansen; pycma, needs ffprune[cma])"))
register(SearchMethod("tpe", _baseline(tpe_search), "search", requires=("optuna",),
                      description="Optuna's TPE, batched with a constant liar (Bergstra et al.; needs ffprune[optuna])"))
