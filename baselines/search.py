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

Populations (the sweep, a batch of random actions, the offspring) are evaluated with one
``reset_many`` / ``step_many`` each: in-process, or spread over Ray workers (``workers=N``).
* ``evolution`` — a (1+λ) evolutionary search on the action in the spirit of EvoPress (Sieberling et
  al., ICML 2025): start from the uniform allocation, each generation mutates the parent with Gaussian
  noise (``sigma``) into ``lam`` offspring and keeps the best of parent and offspring.

Each function takes the search's :class:`~ffenv.wrappers.SearchAccounting` (budget, best allocation), a
seed and its own parameters, stops when the budget is spent and returns its statistics; the best
allocation is in ``env.best``. :mod:`ffprune.agents.methods.registry` registers them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ffenv.errors import FFPruneError, positive_int
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
