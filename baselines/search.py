"""Non-RL baselines, run through the same :class:`~agents.monitor.SearchMonitor` as the agents.

* ``uniform``, ``owl``, ``alphapruning``, ``flap`` — the heuristics of :mod:`baselines.heuristics`:
  no search, one evaluation (to know the allocation's reward).
* ``uniform-split`` — the same keep ratio in every layer, but the attention / FFN split tuned by a 1-D
  sweep over the heads (KV groups) kept per layer: for ``h = 0..G`` the attention keep ratio is ``h/G``
  and the FFN ratio is whatever meets the budget; infeasible ``h`` are skipped. Its ``G + 1``
  evaluations are its search cost (structured mode only).
* ``random`` — actions uniform in ``[-1, 1]``, the best one kept.
* ``evolution`` — a (1+λ) evolutionary search on the action in the spirit of EvoPress (Sieberling et
  al., ICML 2025): start from the uniform allocation, each generation mutates the parent with Gaussian
  noise (``sigma``) into ``lam`` offspring and keeps the best of parent and offspring.

Each function stops when the monitor's budget is spent and leaves the best allocation in ``env.best``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.monitor import SearchMonitor
from baselines.heuristics import HEURISTICS, heuristic_sparsities, within_keep_bounds

SEARCHES = ("uniform-split", "random", "evolution")
METHODS = HEURISTICS + SEARCHES


def heuristic(env: SearchMonitor, method: str, seed: int = 0, **params: Any) -> dict[str, Any]:
    """One evaluation of a heuristic allocation at the final target."""
    base = env.unwrapped
    sparsity = heuristic_sparsities(env, method, **params)
    runnable = within_keep_bounds(env, sparsity)
    env.reset(seed=seed)
    env.step(base.action_from_sparsities(runnable))
    return {"heuristic_sparsity": sparsity.tolist(), "params": params,
            "projected_to_keep_bounds": bool(not np.allclose(runnable, sparsity, rtol=0, atol=1e-12))}


def uniform_split(env: SearchMonitor, seed: int = 0) -> dict[str, Any]:
    """Sweep heads kept per layer; the FFN keep ratio fills the budget (structured envs only)."""
    base = env.unwrapped
    if base.mode != "structured":
        raise ValueError("uniform-split needs a structured env (attention and FFN units)")
    kinds = np.array([u.kind for u in base.units])
    attn, ffn = kinds == "attn", kinds == "ffn"
    groups = base.units[int(np.flatnonzero(attn)[0])].count
    target_keep = (1.0 - env.final_target) * base.sizes.sum()
    tried = []
    for h in range(groups, -1, -1):
        if env.done:
            break
        a_keep = h / groups
        f_keep = (target_keep - a_keep * base.sizes[attn].sum()) / base.sizes[ffn].sum()
        if not (base.min_keep <= a_keep <= base.max_keep and base.min_keep <= f_keep <= base.max_keep):
            continue
        sparsity = np.where(attn, 1.0 - a_keep, 1.0 - f_keep)
        env.reset(seed=seed)
        _, reward, _, _, _ = env.step(base.action_from_sparsities(sparsity))
        tried.append({"heads_kept": h, "attn_keep": a_keep, "ffn_keep": float(f_keep), "reward": float(reward)})
    return {"sweep": tried}


def random_search(env: SearchMonitor, seed: int = 0) -> dict[str, Any]:
    """Uniform random actions until the budget is spent."""
    rng = np.random.default_rng(seed)
    while not env.done:
        env.reset(seed=seed)
        env.step(rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32))
    return {}


def evolution(env: SearchMonitor, seed: int = 0, lam: int = 4, sigma: float = 0.3) -> dict[str, Any]:
    """(1+λ) evolutionary search from the uniform allocation."""
    if lam < 1 or sigma <= 0:
        raise ValueError(f"lam must be >= 1 and sigma > 0, got lam={lam}, sigma={sigma}")
    rng = np.random.default_rng(seed)
    parent = np.zeros(env.action_space.shape, np.float32)
    env.reset(seed=seed)
    _, parent_reward, _, _, _ = env.step(parent)
    generations = 0
    while not env.done:
        best_child, best_reward = None, -np.inf
        for _ in range(lam):
            if env.done:
                break
            child = np.clip(parent + rng.normal(0.0, sigma, parent.shape), -1.0, 1.0).astype(np.float32)
            env.reset(seed=seed)
            _, reward, _, _, _ = env.step(child)
            if reward > best_reward:
                best_child, best_reward = child, reward
        if best_child is not None and best_reward >= parent_reward:
            parent, parent_reward = best_child, best_reward
        generations += 1
    return {"generations": generations, "lam": lam, "sigma": sigma}


def run_baseline_search(env: SearchMonitor, method: str, seed: int = 0, **params: Any) -> dict[str, Any]:
    """Dispatch one of :data:`METHODS`."""
    if method in HEURISTICS:
        return heuristic(env, method, seed, **params)
    if method == "uniform-split":
        return uniform_split(env, seed)
    if method == "random":
        return random_search(env, seed)
    if method == "evolution":
        return evolution(env, seed, **params)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
