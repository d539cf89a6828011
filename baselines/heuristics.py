"""Heuristic allocations computed from an env's public API: the statistics each allocator needs.

:func:`heuristic_sparsities` returns per-unit sparsities for ``uniform``, ``owl``, ``alphapruning``
(both modes; a block's units share its sparsity) and ``flap`` (structured only). The formulas live
in :mod:`baselines.allocators`; this module only gathers their inputs (the observation's outlier
ratios, the weights' spectra, one calibration pass for FLAP's fluctuation).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from baselines.allocators import (
    alphapruning_sparsities,
    flap_sparsities,
    hill_alpha,
    owl_sparsities,
    uniform_sparsities,
)
from ffenv.env import UNIT_FEATURES
from ffenv.importance import collect_input_moments
from ffenv.models import decoder_blocks
from ffenv.projector import keep_to_raw, project_budget

HEURISTICS = ("uniform", "owl", "alphapruning", "flap")


def flap_scores(env: gym.Env) -> list[np.ndarray]:
    """Per unit, FLAP's fluctuation score of each granule: ``Var(X_j)·‖W_{:,j}‖²`` summed per head group."""
    u = env.unwrapped
    blocks = decoder_blocks(u.model)
    linears = [lin for b in blocks for lin in (b.attn_out, b.ffn_out)]
    moments = collect_input_moments(u.model, linears, u.calibration_tokens)
    out = []
    for unit, lin, (_mean, var) in zip(u.units, linears, moments):
        s = var * lin.weight.detach().double().pow(2).sum(0).to(var.device)
        out.append(s.view(unit.count, -1).sum(1).cpu().numpy())
    return out


def within_keep_bounds(env: gym.Env, sparsities: np.ndarray) -> np.ndarray:
    """An allocation the env can run: unchanged when every keep ratio lies in ``[min_keep, max_keep]``;
    otherwise clipped to those bounds and re-balanced by the env's budget projector (exactly what the env
    does with any action), so the target is still met.

    Needed when a heuristic's range exceeds the env's bounds, e.g. AlphaPruning with ``ε = 0.3`` at a 70 %
    target spans sparsities up to ``0.7 · 1.3 = 0.91`` while ``min_keep = 0.1`` allows at most 0.9.
    """
    u = env.unwrapped
    keep = 1.0 - np.asarray(sparsities, np.float64)
    if np.all(keep >= u.min_keep - 1e-9) and np.all(keep <= u.max_keep + 1e-9):
        return np.asarray(sparsities, np.float64)
    raw = keep_to_raw(keep, u.min_keep, u.max_keep)  # outside [-1, 1]: the projector clips it to the bounds
    return 1.0 - project_budget(raw, u.target_sparsity, u.sizes, u.min_keep, u.max_keep)


def heuristic_sparsities(env: gym.Env, method: str, **params: Any) -> np.ndarray:
    """Per-unit sparsities of a heuristic ``method`` at the env's current target (see module doc), as the
    method defines them; :func:`within_keep_bounds` makes them runnable when they leave the env's bounds."""
    u = env.unwrapped
    target = u.target_sparsity
    blocks = np.array([unit.block for unit in u.units])
    sizes = np.array([u.sizes[blocks == b].sum() for b in range(u.n_blocks)])
    if method == "uniform":
        per_block = uniform_sparsities(target, u.n_blocks)
    elif method == "owl":
        obs, _ = env.reset()
        feats = obs[1:].reshape(u.n_units, len(UNIT_FEATURES))
        ratio = feats[:, UNIT_FEATURES.index("outlier_ratio")]
        per_block = owl_sparsities(np.array([ratio[blocks == b][0] for b in range(u.n_blocks)]), target, sizes, **params)
    elif method == "alphapruning":
        alphas = [np.mean([hill_alpha(lin.weight) for lin in b.linears.values()]) for b in decoder_blocks(u.model)]
        per_block = alphapruning_sparsities(np.array(alphas), target, sizes, **params)
    elif method == "flap":
        if u.mode != "structured":
            raise ValueError("method 'flap' needs a structured env (heads and neurons)")
        return flap_sparsities(flap_scores(env), [unit.kind for unit in u.units],
                               np.array([unit.granule_params for unit in u.units]), target, u.min_keep, **params)
    else:
        raise ValueError(f"method must be one of {HEURISTICS}, got {method!r}")
    return per_block[blocks]
