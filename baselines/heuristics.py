"""Heuristic allocations computed from an env's public API: the statistics each allocator needs.

The ``*_allocation`` functions return per-unit sparsities for ``uniform``, ``owl``, ``alphapruning``,
``dlp`` and ``atp`` (both modes; a block's units share its sparsity) and ``flap`` (structured only). The
formulas live in :mod:`baselines.allocators`; this module only gathers their inputs (the observation's
outlier ratios, the weights' spectra, one calibration pass for FLAP's fluctuation and for DLP's Wanda
scores, the block sizes and keep bounds for ATP's progression).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from ffenv.envs.features import UNIT_FEATURES
from ffenv.errors import FFPruneError
from ffenv.pruning.importance import block_outlier_ratio, collect_input_moments, collect_input_norms, wanda_scores
from ffenv.pruning.projector import keep_to_raw, project_budget
from ffprune.baselines.allocators import (
    alphapruning_max_eps,
    alphapruning_sparsities,
    atp_max_beta,
    atp_sparsities,
    dlp_sparsities,
    flap_sparsities,
    hill_alpha,
    owl_sparsities,
    uniform_sparsities,
)


def flap_scores(env: gym.Env) -> list[np.ndarray]:
    """Per unit, FLAP's fluctuation score of each granule: ``Var(X_j)·‖W_{:,j}‖²`` summed per head group."""
    u = env.unwrapped
    real = u.real_backend()  # the weights and calibration tokens (loaded on request under a surrogate)
    linears = [lin for b in real.blocks for lin in (b.attn_out, b.ffn_out)]
    moments = collect_input_moments(real.model, linears, real.calib_tokens)
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
    lo, hi = u.config.min_keep, u.config.max_keep
    keep = 1.0 - np.asarray(sparsities, np.float64)
    if np.all(keep >= lo - 1e-9) and np.all(keep <= hi + 1e-9):
        return np.asarray(sparsities, np.float64)
    raw = keep_to_raw(keep, lo, hi)  # outside [-1, 1]: the projector clips it to the bounds
    return 1.0 - project_budget(raw, u.target_sparsity, u.sizes, lo, hi)


def _per_unit(env: gym.Env, per_block: np.ndarray) -> np.ndarray:
    u = env.unwrapped
    return np.asarray(per_block)[[unit.block for unit in u.units]]


def _block_sizes(env: gym.Env) -> np.ndarray:
    u = env.unwrapped
    blocks = np.array([unit.block for unit in u.units])
    return np.array([u.sizes[blocks == b].sum() for b in range(u.n_blocks)])


def uniform_allocation(env: gym.Env) -> np.ndarray:
    """The same sparsity in every unit (the env's current target)."""
    u = env.unwrapped
    return _per_unit(env, uniform_sparsities(u.target_sparsity, u.n_blocks))


OWL_M = 5.0
"""OWL's outlier threshold ``M`` (a Wanda score above ``M`` × its block's mean is an outlier): the authors' default
for LLaMA, and the one the observation's ``outlier_ratio`` feature uses."""


def owl_allocation(env: gym.Env, lam: float = 0.08, m: float = OWL_M) -> np.ndarray:
    """OWL from per-block outlier ratios with threshold ``m`` (the observation's at the default, else computed from
    the env's calibration statistics) and :func:`owl_sparsities`' ``lam``. Both defaults are the authors', chosen
    on 7 B-class LLaMA models (they searched ``λ ∈ {0.02, 0.05, 0.08, 0.1, 0.2}``, ``M ∈ {3, 5, 7, 10}``)."""
    u = env.unwrapped
    if not (isinstance(m, (int, float)) and np.isfinite(m) and m > 0):
        raise FFPruneError(f"m must be a finite number > 0 (OWL's outlier threshold), got {m!r}")
    if m == OWL_M:
        obs, _ = env.reset()
        ratio = obs[1:].reshape(u.n_units, len(UNIT_FEATURES))[:, UNIT_FEATURES.index("outlier_ratio")]
        blocks = np.array([unit.block for unit in u.units])
        per_block = np.array([ratio[blocks == b][0] for b in range(u.n_blocks)])
    else:
        real = u.real_backend()
        per_block = np.array([block_outlier_ratio(b, real.input_norms, float(m)) for b in real.blocks])
    return _per_unit(env, owl_sparsities(per_block, u.target_sparsity, _block_sizes(env), lam=lam))


def alphapruning_allocation(env: gym.Env, eps: float = 0.3, fit_eps: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """AlphaPruning from each block's mean Hill ``α``, and the ``eps`` it used.

    ``eps`` (the authors' 0.3) spreads the block sparsities over ``[1-ε, 1+ε]·target`` before the rescale to
    the target; at high targets that can put a block above sparsity 1. With ``fit_eps`` the largest ``eps``
    that fits (:func:`alphapruning_max_eps`) is used instead — the authors choose ε per model — and the
    result says so (``eps`` used, ``eps_requested``); without it such a target is an error.
    """
    u = env.unwrapped
    alphas = np.array([np.mean([hill_alpha(lin.weight) for lin in b.linears.values()]) for b in u.real_backend().blocks])
    sizes = _block_sizes(env)
    used = eps
    if fit_eps and 0.0 <= eps < 1.0:
        used = min(eps, alphapruning_max_eps(alphas, u.target_sparsity, sizes) * (1.0 - 1e-9))
    sparsities = alphapruning_sparsities(alphas, u.target_sparsity, sizes, eps=used)
    return _per_unit(env, sparsities), {"eps": used, "eps_requested": eps}


def flap_allocation(env: gym.Env, **params: Any) -> np.ndarray:
    """FLAP's global ranking of standardised fluctuation scores (structured envs only)."""
    u = env.unwrapped
    if u.config.mode != "structured":
        raise FFPruneError("method 'flap' needs a structured env (heads and neurons)")
    return flap_sparsities(flap_scores(env), [unit.kind for unit in u.units],
                           np.array([unit.granule_params for unit in u.units]), u.target_sparsity,
                           u.config.min_keep, **params)


def dlp_unimportance(env: gym.Env) -> np.ndarray:
    """Per block, DLP's unimportance: the median Wanda score ``|W_ij|·‖X_j‖₂`` over every weight of every linear
    of the block, ``‖X_j‖₂`` from one dense pass over the env's calibration tokens (what the pruning engines'
    importance was computed on)."""
    u = env.unwrapped
    real = u.real_backend()
    norms = collect_input_norms(real.model, real.blocks, real.calib_tokens, u.config.batch_size)
    medians = []
    for b in real.blocks:
        scores = torch.cat([wanda_scores(lin, norms[(b.index, name)]).reshape(-1) for name, lin in b.linears.items()])
        medians.append(float(scores.median()))
    return np.array(medians)


def dlp_allocation(env: gym.Env, alpha: float = 0.15) -> np.ndarray:
    """DLP (:func:`~ffprune.baselines.allocators.dlp_sparsities`) from each block's median Wanda score.

    Structured mode is ffprune's adaptation (DLP is defined for unstructured weights): the block's sparsity is
    computed from all its weights exactly as in unstructured mode, and its attention and FFN units share it
    (DLP ranks blocks, not the units inside one), as OWL and AlphaPruning do here.
    """
    u = env.unwrapped
    sparsities = dlp_sparsities(dlp_unimportance(env), u.target_sparsity, _block_sizes(env), alpha=alpha)
    return _per_unit(env, sparsities)


def atp_beta_range(env: gym.Env) -> float:
    """The largest ATP common difference whose progression stays within the env's keep bounds
    (:func:`~ffprune.baselines.allocators.atp_max_beta` over the blocks at the env's target)."""
    u = env.unwrapped
    return atp_max_beta(u.target_sparsity, _block_sizes(env), u.config.min_keep, u.config.max_keep)


def atp_allocation(env: gym.Env, beta: float) -> np.ndarray:
    """ATP's progression (:func:`~ffprune.baselines.allocators.atp_sparsities`) over the blocks with common
    difference ``beta``; a block's units share its sparsity (structured: the paper's Sec. F.4 gives LLM-Pruner
    one rate per layer, as here). ``beta`` above :func:`atp_beta_range` is an error naming the largest that fits."""
    u = env.unwrapped
    beta_max = atp_beta_range(env)
    if not np.isfinite(beta) or not 0.0 <= beta <= beta_max * (1 + 1e-9):
        raise FFPruneError(f"beta must be in [0, {beta_max:.6g}] (the keep bounds [{u.config.min_keep}, "
                           f"{u.config.max_keep}] at target {u.target_sparsity}), got {beta}")
    return _per_unit(env, atp_sparsities(u.target_sparsity, _block_sizes(env), min(beta, beta_max)))
