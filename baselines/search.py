"""Non-RL baselines, run through the same :class:`~ffenv.wrappers.SearchAccounting` as the agents.

* :func:`heuristic` — one evaluation of a heuristic allocation of :mod:`ffprune.baselines.heuristics`
  (``uniform``, ``owl``, ``alphapruning``, ``flap``): no search, one evaluation to know its reward.
* ``uniform-split`` — the same keep ratio in every layer, but the attention / FFN split tuned by a 1-D
  sweep over the heads (KV groups) kept per layer: for ``h = 0..G`` the attention keep ratio is ``h/G``
  and the FFN ratio is whatever meets the budget; infeasible ``h`` are skipped. Its ``G + 1``
  evaluations are its search cost (structured mode only).
* ``random`` — actions uniform in ``[-1, 1]``, the best one kept.
* ``atp`` — ATP's arithmetic progression of sparsity over depth (Huang et al., ICML 2025): its common
  difference ``β`` tried on a grid of ``trials`` values over ``(0, β_max]`` (the range the keep bounds allow),
  the best kept; each trial is one evaluation of the search's budget (both modes).
* ``evolution`` — a (1+λ) evolutionary search on the action in the spirit of EvoPress (Sieberling et
  al., ICML 2025): start from the uniform allocation, each generation mutates the parent with Gaussian
  noise (``sigma``) into ``lam`` offspring and keeps the best of parent and offspring.
* ``cmaes`` — CMA-ES (Hansen & Ostermeier, Evol. Comput. 2001; Hansen, "The CMA Evolution Strategy: A
  Tutorial", 2016) with pycma: mean at the uniform allocation, step size ``sigma0``, pycma's default
  population ``4 + ⌊3 ln n⌋``, the action box ``[-1, 1]^n`` kept by pycma's bound handling; one population per
  generation (optional dependency ``ffprune[cma]``).
* ``tpe`` — the Tree-structured Parzen Estimator (Bergstra et al., NeurIPS 2011) of Optuna (Akiba et al., KDD
  2019): one float per unit in ``[-1, 1]``, the uniform allocation as the first trial, then ``batch`` trials
  per population (multivariate TPE, constant liar for the trials of a batch; optional dependency
  ``ffprune[optuna]``).

Populations (the sweep, a batch of random actions, the offspring, a CMA-ES generation, a TPE batch) are evaluated
with one ``reset_many`` / ``step_many`` each: in-process, or spread over Ray workers (``workers=N``).

Each function takes the search's :class:`~ffenv.wrappers.SearchAccounting` (budget, best allocation), a
seed and its own parameters, stops when the budget is spent and returns its statistics; the best
allocation is in ``env.best``. :mod:`ffprune.agents.methods.registry` registers them by name.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ffenv.errors import FFPruneError, non_negative_int, positive_int
from ffenv.wrappers import SearchAccounting
from ffprune.baselines.allocators import atp_betas
from ffprune.baselines.heuristics import atp_allocation, atp_beta_range, within_keep_bounds


def heuristic(env: SearchAccounting, allocate: Callable[..., Any], seed: int = 0,
              **params: Any) -> dict[str, Any]:
    """One evaluation of the allocation ``allocate(env, **params)`` (a :mod:`~ffprune.baselines.heuristics` function;
    it returns per-unit sparsities, or ``(sparsities, info)`` whose ``info`` goes into the result)."""
    base = env.unwrapped
    allocated = allocate(env, **params)
    sparsity, info = allocated if isinstance(allocated, tuple) else (allocated, {})
    runnable = within_keep_bounds(env, sparsity)
    env.reset(seed=seed)
    env.step(base.action_from_sparsities(runnable))
    return {"heuristic_sparsity": sparsity.tolist(), "params": params,
            "projected_to_keep_bounds": bool(not np.allclose(runnable, sparsity, rtol=0, atol=1e-12)), **info}


def uniform_split(env: SearchAccounting, seed: int = 0) -> dict[str, Any]:
    """Sweep heads kept per layer; the FFN keep ratio fills the budget (structured envs only)."""
    base = env.unwrapped
    cfg = base.config
    if cfg.mode != "structured":
        raise FFPruneError("uniform-split needs a structured env (attention and FFN units)")
    kinds = np.array([u.kind for u in base.units])
    attn, ffn = kinds == "attn", kinds == "ffn"
    groups = base.units[int(np.flatnonzero(attn)[0])].count
    target_keep = (1.0 - env.final_target) * base.sizes.sum()
    splits = []
    for h in range(groups, -1, -1):
        a_keep = h / groups
        f_keep = (target_keep - a_keep * base.sizes[attn].sum()) / base.sizes[ffn].sum()
        if cfg.min_keep <= a_keep <= cfg.max_keep and cfg.min_keep <= f_keep <= cfg.max_keep:
            splits.append((h, a_keep, float(f_keep)))
    splits = splits[: env.budget - env.episodes]
    actions = np.stack([base.action_from_sparsities(np.where(attn, 1.0 - a, 1.0 - f)) for _, a, f in splits])
    env.reset_many(len(splits), seed=seed)
    _, rewards, _, _, _ = env.step_many(actions)  # the whole sweep is one population
    tried = [{"heads_kept": h, "attn_keep": a, "ffn_keep": f, "reward": float(r)} for (h, a, f), r in zip(splits, rewards)]
    return {"sweep": tried}


def atp_search(env: SearchAccounting, seed: int = 0, trials: int = 8) -> dict[str, Any]:
    """ATP: the common difference ``β`` of :func:`~ffprune.baselines.heuristics.atp_allocation` searched on the reward.

    The grid is :func:`~ffprune.baselines.allocators.atp_betas`: ``n = min(trials, budget left)`` evenly spaced
    values over ``(0, β_max]``, ``β_max`` = :func:`~ffprune.baselines.heuristics.atp_beta_range` (a smaller budget
    gives a coarser grid over the same range, not a truncated one). The ``n`` allocations are one population
    (``n`` evaluations on the reward split, counted by the accounting, which keeps the best); then it stops,
    whatever budget is left. The paper (Sec. 3.4) grids with a step of 0.002 and picks the β of least
    WikiText-2 perplexity; here the reward split plays that role. Deterministic: ``seed`` only seeds the resets.
    """
    trials = positive_int("trials", trials)
    left = env.budget - env.episodes
    if left < 1:
        raise FFPruneError(f"atp needs at least one evaluation of budget left, got {left}")
    base = env.unwrapped
    beta_max = atp_beta_range(env)
    if beta_max <= 0:
        raise FFPruneError(f"atp needs room for sparsity to rise with depth: target {base.target_sparsity} sits on a keep "
                           f"bound ([{base.config.min_keep}, {base.config.max_keep}]), so only beta = 0 (uniform) fits")
    betas = atp_betas(beta_max, min(trials, left))
    actions = np.stack([base.action_from_sparsities(atp_allocation(env, float(b))) for b in betas])
    env.reset_many(len(betas), seed=seed)
    _, rewards, _, _, _ = env.step_many(actions)  # the whole grid is one population
    best = int(np.argmax(rewards))  # the first of the best, as the accounting keeps it
    return {"trials": [{"beta": float(b), "reward": float(r)} for b, r in zip(betas, rewards)],
            "trials_used": len(betas), "beta_max": beta_max, "best_beta": float(betas[best])}


def random_search(env: SearchAccounting, seed: int = 0, population: int = 16) -> dict[str, Any]:
    """Uniform random actions until the budget is spent, evaluated ``population`` at a time."""
    population = positive_int("population", population)
    rng = np.random.default_rng(seed)
    while not env.budget_spent:
        n = min(population, env.budget - env.episodes)
        actions = np.stack([rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32) for _ in range(n)])
        env.reset_many(n, seed=seed)
        env.step_many(actions)
    return {"population": population}


def evolution(env: SearchAccounting, seed: int = 0, lam: int = 4, sigma: float = 0.3) -> dict[str, Any]:
    """(1+λ) evolutionary search from the uniform allocation."""
    if lam < 1 or sigma <= 0:
        raise FFPruneError(f"lam must be >= 1 and sigma > 0, got lam={lam}, sigma={sigma}")
    rng = np.random.default_rng(seed)
    parent = np.zeros(env.action_space.shape, np.float32)
    env.reset(seed=seed)
    _, parent_reward, _, _, _ = env.step(parent)
    generations = 0
    while not env.budget_spent:
        n = min(lam, env.budget - env.episodes)
        children = np.stack([np.clip(parent + rng.normal(0.0, sigma, parent.shape), -1.0, 1.0).astype(np.float32)
                             for _ in range(n)])
        env.reset_many(n, seed=seed)
        _, rewards, _, _, _ = env.step_many(children)  # the offspring are one population
        best = int(np.argmax(rewards))  # the first of the best, as a sequential loop with ">" would keep
        if rewards[best] >= parent_reward:
            parent, parent_reward = children[best], rewards[best]
        generations += 1
    return {"generations": generations, "lam": lam, "sigma": sigma}


def _population(env: SearchAccounting, actions: np.ndarray, seed: int) -> np.ndarray:
    """Evaluate ``actions`` as one population (one ``reset_many`` / ``step_many``); their rewards."""
    env.reset_many(len(actions), seed=seed)
    _, rewards, _, _, _ = env.step_many(actions)
    return np.asarray(rewards, np.float64)


def _seed_below(seed: int, bound: int, method: str) -> int:
    """``seed`` checked to be an integer in ``[0, bound)`` (what the optimiser's own seeding accepts)."""
    seed = non_negative_int("seed", seed)
    if seed >= bound:
        raise FFPruneError(f"seed must be in [0, {bound - 1}] for {method}, got {seed}")
    return seed


def _optional(package: str, method: str) -> Any:
    """The optional ``package`` a method needs, imported now; a one-line install hint when it is missing."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise FFPruneError(f"{method} needs the {package!r} package: pip install 'ffprune[{package}]'") from None


def cmaes_search(env: SearchAccounting, seed: int = 0, popsize: int | None = None,
                 sigma0: float = 0.3) -> dict[str, Any]:
    """CMA-ES on the raw action (Hansen & Ostermeier 2001; Hansen's tutorial, arXiv:1604.00772), with pycma.

    The search distribution starts with its mean at the uniform allocation (action zeros, where
    :func:`evolution` starts) and step size ``sigma0`` (default 0.3, evolution's mutation scale; pycma
    adapts it). The box ``[-1, 1]^n`` is kept by pycma's bound handling (``bounds=[-1, 1]``, its default
    ``BoundTransform``: every solution it asks for is inside the box, nothing is clipped here); the env's
    projector then meets the budget, as for :func:`random_search`. ``popsize`` defaults to pycma's
    ``4 + ⌊3 ln n⌋`` (``n`` = units). Each generation is one population (one ``reset_many`` /
    ``step_many``, so Ray workers evaluate it) and is told ``-reward`` (CMA-ES minimises). pycma's own
    termination criteria are not used: it runs until the budget is spent, and the last generation is cut to
    the budget left (that partial generation is evaluated, not told).

    Same seed, same search: pycma is seeded with its ``seed`` option (``seed + 1``: pycma reads 0 as "seed
    from the clock"); pycma draws from NumPy's global generator, whose state is restored afterwards.
    Needs the optional ``cma`` package (``pip install 'ffprune[cma]'``). Returns ``generations`` (told),
    ``popsize``, ``sigma0``, ``sigma`` (the step size at the end), ``last_generation`` (solutions evaluated
    in the last, possibly cut, generation) and ``termination`` (pycma's criteria met at the end, if any).
    """
    if popsize is not None and (isinstance(popsize, bool) or not isinstance(popsize, (int, np.integer)) or popsize < 2):
        raise FFPruneError(f"popsize must be an integer >= 2 (or None: pycma's default), got {popsize!r}")
    if isinstance(sigma0, bool) or not isinstance(sigma0, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(sigma0) and sigma0 > 0):
        raise FFPruneError(f"sigma0 must be a finite number > 0, got {sigma0!r}")
    seed = _seed_below(seed, 2**32 - 1, "cmaes")
    cma = _optional("cma", "cmaes")
    shape = env.action_space.shape
    n = int(np.prod(shape))
    options = {"seed": seed + 1, "bounds": [-1.0, 1.0], "verbose": -9, "verb_log": 0, "verb_disp": 0}
    if popsize is not None:
        options["popsize"] = int(popsize)
    global_state = np.random.get_state()  # pycma seeds and draws from the global generator
    try:
        es = cma.CMAEvolutionStrategy(np.zeros(n), float(sigma0), options)
        generations, last = 0, 0
        while not env.budget_spent:
            solutions = es.ask()
            last = min(len(solutions), env.budget - env.episodes)
            actions = np.stack([np.asarray(x, np.float32).reshape(shape) for x in solutions[:last]])
            rewards = _population(env, actions, seed)
            if last == len(solutions):
                es.tell(solutions, [-float(r) for r in rewards])
                generations += 1
        termination = sorted(es.stop())
    finally:
        np.random.set_state(global_state)
    return {"generations": generations, "popsize": int(es.popsize), "sigma0": float(sigma0), "sigma": float(es.sigma),
            "last_generation": last, "termination": termination}


def tpe_search(env: SearchAccounting, seed: int = 0, batch: int = 8, n_startup_trials: int = 10,
               multivariate: bool = True) -> dict[str, Any]:
    """Optuna's TPE on the raw action (Bergstra et al., NeurIPS 2011; Optuna: Akiba et al., KDD 2019).

    One float parameter per unit in ``[-1, 1]`` (the env's projector meets the budget, as for
    :func:`random_search`), reward maximised through Optuna's ask/tell API with
    ``TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=multivariate, constant_liar=True)``.
    The first trial is the uniform allocation (action zeros, where :func:`evolution` and :func:`cmaes_search`
    start; it counts as a start-up trial), the other start-up trials are uniform random, then TPE's density
    ratio picks them. Multivariate TPE (default) models the units jointly, which suits the budget coupling them.

    TPE is sequential: each trial is chosen from all the finished ones. Here ``batch`` trials are asked at a
    time and evaluated as one population (one ``reset_many`` / ``step_many``, so Ray workers evaluate it);
    within a batch the constant liar scores the trials not yet told as the worst so far, which spreads them
    out. ``batch=1`` is plain sequential TPE (one evaluation per population); a larger batch parallelises but
    gives TPE less information per trial. The last batch is cut to the budget left. Optuna's logging is
    silenced (and its verbosity restored afterwards). Same seed, same search. Needs the optional ``optuna``
    package (``pip install 'ffprune[optuna]'``). Returns ``trials``, ``batches``, ``batch``,
    ``n_startup_trials``, ``multivariate``, ``constant_liar`` and ``best_trial`` (its number, 0-based).
    """
    batch = positive_int("batch", batch)
    n_startup_trials = non_negative_int("n_startup_trials", n_startup_trials)
    if not isinstance(multivariate, bool):
        raise FFPruneError(f"multivariate must be True or False, got {multivariate!r}")
    seed = _seed_below(seed, 2**32, "tpe")
    optuna = _optional("optuna", "tpe")
    shape = env.action_space.shape
    names = [f"u{i:03d}" for i in range(int(np.prod(shape)))]
    space = {name: optuna.distributions.FloatDistribution(-1.0, 1.0) for name in names}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():  # multivariate / constant_liar are "experimental" in older Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=multivariate,
                                                 constant_liar=True)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            study.enqueue_trial(dict.fromkeys(names, 0.0))
            batches = 0
            while not env.budget_spent:
                trials = [study.ask(space) for _ in range(min(batch, env.budget - env.episodes))]
                actions = np.stack([np.array([t.params[name] for name in names], np.float32).reshape(shape)
                                    for t in trials])
                rewards = _population(env, actions, seed)
                for t, r in zip(trials, rewards):
                    study.tell(t, float(r))
                batches += 1
    finally:
        optuna.logging.set_verbosity(verbosity)
    told = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL))
    complete = [t for t in told if t.state == optuna.trial.TrialState.COMPLETE]  # a NaN reward fails its trial
    return {"trials": len(told), "batches": batches, "batch": batch, "n_startup_trials": n_startup_trials,
            "multivariate": multivariate, "constant_liar": True,
            "best_trial": study.best_trial.number if complete else None}
