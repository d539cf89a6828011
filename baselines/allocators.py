"""Heuristic layer-wise allocators (no search): uniform, OWL, AlphaPruning and FLAP.

Pure functions of precomputed statistics. Uniform, OWL and AlphaPruning return per-block sparsities
whose parameter-weighted mean is exactly the target, so they go through
:meth:`ffenv.envs.prune_env.FFPruneEnv.action_from_sparsities` and the env's projector unchanged while they stay
within the env's keep bounds (beyond them, :func:`ffprune.baselines.heuristics.within_keep_bounds` clips them and
lets the env's projector re-balance, as for any action); FLAP returns
per-unit sparsities within half a granule of the target (the projector then meets it exactly).

* **OWL** — Outlier-Weighted Layerwise sparsity (Yin et al., ICML 2024). ``D_l``: the share of block
  ``l``'s Wanda scores above ``M`` × their mean (``M = 5``). Min-max normalise ``D`` to ``[0, 2λ]``
  (``λ = 0.08``); keep ratio ``k_l = 1 - σ + (r_l - r̄)`` with ``r̄`` the size-weighted mean of the
  normalised ``r``; sparsity ``s_l = 1 - k_l``. More outliers → less pruning.
* **AlphaPruning** (Lu et al., NeurIPS 2024). ``α`` of a weight matrix: the power-law exponent of the
  eigenvalue spectrum of ``WᵀW``, by the Hill estimator over the top half of the spectrum
  (``xmin`` = the median eigenvalue): ``α = 1 + k / Σ_{i<k} ln(λ_i / λ_k)``. A block's ``α`` is the mean
  over its matrices; ``s_l = σ · (1 - ε + 2ε (α_l - α_min)/(α_max - α_min))`` (``ε = 0.3``), then rescaled
  so that the size-weighted mean is ``σ``. Heavier tail (smaller ``α``) → less pruning.
* **FLAP** (An et al., AAAI 2024), structured. A channel ``j`` of an output projection's input scores
  its *fluctuation* ``S_j = Var(X_j) · ‖W_{:,j}‖²₂`` (variance over calibration tokens); a head
  (KV group) scores the sum over its channels. Scores are standardised per unit kind across all
  layers, ``z = (S − mean) / std``, and ranked globally: granules are removed lowest ``z`` first
  until the removed parameters reach the target (FLAP's adaptive structure search). FLAP's bias
  compensation is not part of the allocation (ffprune's post-pruning calibration plays that role).
"""

from __future__ import annotations

import numpy as np
import torch

from ffenv.errors import FFPruneError


def _check(target: float, sizes: np.ndarray, values: np.ndarray, name: str) -> None:
    if not 0.0 < target < 1.0:
        raise FFPruneError(f"target must be in (0, 1), got {target}")
    if values.shape != sizes.shape or values.ndim != 1:
        raise FFPruneError(f"{name} and sizes must be 1-D of the same length, got {values.shape} and {sizes.shape}")
    if not np.all(np.isfinite(values)):
        raise FFPruneError(f"{name} must be finite")
    if not np.all(sizes > 0):
        raise FFPruneError("sizes must be positive")


def uniform_sparsities(target: float, n: int) -> np.ndarray:
    """The same sparsity everywhere."""
    if not 0.0 < target < 1.0:
        raise FFPruneError(f"target must be in (0, 1), got {target}")
    return np.full(n, float(target))


def owl_sparsities(outlier_ratios: np.ndarray, target: float, sizes: np.ndarray | None = None,
                   lam: float = 0.08) -> np.ndarray:
    """OWL per-block sparsities from per-block outlier ratios (see module doc)."""
    d = np.asarray(outlier_ratios, np.float64)
    sizes = np.ones_like(d) if sizes is None else np.asarray(sizes, np.float64)
    _check(target, sizes, d, "outlier_ratios")
    if lam < 0:
        raise FFPruneError(f"lam must be >= 0, got {lam}")
    spread = d.max() - d.min()
    r = np.zeros_like(d) if spread == 0 else (d - d.min()) / spread * (2 * lam)
    keep = (1.0 - target) + r - (r @ sizes) / sizes.sum()
    s = 1.0 - keep
    if np.any(s < 0) or np.any(s > 1):
        raise FFPruneError(f"lam={lam} is too large for target={target}: sparsities leave [0, 1]")
    return s


def hill_alpha(weight: torch.Tensor) -> float:
    """Power-law exponent of the eigenvalue spectrum of ``WᵀW`` (Hill estimator, xmin = median eigenvalue)."""
    eig = torch.linalg.svdvals(weight.detach().double()).pow(2).sort(descending=True).values
    k = max(2, len(eig) // 2)
    tail = eig[:k]
    logs = torch.log(tail / tail[-1])
    denom = float(logs[:-1].sum())
    return float("inf") if denom <= 0 else 1.0 + (k - 1) / denom


def alphapruning_sparsities(alphas: np.ndarray, target: float, sizes: np.ndarray | None = None,
                            eps: float = 0.3) -> np.ndarray:
    """AlphaPruning per-block sparsities from per-block mean α (see module doc)."""
    a = np.asarray(alphas, np.float64)
    sizes = np.ones_like(a) if sizes is None else np.asarray(sizes, np.float64)
    _check(target, sizes, a, "alphas")
    if not 0.0 <= eps < 1.0:
        raise FFPruneError(f"eps must be in [0, 1), got {eps}")
    unit = _alpha_unit(a)
    s = target * (1.0 - eps + 2.0 * eps * unit)
    s *= target * sizes.sum() / (s @ sizes)
    if np.any(s > 1):
        raise FFPruneError(f"eps={eps} is too large for target={target}: a sparsity exceeds 1 "
                           f"(the largest that fits is {alphapruning_max_eps(a, target, sizes):.4g})")
    return s


def _alpha_unit(a: np.ndarray) -> np.ndarray:
    spread = a.max() - a.min()
    return np.full_like(a, 0.5) if spread == 0 else (a - a.min()) / spread


def alphapruning_max_eps(alphas: np.ndarray, target: float, sizes: np.ndarray | None = None) -> float:
    """The largest ``eps`` for which :func:`alphapruning_sparsities` keeps every sparsity <= 1 (``inf``: any).

    After the rescale to the target the heaviest-pruned block gets ``target·(1+ε) / (1-ε+2ε·m)`` with ``m`` the
    size-weighted mean of the min-max normalised α, so ``ε <= (1-target) / (1+target-2m)``.
    """
    a = np.asarray(alphas, np.float64)
    sizes = np.ones_like(a) if sizes is None else np.asarray(sizes, np.float64)
    _check(target, sizes, a, "alphas")
    m = float(_alpha_unit(a) @ sizes / sizes.sum())
    denom = 1.0 + target - 2.0 * m
    return float("inf") if denom <= 0 else float((1.0 - target) / denom)


def flap_sparsities(scores: list[np.ndarray], kinds: list[str], granule_params: np.ndarray, target: float,
                    min_keep: float = 0.0) -> np.ndarray:
    """FLAP per-unit sparsities from per-granule fluctuation scores (see module doc).

    Args:
        scores: per unit, the fluctuation score of each granule (head group or neuron).
        kinds: per unit, its kind (``"attn"`` / ``"ffn"``); scores are standardised within a kind.
        granule_params: per unit, the parameters one granule carries.
        target: share of all parameters to remove, in ``(0, 1)``.
        min_keep: no unit keeps fewer than ``ceil(min_keep · count)`` granules.

    Walking the granules by ascending ``z``, one is removed when that brings the removed total closer to
    the target (strictly) and its unit stays above ``min_keep``; the result is within half of the
    largest granule of the target unless ``min_keep`` blocks it.
    """
    if not 0.0 < target < 1.0:
        raise FFPruneError(f"target must be in (0, 1), got {target}")
    if not 0.0 <= min_keep <= 1.0:
        raise FFPruneError(f"min_keep must be in [0, 1], got {min_keep}")
    gran = np.asarray(granule_params, np.float64)
    if not (len(scores) == len(kinds) == len(gran)):
        raise FFPruneError(f"scores, kinds and granule_params need one entry per unit, got "
                           f"{len(scores)}, {len(kinds)}, {len(gran)}")
    scores = [np.asarray(x, np.float64) for x in scores]
    if any(x.ndim != 1 or len(x) == 0 or not np.all(np.isfinite(x)) for x in scores):
        raise FFPruneError("scores must be non-empty, finite 1-D arrays")
    z = [np.empty(0)] * len(scores)
    for kind in sorted(set(kinds)):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        pooled = np.concatenate([scores[i] for i in idx])
        mean, std = pooled.mean(), pooled.std()
        for i in idx:
            z[i] = np.zeros_like(scores[i]) if std == 0 else (scores[i] - mean) / std
    counts = np.array([len(x) for x in scores])
    floor_kept = np.ceil(min_keep * counts - 1e-9).astype(np.int64)
    unit_of = np.concatenate([np.full(c, i) for i, c in enumerate(counts)])
    order = np.lexsort((np.arange(len(unit_of)), np.concatenate(z)))  # ascending z, ties by position
    goal = target * float(counts @ gran)
    removed_params, removed = 0.0, np.zeros(len(counts), np.int64)
    for g in order:
        i = unit_of[g]
        if removed_params + gran[i] / 2 < goal and counts[i] - removed[i] > floor_kept[i]:
            removed[i] += 1
            removed_params += gran[i]
    return removed / counts
